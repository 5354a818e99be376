"""The GPU run's driver: the epochs it picks fit the budget, and a run reports every pair as it finishes."""

from __future__ import annotations

import json

import pytest
from benchmarks import gpu_paper

from anomem import layout
from anomem.params import pair_id


def test_chosen_epochs_fit_the_budget_and_stop_at_the_profiles():
    epochs = gpu_paper.choose_epochs(budget_left_s=400, n_pairs=4, pair_overhead_s=30, epoch_s=0.5, max_epochs=500)
    assert epochs == int((400 / 4 - 30) // (0.5 * gpu_paper.EPOCH_MARGIN))
    assert 4 * (30 + epochs * 0.5 * gpu_paper.EPOCH_MARGIN) <= 400
    assert gpu_paper.choose_epochs(1e6, 4, 30, 0.5, max_epochs=500) == 500
    assert gpu_paper.choose_epochs(100, 4, 30, 0.5, max_epochs=500) == 0


def test_paper_grid_hours_scales_the_measured_epochs_to_the_profiles():
    pairs = [
        {"setting": "one_class", "pair_seconds": 70.0, "epochs": 100, "epoch_seconds": 0.5},
        {"setting": "unbalanced", "pair_seconds": 80.0, "epochs": 100, "epoch_seconds": 0.6},
    ]
    # overheads 20 s and 20 s; at 500 epochs: 270 s and 320 s a pair, 10 classes each
    assert gpu_paper.paper_grid_hours(pairs, profile_epochs=500, n_classes=10) == pytest.approx(10 * (270 + 320) / 3600)


def test_a_run_calibrates_then_reports_every_pair(tmp_path, monkeypatch):
    """The stages are faked (the real ones run in test_e2e); the driver's flow and report are what is tested."""
    calls = []

    def fake_pipeline(params, workdir, seconds):
        assert (workdir / layout.PREPARED).is_symlink()
        (cls,), (setting,), epochs = params["experiment"]["classes"], params["experiment"]["settings"], params["train"]["epochs"]
        calls.append((cls, setting, epochs))
        history = [{"epoch_seconds": 2.0 if e == 0 else 0.5, "images_per_second": 1000.0, "loss": 1.0 / (e + 1)} for e in range(epochs)]
        model_dir = workdir / layout.model_dir(pair_id(cls, setting, 0))
        model_dir.mkdir(parents=True)
        (model_dir / "history.json").write_text(json.dumps({"history": history}))
        seconds["train_contrastive_memory"] = 10 + 0.5 * epochs
        return {"classes": {setting: {f"{cls}_name": {"combined": {"auroc": 0.5 + 0.01 * cls}}}}}

    monkeypatch.setattr(gpu_paper, "run_pipeline", fake_pipeline)
    monkeypatch.setattr(gpu_paper, "scratch_stage", lambda params, workdir: lambda name: (workdir / layout.PREPARED).mkdir(parents=True))
    out = tmp_path / "out"
    argv = ["--classes", "0", "3", "--budget-s", "200", "--out", str(out), "--work", str(tmp_path / "work"), "--git-commit", "abc"]

    assert gpu_paper.main(argv) == 0

    report = json.loads((out / "gpu_paper.json").read_text())
    epochs = report["epochs"]
    assert calls[0] == (0, "one_class", 2) and 0 < epochs <= 500
    assert calls[1:] == [(0, "one_class", epochs), (3, "one_class", epochs), (0, "unbalanced", epochs), (3, "unbalanced", epochs)]
    assert [(p["cls"], p["setting"], p["epochs"]) for p in report["pairs"]] == calls[1:]
    assert report["pairs"][1]["auroc"]["combined"] == pytest.approx(0.53)
    assert report["calibration"]["epoch_seconds"] == 0.5  # the first epoch's start-up left out
    assert report["git_commit"] == "abc" and report["paper_grid_gpu_hours"] > 0


def test_a_budget_with_no_room_fails_after_the_calibration(tmp_path, monkeypatch):
    def slow_pipeline(params, workdir, seconds):
        model_dir = workdir / layout.model_dir(pair_id(0, "one_class", 0))
        model_dir.mkdir(parents=True)
        (model_dir / "history.json").write_text(
            json.dumps({"history": [{"epoch_seconds": 5.0, "images_per_second": 1.0, "loss": 1.0}] * 2})
        )
        seconds["train_contrastive_memory"] = 100.0
        return {"classes": {"one_class": {"0_name": {"combined": {"auroc": 0.5}}}}}

    monkeypatch.setattr(gpu_paper, "run_pipeline", slow_pipeline)
    monkeypatch.setattr(gpu_paper, "scratch_stage", lambda params, workdir: lambda name: (workdir / layout.PREPARED).mkdir(parents=True))
    with pytest.raises(SystemExit, match="no room for one epoch a pair"):
        gpu_paper.main(["--budget-s", "150", "--out", str(tmp_path / "out"), "--work", str(tmp_path / "work")])
    assert json.loads((tmp_path / "out" / "gpu_paper.json").read_text())["epochs"] == 0
