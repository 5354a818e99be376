"""The benchmark suite: `python -m benchmarks` writes reports/benchmarks.json and reports/benchmarks.md.

Each figure stands beside its baseline, measured in the same run, on real images of the params' data set:
- stage-1 images/s of the full step (memory path, rotation head) against the same encoder's plain
  contrastive step (`memory.enabled: false`, no rotation);
- the augmentation pipeline's images/s against what the model consumes;
- each memory's read (forward + backward on one step's feature maps), fused against softmax then matmul;
- the FLOPs the memory path adds to the plain step (counted, so the same on every machine): the floor
  under the measured step cost that no implementation of the design can go below;
- the grid's wall time, per-stage times, peak memory and disk, from reports/benchmarks/grid.json
  (written by `python -m benchmarks.grid`, which runs `dvc repro`);
- the plain SimCLR + kNN accuracy baseline, from reports/benchmarks/plain_baseline.json
  (written by `python -m benchmarks.plain_baseline`), beside the grid's reports/metrics.json.
"""

from __future__ import annotations

import argparse
import json
import platform
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch.nn.attention import SDPBackend, sdpa_kernel
from torch.utils.flop_counter import FlopCounterMode

from anomem import io
from anomem.data import ContrastiveViews, to_float, training_view_hw
from anomem.memory import HopfieldMemory
from anomem.model import AnoMemNet
from anomem.params import ARCH_STAGES, Params, load_params
from anomem.runtime import environment, git_commit
from benchmarks.common import load_class_images, plain_simclr, step_throughput, variant

REPORTS = Path("reports")
GRID = REPORTS / "benchmarks" / "grid.json"
PLAIN = REPORTS / "benchmarks" / "plain_baseline.json"
GPU_PAPER = REPORTS / "gpu" / "paper-classes-0-3.json"  # written on a lent GPU by `python -m benchmarks.gpu_paper`
MEMORY_BUDGET = 0.20  # the target: memory and data pipeline cost at most 20 % of the plain step


def augmentation_throughput(params: Params, images: torch.Tensor, repeats: int = 5) -> float:
    """Views per second of the kornia pipeline on whole batches (two views per image in training)."""
    views = ContrastiveViews.from_params(params, images.shape[1:3])
    batch = to_float(images[: params.train.batch_size])
    views(batch)
    began = time.perf_counter()
    for _ in range(repeats):
        views(batch)
    return repeats * batch.shape[0] / (time.perf_counter() - began)


def step_rates(params: Params, images: torch.Tensor, rotation: float, rounds: int) -> dict[str, dict]:
    """Each step's images/s, median over rounds that run the variants in turn, in alternating order.

    A warm-up run comes first, and no variant always runs first: measured here, a fixed order let
    the process's warm-up land on the first variant and hid half of the memory's overhead.
    """
    steps = {
        "plain": plain_simclr(params),
        "memory": variant(params, memory_enabled=True, rotation_weight=0.0, shifted_instances=1),
        "memory_rotation": variant(params, memory_enabled=True, rotation_weight=rotation),
    }
    step_throughput(steps["memory_rotation"], images[: params.train.batch_size * 2], epochs=2)
    runs: dict[str, list[dict]] = {name: [] for name in steps}
    for r in range(rounds):
        for name in list(steps)[:: 1 if r % 2 == 0 else -1]:
            runs[name].append(step_throughput(steps[name], images))
    return {
        name: {
            "images_per_second": float(np.median([x["images_per_second"] for x in got])),
            "epoch_seconds": float(np.median([x["epoch_seconds"] for x in got])),
            "rounds": [x["images_per_second"] for x in got],
        }
        for name, got in runs.items()
    }


def paired_overheads(rates: dict[str, dict], name: str) -> list[float]:
    """Each round's cost of step `name` over the plain step of the same round.

    A round's steps run back to back, so a slow spell of the shared machine that spans a round slows
    both; one that hits a single step still shows, in the spread of the rounds the report prints.
    """
    return [p / v - 1 for p, v in zip(rates["plain"]["rounds"], rates[name]["rounds"], strict=True)]


def add_step_costs(stage1: dict) -> None:
    """Each memory step's round costs and their median (`overhead`); the full step's median is the target's figure."""
    for name in ("memory", "memory_rotation"):
        stage1[name]["round_overheads"] = paired_overheads(stage1, name)
        stage1[name]["overhead"] = float(np.median(stage1[name]["round_overheads"]))
    stage1["memory_overhead"] = stage1["memory_rotation"]["overhead"]


def _softmax_then_matmul(memory: HopfieldMemory, fmap: torch.Tensor) -> torch.Tensor:
    """The read as method.md writes it, with the (B*H*W, N) attention kept for autograd."""
    b, c, h, w = fmap.shape
    return (memory.attention(fmap) @ memory.items).view(b, h, w, c).permute(0, 3, 1, 2)


def memory_read_seconds(params: Params, images: torch.Tensor, repeats: int = 5) -> dict[str, dict[str, float]]:
    """Median seconds of forward + backward of each scale's read on one step's maps (2 x batch views)."""
    net = AnoMemNet.from_params(variant(params, memory_enabled=True))
    x = to_float(images[: 2 * params.train.batch_size])
    net.init_memories(x)
    # the step reads the maps of its training views, which `contrastive.view_scale` may make smaller than the images
    x = F.interpolate(x, size=training_view_hw(tuple(x.shape[2:]), params), mode="bilinear", antialias=True)
    x = x.contiguous(memory_format=torch.channels_last)
    with torch.no_grad():
        feats = net.features(x)
    reads = {"fused": lambda m, f: m(f), "softmax_then_matmul": _softmax_then_matmul}
    out: dict[str, dict[str, float]] = {}
    for s in net.scales:
        fmap = feats[s].detach().requires_grad_()
        seconds: dict[str, list[float]] = {name: [] for name in reads}
        # Both reads warm up first, then take turns: a fresh process's first large allocations are
        # page faults, which would otherwise be charged to whichever read runs first.
        for rep in range(repeats + 1):
            for name, read in reads.items():
                began = time.perf_counter()
                read(net.memory(s), fmap).square().mean().backward()
                if rep:
                    seconds[name].append(time.perf_counter() - began)
        out[str(s)] = {name: float(np.median(v)) for name, v in seconds.items()}
    return out


def count_flops(run) -> int:
    """FLOPs of run() (forward and backward), counted by torch. The read goes through the math attention
    kernel, whose matmuls the counter sees; the fused CPU kernel does the same products but is not counted."""
    with FlopCounterMode(display=False) as counter, sdpa_kernel(SDPBackend.MATH):
        run()
    return counter.get_total_flops()


def memory_path_flops(params: Params, scales: list[int], image_hw: tuple[int, int]) -> dict:
    """FLOPs of one stage-1 step's 2 x batch views: the plain step (encoder, projector) and what the memory
    path at `scales` adds to it. The stages before the first memory scale are shared and their backward runs
    once, so the addition is the reads plus the second pass through the stages after the first memory scale.
    Counted on the meta device: shapes only, no arithmetic, so even the paper profile counts in a second."""
    memory = params.memory.model_copy(update={"enabled": True, "scales": scales})
    views = 2 * params.train.batch_size
    with torch.device("meta"):
        net = AnoMemNet.from_params(params.model_copy(update={"memory": memory}))
        x = torch.empty(views, 3, *image_hw)
    with torch.no_grad():
        feats = net.features(x)
    plain = count_flops(lambda: net.project(net.pooled(net.features(x))).sum().backward())
    leaves = {s: f.requires_grad_() for s, f in feats.items()}
    added = count_flops(lambda: net.memory_path(leaves).sum().backward())
    reads = sum(count_flops(lambda s=s: net.memory(s)(leaves[s]).sum().backward()) for s in scales)
    return {"scales": sorted(scales), "views": views, "plain": plain, "memory_path": added, "reads": reads, "share": added / plain}


def step_flops(params: Params, image_hw: tuple[int, int]) -> dict:
    """The memory path's FLOP share at the params' scales, and at the last stage alone (no second pass), on the
    training views that images of image_hw give (`contrastive.view_scale`)."""
    view_hw = training_view_hw(image_hw, params)
    return {
        "view_hw": list(view_hw),
        "params_scales": memory_path_flops(params, params.memory.scales, view_hw),
        "last_stage_only": memory_path_flops(params, [ARCH_STAGES[params.model.arch]], view_hw),
    }


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown CPU"


def _read(path: Path) -> dict | None:
    return json.loads(path.read_text()) if path.exists() else None


def knn_feature_words(scales: list[int], pooling: str) -> str:
    if not scales:
        return "the last stage's average- and max-pooled maps" if pooling == "avg_max" else "the last stage's pooled feature"
    how = "average- and max-pooled maps" if pooling == "avg_max" else "pooled maps"
    return f"the {how} of stage(s) {', '.join(map(str, scales))}"


def views_note(plain: dict, default_scales: list[int] | None, default_pooling: str | None = None) -> str:
    """How the plain run's kNN score was taken, and whether that is how the default's kNN score is taken."""
    scales = plain.get("knn_scales", [])  # runs before detector.knn_scales scored the last stage
    pooling = plain.get("knn_pooling", "avg")  # runs before detector.knn_pooling average-pooled
    text = (
        f"Its kNN score averages over the same {len(plain['views'])} test-time view(s) as the default's kNN score "
        f"(`detector.knn_turns`, `detector.knn_mirror`), with {knn_feature_words(scales, pooling)} "
        "(`detector.knn_scales`, `detector.knn_pooling`). "
    )
    ours = (list(default_scales), default_pooling or "avg") if default_scales is not None else None
    if ours is not None and ours != (list(scales), pooling):
        text += (
            f"**Not the same feature**: the default's kNN score now takes {knn_feature_words(*ours)}, and this plain run predates that. "
        )
    if "knn_scales" in plain:
        return text + "The column beside it is textbook SimCLR + kNN: the un-augmented image alone, the last stage's pooled feature. "
    return text + "The column beside it scores the un-augmented image alone. "


def time_match(plain: dict) -> str:
    """How the plain run's epochs were matched to the default's stage-1 time."""
    t = plain.get("timing")
    if t:
        return (
            f"time-matched in the same run: a default epoch took {t['default_epoch_seconds']:.1f} s and a plain one "
            f"{t['plain_epoch_seconds']:.1f} s on {t['probe_images']} images"
        )
    return "epochs set by hand"


def flops_note(flops: dict) -> str:
    """The FLOP floor under the step cost, in words."""
    ours, last = flops["params_scales"], flops["last_stage_only"]
    giga = lambda n: f"{n / 1e9:.1f} GFLOP"
    scales = ", ".join(f"S{s}" for s in ours["scales"])
    floor = "below" if ours["share"] > MEMORY_BUDGET else "above"
    size = f" {flops['view_hw'][0]}x{flops['view_hw'][1]}" if "view_hw" in flops else ""  # reports before view_scale: full images
    return (
        f"FLOP floor (counted by torch's FlopCounterMode, forward and backward, so the same on every machine): on one step's "
        f"{ours['views']}{size} views the plain step takes {giga(ours['plain'])}, and the memory path at {scales} adds "
        f"{giga(ours['memory_path'])} (**+{ours['share']:.0%}**): {giga(ours['reads'])} in the reads, the rest in the second "
        f"pass through the stages after S{ours['scales'][0]}. No implementation of these scales costs less than that, so the "
        f"{MEMORY_BUDGET:.0%} target is {floor} the design's floor; the measured cost beyond the floor is the implementation's "
        f"(small kernels, the loss terms, the rotation head, the data pipeline). A memory at S{last['scales'][0]} alone (`memory.scales: "
        f"[{last['scales'][0]}]`) adds {giga(last['memory_path'])} (+{last['share']:.0%}, no second pass)."
    )


def markdown(result: dict) -> str:
    s = result["stage1"]
    paired = "round_overheads" in s["memory_rotation"]  # reports before 2026-12-01 hold rate medians only
    lines = [
        "# Benchmarks",
        "",
        f"Written by `python -m benchmarks` at git {result['git_commit'][:10]} on {result.get('cpu', 'this machine')}, "
        f"torch {result['environment'].get('torch')}, {result['threads']} threads. Every figure beside its baseline, measured in the same run.",
        "",
        "## Stage-1 step (batch {b}, {n} images of class {c})".format(b=s["batch_size"], n=s["images"], c=s["class"]),
        "",
        *(
            ["| step | images/s | cost over the plain step, median of the rounds | each round's cost |", "|---|---|---|---|"]
            if paired
            else ["| step | images/s | cost over the plain step |", "|---|---|---|"]
        ),
    ]
    plain = s["plain"]["images_per_second"]
    for name in ("plain", "memory", "memory_rotation"):
        v = s[name]["images_per_second"]
        if not paired:
            lines.append(f"| {name} | {v:.0f} | {plain / v - 1:+.0%} |")
        elif name == "plain":
            lines.append(f"| {name} | {v:.0f} | +0% | |")
        else:
            costs = s[name]["round_overheads"]
            lines.append(f"| {name} | {v:.0f} | {s[name]['overhead']:+.0%} | {', '.join(f'{c:+.0%}' for c in costs)} |")
    if "rounds" in s["plain"]:
        each = "; ".join(f"{name} " + ", ".join(f"{v:.0f}" for v in s[name]["rounds"]) for name in ("plain", "memory", "memory_rotation"))
        how = "each round's cost is its plain rate over its own rate, the median of those is the cost" if paired else "medians of the rates"
        lines += [
            "",
            f"{len(s['plain']['rounds'])} rounds in alternating order, after a warm-up run ({how}); each round's images/s: {each}.",
        ]
    verdict = "met" if s["memory_overhead"] <= MEMORY_BUDGET else "NOT met"
    if paired:
        costs = s["memory_rotation"]["round_overheads"]
        verdict += f"; the rounds range {min(costs):.0%} to {max(costs):.0%}"
    lines += [
        "",
        f"Target: the memory and the data pipeline cost at most {MEMORY_BUDGET:.0%} of the plain step. "
        f"Measured: {s['memory_overhead']:.0%} ({verdict}).",
        "",
    ]
    if result.get("flops"):
        lines += [flops_note(result["flops"]), ""]
    if result.get("memory_read"):
        lines += [
            f"## Memory read (forward + backward on one step's maps of {2 * s['batch_size']} views)",
            "",
            "| scale | fused (scaled_dot_product_attention), ms | softmax then matmul, ms |",
            "|---|---|---|",
            *(f"| {k} | {1e3 * v['fused']:.1f} | {1e3 * v['softmax_then_matmul']:.1f} |" for k, v in result["memory_read"].items()),
            "",
        ]
    lines += [
        "## Augmentation",
        "",
        f"kornia views of whole batches: {result['augmentation']['views_per_second']:.0f} views/s, against "
        f"{result['augmentation']['views_consumed_per_second']:.0f} views/s that the full step consumes "
        f"({result['augmentation']['share_of_step']:.0%} of the step's time).",
        "",
    ]
    g = result.get("grid")
    if g:
        lines += [
            "## The default grid (`python -m benchmarks.grid`)",
            "",
            f"Wall time {g['wall_seconds'] / 60:.1f} min (exit {g['exit_code']}); peak memory of one process "
            f"{g['peak_rss_bytes_one_process'] / 2**30:.2f} GiB, of all processes together {g['peak_rss_bytes_all_processes'] / 2**30:.2f} GiB.",
            "",
            "| stage | runs | mean s | total min |",
            "|---|---|---|---|",
        ]
        lines += [f"| {k} | {v['count']} | {v['mean']:.1f} | {v['total'] / 60:.1f} |" for k, v in g["stage_seconds_summary"].items()]
        d = g["disk_bytes"]
        lines += [
            "",
            "Disk, each on its own: "
            + ", ".join(f"`{k}` {v / 2**30:.2f} GiB" for k, v in d.items() if k != "total_without_second_copies")
            + f"; together, hard links counted once: {d.get('total_without_second_copies', 0) / 2**30:.2f} GiB"
            + f" (cache.type `{g['dvc_cache_type'] or 'default'}`; the cache also keeps earlier runs' outputs until `dvc gc`).",
            "",
        ]
    p, m = result.get("plain_baseline"), result.get("default_metrics")
    if p and m:
        scores = list(m["mean"]["one_class"])
        by_class = m["classes"]["one_class"]
        same = [name for name in p["auroc"] if name in by_class]
        ours = {k: float(np.mean([by_class[name][k]["auroc"] for name in same])) for k in scores} if same else {}
        headline = scores[0]
        single = p["auroc_single_view"]
        lines += [
            "## Accuracy: the default profile against plain SimCLR + kNN, one-class",
            "",
            f"Plain run: `memory.enabled: false`, no rotation head, {p['epochs']} epochs "
            f"({p['mean_train_seconds']:.0f} s of training per class; {time_match(p)}), on classes {', '.join(p['auroc'])}. "
            f"{views_note(p, result.get('default_knn_scales'), result.get('default_knn_pooling'))}The default's columns are its committed grid's per-class AUROC for the same classes.",
            "",
            "| class | plain kNN, scored as ours | plain kNN, textbook | " + " | ".join(scores) + " |",
            "|---|---|---|" + "---|" * len(scores),
        ]
        for name, auroc in p["auroc"].items():
            row = by_class.get(name, {})
            ours_row = " | ".join(f"{100 * row[k]['auroc']:.1f}" if k in row else "-" for k in scores)
            lines.append(f"| {name} | {100 * auroc:.1f} | {100 * single[name]:.1f} | {ours_row} |")
        ours_mean = " | ".join(f"**{100 * ours[k]:.1f}**" for k in scores)
        lines.append(f"| **mean** | **{100 * p['mean_auroc']:.1f}** | **{100 * p['mean_auroc_single_view']:.1f}** | {ours_mean} |")
        if ours:
            gain = 100 * (ours[headline] - p["mean_auroc"])
            lines += [
                "",
                f"The headline ({headline}) is {gain:+.1f} points above plain SimCLR + kNN scored the same way "
                f"({100 * (ours[headline] - p['mean_auroc_single_view']):+.1f} above textbook SimCLR + kNN); "
                f"the target is +20 ({'met' if gain >= 20 else 'NOT met'}).",
            ]
        lines.append("")
    if result.get("gpu_paper"):
        lines += [gpu_paper_section(result["gpu_paper"]), ""]
    return "\n".join(lines) + "\n"


def gpu_paper_section(run: dict) -> str:
    """The paper profile's run on a lent GPU (reports/gpu/), as a table."""
    env = run["environment"]
    lines = [
        "## The paper profile on a lent GPU (`python -m benchmarks.gpu_paper`)",
        "",
        f"{run.get('gpu', 'no GPU')}, torch {env['torch']}, git {run['git_commit'][:7]}; {run['epochs']} of the profile's "
        f"{run['profile_epochs']} epochs a pair (what fitted a {run['budget_s']:.0f} s budget), overrides: "
        f"{', '.join(f'`{o}`' for o in run['overrides']) or 'none'}; {run['wall_seconds']:.0f} s in all.",
        "",
        "| class | setting | epochs | headline AUROC | stage-1 images/s | pair s |",
        "|---|---|---|---|---|---|",
        *(
            f"| {p['cls']} | {p['setting']} | {p['epochs']} | {100 * p['auroc']['combined']:.1f} | {p['images_per_second']:.0f} | {p['pair_seconds']:.0f} |"
            for p in run["pairs"]
        ),
    ]
    if "paper_grid_gpu_hours" in run:
        lines += [
            "",
            f"A full paper grid at this speed, with the detector epochs run here: {run['paper_grid_gpu_hours']:.1f} GPU-hours (an upper bound while the step stays "
            "this slow; reports/gpu/README.md).",
        ]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--params", default="params.yaml")
    parser.add_argument("--cls", type=int, default=0, help="class whose images feed the step benchmarks")
    parser.add_argument("--images", type=int, default=2048, help="images per epoch in the step benchmarks")
    parser.add_argument("--rounds", type=int, default=4, help="turns of the three stage-1 steps, in alternating order")
    parser.add_argument("--report", default=str(REPORTS / "benchmarks"), help="where to write PREFIX.json and PREFIX.md")
    parser.add_argument(
        "--render-only",
        action="store_true",
        help="time nothing: re-write PREFIX.md from PREFIX.json's step figures and the committed grid's current results",
    )
    parser.add_argument(
        "--flops-only",
        action="store_true",
        help="time nothing, write nothing: print the memory path's FLOP floor for --params (any profile, instantly)",
    )
    parser.add_argument("--image-size", type=int, default=32, help="side of the square images whose training views --flops-only counts on")
    args = parser.parse_args(argv)
    if args.flops_only:
        print(flops_note(step_flops(load_params(args.params), (args.image_size, args.image_size))))
        return 0
    if args.render_only:
        measured = _read(Path(f"{args.report}.json"))
        if measured is None:
            raise SystemExit(f"--render-only: {args.report}.json is missing; run `python -m benchmarks` first")
        if "rounds" in measured["stage1"]["plain"]:  # reports of 2026-12-01 kept the round costs but not their medians
            add_step_costs(measured["stage1"])
        detector = load_params(args.params).detector
        result = {
            **measured,
            "grid": _read(GRID),
            "plain_baseline": _read(PLAIN),
            "default_metrics": _read(REPORTS / "metrics.json"),
            "default_knn_scales": detector.knn_scales,
            "default_knn_pooling": detector.knn_pooling,
            "gpu_paper": _read(GPU_PAPER),
        }
        io.write_text(Path(f"{args.report}.md"), markdown(result))
        print(markdown(result))
        return 0
    params = load_params(args.params)
    of_grid = Path("params.yaml").exists() and params == load_params("params.yaml")
    images = torch.from_numpy(load_class_images(params, args.cls)[: args.images])
    rotation = params.contrastive.rotation_weight or 1.0
    stage1 = {"class": args.cls, "images": int(images.shape[0]), "batch_size": params.train.batch_size}
    stage1.update(step_rates(params, images, rotation, args.rounds))
    full = stage1["memory_rotation"]["images_per_second"]
    add_step_costs(stage1)
    views_per_second = augmentation_throughput(params, images)
    result = {
        "git_commit": git_commit(),
        "environment": environment(),
        "threads": torch.get_num_threads(),
        "cpu": cpu_model(),
        "cuda": torch.cuda.get_device_name() if torch.cuda.is_available() else None,
        "stage1": stage1,
        "memory_read": memory_read_seconds(params, images),
        "flops": step_flops(params, tuple(images.shape[1:3])),
        "augmentation": {
            "views_per_second": views_per_second,
            "views_consumed_per_second": 2 * full,
            "share_of_step": 2 * full / views_per_second,
        },
        # the grid's own figures belong beside the step figures only when these are the grid's params
        **(
            {
                "grid": _read(GRID),
                "plain_baseline": _read(PLAIN),
                "default_metrics": _read(REPORTS / "metrics.json"),
                "default_knn_scales": params.detector.knn_scales,
                "default_knn_pooling": params.detector.knn_pooling,
                "gpu_paper": _read(GPU_PAPER),
            }
            if of_grid
            else {}
        ),
    }
    io.write_json(
        Path(f"{args.report}.json"),
        {k: v for k, v in result.items() if k not in ("default_metrics", "default_knn_scales", "default_knn_pooling", "gpu_paper")},
    )
    io.write_text(Path(f"{args.report}.md"), markdown(result))
    print(markdown(result))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
