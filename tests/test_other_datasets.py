"""Another data set than CIFAR-10: grayscale and non-square images, and models whose numbers a later stage
cannot store. Each gets a clear error before any work, or runs end to end."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from sklearn.metrics import roc_auc_score

from anomem.data import quarter_turn_users, quarter_turned, require_square_for_turns
from anomem.detector import AnomalyDistanceDetector
from anomem.errors import DataError, NumericalError
from anomem.model import rotate
from anomem.params import DetectorParams, parse_params
from anomem.views import require_storable
from conftest import REPO

TURNS_OFF = {"contrastive": {"rotation_weight": 0.0, "shifted_instances": 1}, "detector": {"knn_turns": False, "shifted_negatives": False}}


def _params(overrides: dict | None = None):
    raw = {"experiment": {"classes": [0], "settings": ["one_class"], "seeds": [0]}}
    for group, values in (overrides or {}).items():
        raw.setdefault(group, {}).update(values)
    return parse_params(raw)


def test_non_square_images_name_every_param_that_turns_them():
    with pytest.raises(DataError) as info:
        require_square_for_turns((24, 32), _params(), ["one_class"])
    msg = str(info.value)
    assert "24x32" in msg
    for key in ("contrastive.rotation_weight", "detector.knn_turns", "detector.shifted_negatives"):
        assert key in msg
    # unbalanced pairs never use turned normals, so that param is not blamed there
    assert "shifted_negatives=true" not in " ".join(quarter_turn_users(_params(), ["unbalanced"]))


def test_shifted_instances_alone_still_turn_images():
    only_shifted = {**TURNS_OFF, "contrastive": {"rotation_weight": 0.0, "shifted_instances": 2}}
    with pytest.raises(DataError, match="contrastive.shifted_instances=2"):
        require_square_for_turns((24, 32), _params(only_shifted), ["one_class"])


def test_square_images_or_no_turns_pass():
    require_square_for_turns((32, 32), _params(), ["one_class", "unbalanced"])
    require_square_for_turns((24, 32), _params(TURNS_OFF), ["one_class", "unbalanced"])


def test_turning_a_non_square_batch_is_a_clear_error_but_half_turns_are_fine():
    x = torch.rand(3, 3, 24, 32)
    with pytest.raises(ValueError, match="square"):
        rotate(x, torch.tensor([0, 1, 2]))
    assert torch.equal(rotate(x, torch.tensor([2, 0, 2]))[0], torch.rot90(x[0], 2, dims=(1, 2)))
    with pytest.raises(ValueError, match="square"):
        quarter_turned(np.zeros((4, 24, 32, 3), np.uint8), seed=0)


def test_maps_beyond_float16_are_refused_with_the_remedies():
    big = torch.full((2, 4, 3, 3), 1.0e6)
    with pytest.raises(NumericalError) as info:
        require_storable(big, 2, "float16", "train_normal")
    for remedy in ("train.epochs", "detector.bn_recompute: true", "detector.map_dtype: float32"):
        assert remedy in str(info.value)
    assert "train_normal" in str(info.value)
    require_storable(big, 2, "float32", "train_normal")  # float32 holds them
    require_storable(torch.full((2, 4, 3, 3), 60000.0), 2, "float16", "test")  # the largest float16 values still fit
    with pytest.raises(NumericalError, match="diverged"):
        require_storable(torch.tensor([[[[float("nan")]]]]), 3, "float32", "test")
    assert issubclass(NumericalError, FloatingPointError)


def test_the_detector_refuses_non_finite_maps_before_training(deviation_maps):
    maps, labels = deviation_maps(40, 0)
    bad = {s: m.copy() for s, m in maps.items()}
    bad[3][7, 0, 0, 0] = np.inf
    detector = AnomalyDistanceDetector(DetectorParams(epochs=1), torch.device("cpu"), progress=False)
    with pytest.raises(ValueError, match=r"X\[3\]: 1 of 40 maps hold inf or NaN \(the first is sample 7\)"):
        detector.fit(bad, labels)
    detector.fit(maps, labels)
    with pytest.raises(ValueError, match=r"X\[3\]"):
        detector.decision_function(bad)


# ---- the stages on a small synthetic data set -------------------------------------------------------


def _patterns(n_per_class: int, hw: tuple[int, int], seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Grayscale (N, H, W) images of three classes: horizontal bars, vertical bars, a bright square; noise on all."""
    rng = np.random.default_rng(seed)
    h, w = hw
    yy, xx = np.mgrid[:h, :w]
    images, labels = [], []
    for cls in range(3):
        for _ in range(n_per_class):
            period, phase = rng.integers(4, 8), rng.integers(0, 8)
            if cls == 0:
                img = 200.0 * (((yy + phase) // (period // 2)) % 2)
            elif cls == 1:
                img = 200.0 * (((xx + phase) // (period // 2)) % 2)
            else:
                y0, x0 = rng.integers(0, h - 10), rng.integers(0, w - 10)
                img = np.zeros((h, w))
                img[y0 : y0 + 10, x0 : x0 + 10] = 220.0
            images.append(np.clip(img + rng.normal(0, 20, (h, w)), 0, 255).astype(np.uint8))
            labels.append(cls)
    return np.stack(images), np.array(labels, np.int64)


def _repo(root: Path, hw: tuple[int, int], overrides: dict) -> dict:
    data = root / "npz"
    data.mkdir(parents=True)
    for split, n, seed in (("train", 240, 0), ("test", 40, 1)):
        images, labels = _patterns(n, hw, seed)
        np.savez(data / f"bars_{split}.npz", images=images, labels=labels)
    params = yaml.safe_load((REPO / "profiles" / "smoke.yaml").read_text())
    params["data"].update(dataset="bars", class_names=["horizontal", "vertical", "square"], n_known_outlier_classes=2)
    params["train"].update(epochs=4, batch_size=32, eval_batch_size=200, num_threads=1)
    params["detector"].update(epochs=3, batch_size=32)
    params["experiment"].update(classes=[0], settings=["one_class"], seeds=[0])
    params["tracking"]["enabled"] = False
    for group, values in overrides.items():
        params[group].update(values)
    (root / "params.yaml").write_text(yaml.safe_dump(params))
    env = {k: v for k, v in os.environ.items() if not k.startswith(("MLFLOW_TRACKING", "DVC_", "ANOMEM_"))}
    env.update(ANOMEM_DATA_DIR=str(data), MLFLOW_DISABLE_TELEMETRY="true", DVC_ROOT=str(root))
    return env


def _stage(name: str, root: Path, env: dict) -> subprocess.CompletedProcess:
    pair = [] if name == "prepare_data" else ["--cls", "0", "--setting", "one_class", "--seed", "0"]
    return subprocess.run(
        [sys.executable, str(REPO / "stages" / f"{name}.py"), *pair], cwd=root, env=env, capture_output=True, text=True, timeout=600
    )


def test_non_square_images_stop_prepare_data_before_it_writes(tmp_path):
    env = _repo(tmp_path, (24, 32), {})
    result = _stage("prepare_data", tmp_path, env)
    assert result.returncode == 2, result.stderr[-2000:]
    assert "24x32" in result.stderr and "contrastive.rotation_weight" in result.stderr
    assert "Traceback" not in result.stderr
    assert not (tmp_path / "data" / "prepared").exists()


def test_grayscale_non_square_images_run_end_to_end_with_the_turns_off(tmp_path):
    env = _repo(tmp_path, (24, 32), TURNS_OFF)
    for name in ("prepare_data", "train_contrastive_memory", "extract_deviation_maps", "train_detector"):
        result = _stage(name, tmp_path, env)
        assert result.returncode == 0, f"{name}: {result.stdout[-1500:]}{result.stderr[-2500:]}"
    manifest = yaml.safe_load((tmp_path / "data" / "prepared" / "manifest.json").read_text())
    assert manifest["image_shape"] == [24, 32, 3] and manifest["source_channels"] == 1
    with np.load(tmp_path / "data" / "scores" / "0-one_class-0" / "scores.npz") as f:
        labels, knn, combined = f["labels"], f["score_knn"], f["score_combined"]
    assert labels.sum() == 80 and (labels == 0).sum() == 40
    # horizontal bars against vertical bars and squares: the pooled features tell them apart
    assert roc_auc_score(labels, knn) > 0.9
    assert roc_auc_score(labels, combined) > 0.8
