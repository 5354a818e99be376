"""End to end, as a user would: `dvc repro` on the smoke profile, on real CIFAR-10, in a fresh copy of the repo."""

from __future__ import annotations

import json
import os
import shutil
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import yaml

from conftest import REPO, cifar10_dir

pytestmark = pytest.mark.e2e

COPIED = ("stages", "src", "profiles", "dvc.yaml", "pyproject.toml", ".gitignore")
SMOKE_BASELINE = REPO / "reports" / "baseline" / "smoke"
GIT_IDENTITY = {
    "GIT_AUTHOR_NAME": "ci",
    "GIT_AUTHOR_EMAIL": "ci@example.com",
    "GIT_COMMITTER_NAME": "ci",
    "GIT_COMMITTER_EMAIL": "ci@example.com",
}


def run(cmd: list[str], cwd: Path, env: dict, timeout: int = 1500) -> subprocess.CompletedProcess:
    return subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)


def make_repo(root: Path, params: dict) -> tuple[Path, dict, subprocess.CompletedProcess]:
    """A fresh copy of the code with `params` as params.yaml, git and DVC initialised, after `dvc repro`."""
    for name in COPIED:
        src = REPO / name
        (shutil.copytree if src.is_dir() else shutil.copy)(src, root / name)
    (root / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    env = {k: v for k, v in os.environ.items() if not k.startswith(("MLFLOW_TRACKING", "DVC_"))}
    env.update(
        GIT_IDENTITY,
        ANOMEM_CIFAR10_DIR=str(cifar10_dir()),
        PATH=f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}",
        MLFLOW_DISABLE_TELEMETRY="true",
    )
    for cmd in (
        ["git", "init", "-q"],
        ["dvc", "init", "-q"],
        ["dvc", "config", "core.analytics", "false"],
        ["dvc", "config", "cache.type", "hardlink,symlink"],
    ):
        assert run(cmd, root, env).returncode == 0, cmd
    return root, env, run(["dvc", "repro"], root, env)


def smoke_params() -> dict:
    return yaml.safe_load((REPO / "profiles" / "smoke.yaml").read_text())


@pytest.fixture(scope="module")
def smoke_repo(tmp_path_factory) -> tuple[Path, dict, subprocess.CompletedProcess]:
    return make_repo(tmp_path_factory.mktemp("repo"), smoke_params())


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
                assert not list((root / f"data/resume/{pair}").glob("*.pt")), "a finished run must drop its resume checkpoint"
    for setting in e["settings"]:
        for kind in ("roc", "histograms", "heatmaps"):
            assert (root / f"reports/plots/{kind}_{setting}.png").stat().st_size > 1000
    assert "| **mean** |" in (root / "reports/summary.md").read_text()
    assert not list(root.rglob(".tmp-*")), "no temporary file may survive a run"


def test_combined_sums_what_validation_allows(smoke_repo):
    root, _, _ = smoke_repo
    params = yaml.safe_load((root / "params.yaml").read_text())
    listed = tuple(params["detector"]["combine"])
    for cls in params["experiment"]["classes"]:
        with np.load(root / f"data/scores/{cls}-one_class-0/scores.npz") as f:
            assert tuple(f["combined_parts"]) == listed, "one_class has no labelled anomalies to pick with: all are summed"
        with np.load(root / f"data/scores/{cls}-unbalanced-0/scores.npz") as f:
            picked = tuple(f["combined_parts"])
            assert picked and set(picked) <= set(listed)
    summary = (root / "reports/summary.md").read_text()
    assert "## What `combined` sums" in summary and f"- one_class: {' + '.join(listed)}, every class" in summary


def test_score_repeats_the_pipeline_and_refuses_params_dvc_lock_did_not_run(smoke_repo, tmp_path):
    """`anomem score` on an unbalanced pair (whose `combined` is the validation pick) gives the test split's stored
    scores; params that differ from what dvc.lock recorded for the pair are refused, naming the key."""
    root, env, _ = smoke_repo
    params = yaml.safe_load((root / "params.yaml").read_text())
    cls = params["experiment"]["classes"][0]
    split = np.load(root / f"data/prepared/splits/{cls}-unbalanced.npz")
    np.save(tmp_path / "test.npy", np.load(root / "data/prepared/test_images.npy")[split["test"]])
    args = [sys.executable, "-m", "anomem.cli", "score", str(tmp_path / "test.npy"), "--cls", str(cls), "--setting", "unbalanced"]
    done = run([*args, "--out", str(tmp_path / "s.csv")], root, env)
    assert done.returncode == 0, done.stderr[-3000:]
    with np.load(root / f"data/scores/{cls}-unbalanced-0/scores.npz") as stored:
        assert np.array_equal(np.loadtxt(tmp_path / "s.csv", delimiter=",", skiprows=1, usecols=1), stored["score_combined"])
    k = params["detector"]["knn_k"]
    params["detector"]["knn_k"] = k + 2  # changes only the kNN score, which no saved file would notice
    (tmp_path / "edited.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    refused = run([*args, "--params", str(tmp_path / "edited.yaml")], root, env)
    assert refused.returncode == 2 and f"records other params for {cls}-unbalanced-0's outputs" in refused.stderr
    assert f"detector.knn_k: {k} there, {k + 2} here" in refused.stderr

    # Outputs that are not those dvc.lock recorded (a `git pull` without `dvc pull`, say) are refused too.
    history = root / f"data/scores/{cls}-unbalanced-0/history.json"
    text = history.read_text()
    history.unlink()  # a new file, not a write through DVC's hard link into its cache
    history.write_text(text.replace("{", '{"edited": 1, ', 1))
    try:
        stale = run(args, root, env)
        assert stale.returncode == 2 and f"the outputs of train_detector@{cls}-unbalanced-0 in . are not those" in stale.stderr
    finally:
        assert run(["dvc", "checkout", "--force", f"train_detector@{cls}-unbalanced-0"], root, env).returncode == 0
    assert history.read_text() == text


def test_metrics_cover_every_pair_and_beat_a_broken_model(smoke_repo):
    root, _, _ = smoke_repo
    params = yaml.safe_load((root / "params.yaml").read_text())
    metrics = json.loads((root / "reports/metrics.json").read_text())
    names = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]
    for setting in params["experiment"]["settings"]:
        for cls in params["experiment"]["classes"]:
            entry = metrics["classes"][setting][f"{cls}_{names[cls]}"]
            assert set(entry) == {"combined", "detector", "rotation", "deviation", "knn"}, "the smoke profile scores with everything"
            for score in entry:
                assert set(entry[score]) >= {"auroc", "aupr", "fpr95"}
                assert 0.0 <= entry[score]["auroc"] <= 1.0
    # A broken model (constant or random scores) sits at 0.5 on 10,000 test images (std ~0.005).
    # One epoch of MACL already puts the best reference score clearly above that.
    best = max(metrics["mean"][s][score]["auroc"] for s in metrics["mean"] for score in metrics["mean"][s])
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


def test_gate_passes_against_the_committed_smoke_baseline(smoke_repo):
    """CI's regression gate: this run's metrics against reports/baseline/smoke, within its seed-derived tolerances."""
    root, env, _ = smoke_repo
    gate = run(["anomem", "gate", "--metrics", str(root / "reports/metrics.json"), "--baseline", str(SMOKE_BASELINE)], root, env)
    print(gate.stdout)
    assert gate.returncode == 0, gate.stdout + gate.stderr
    assert "REGRESSION" not in gate.stdout and "MISSING" not in gate.stdout


@pytest.fixture(scope="module")
def committed_repo(tmp_path_factory):
    """A one-pair smoke repo (airplane, one_class) after `dvc repro` and a git commit: what `dvc exp` starts from."""
    params = smoke_params()
    params["experiment"].update(classes=[0], settings=["one_class"])
    root, env, result = make_repo(tmp_path_factory.mktemp("sweep"), params)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    for cmd in (["git", "add", "-A"], ["git", "commit", "-q", "-m", "smoke baseline"]):
        done = run(cmd, root, env)
        assert done.returncode == 0, done.stdout + done.stderr
    return root, env


def _exp_rows(root: Path, env: dict) -> list[dict]:
    shown = run(["dvc", "exp", "show", "--json"], root, env)
    assert shown.returncode == 0, shown.stderr
    rows = []
    for commit in json.loads(shown.stdout):
        rows.append(commit)
        for exp in commit.get("experiments") or []:
            rows += exp.get("revs", [])
    return rows


def _mean_auroc(row: dict, setting: str, score: str) -> float | None:
    data = row.get("data") or {}
    metrics = (data.get("metrics") or {}).get("reports/metrics.json", {}).get("data", {})
    return metrics.get("mean", {}).get(setting, {}).get(score, {}).get("auroc")


def _param(row: dict, group: str, key: str):
    return (row.get("data") or {}).get("params", {}).get("params.yaml", {}).get("data", {}).get(group, {}).get(key)


def test_exp_run_sweeps_one_param_and_exp_show_has_its_metrics(committed_repo):
    root, env = committed_repo
    done = run(["dvc", "exp", "run", "-n", "size16", "-S", "memory.size=16"], root, env)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert "Stage 'prepare_data' didn't change, skipping" in done.stdout, "a memory sweep must not prepare the data again"
    rows = _exp_rows(root, env)
    sized = [r for r in rows if (r.get("name") == "size16" or (r.get("data") or {}).get("name") == "size16")]
    assert sized, [r.get("name") for r in rows]
    assert _param(sized[0], "memory", "size") == 16
    base = next(r for r in rows if _param(r, "memory", "size") == 32)
    ours, theirs = _mean_auroc(sized[0], "one_class", "combined"), _mean_auroc(base, "one_class", "combined")
    assert ours is not None and theirs is not None and 0 < ours < 1
    assert _mean_auroc(sized[0], "one_class", "detector") != _mean_auroc(base, "one_class", "detector")
    csv = run(["dvc", "exp", "show", "--csv", "--only-changed"], root, env)
    assert "mean.one_class.combined.auroc" in csv.stdout.splitlines()[0]


def test_queued_experiments_run_in_parallel_and_both_reach_mlflow(committed_repo):
    root, env = committed_repo
    # Detector-only sweeps, so that the test is quick: two workers re-train the detector and evaluate
    # at the same time, both writing to one sqlite store.
    # det3's lr reaches params.yaml as DVC writes it, 5e-05 (YAML 1.2), which must still read as a float.
    for epochs, extra in ((2, []), (3, ["-S", "detector.lr=0.00005"])):
        queued = run(["dvc", "exp", "run", "--queue", "-n", f"det{epochs}", "-S", f"detector.epochs={epochs}", *extra], root, env)
        assert queued.returncode == 0, queued.stderr
    started = run(["dvc", "queue", "start", "-j", "2"], root, env)
    assert started.returncode == 0, started.stderr
    deadline = time.time() + 900
    while time.time() < deadline:
        status = run(["dvc", "queue", "status"], root, env).stdout
        if "Queued" not in status and "Running" not in status:
            break
        time.sleep(5)
    status = run(["dvc", "queue", "status"], root, env).stdout
    assert status.count("Success") >= 2, status
    logs = "".join(run(["dvc", "queue", "logs", f"det{e}"], root, env).stdout for e in (2, 3))
    assert "database is locked" not in logs.lower(), logs[-3000:]
    names = {r.get("name") or (r.get("data") or {}).get("name") for r in _exp_rows(root, env)}
    assert {"det2", "det3"} <= names
    with sqlite3.connect(root / "mlflow.db") as con:
        keys = dict(con.execute("select run_uuid, value from tags where key = 'anomem.key'").fetchall())
        levels = dict(con.execute("select run_uuid, value from tags where key = 'anomem.level'").fetchall())
        params = dict(con.execute("select run_uuid, value from params where key = 'detector.epochs'").fetchall())
        lrs = dict(con.execute("select run_uuid, value from params where key = 'detector.lr'").fetchall())
    parents = {keys[r]: r for r, level in levels.items() if level == "experiment"}
    assert {"det2", "det3"} <= set(parents), parents  # one experiment run each, to pick and compare in the UI
    assert params.get(parents["det2"]) == "2" and params.get(parents["det3"]) == "3", "experiment runs carry every param"
    assert float(lrs[parents["det3"]]) == 0.00005
