"""The accuracy floor: plain SimCLR + kNN on every class of the params, one-class, with the same time budget.

    python -m benchmarks.plain_baseline          # writes reports/benchmarks/plain_baseline.json

"Plain" is the default profile with `memory.enabled: false` and `contrastive.rotation_weight: 0`, scored by
the kNN reference (cosine distance to the nearest normal training feature). It is given the same training
time as the default profile's stage 1: the default's mean training seconds per class, read from the
grid's data/models/*-one_class-*/history.json, divided by the plain epoch time measured here.
"""

from __future__ import annotations

import argparse
import json
import math
import time
from pathlib import Path

import numpy as np
import torch

from anomem import io, layout
from anomem.deviation import extract
from anomem.knn import knn_score
from anomem.macl import train_macl
from anomem.metrics import score_metrics
from anomem.model import AnoMemNet
from anomem.params import load_params, pair_id
from anomem.runtime import git_commit, make_runtime, seed_everything
from benchmarks.common import load_split, variant

OUT = Path("reports/benchmarks/plain_baseline.json")


def default_train_seconds(classes: list[int], seed: int) -> float | None:
    """Mean stage-1 training seconds per class of the grid in data/models, if it has run."""
    totals = []
    for cls in classes:
        path = layout.model_dir(pair_id(cls, "one_class", seed)) / "history.json"
        if path.exists():
            totals.append(sum(h["epoch_seconds"] for h in json.loads(path.read_text())["history"]))
    return float(np.mean(totals)) if totals else None


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--params", default="params.yaml")
    parser.add_argument("--epochs", type=int, help="override the time-matched epoch count")
    parser.add_argument("--classes", type=int, nargs="+", help="a subset of the params' classes (default: all of them)")
    parser.add_argument("--out", type=Path, default=OUT)
    args = parser.parse_args(argv)
    params = load_params(args.params)
    classes, seed = args.classes or params.experiment.classes, params.experiment.seeds[0]
    runtime = make_runtime(params.train.device, params.train.num_threads, params.train.precision)
    train_images = np.load(layout.images_file("train"), mmap_mode="r")
    test_images = np.load(layout.images_file("test"), mmap_mode="r")

    budget = default_train_seconds(classes, seed)
    epochs = args.epochs
    if epochs is None:
        if budget is None:
            raise SystemExit("no grid in data/models to match the time of; run `dvc repro` first or pass --epochs")
        probe = torch.from_numpy(np.ascontiguousarray(train_images[load_split(classes[0])["train_normal"]]))
        seed_everything(seed)
        timing = train_macl(
            AnoMemNet.from_params(variant(params, False, 0.0, 1)),
            probe,
            None,
            variant(params, False, 0.0, 1),
            runtime,
            seed,
            progress=False,
        )
        epochs = max(1, math.floor(budget / timing[0]["epoch_seconds"]))
        print(f"time-matched: {budget:.0f} s of default training / {timing[0]['epoch_seconds']:.1f} s per plain epoch -> {epochs} epochs")
    plain = variant(params, memory_enabled=False, rotation_weight=0.0, epochs=epochs)

    auroc, seconds = {}, []
    for cls in classes:
        split = load_split(cls)
        seed_everything(seed)
        net = AnoMemNet.from_params(plain)
        normal = torch.from_numpy(np.ascontiguousarray(train_images[split["train_normal"]]))
        began = time.perf_counter()
        train_macl(net, normal, None, plain, runtime, seed, progress=False)
        seconds.append(time.perf_counter() - began)
        _, bank = extract(net, train_images[split["train_normal"]], runtime, params.train.eval_batch_size, desc="bank")
        _, feats = extract(net, test_images, runtime, params.train.eval_batch_size, desc="test")
        name = f"{cls}_{params.data.names[cls]}"
        auroc[name] = score_metrics(split["test_labels"], knn_score(bank, feats, params.detector.knn_k))["auroc"]
        print(f"{name}: plain SimCLR + kNN AUROC {100 * auroc[name]:.1f} after {seconds[-1]:.0f} s of training")
    result = {
        "git_commit": git_commit(),
        "epochs": epochs,
        "seed": seed,
        "auroc": auroc,
        "mean_auroc": float(np.mean(list(auroc.values()))),
        "mean_train_seconds": float(np.mean(seconds)),
        "default_train_seconds": budget,
    }
    io.write_json(args.out, result)
    print(f"mean plain SimCLR + kNN AUROC {100 * result['mean_auroc']:.1f} over {len(auroc)} classes; written to {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
