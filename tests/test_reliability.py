"""Reliability, on a tiny real-data repo: a killed training resumes to the same result, runs repeat
byte for byte, a full disk and a dead MLflow server end in clear errors, and nothing is lost."""

from __future__ import annotations

import errno
import importlib.util
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

from anomem import layout
from anomem.errors import DiskFullError
from anomem.params import load_params
from conftest import REPO, cifar10_dir

PAIR = ("0", "one_class", "0")
PAIR_ID = "-".join(PAIR)
TINY = {
    "model": {"arch": "resnet20", "width": 8},
    "memory": {"scales": [2, 3], "size": 8},
    "train": {
        "epochs": 12,
        "batch_size": 30,
        "known_batch_size": 4,
        "lr": 0.1,
        "warmup_epochs": 1,
        "eval_batch_size": 128,
        "num_threads": 1,
    },
    "detector": {"epochs": 3, "batch_size": 32, "known_batch_size": 4},
    "experiment": {"classes": [0], "settings": ["one_class", "unbalanced"], "seeds": [0]},
    "tracking": {"enabled": False},
}
STAGES = ("train_contrastive_memory", "extract_deviation_maps", "train_detector")


@pytest.fixture(scope="module")
def tiny_data(tmp_path_factory, cifar_train_slice) -> Path:
    """cifar10_{train,test}.npz with 100 real training and 30 real test images per class."""
    folder = tmp_path_factory.mktemp("cifar-tiny")
    images, labels = cifar_train_slice
    np.savez(folder / "cifar10_train.npz", images=images, labels=labels)
    with np.load(cifar10_dir() / "cifar10_test.npz") as f:
        idx = np.concatenate([np.flatnonzero(f["labels"] == c)[:30] for c in range(10)])
        np.savez(folder / "cifar10_test.npz", images=f["images"][idx], labels=f["labels"][idx])
    return folder


def make_repo(root: Path, data: Path, overrides: dict | None = None) -> tuple[Path, dict]:
    root.mkdir(parents=True, exist_ok=True)
    shutil.copytree(REPO / "profiles", root / "profiles", dirs_exist_ok=True)  # evaluate compares with the default profile
    params = yaml.safe_load((REPO / "profiles" / "smoke.yaml").read_text())
    for group, values in {**TINY, **(overrides or {})}.items():
        params[group].update(values)
    (root / "params.yaml").write_text(yaml.safe_dump(params))
    env = {k: v for k, v in os.environ.items() if not k.startswith(("MLFLOW_TRACKING", "DVC_"))}
    env.update(ANOMEM_CIFAR10_DIR=str(data), MLFLOW_DISABLE_TELEMETRY="true", DVC_ROOT=str(root))
    return root, env


def stage(name: str, root: Path, env: dict, pair: bool = True) -> subprocess.CompletedProcess:
    args = ["--cls", PAIR[0], "--setting", PAIR[1], "--seed", PAIR[2]] if pair else []
    return subprocess.run(
        [sys.executable, str(REPO / "stages" / f"{name}.py"), *args], cwd=root, env=env, capture_output=True, text=True, timeout=600
    )


def ok(result: subprocess.CompletedProcess) -> subprocess.CompletedProcess:
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-3000:]
    return result


def run_pipeline(root: Path, env: dict) -> None:
    ok(stage("prepare_data", root, env, pair=False))
    for name in STAGES:
        ok(stage(name, root, env))
    params = yaml.safe_load((root / "params.yaml").read_text())
    params["experiment"]["settings"] = ["one_class"]  # evaluate only the pair that ran
    (root / "eval.yaml").write_text(yaml.safe_dump(params))
    ok(
        subprocess.run(
            [sys.executable, str(REPO / "stages" / "evaluate.py"), "--params", "eval.yaml"],
            cwd=root,
            env=env,
            capture_output=True,
            text=True,
            timeout=600,
        )
    )


@pytest.fixture(scope="module")
def finished_repo(tmp_path_factory, tiny_data) -> tuple[Path, dict]:
    root, env = make_repo(tmp_path_factory.mktemp("run-a"), tiny_data)
    run_pipeline(root, env)
    return root, env


def test_same_params_and_seed_give_byte_identical_metrics(finished_repo, tmp_path, tiny_data):
    first, _ = finished_repo
    root, env = make_repo(tmp_path / "run-b", tiny_data)
    run_pipeline(root, env)
    assert (root / "reports/metrics.json").read_bytes() == (first / "reports/metrics.json").read_bytes()
    with np.load(root / f"data/scores/{PAIR_ID}/scores.npz") as a, np.load(first / f"data/scores/{PAIR_ID}/scores.npz") as b:
        for key in a.files:
            assert np.array_equal(a[key], b[key]), key


def checkpoints(root: Path) -> list[Path]:
    return sorted((root / f"data/resume/{PAIR_ID}").glob("*.pt"))


def own_checkpoint(root: Path) -> Path:
    """Where the training of PAIR with root's params.yaml keeps its resume point."""
    split = dict(np.load(root / f"data/prepared/splits/{PAIR[0]}-{PAIR[1]}.npz"))
    fp = _load_stage("train_contrastive_memory").fingerprint(load_params(root / "params.yaml"), int(PAIR[2]), split)
    return root / layout.resume_checkpoint(PAIR_ID, fp)


def temp_workspace(root: Path, name: str) -> Path:
    """What `dvc exp run --temp/--queue` runs in: a copy of the project under .dvc/tmp/exps, deleted when the run ends."""
    workspace = root / ".dvc/tmp/exps" / name
    (workspace / "data").mkdir(parents=True)
    shutil.copy(root / "params.yaml", workspace / "params.yaml")
    shutil.copytree(root / "profiles", workspace / "profiles")
    (workspace / "data/prepared").symlink_to(root / "data/prepared")
    return workspace


def test_killed_training_in_a_dvc_temp_workspace_resumes_in_the_next_one(finished_repo, tmp_path, tiny_data):
    """The checkpoint outlives the temp workspace (DVC deletes it, even after a failure), and resuming gives the same model."""
    reference, _ = finished_repo
    root, env = make_repo(tmp_path / "killed", tiny_data)
    ok(stage("prepare_data", root, env, pair=False))
    first = temp_workspace(root, "tmp-first")
    proc = subprocess.Popen(
        [sys.executable, str(REPO / "stages/train_contrastive_memory.py"), "--cls", PAIR[0], "--setting", PAIR[1], "--seed", PAIR[2]],
        cwd=first, env={**env, "DVC_ROOT": str(first)}, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    deadline = time.time() + 300
    while not checkpoints(root) or torch.load(checkpoints(root)[0], weights_only=False)["epoch"] < 2:
        assert proc.poll() is None, "training ended before it could be killed: raise TINY['train']['epochs']"
        assert time.time() < deadline, "no checkpoint within 300 s"
        time.sleep(0.02)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert not (first / f"data/models/{PAIR_ID}/model.pt").exists(), "killed before the end: no final model may exist"
    assert not (first / "data/resume").exists(), "the checkpoint belongs under the project root, not the temp workspace"
    checkpoint = checkpoints(root)[0]
    assert checkpoint == own_checkpoint(root)
    killed_at = torch.load(checkpoint, weights_only=False)["epoch"]
    shutil.rmtree(first)

    second = temp_workspace(root, "tmp-second")
    resumed = ok(stage("train_contrastive_memory", second, {**env, "DVC_ROOT": str(second)}))
    assert f"resuming {PAIR_ID}" in resumed.stdout
    assert not checkpoints(root), "a finished run drops its checkpoint"
    history = yaml.safe_load((second / f"data/models/{PAIR_ID}/history.json").read_text())["history"]
    expected = yaml.safe_load((reference / f"data/models/{PAIR_ID}/history.json").read_text())["history"]
    assert len(history) == len(expected) == TINY["train"]["epochs"] and killed_at < len(history) - 1
    assert [h["loss"] for h in history] == [h["loss"] for h in expected]
    got = torch.load(second / f"data/models/{PAIR_ID}/model.pt", weights_only=False)["model"]
    want = torch.load(reference / f"data/models/{PAIR_ID}/model.pt", weights_only=False)["model"]
    assert all(torch.equal(got[k], want[k]) for k in want)


def test_a_checkpoint_from_other_params_is_neither_resumed_nor_touched(finished_repo, tmp_path, tiny_data):
    root, env = make_repo(tmp_path / "other", tiny_data, {"train": {**TINY["train"], "epochs": 2}})
    ok(stage("prepare_data", root, env, pair=False))
    other = root / f"data/resume/{PAIR_ID}/0123456789abcdef.pt"  # a queued experiment's, say
    other.parent.mkdir(parents=True)
    torch.save({"fingerprint": "made-with-other-params", "epoch": 0}, other)
    stale = other.parent / f".tmp-{own_checkpoint(root).name}.x1y2"  # this run's save, cut short by a kill
    stale.write_bytes(b"half")
    result = ok(stage("train_contrastive_memory", root, env))
    assert "ignoring 0123456789abcdef.pt" in result.stdout and "resuming" not in result.stdout
    assert checkpoints(root) == [other], "another run's checkpoint stays; this run's is dropped when it finishes"
    assert not stale.exists()


def test_unrelated_train_params_keep_a_checkpoint_usable(finished_repo):
    root, _ = finished_repo
    fingerprint = _load_stage("train_contrastive_memory").fingerprint
    params = load_params(root / "params.yaml")
    split = dict(np.load(root / f"data/prepared/splits/{PAIR[0]}-{PAIR[1]}.npz"))

    def with_train(**changes):
        return fingerprint(params.model_copy(update={"train": params.train.model_copy(update=changes)}), 0, split)

    same = fingerprint(params, 0, split)
    assert with_train(eval_batch_size=7, checkpoint_every_epochs=3) == same
    assert with_train(lr=0.2) != same and with_train(epochs=13) != same and fingerprint(params, 1, split) != same


def test_an_unreadable_checkpoint_is_ignored_and_training_starts_fresh(finished_repo, tmp_path, tiny_data):
    root, env = make_repo(tmp_path / "corrupt", tiny_data, {"train": {**TINY["train"], "epochs": 2}})
    ok(stage("prepare_data", root, env, pair=False))
    checkpoint = own_checkpoint(root)
    checkpoint.parent.mkdir(parents=True)
    checkpoint.write_bytes(b"PK\x03\x04 cut short by a crash")
    result = ok(stage("train_contrastive_memory", root, env))
    assert result.stdout.count(f"{checkpoint}: not a readable torch file") == 1 and result.stdout.count(str(checkpoint)) == 1
    assert "ignoring it: training starts from epoch 1" in result.stdout
    assert "resuming" not in result.stdout and "other params" not in result.stdout and "re-run" not in result.stdout
    assert (root / f"data/models/{PAIR_ID}/model.pt").exists() and not checkpoint.exists()


@pytest.mark.parametrize(
    "damage, made_by",
    [
        ("data/prepared/splits/0-one_class.npz", "prepare_data"),
        (f"data/deviation/{PAIR_ID}/test_s2.npy", f"extract_deviation_maps@{PAIR_ID}"),
    ],
)
@pytest.mark.parametrize("how", ["truncated", "missing"])
def test_a_damaged_input_file_is_a_clear_error_naming_it(finished_repo, tmp_path, damage, made_by, how):
    root, env = finished_repo
    copy = tmp_path / "copy"
    shutil.copytree(root / "data/prepared", copy / "data/prepared")
    shutil.copytree(root / f"data/deviation/{PAIR_ID}", copy / f"data/deviation/{PAIR_ID}")
    shutil.copy(root / "params.yaml", copy / "params.yaml")
    target = copy / damage
    if how == "missing":
        target.unlink()
    else:
        target.write_bytes(target.read_bytes()[:200])
    result = stage("train_detector", copy, {**env, "DVC_ROOT": str(copy)})
    assert result.returncode != 0 and "Traceback" not in result.stderr, result.stderr[-2000:]
    assert damage in result.stderr and made_by in result.stderr
    assert ("missing" if how == "missing" else "not a readable numpy file") in result.stderr


def _load_stage(name: str):
    spec = importlib.util.spec_from_file_location(f"stage_{name}", REPO / "stages" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_full_disk_during_extraction_is_a_clear_error(finished_repo, monkeypatch):
    root, _ = finished_repo
    extract = _load_stage("extract_deviation_maps")
    monkeypatch.chdir(root)
    monkeypatch.setattr(sys, "argv", ["extract", "--cls", PAIR[0], "--setting", PAIR[1], "--seed", PAIR[2]])
    out = root / f"data/deviation/{PAIR_ID}"
    before = {p.name: p.stat().st_mtime_ns for p in out.iterdir()}

    def no_space(*args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(np, "save", no_space)
    with pytest.raises(DiskFullError, match=r"disk full while writing .*deviation"):
        extract.main()
    after = {p.name: p.stat().st_mtime_ns for p in out.iterdir()}
    assert after == before, "a failed write must leave the earlier files as they were and no temporaries"


def test_too_little_free_disk_fails_before_extraction_starts(finished_repo, monkeypatch):
    root, _ = finished_repo
    extract = _load_stage("extract_deviation_maps")
    monkeypatch.chdir(root)
    monkeypatch.setattr(sys, "argv", ["extract", "--cls", PAIR[0], "--setting", PAIR[1], "--seed", PAIR[2]])
    monkeypatch.setattr(shutil, "disk_usage", lambda path: shutil._ntuple_diskusage(10**12, 10**12 - 1000, 1000))
    with pytest.raises(DiskFullError, match="not enough disk for the deviation maps"):
        extract.main()


@pytest.mark.parametrize("go_on", [False, True])
def test_mlflow_down(finished_repo, go_on):
    root, env = finished_repo
    params = yaml.safe_load((root / "eval.yaml").read_text())
    params["tracking"].update(enabled=True, retries=1, continue_on_failure=go_on)
    (root / "down.yaml").write_text(yaml.safe_dump(params))
    (root / "reports/metrics.json").unlink(missing_ok=True)
    env = {**env, "MLFLOW_TRACKING_URI": "http://127.0.0.1:9", "MLFLOW_HTTP_REQUEST_MAX_RETRIES": "0", "MLFLOW_HTTP_REQUEST_TIMEOUT": "2"}
    result = subprocess.run(
        [sys.executable, str(REPO / "stages/evaluate.py"), "--params", "down.yaml"],
        cwd=root,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert "Traceback" not in result.stderr
    if go_on:
        assert result.returncode == 0 and "tracking disabled" in result.stderr
        assert (root / "reports/metrics.json").exists(), "metrics are written even when MLflow is down"
    else:
        assert result.returncode == 2 and "MLflow store http://127.0.0.1:9" in result.stderr


def test_a_bad_class_index_on_the_command_line_is_a_clear_error(finished_repo):
    root, env = finished_repo
    result = subprocess.run(
        [sys.executable, str(REPO / "stages/train_contrastive_memory.py"), "--cls", "10", "--setting", "one_class", "--seed", "0"],
        cwd=root,
        env=env,
        capture_output=True,
        text=True,
    )
    assert result.returncode == 2 and "--cls 10" in result.stderr and "0..9" in result.stderr and "Traceback" not in result.stderr
