"""The benchmark tools: the grid timer, ablation overrides and the report (the timed runs live in benchmarks/)."""

from __future__ import annotations

import json
import sys

import numpy as np
import pytest
import torch
import yaml
from benchmarks import ablate, grid, plain_baseline
from benchmarks.__main__ import (
    add_step_costs,
    count_flops,
    markdown,
    memory_path_flops,
    memory_read_seconds,
    paired_overheads,
    step_flops,
    step_rates,
)

from anomem.model import AnoMemNet
from anomem.params import Params, load_params, parse_params
from conftest import REPO

CHILD = """
import time
print("Running stage 'prepare_data':", flush=True)
time.sleep(0.5)
print("Running stage 'train_detector@0-one_class-0':", flush=True)
block = bytearray(300 * 2**20)  # 300 MiB, touched so that it is resident
for i in range(0, len(block), 4096):
    block[i] = 1
time.sleep(1.0)
"""


def test_grid_timer_splits_stages_and_sees_peak_memory(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "f").write_bytes(b"x" * 10_000)
    result = grid.run([sys.executable, "-c", CHILD])
    assert result["exit_code"] == 0
    assert list(result["stage_seconds"]) == ["prepare_data", "train_detector@0-one_class-0"]
    assert 0.4 < result["stage_seconds"]["prepare_data"] < 5
    assert result["stage_seconds_summary"]["train_detector"]["count"] == 1
    assert result["peak_rss_bytes_one_process"] > 300 * 2**20
    assert result["disk_bytes"]["data"] >= 10_000


def test_disk_counts_each_folder_alone_and_a_hard_link_once_together(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    for folder in ("data", ".dvc/cache"):
        (tmp_path / folder).mkdir(parents=True)
    (tmp_path / ".dvc/cache/linked").write_bytes(b"x" * 100_000)
    (tmp_path / "data/linked").hardlink_to(tmp_path / ".dvc/cache/linked")
    (tmp_path / ".dvc/cache/old").write_bytes(b"y" * 50_000)
    disk = grid.disk_bytes(*grid.DISK_PATHS)
    assert 100_000 <= disk["data"] < 150_000
    assert 150_000 <= disk[".dvc/cache"] < 200_000
    assert disk["total_without_second_copies"] == disk[".dvc/cache"] + (disk["data"] - 100_000)


def test_grid_timer_passes_a_failure_on(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert grid.run([sys.executable, "-c", "raise SystemExit(3)"])["exit_code"] == 3


def test_ablation_overrides_parse_like_dvc_exp_run():
    base = yaml.safe_load((REPO / "profiles" / "cpu.yaml").read_text())
    out = ablate.overridden(base, ["memory.size=16", "experiment.classes=[2, 3]", "detector.shifted_negatives=false", "train.lr=1e-3"])
    assert out["memory"]["size"] == 16 and out["experiment"]["classes"] == [2, 3] and out["detector"]["shifted_negatives"] is False
    assert out["train"]["lr"] == 1e-3, "an exponent float is a float, as DVC reads it"
    assert base["memory"]["size"] == 64, "the base params must not change"
    with pytest.raises(SystemExit, match="GROUP.KEY=VALUE"):
        ablate.overridden(base, ["size=16"])


def _step_figures() -> dict:
    """What `python -m benchmarks` measures, as benchmarks.json holds it."""
    stage1 = {"class": 0, "images": 2048, "batch_size": 256, "memory_overhead": 0.5}
    stage1.update(
        {k: {"images_per_second": v, "epoch_seconds": 1.0} for k, v in (("plain", 300.0), ("memory", 220.0), ("memory_rotation", 200.0))}
    )
    return {
        "git_commit": "0123456789abcdef",
        "environment": {"torch": "2.14.1"},
        "threads": 2,
        "stage1": stage1,
        "memory_read": {"2": {"fused": 0.05, "softmax_then_matmul": 0.12}},
        "augmentation": {"views_per_second": 8000.0, "views_consumed_per_second": 400.0, "share_of_step": 0.05},
    }


def test_render_only_rewrites_the_report_from_its_json_without_timing(tmp_path, monkeypatch):
    import benchmarks.__main__ as bench

    monkeypatch.setattr(bench, "step_rates", lambda *a, **k: pytest.fail("--render-only must not time anything"))
    prefix = tmp_path / "benchmarks"
    with pytest.raises(SystemExit, match="benchmarks.json is missing"):
        bench.main(["--render-only", "--report", str(prefix)])
    (tmp_path / "benchmarks.json").write_text(json.dumps(_step_figures()))
    assert bench.main(["--render-only", "--report", str(prefix)]) == 0
    text = (tmp_path / "benchmarks.md").read_text()
    assert "| plain | 300 | +0% |" in text and "| memory_rotation | 200 | +50% |" in text
    # a paired report holds each round's rate; its costs are derived from them again, as a timed run derives them
    paired = _step_figures()
    for name, rounds in (("plain", [300.0, 150.0]), ("memory", [270.0, 140.0]), ("memory_rotation", [250.0, 120.0])):
        paired["stage1"][name]["rounds"] = rounds
    (tmp_path / "benchmarks.json").write_text(json.dumps(paired))
    assert bench.main(["--render-only", "--report", str(prefix)]) == 0
    assert "| memory_rotation | 200 | +22% | +20%, +25% |" in (tmp_path / "benchmarks.md").read_text()


def _plain_and_default(plain_auroc: float, single_view_auroc: float, default_auroc: float) -> dict:
    """A plain-baseline result on class 0 over four turns, and a default grid's metrics for the same class."""
    return {
        "plain_baseline": {
            "epochs": 7,
            "mean_train_seconds": 120.0,
            "auroc": {"0_airplane": plain_auroc},
            "mean_auroc": plain_auroc,
            "views": [[0, False], [1, False], [2, False], [3, False]],
            "auroc_single_view": {"0_airplane": single_view_auroc},
            "mean_auroc_single_view": single_view_auroc,
        },
        "default_metrics": {
            "mean": {"one_class": {"combined": {"auroc": default_auroc}}},
            "classes": {"one_class": {"0_airplane": {"combined": {"auroc": default_auroc}}}},
        },
    }


def test_report_puts_each_figure_beside_its_baseline():
    text = markdown({**_step_figures(), **_plain_and_default(0.66, 0.64, 0.7)})
    assert "| plain | 300 | +0% |" in text and "| memory_rotation | 200 | +50% |" in text
    assert "| 2 | 50.0 | 120.0 |" in text
    assert "same 4 test-time view(s)" in text
    assert "| 0_airplane | 66.0 | 64.0 | 70.0 |" in text and "| **mean** | **66.0** | **64.0** | **70.0** |" in text
    assert "+4.0 points above plain SimCLR + kNN scored the same way (+6.0 above textbook SimCLR + kNN)" in text
    assert "the target is +20 (NOT met)" in text


def test_report_names_the_knn_feature_the_plain_run_was_scored_with():
    figures = {**_step_figures(), **_plain_and_default(0.66, 0.64, 0.7), "default_knn_scales": [2]}
    figures["plain_baseline"]["knn_scales"] = [2]
    text = markdown(figures)
    assert (
        "with the pooled maps of stage(s) 2 (`detector.knn_scales`, `detector.knn_pooling`)" in text and "Not the same feature" not in text
    )
    assert "textbook SimCLR + kNN: the un-augmented image alone, the last stage's pooled feature" in text


def test_report_says_so_when_the_plain_run_took_another_knn_feature():
    figures = {**_step_figures(), **_plain_and_default(0.66, 0.64, 0.7), "default_knn_scales": [2]}
    text = markdown(figures)  # a plain run from before detector.knn_scales: no key, the last stage
    assert "with the last stage's pooled feature" in text
    assert "**Not the same feature**: the default's kNN score now takes the pooled maps of stage(s) 2" in text


def test_report_compares_the_pooling_of_the_knn_feature_too():
    figures = {**_step_figures(), **_plain_and_default(0.66, 0.64, 0.7), "default_knn_scales": [2, 3], "default_knn_pooling": "avg_max"}
    figures["plain_baseline"]["knn_scales"] = [2, 3]
    assert "**Not the same feature**: the default's kNN score now takes the average- and max-pooled maps of stage(s) 2, 3" in markdown(
        figures
    )
    figures["plain_baseline"]["knn_pooling"] = "avg_max"
    text = markdown(figures)
    assert "with the average- and max-pooled maps of stage(s) 2, 3" in text and "Not the same feature" not in text


def test_report_says_met_when_the_headline_clears_plain_by_twenty_points():
    text = markdown({**_step_figures(), **_plain_and_default(0.6, 0.55, 0.81)})
    assert "+21.0 points above plain" in text and "the target is +20 (met)" in text


def test_ablation_reuses_only_the_stages_no_override_reads():
    listed = ablate.stage_params(ablate.REPO / "dvc.yaml")
    assert ablate.stages_to_reuse(["detector.epochs=100"], listed) == ("train_contrastive_memory", "extract_deviation_maps")
    assert ablate.stages_to_reuse(["detector.shifted_negatives=false"], listed) == ("train_contrastive_memory",)
    assert ablate.stages_to_reuse(["memory.size=16", "detector.epochs=1"], listed) == ()
    assert ablate.stages_to_reuse([], listed) == ablate.PAIR_STAGES


def test_ablation_refuses_to_reuse_outputs_made_with_other_params(tmp_path):
    lock = {"stages": {"train_contrastive_memory@0-one_class-0": {"params": {"params.yaml": {"memory.size": 64, "train.epochs": 5}}}}}
    (tmp_path / "dvc.lock").write_text(yaml.safe_dump(lock))
    params = yaml.safe_load((REPO / "profiles" / "cpu.yaml").read_text())
    params["train"]["epochs"] = 6
    with pytest.raises(SystemExit, match="other values of train.epochs"):
        ablate.check_reusable(params, ["train_contrastive_memory@0-one_class-0"], repo=tmp_path)
    with pytest.raises(SystemExit, match="no extract_deviation_maps@0-one_class-0"):
        ablate.check_reusable(params, ["extract_deviation_maps@0-one_class-0"], repo=tmp_path)
    (tmp_path / "dvc.lock").unlink()
    with pytest.raises(SystemExit, match="dvc.lock is missing"):
        ablate.check_reusable(params, ["train_contrastive_memory@0-one_class-0"], repo=tmp_path)


def test_plain_baseline_gets_the_default_stage_1_time_measured_in_the_same_run():
    params = load_params(REPO / "profiles" / "smoke.yaml")
    params = params.model_copy(update={"train": params.train.model_copy(update={"batch_size": 32, "epochs": 3})})
    images = torch.randint(0, 256, (64, 32, 32, 3), dtype=torch.uint8)
    timing = plain_baseline.matched_epochs(params, images)
    assert timing["default_epoch_seconds"] > 0 and timing["plain_epoch_seconds"] > 0 and timing["probe_images"] == 64
    assert timing["epochs"] == max(1, round(3 * timing["default_epoch_seconds"] / timing["plain_epoch_seconds"]))


def _tiny_step_inputs():
    """The smoke profile at batch 8, and 16 random images: enough for the step benchmarks to run."""
    params = load_params(REPO / "profiles" / "smoke.yaml")
    params = params.model_copy(update={"train": params.train.model_copy(update={"batch_size": 8})})
    return params, torch.randint(0, 256, (16, 32, 32, 3), dtype=torch.uint8)


def test_memory_read_benchmark_times_both_reads_at_every_memory_scale():
    params, images = _tiny_step_inputs()
    timing = memory_read_seconds(params, images, repeats=2)
    assert sorted(timing) == sorted(str(s) for s in params.memory.scales)
    assert all(v["fused"] > 0 and v["softmax_then_matmul"] > 0 for v in timing.values())


def test_step_rates_take_turns_and_report_every_round():
    params, images = _tiny_step_inputs()
    rates = step_rates(params, images, rotation=1.0, rounds=2)
    assert sorted(rates) == ["memory", "memory_rotation", "plain"]
    for rate in rates.values():
        assert len(rate["rounds"]) == 2 and all(v > 0 for v in rate["rounds"])
        assert min(rate["rounds"]) <= rate["images_per_second"] <= max(rate["rounds"])


def test_the_step_cost_pairs_each_round_with_its_own_plain_step():
    # a slow spell halves both rates of round 2: the per-round costs stay 20 % and 25 %
    rates = {"plain": {"rounds": [300.0, 150.0]}, "memory_rotation": {"rounds": [250.0, 120.0]}}
    assert paired_overheads(rates, "memory_rotation") == pytest.approx([0.2, 0.25])
    figures = _step_figures()
    stage1 = figures["stage1"]
    for name, rounds in (("plain", [300.0, 150.0]), ("memory", [270.0, 140.0]), ("memory_rotation", [250.0, 120.0])):
        stage1[name]["rounds"] = rounds
    add_step_costs(stage1)
    assert stage1["memory"]["overhead"] == pytest.approx(np.median([300 / 270 - 1, 150 / 140 - 1]))
    assert stage1["memory_overhead"] == pytest.approx(0.225)
    text = markdown(figures)
    assert "| memory_rotation | 200 | +22% | +20%, +25% |" in text
    assert "Measured: 22% (NOT met; the rounds range 20% to 25%)" in text


def test_the_flop_floor_is_what_a_whole_memory_step_adds_to_the_plain_step():
    params = Params()
    params = params.model_copy(update={"train": params.train.model_copy(update={"batch_size": 8})})
    got = memory_path_flops(params, [2, 3], (32, 32))
    # one step with both paths, the shared stages' backward run once, counts exactly plain + what the path adds
    torch.manual_seed(0)
    net = AnoMemNet.from_params(params)
    x = torch.rand(16, 3, 32, 32)
    net.init_memories(x[:8])

    def whole_step():
        feats = net.features(x)
        (net.project(net.pooled(feats)).sum() + net.memory_path(feats).sum()).backward()

    assert count_flops(whole_step) == got["plain"] + got["memory_path"]
    # each read: two (L x N x C) products forward and four backward, L = views x H_s x W_s, N items, C_s channels
    n = params.memory.size
    assert got["reads"] == sum(12 * 16 * hw * hw * n * c for hw, c in ((16, 16), (8, 32)))
    assert 0.3 < got["share"] < 0.5, "the second pass through stage 3 is about a third of the encoder"
    full_views = params.model_copy(update={"contrastive": params.contrastive.model_copy(update={"view_scale": 1.0})})
    both = step_flops(full_views, (32, 32))
    assert both["view_hw"] == [32, 32] and both["params_scales"]["share"] == got["share"]
    assert both["last_stage_only"]["scales"] == [3] and both["last_stage_only"]["share"] < 0.05, "S3 alone: no second pass"
    # the step trains on its views, so the floor is counted on them: half-size views of 32-pixel images are 16 x 16
    half = step_flops(params, (32, 32))
    assert params.contrastive.view_scale == 0.5 and half["view_hw"] == [16, 16]
    assert half["params_scales"] == memory_path_flops(params, [2, 3], (16, 16))


def test_report_sets_the_step_cost_beside_its_flop_floor():
    full_views = parse_params({"contrastive": {"view_scale": 1.0}})
    text = markdown({**_step_figures(), "flops": step_flops(full_views, (32, 32))})
    assert "on one step's 512 32x32 views the plain step takes 31.5 GFLOP, and the memory path at S2, S3 adds 12.5 GFLOP (**+40%**)" in text
    assert "the 20% target is above the design's floor" not in text and "target is below the design's floor" in text
    assert "A memory at S3 alone (`memory.scales: [3]`) adds 0.8 GFLOP (+3%, no second pass)" in text
    assert "FLOP floor" not in markdown(_step_figures()), "reports timed before the count have no floor line"


def test_flops_only_prints_the_floor_of_any_profile_without_timing(capsys, monkeypatch):
    import benchmarks.__main__ as bench

    monkeypatch.setattr(bench, "step_rates", lambda *a, **k: pytest.fail("--flops-only must not time anything"))
    assert bench.main(["--flops-only", "--params", str(REPO / "profiles" / "paper.yaml")]) == 0
    assert "the memory path at S2, S3, S4 adds 2012.1 GFLOP (**+59%**)" in capsys.readouterr().out


def test_report_shows_the_gpu_run_of_the_paper_profile():
    run = json.loads((REPO / "reports" / "gpu" / "paper-classes-0-3.json").read_text())
    text = markdown({**_step_figures(), "gpu_paper": run})
    assert "## The paper profile on a lent GPU" in text and run["gpu"] in text
    assert f"{run['epochs']} of the profile's 500 epochs a pair" in text
    first = run["pairs"][0]
    assert f"| {first['cls']} | {first['setting']} | {first['epochs']} | {100 * first['auroc']['combined']:.1f} |" in text
    assert f"{run['paper_grid_gpu_hours']:.1f} GPU-hours" in text
    assert "lent GPU" not in markdown(_step_figures())


def test_scratch_stages_find_a_data_folder_given_relative_to_the_caller(tmp_path, monkeypatch):
    from test_gpu_bundle import write_toy_dataset

    (tmp_path / "toy").mkdir()
    write_toy_dataset(tmp_path / "toy")
    params = yaml.safe_load((REPO / "profiles" / "smoke.yaml").read_text())
    params["data"].update(dataset="toy", class_names=["a", "b", "c", "d"], n_known_outlier_classes=2, ratio_known_outlier=0.1)
    params["experiment"].update(classes=[1], settings=["one_class"])
    params["tracking"]["enabled"] = False
    params["contrastive"]["view_scale"] = 1.0  # 8-pixel toy images
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("ANOMEM_DATA_DIR", "toy")  # the stage runs in work/, where ./toy does not exist
    seconds = {}

    ablate.scratch_stage(params, tmp_path / "work", seconds)("prepare_data")

    manifest = json.loads((tmp_path / "work" / "data" / "prepared" / "manifest.json").read_text())
    assert manifest["train_count"] == 240 and list(seconds) == ["prepare_data"]
