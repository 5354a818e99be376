"""Where a stage-1 step's time goes on this machine: one device call's worth of evidence for a slow GPU step.

    python -m benchmarks.step_profile --params profiles/paper.yaml --out $OUT

On the lent H200 the paper profile's stage 1 ran at about 700 img/s (reports/gpu/), near 1 % of the chip's
bf16 matrix rate, so something besides the arithmetic sets the pace. This measures, on synthetic images of
the data's size (timing does not depend on their content):
- the stage-1 loop's images/s as the pipeline runs it (deterministic kernels, no cuDNN autotuning);
- the same with determinism off and cuDNN autotuning on;
- the plain SimCLR step (no memories, no rotation head), with the pipeline's settings;
- the augmentation alone, on the training device, against those rates;
and writes torch.profiler's table of one epoch, sorted by device time, and by CPU time. Results land in
<out>/step_profile.json and <out>/step_profile_ops.txt.
"""

from __future__ import annotations

import argparse
import os
import time
from pathlib import Path

import torch

from anomem import io
from anomem.data import ContrastiveViews, to_float
from anomem.macl import train_macl
from anomem.model import AnoMemNet
from anomem.params import Params, load_params
from anomem.runtime import environment, make_runtime, seed_everything
from benchmarks.common import plain_simclr, variant


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def loop_rate(params: Params, images: torch.Tensor, epochs: int, fast_kernels: bool = False) -> dict:
    """The stage-1 loop's images/s, median of the epochs after the first; fast_kernels: determinism off, cuDNN autotuning on."""
    seed_everything(0)
    if fast_kernels:
        torch.use_deterministic_algorithms(False)
        torch.backends.cudnn.benchmark = True
    runtime = make_runtime(params.train.device, params.train.num_threads, params.train.precision)
    net = AnoMemNet.from_params(params)
    tuned = variant(params, epochs=epochs)
    history = train_macl(net, images, None, tuned, runtime, seed=0, progress=False)[1:]
    rates = sorted(h["images_per_second"] for h in history)
    return {"images_per_second": rates[len(rates) // 2], "epochs_timed": len(history), "device": str(runtime.device)}


def augmentation_rate(params: Params, images: torch.Tensor, repeats: int = 5) -> float:
    """Images/s of the two training views, on the training device, batch by batch."""
    runtime = make_runtime(params.train.device, params.train.num_threads, params.train.precision)
    views = ContrastiveViews.from_params(params, images.shape[1:3]).to(runtime.device)
    batch = to_float(images[: params.train.batch_size]).to(runtime.device)
    views(batch)
    synchronize(runtime.device)
    began = time.perf_counter()
    for _ in range(repeats):
        views(batch), views(batch)
    synchronize(runtime.device)
    return repeats * batch.shape[0] / (time.perf_counter() - began)


def profile_table(params: Params, images: torch.Tensor, rows: int = 30) -> str:
    """torch.profiler's op table of one epoch (after a warm-up epoch), as the pipeline runs it."""
    seed_everything(0)
    runtime = make_runtime(params.train.device, params.train.num_threads, params.train.precision)
    activities = [torch.profiler.ProfilerActivity.CPU]
    if runtime.device.type == "cuda":
        activities.append(torch.profiler.ProfilerActivity.CUDA)
    net = AnoMemNet.from_params(params)
    train_macl(net, images, None, variant(params, epochs=1), runtime, seed=0, progress=False)  # warm-up
    with torch.profiler.profile(activities=activities) as prof:
        train_macl(net, images, None, variant(params, epochs=1), runtime, seed=1, progress=False)
        synchronize(runtime.device)
    averages = prof.key_averages()
    device_key = "self_device_time_total" if runtime.device.type == "cuda" else "self_cpu_time_total"
    return (
        f"## sorted by {device_key}\n{averages.table(sort_by=device_key, row_limit=rows)}\n\n"
        f"## sorted by cpu_time_total\n{averages.table(sort_by='cpu_time_total', row_limit=rows)}\n"
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--params", default="profiles/paper.yaml")
    parser.add_argument("--images", type=int, default=4500, help="synthetic training images (one CIFAR class: 4500)")
    parser.add_argument("--size", type=int, default=32, help="image side in pixels")
    parser.add_argument("--epochs", type=int, default=3, help="epochs per timed loop; the first is a warm-up")
    parser.add_argument("--out", type=Path, default=Path(os.environ.get("OUT", "reports/gpu")))
    args = parser.parse_args(argv)
    params = load_params(args.params)
    images = torch.randint(0, 256, (args.images, args.size, args.size, 3), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))
    result: dict = {"params": args.params, "images": args.images, "size": args.size, "environment": environment()}
    if torch.cuda.is_available():
        result["gpu"] = torch.cuda.get_device_name(0)
    for name, run in (
        ("pipeline", lambda: loop_rate(params, images, args.epochs)),
        ("fast_kernels", lambda: loop_rate(params, images, args.epochs, fast_kernels=True)),
        ("plain_simclr", lambda: loop_rate(plain_simclr(params), images, args.epochs)),
    ):
        result[name] = run()
        print(f"{name}: {result[name]['images_per_second']:.0f} img/s", flush=True)
        io.write_json(args.out / "step_profile.json", result)
    result["augmentation_images_per_second"] = augmentation_rate(params, images)
    print(f"augmentation alone: {result['augmentation_images_per_second']:.0f} img/s", flush=True)
    io.write_json(args.out / "step_profile.json", result)
    table = profile_table(params, images)
    io.write_text(args.out / "step_profile_ops.txt", table)
    print(table[:3000])
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
