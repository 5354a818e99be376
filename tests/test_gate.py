"""The regression gate passes on an unchanged result and fails, with its table row, on a planted regression."""

from __future__ import annotations

import copy
import json
import subprocess
import sys

import pytest

from anomem.gate import compare, derive_tolerances


def metrics_with_seeds(auroc: float = 0.70, seed_std: float = 0.01) -> dict:
    entry = {"auroc": auroc, "auroc_seed_std": seed_std, "aupr": 0.9, "fpr95": 0.8}
    classes = {f"{c}_x{c}": {s: dict(entry) for s in ("detector", "knn")} for c in range(4)}
    mean = {s: {"auroc": auroc, "auroc_class_std": 0.02, "aupr": 0.9, "fpr95": 0.8} for s in ("detector", "knn")}
    return {"classes": {"one_class": classes}, "mean": {"one_class": mean}}


def test_tolerances_follow_the_seed_spread():
    tol = derive_tolerances(metrics_with_seeds(seed_std=0.01), k=3.0, floor=0.001)
    assert tol["classes.one_class.0_x0.detector.auroc"] == pytest.approx(0.03)
    assert tol["mean.one_class.detector.auroc"] == pytest.approx(3 * 0.01 / 2)  # std of a mean of 4 classes
    assert derive_tolerances(metrics_with_seeds(seed_std=0.0), floor=0.005)["mean.one_class.knn.auroc"] == 0.005


def test_derive_needs_several_seeds():
    m = metrics_with_seeds()
    del m["classes"]["one_class"]["0_x0"]["detector"]["auroc_seed_std"]
    with pytest.raises(ValueError, match="2 or more seeds"):
        derive_tolerances(m)


def test_compare_verdicts():
    base = metrics_with_seeds(0.70)
    tol = derive_tolerances(base)
    assert all(r.verdict == "ok" for r in compare(base, base, tol))
    worse = copy.deepcopy(base)
    worse["mean"]["one_class"]["detector"]["auroc"] = 0.60
    rows = {r.metric: r for r in compare(worse, base, tol)}
    assert rows["mean.one_class.detector.auroc"].verdict == "REGRESSION"
    assert rows["mean.one_class.knn.auroc"].verdict == "ok"
    better = copy.deepcopy(base)
    better["mean"]["one_class"]["detector"]["auroc"] = 0.80
    assert all(r.verdict == "ok" for r in compare(better, base, tol))
    del worse["mean"]["one_class"]["knn"]
    assert {r.metric: r for r in compare(worse, base, tol)}["mean.one_class.knn.auroc"].verdict == "MISSING"


def test_fpr_is_lower_is_better():
    base = metrics_with_seeds()
    worse = copy.deepcopy(base)
    worse["mean"]["one_class"]["knn"]["fpr95"] = 0.95
    rows = compare(worse, base, {"mean.one_class.knn.fpr95": 0.02})
    assert rows[0].verdict == "REGRESSION"


def gate(tmp_path, *args):
    return subprocess.run([sys.executable, "-m", "anomem.cli", "gate", *args], cwd=tmp_path, capture_output=True, text=True)


def test_cli_gate_fails_on_a_planted_regression(tmp_path):
    (tmp_path / "good.json").write_text(json.dumps(metrics_with_seeds(0.70)))
    assert gate(tmp_path, "--derive", "--metrics", "good.json", "--baseline", "base").returncode == 0
    passed = gate(tmp_path, "--metrics", "good.json", "--baseline", "base")
    assert passed.returncode == 0 and "0 failed" in passed.stdout
    planted = metrics_with_seeds(0.70)
    planted["mean"]["one_class"]["detector"]["auroc"] = 0.55
    (tmp_path / "worse.json").write_text(json.dumps(planted))
    failed = gate(tmp_path, "--metrics", "worse.json", "--baseline", "base")
    assert failed.returncode == 1
    row = next(line for line in failed.stdout.splitlines() if line.startswith("mean.one_class.detector.auroc"))
    assert row.split() == ["mean.one_class.detector.auroc", "0.7000", "0.5500", "-0.1500", "0.0150", "REGRESSION"]
    for word in ("metric", "baseline", "now", "delta", "tolerance", "verdict"):
        assert word in failed.stdout.splitlines()[0]


def test_cli_gate_without_a_baseline_is_a_clear_error(tmp_path):
    (tmp_path / "m.json").write_text(json.dumps(metrics_with_seeds()))
    result = gate(tmp_path, "--metrics", "m.json", "--baseline", "nothing")
    assert result.returncode == 2 and "anomem gate --derive" in result.stderr and "Traceback" not in result.stderr
