"""Run the paper profile on a lent GPU inside a time budget: calibrate the epochs, then train every pair.

    python -m benchmarks.gpu_paper --classes 0 3 --settings one_class unbalanced --budget-s 420 --out $OUT

The device machine runs one command for at most 10 minutes, so the paper's 500 epochs do not fit. This
- prepares the data once (from ANOMEM_CIFAR10_DIR / ANOMEM_DATA_DIR, e.g. the folder benchmarks.gpu_bundle packs);
- runs the first pair for --calibration-epochs epochs: every stage once, so a broken setup fails within a minute;
- picks the most epochs (at most the profile's) with which every pair fits in what is left of the budget,
  from the calibration's last epoch and its per-pair overhead (start-up, extraction, detector, evaluation);
- runs the pairs one by one, rewriting <out>/gpu_paper.json after each, so a command killed at its limit
  still returns the pairs that finished.

The report holds the GPU model, the versions, every pair's AUROCs, stage times and training speed, and
what a full paper grid (every class and setting at the profile's epochs) would cost in GPU-hours at the
measured speed. Runs the stage scripts without DVC, tracking off, as benchmarks.ablate does.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import tempfile
import time
from pathlib import Path

import torch

from anomem import io, layout
from anomem.params import pair_id, parse_params, read_yaml
from anomem.runtime import environment, git_commit
from benchmarks.ablate import REPO, overridden, run_pipeline, scratch_stage

# An epoch's wall time beyond what the trainer times (memory health, checkpoints) and a full pair's extra
# known anomalies, as a safety factor on the calibration's epoch time.
EPOCH_MARGIN = 1.25


def choose_epochs(budget_left_s: float, n_pairs: int, pair_overhead_s: float, epoch_s: float, max_epochs: int) -> int:
    """The most epochs (at most max_epochs) with which n_pairs pairs of this overhead and epoch time fit in the budget."""
    per_pair = budget_left_s / n_pairs - pair_overhead_s
    return max(0, min(max_epochs, int(per_pair // (epoch_s * EPOCH_MARGIN))))


def device_description() -> dict:
    """The accelerator the stages will use, with the versions worth recording."""
    info = {"environment": environment(), "cuda_available": torch.cuda.is_available()}
    if torch.cuda.is_available():
        props = torch.cuda.get_device_properties(0)
        info.update(gpu=props.name, gpu_memory_gib=round(props.total_memory / 2**30, 1), gpu_count=torch.cuda.device_count())
    return info


def pair_report(workdir: Path, metrics: dict, cls: int, setting: str, seed: int, seconds: dict[str, float]) -> dict:
    """One pair's AUROCs, stage times and stage-1 speed, from its scratch folder."""
    history = json.loads((workdir / layout.model_dir(pair_id(cls, setting, seed)) / "history.json").read_text())["history"]
    (by_score,) = metrics["classes"][setting].values()
    return {
        "cls": cls,
        "setting": setting,
        "seed": seed,
        "epochs": len(history),
        "auroc": {score: v["auroc"] for score, v in by_score.items()},
        "stage_seconds": seconds,
        "pair_seconds": sum(seconds.values()),
        # the first epoch carries CUDA's start-up; the rest show the steady speed
        "epoch_seconds": statistics.median(h["epoch_seconds"] for h in history[1:] or history),
        "images_per_second": statistics.median(h["images_per_second"] for h in history[1:] or history),
        "final_loss": history[-1]["loss"],
    }


def paper_grid_hours(pairs: list[dict], profile_epochs: int, n_classes: int) -> float:
    """GPU-hours of every class in each measured setting at the profile's epochs, at the measured speed."""
    hours = 0.0
    for setting in {p["setting"] for p in pairs}:
        same = [p for p in pairs if p["setting"] == setting]
        overhead = statistics.mean(p["pair_seconds"] - p["epochs"] * p["epoch_seconds"] for p in same)
        epoch_s = statistics.mean(p["epoch_seconds"] for p in same)
        hours += n_classes * (overhead + profile_epochs * epoch_s) / 3600
    return hours


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--params", default=str(REPO / "profiles" / "paper.yaml"))
    parser.add_argument("-S", "--set", dest="overrides", action="append", default=[], help="GROUP.KEY=VALUE, as for dvc exp run")
    parser.add_argument("--classes", type=int, nargs="+", default=[0, 3])
    parser.add_argument("--settings", nargs="+", default=["one_class", "unbalanced"])
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--budget-s", type=float, default=420, help="wall seconds for everything, calibration included")
    parser.add_argument("--calibration-epochs", type=int, default=2)
    parser.add_argument("--out", type=Path, default=Path(os.environ.get("OUT", "reports/gpu")))
    parser.add_argument("--git-commit", default=None, help="the commit the tree was copied from (the device machine has no .git)")
    parser.add_argument("--work", type=Path, help="scratch folder (default: a temporary one, kept)")
    args = parser.parse_args(argv)
    began = time.perf_counter()
    os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")  # what deterministic cuBLAS asks for
    work = args.work or Path(tempfile.mkdtemp(prefix="anomem-gpu-"))
    base = read_yaml(Path(args.params).read_text())
    everything = overridden(
        base,
        [f"experiment.classes={args.classes}", f"experiment.settings={args.settings}", f"experiment.seeds=[{args.seed}]", *args.overrides],
    )
    everything.setdefault("tracking", {})["enabled"] = False
    n_classes = len(parse_params(everything, "the GPU run's params").data.names)
    profile_epochs = everything["train"]["epochs"]
    report = {
        "params": Path(args.params).name,
        "overrides": args.overrides,
        "git_commit": args.git_commit or git_commit(),
        "budget_s": args.budget_s,
        "profile_epochs": profile_epochs,
        **device_description(),
        "pairs": [],
    }

    def save() -> None:
        report["wall_seconds"] = time.perf_counter() - began
        io.write_json(args.out / "gpu_paper.json", report)

    prepared_at = work / "prepared"
    scratch_stage(everything, prepared_at)("prepare_data")

    def run_pair(cls: int, setting: str, epochs: int, name: str) -> dict:
        params = overridden(everything, [f"experiment.classes=[{cls}]", f"experiment.settings=[{setting}]", f"train.epochs={epochs}"])
        workdir = work / name
        (workdir / layout.PREPARED).parent.mkdir(parents=True, exist_ok=True)
        (workdir / layout.PREPARED).symlink_to(prepared_at / layout.PREPARED)
        seconds: dict[str, float] = {}
        metrics = run_pipeline(params, workdir, seconds=seconds)
        return pair_report(workdir, metrics, cls, setting, args.seed, seconds)

    first = (args.classes[0], args.settings[0])
    print(f"calibration: {first} for {args.calibration_epochs} epochs", flush=True)
    calibration = run_pair(*first, args.calibration_epochs, "calibration")
    report["calibration"] = calibration
    pairs = [(cls, setting) for setting in args.settings for cls in args.classes]
    overhead = calibration["pair_seconds"] - calibration["epochs"] * calibration["epoch_seconds"]
    epochs = choose_epochs(
        args.budget_s - (time.perf_counter() - began), len(pairs), overhead, calibration["epoch_seconds"], profile_epochs
    )
    report["epochs"] = epochs
    save()
    if epochs < 1:
        raise SystemExit(
            f"--budget-s {args.budget_s:.0f} leaves no room for one epoch a pair ({len(pairs)} in all); give more time or fewer pairs"
        )
    print(
        f"{epochs} epochs a pair (calibration: {calibration['epoch_seconds']:.2f} s an epoch, {overhead:.0f} s a pair besides)", flush=True
    )
    for cls, setting in pairs:
        report["pairs"].append(run_pair(cls, setting, epochs, f"{cls}-{setting}"))
        report["paper_grid_gpu_hours"] = paper_grid_hours(report["pairs"], profile_epochs, n_classes)
        save()
        last = report["pairs"][-1]
        print(
            f"{cls} {setting}: " + ", ".join(f"{k} {100 * v:.1f}" for k, v in last["auroc"].items()) + f" ({last['pair_seconds']:.0f}s)",
            flush=True,
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
