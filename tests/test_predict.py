"""`anomem score`: new images scored by a trained pair exactly as the pipeline scored its test split, on a tiny
real-data repo; and clear errors for images or params that do not fit the pair."""

from __future__ import annotations

import csv
import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from PIL import Image

from anomem import layout
from anomem.errors import DataError, ParamsError
from anomem.params import flatten, load_params
from anomem.predict import PairScorer, _require_fitted_with, _require_trained_with, read_images
from anomem.runtime import make_runtime
from conftest import REPO
from test_reliability import PAIR, PAIR_ID, TINY, make_repo, ok, run_pipeline, tiny_data  # noqa: F401  (tiny_data is a fixture)

CLS, SETTING, SEED = int(PAIR[0]), PAIR[1], int(PAIR[2])


@pytest.fixture(scope="module")
def scored_repo(tmp_path_factory, tiny_data) -> tuple[Path, dict]:  # noqa: F811
    """The tiny pipeline, run with BatchNorm statistics re-averaged for extraction: the harder path for a scorer to repeat."""
    root, env = make_repo(tmp_path_factory.mktemp("scored"), tiny_data, {"detector": {**TINY["detector"], "bn_recompute": True}})
    run_pipeline(root, env)
    return root, env


def score_cli(root: Path, env: dict, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "anomem.cli", "score", *args], cwd=root, env=env, capture_output=True, text=True, timeout=600
    )


def test_the_test_split_scores_as_the_pipeline_scored_it(scored_repo, tmp_path):
    root, env = scored_repo
    split = np.load(root / f"data/prepared/splits/{CLS}-{SETTING}.npz")
    images = np.load(root / "data/prepared/test_images.npy")[split["test"]]
    labels = np.load(root / "data/prepared/test_labels.npy")[split["test"]]
    np.savez(tmp_path / "test.npz", images=images, labels=labels)

    result = ok(
        score_cli(
            root,
            env,
            str(tmp_path / "test.npz"),
            "--cls",
            str(CLS),
            "--setting",
            SETTING,
            "--out",
            str(tmp_path / "s.csv"),
            "--plot",
            str(tmp_path / "top.png"),
            "--plot-top",
            "4",
        )
    )
    rows = list(csv.DictReader((tmp_path / "s.csv").open()))
    stored = np.load(root / f"data/scores/{PAIR_ID}/scores.npz")
    assert len(rows) == len(images) and [int(r["label"]) for r in rows] == labels.tolist()
    for name in ("combined", "detector", "rotation", "knn", "deviation"):
        assert np.array_equal(np.array([float(r[name]) for r in rows]), stored[f"score_{name}"]), name
    combined_auroc = json.loads((root / "reports/metrics.json").read_text())["classes"][SETTING]["0_airplane"]["combined"]["auroc"]
    assert f"AUROC of combined against the labels (normal = class {CLS}): {combined_auroc:.4f}" in result.stdout
    with Image.open(tmp_path / "top.png") as plot:  # 4 rows of image, ||D_2||^2 and ||D_3||^2
        assert plot.height > plot.width > 100
    flagged = np.array([int(r["anomalous"]) for r in rows], bool)
    assert flagged[labels != CLS].mean() > flagged[labels == CLS].mean(), "the flag should catch anomalies more often than normals"


def test_a_folder_of_png_files_scores_as_the_same_array(scored_repo, tmp_path):
    root, _ = scored_repo
    params = load_params(root / "params.yaml")
    scorer = PairScorer(params, CLS, SETTING, SEED, make_runtime("cpu", 1, "fp32"), root=root)
    images = np.load(root / "data/prepared/test_images.npy")[:12]
    folder = tmp_path / "pngs"
    folder.mkdir()
    for i, image in enumerate(images):
        Image.fromarray(image).save(folder / f"{i:02d}.png")  # lossless
    (folder / "notes.txt").write_text("not an image; ignored")
    read, names, labels = read_images(folder)
    assert names == [f"{i:02d}.png" for i in range(12)] and labels is None
    assert np.array_equal(scorer.decision_function(read), scorer.decision_function(images))
    assert set(scorer.scores(images)) == {"combined", "detector", "rotation", "knn", "deviation"}


def test_images_of_another_size_need_resize(scored_repo, tmp_path):
    root, env = scored_repo
    Image.fromarray(np.load(root / "data/prepared/test_images.npy")[0]).resize((48, 40)).save(tmp_path / "big.png")
    args = [str(tmp_path / "big.png"), "--cls", str(CLS), "--setting", SETTING, "--out", str(tmp_path / "b.csv")]
    refused = score_cli(root, env, *args)
    assert refused.returncode != 0 and "the images are 40x48 pixels, but 0-one_class-0 was trained on 32x32 pixels" in refused.stderr
    assert "--resize" in refused.stderr and not (tmp_path / "b.csv").exists()
    for bad, message in (
        (["--flag-percentile", "101"], "--flag-percentile 101: must lie in 0..100"),
        (["--plot-top", "0"], "--plot-top 0"),
    ):
        refused = score_cli(root, env, *args, "--resize", *bad)
        assert refused.returncode == 2 and message in refused.stderr
    ok(score_cli(root, env, *args, "--resize"))
    assert len(list(csv.DictReader((tmp_path / "b.csv").open()))) == 1


@pytest.mark.parametrize(
    "group, key, value, message",
    [
        ("memory", "beta", 3.0, r"model.pt was trained with other params than these \(memory.beta: 10.0 there, 3.0 here\)"),
        ("detector", "knn_k", 7, r"detector.pt was fitted with other params than these \(detector.knn_k: 1 there, 7 here\)"),
        ("detector", "pick_by_validation", False, r"detector.pick_by_validation: True there, False here"),
        ("detector", "channels", 8, r"detector.pt was fitted with other params than these \(detector.channels: 16 there, 8 here\)"),
    ],
)
def test_params_other_than_the_training_ones_are_refused_by_name(scored_repo, tmp_path, monkeypatch, group, key, value, message):
    """Without dvc.lock, model.pt and detector.pt tell: each holds the params it was made with. knn_k and
    pick_by_validation change no shape, so only this check can catch them. All before any pass."""
    monkeypatch.setattr("anomem.predict.freeze", _no_pass)
    root, _ = scored_repo
    params = yaml.safe_load((root / "params.yaml").read_text())
    params[group][key] = value
    (tmp_path / "other.yaml").write_text(yaml.safe_dump(params))
    with pytest.raises(ParamsError, match=message):
        PairScorer(load_params(tmp_path / "other.yaml"), CLS, SETTING, SEED, make_runtime("cpu", 1, "fp32"), root=root)


def test_a_pair_that_never_ran_names_the_stage_to_run(scored_repo, tmp_path):
    root, env = scored_repo
    images = str(root / "data/prepared/test_images.npy")
    result = score_cli(tmp_path, env, images, "--cls", "0", "--setting", "unbalanced", "--project", str(root))
    assert result.returncode == 2
    assert (
        f"{root}/data/models/0-unbalanced-0/model.pt: missing; run `dvc repro train_contrastive_memory@0-unbalanced-0` first"
        in result.stderr
    )
    elsewhere = score_cli(tmp_path, env, images, "--cls", "0", "--setting", "one_class", "--project", str(root), "--out", "s.csv")
    assert ok(elsewhere) and len((tmp_path / "s.csv").read_text().splitlines()) == 301  # a header and the 300 test images


def test_read_images_checks_its_input(tmp_path):
    gray = np.arange(2 * 5 * 5, dtype=np.uint8).reshape(2, 5, 5)
    np.save(tmp_path / "gray.npy", gray)
    images, names, _ = read_images(tmp_path / "gray.npy")
    assert images.shape == (2, 5, 5, 3) and np.array_equal(images[..., 2], gray) and names == ["0", "1"]
    np.save(tmp_path / "chw.npy", np.zeros((2, 3, 5, 5), np.uint8))
    with pytest.raises(DataError, match="channels-first"):
        read_images(tmp_path / "chw.npy")
    np.save(tmp_path / "float.npy", np.zeros((2, 5, 5, 3), np.float32))
    with pytest.raises(DataError, match="must be uint8"):
        read_images(tmp_path / "float.npy")
    np.savez(tmp_path / "other.npz", x=np.zeros((2, 5, 5, 3), np.uint8))
    with pytest.raises(DataError, match=r"lacks an array 'images'; has \['x'\]"):
        read_images(tmp_path / "other.npz")
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match="no image files here"):
        read_images(tmp_path / "empty")
    (tmp_path / "mixed").mkdir()
    Image.fromarray(np.zeros((5, 5, 3), np.uint8)).save(tmp_path / "mixed/a.png")
    Image.fromarray(np.zeros((6, 5), np.uint8)).save(tmp_path / "mixed/b.png")
    with pytest.raises(DataError, match="differ in size"):
        read_images(tmp_path / "mixed")
    resized, _, _ = read_images(tmp_path / "mixed", resize_to=(8, 7))
    assert resized.shape == (2, 8, 7, 3)
    (tmp_path / "cut.npy").write_bytes((tmp_path / "gray.npy").read_bytes()[:60])
    with pytest.raises(DataError, match="cut.npy: not a readable numpy file"):
        read_images(tmp_path / "cut.npy")
    with pytest.raises(DataError, match="missing"):
        read_images(tmp_path / "absent.npz")


@pytest.fixture(scope="module")
def unrecorded_repo(scored_repo, tmp_path_factory) -> Path:
    """The scored repo with a detector.pt as saved before it recorded its params: only the shapes of the files can tell."""
    root = tmp_path_factory.mktemp("unrecorded")
    for part in ("params.yaml", "data"):
        (shutil.copytree if (scored_repo[0] / part).is_dir() else shutil.copy)(scored_repo[0] / part, root / part)
    detector_file = root / layout.detector_file(PAIR_ID)
    state = torch.load(detector_file, weights_only=False)
    del state["params"]
    torch.save(state, detector_file)
    return root


@pytest.mark.parametrize(
    "group, key, value, message",
    [
        ("detector", "channels", 8, "detector.pt does not fit the network these params build"),
        ("contrastive", "rotation_weight", 0.0, "model.pt does not fit the network these params build"),
        ("detector", "knn_turns", False, "holds 4 views of 32 features, but these params make 1 of 32"),
    ],
)
def test_params_whose_outputs_do_not_fit_are_refused_before_any_pass(unrecorded_repo, tmp_path, monkeypatch, group, key, value, message):
    """Without dvc.lock or recorded params, the files themselves tell: a detector or network of another shape, a kNN
    bank of other views."""
    with monkeypatch.context() as before_any_pass:
        before_any_pass.setattr("anomem.predict.freeze", _no_pass)
        _refused_in(unrecorded_repo, tmp_path, group, key, value, message)
    same = load_params(unrecorded_repo / "params.yaml")
    assert PairScorer(same, CLS, SETTING, SEED, make_runtime("cpu", 1, "fp32"), root=unrecorded_repo).parts


def _no_pass(*args, **kwargs):
    raise AssertionError("a pass through the network before the checks")


def _refused_in(root: Path, tmp_path: Path, group: str, key: str, value, message: str) -> None:
    params = yaml.safe_load((root / "params.yaml").read_text())
    params[group][key] = value
    (tmp_path / "other.yaml").write_text(yaml.safe_dump(params))
    with pytest.raises(ParamsError, match=message):
        PairScorer(load_params(tmp_path / "other.yaml"), CLS, SETTING, SEED, make_runtime("cpu", 1, "fp32"), root=root)


def test_only_the_params_stage_1_reads_must_match_the_saved_network(tmp_path):
    """memory.deviation_path is read by extraction, not by stage 1: a changed value re-runs extraction alone and
    leaves model.pt as it was, so model.pt's copy of it must not be compared (per dvc.yaml)."""
    params = load_params(REPO / "profiles" / "smoke.yaml")
    saved = {"model_params": params.model.model_dump(), "memory_params": {**params.memory.model_dump(), "deviation_path": "memory"}}
    _require_trained_with(params, saved, tmp_path / "model.pt", REPO / "dvc.yaml")
    with pytest.raises(ParamsError, match="memory.deviation_path: 'memory' there, 'plain' here"):
        _require_trained_with(params, saved, tmp_path / "model.pt", tmp_path / "no-dvc.yaml")  # without dvc.yaml, all of them
    saved["memory_params"]["beta"] = 3.0
    with pytest.raises(ParamsError, match=r"memory.beta: 3.0 there, 10.0 here"):
        _require_trained_with(params, saved, tmp_path / "model.pt", REPO / "dvc.yaml")


def test_only_the_params_extraction_and_the_detector_read_must_match_the_saved_detector(tmp_path):
    """Per dvc.yaml, a detector is compared on what extract_deviation_maps and train_detector read: train.lr, read by
    stage 1 alone, does not change how images are scored. A detector saved without its params passes."""
    params = load_params(REPO / "profiles" / "smoke.yaml")
    recorded = flatten(params.to_dict())
    detector_file = tmp_path / "detector.pt"
    _require_fitted_with(params, {"params": {**recorded, "train.lr": 3.0}}, detector_file, REPO / "dvc.yaml")
    _require_fitted_with(params, {}, detector_file, REPO / "dvc.yaml")
    # Where the pair ran is not what it computed; a key these params no longer have is not compared.
    elsewhere = {**recorded, "train.device": "cuda", "train.num_threads": 16, "detector.renamed_since": 1}
    _require_fitted_with(params, {"params": elsewhere}, detector_file, REPO / "dvc.yaml")
    _require_fitted_with(params, {"params": elsewhere}, detector_file, tmp_path / "no-dvc.yaml")
    refused = (("detector.knn_k", 9), ("detector.bn_recompute", not params.detector.bn_recompute), ("memory.deviation_path", "memory"))
    for key, other in refused:  # memory.deviation_path: read by extraction (per dvc.yaml), outside the detector group
        with pytest.raises(ParamsError, match=re.escape(f"detector.pt was fitted with other params than these ({key}: {other!r} there")):
            _require_fitted_with(params, {"params": {**recorded, key: other}}, detector_file, REPO / "dvc.yaml")


def test_read_images_refuses_what_it_cannot_read_faithfully(tmp_path):
    np.savez(tmp_path / "named.npz", images=np.zeros((2, 5, 5, 3), np.uint8), labels=np.array(["cat", "dog"]))
    with pytest.raises(DataError, match="'labels' must be 2 integer class indices"):
        read_images(tmp_path / "named.npz")
    Image.fromarray(np.full((5, 5), 40000, np.uint16)).save(tmp_path / "deep.png")
    with pytest.raises(DataError, match="deep.png: a I;16 image \\(16-bit\\); convert it to 8 bits per channel first"):
        read_images(tmp_path / "deep.png")
    with pytest.raises(DataError, match="absent.png: missing"):
        read_images(tmp_path / "absent.png")
    with open(tmp_path / "UPPER.NPY", "wb") as f:  # np.save would append ".npy" to the name
        np.save(f, np.zeros((1, 5, 5, 3), np.uint8))
    assert read_images(tmp_path / "UPPER.NPY")[0].shape == (1, 5, 5, 3)
    np.save(tmp_path / "none.npy", np.zeros((0, 5, 5, 3), np.uint8))
    with pytest.raises(DataError, match="holds no images"):
        read_images(tmp_path / "none.npy")
