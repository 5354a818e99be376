"""End to end, as a user would: `dvc repro` on the smoke profile, on real CIFAR-10, in a fresh copy of the repo."""

from __future__ import annotations

import json
import os
import shutil
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from conftest import REPO, cifar10_dir

pytestmark = pytest.mark.e2e

COPIED = ("stages", "src", "profiles", "dvc.yaml", "pyproject.toml")
SCORES = ("detector", "deviation", "knn")


def run(cmd: list[str], cwd: Path, env: dict, timeout: int = 1500) -> subprocess.CompletedProcess:
    return subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)


@pytest.fixture(scope="module")
def smoke_repo(tmp_path_factory) -> tuple[Path, dict, subprocess.CompletedProcess]:
    root = tmp_path_factory.mktemp("repo")
    for name in COPIED:
        src = REPO / name
        (shutil.copytree if src.is_dir() else shutil.copy)(src, root / name)
    shutil.copy(REPO / "profiles" / "smoke.yaml", root / "params.yaml")
    env = {k: v for k, v in os.environ.items() if not k.startswith(("MLFLOW_TRACKING", "DVC_"))}
    env.update(
        ANOMEM_CIFAR10_DIR=str(cifar10_dir()),
        PATH=f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}",
        MLFLOW_DISABLE_TELEMETRY="true",
    )
    for cmd in (["git", "init", "-q"], ["dvc", "init", "-q"], ["dvc", "config", "core.analytics", "false"], ["dvc", "config", "cache.type", "hardlink,symlink"]):
        assert run(cmd, root, env).returncode == 0, cmd
    result = run(["dvc", "repro"], root, env)
    return root, env, result


def test_repro_succeeds(smoke_repo):
    root, _, result = smoke_repo
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]


def test_every_output_exists(smoke_repo):
    root, _, _ = smoke_repo
    params = yaml.safe_load((root / "params.yaml").read_text())
    e = params["experiment"]
    for split in ("train", "test"):
        assert (root / f"data/prepared/{split}_images.npy").stat().st_size > 0
    for cls in e["classes"]:
        for setting in e["settings"]:
            assert (root / f"data/prepared/splits/{cls}-{setting}.npz").exists()
            for seed in e["seeds"]:
                pair = f"{cls}-{setting}-{seed}"
                assert (root / f"data/models/{pair}/model.pt").exists()
                assert (root / f"data/deviation/{pair}/test_s{params['memory']['scales'][0]}.npy").exists()
                assert (root / f"data/scores/{pair}/scores.npz").exists()
                assert not (root / f"data/resume/{pair}/last.pt").exists(), "a finished run must drop its resume checkpoint"
    for setting in e["settings"]:
        for kind in ("roc", "histograms", "heatmaps"):
            assert (root / f"reports/plots/{kind}_{setting}.png").stat().st_size > 1000
    assert "| **mean** |" in (root / "reports/summary.md").read_text()
    assert not list(root.rglob(".tmp-*")), "no temporary file may survive a run"


def test_metrics_cover_every_pair_and_beat_a_broken_model(smoke_repo):
    root, _, _ = smoke_repo
    params = yaml.safe_load((root / "params.yaml").read_text())
    metrics = json.loads((root / "reports/metrics.json").read_text())
    names = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]
    for setting in params["experiment"]["settings"]:
        for cls in params["experiment"]["classes"]:
            entry = metrics["classes"][setting][f"{cls}_{names[cls]}"]
            for score in SCORES:
                assert set(entry[score]) >= {"auroc", "aupr", "fpr95"}
                assert 0.0 <= entry[score]["auroc"] <= 1.0
    # A broken model (constant or random scores) sits at 0.5 on 10,000 test images (std ~0.005).
    # One epoch of MACL already puts the best reference score clearly above that.
    best = max(metrics["mean"][s][score]["auroc"] for s in metrics["mean"] for score in SCORES)
    assert best > 0.55, metrics["mean"]


def test_mlflow_holds_the_runs(smoke_repo):
    root, _, _ = smoke_repo
    db = root / "mlflow.db"
    assert db.exists(), "the MLflow store must be a sqlite file at the repo root"
    with sqlite3.connect(db) as con:
        tags = con.execute("select run_uuid, key, value from tags").fetchall()
        metric_names = {r[0] for r in con.execute("select distinct key from metrics")}
    levels: dict[str, str] = {}
    stages: list[str] = []
    parents: dict[str, str] = {}
    for run_id, key, value in tags:
        if key == "anomem.level":
            levels[run_id] = value
        elif key == "anomem.stage":
            stages.append(value)
        elif key == "mlflow.parentRunId":
            parents[run_id] = value
    n_pairs = 4
    assert sorted(levels.values()).count("experiment") == 1
    assert sorted(levels.values()).count("pair") == n_pairs
    for stage in ("train_contrastive_memory", "extract_deviation_maps", "train_detector"):
        assert stages.count(stage) == n_pairs, stage
    assert stages.count("prepare_data") == 1 and stages.count("evaluate") == 1
    for run_id, level in levels.items():
        if level == "stage":
            assert levels[parents[run_id]] in ("pair", "experiment")
    assert {"loss", "memory_s2_items_used", "memory_s2_attention_entropy", "train_loss"} <= metric_names


def test_second_repro_is_fully_cached(smoke_repo):
    root, env, _ = smoke_repo
    status = run(["dvc", "status", "--json"], root, env)
    assert status.returncode == 0 and json.loads(status.stdout or "{}") == {}, status.stdout
