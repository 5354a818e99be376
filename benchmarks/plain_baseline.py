"""The accuracy floor: plain SimCLR + kNN on every class of the params, one-class, with the same time budget.

    python -m benchmarks.plain_baseline          # writes reports/benchmarks/plain_baseline.json

"Plain" is the default profile with `memory.enabled: false`, `contrastive.rotation_weight: 0` and
`contrastive.shifted_instances: 1` (no turns at all), scored by
the kNN reference (cosine distance to the nearest normal training feature) exactly as the default's kNN score
is: over the same test-time views (`detector.knn_turns`, `detector.knn_mirror`) and with the same feature
(`detector.knn_scales`). Beside it (`auroc_single_view`) is textbook SimCLR + kNN, the baseline as the issue
defines it: the un-augmented image alone, the last stage's pooled feature. It is given the same training
time as the default profile's stage 1: both steps are timed here, in the same process, on the same images
(after a warm-up epoch each), and plain gets round(train.epochs x default epoch time / plain epoch time)
epochs. Timing both in one run keeps the match fair when the machine is busy with something else.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np
import torch

from anomem import io, layout
from anomem.knn import knn_score
from anomem.macl import train_macl
from anomem.metrics import score_metrics
from anomem.model import AnoMemNet
from anomem.params import Params, load_params
from anomem.runtime import git_commit, make_runtime, seed_everything
from anomem.views import IMAGE_AS_IS, extract, scoring_views
from benchmarks.common import load_class_images, load_split, plain_simclr, step_throughput

OUT = Path("reports/benchmarks/plain_baseline.json")


def matched_epochs(params: Params, images: torch.Tensor) -> dict:
    """Plain epochs that take as long as the default profile's stage 1, from both steps timed on `images`."""
    default = step_throughput(params, images)["epoch_seconds"]
    plain = step_throughput(plain_simclr(params), images)["epoch_seconds"]
    return {
        "default_epoch_seconds": default,
        "plain_epoch_seconds": plain,
        "epochs": max(1, round(params.train.epochs * default / plain)),
        "probe_images": int(images.shape[0]),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--params", default="params.yaml")
    parser.add_argument("--epochs", type=int, help="override the time-matched epoch count")
    parser.add_argument("--classes", type=int, nargs="+", help="a subset of the params' classes (default: all of them)")
    parser.add_argument("--probe-images", type=int, default=2048, help="images of the first class that time both steps")
    parser.add_argument("--out", type=Path, default=OUT)
    args = parser.parse_args(argv)
    params = load_params(args.params)
    classes, seed = args.classes or params.experiment.classes, params.experiment.seeds[0]
    runtime = make_runtime(params.train.device, params.train.num_threads, params.train.precision)
    train_images = np.load(layout.images_file("train"), mmap_mode="r")
    test_images = np.load(layout.images_file("test"), mmap_mode="r")

    timing = None
    epochs = args.epochs
    if epochs is None:
        probe = torch.from_numpy(load_class_images(params, classes[0])[: args.probe_images])
        timing = matched_epochs(params, probe)
        epochs = timing["epochs"]
        print(
            f"time-matched: {params.train.epochs} default epochs x {timing['default_epoch_seconds']:.1f} s / "
            f"{timing['plain_epoch_seconds']:.1f} s per plain epoch ({timing['probe_images']} images) -> {epochs} plain epochs"
        )
    plain = plain_simclr(params, epochs)

    views = scoring_views(params.detector.knn_turns, params.detector.knn_mirror)
    scales, pooling = tuple(params.detector.knn_scales), params.detector.knn_pooling
    batch = params.train.eval_batch_size
    auroc, single_view, seconds = {}, {}, []
    for cls in classes:
        split = load_split(cls)
        seed_everything(seed)
        net = AnoMemNet.from_params(plain)
        normal = torch.from_numpy(np.ascontiguousarray(train_images[split["train_normal"]]))
        began = time.perf_counter()
        train_macl(net, normal, None, plain, runtime, seed, progress=False)
        seconds.append(time.perf_counter() - began)
        bank = extract(net, normal, runtime, batch, views, desc="bank", knn_scales=scales, knn_pooling=pooling).pooled
        feats = extract(net, test_images, runtime, batch, views, desc="test", knn_scales=scales, knn_pooling=pooling).pooled
        name = f"{cls}_{params.data.names[cls]}"
        auroc[name] = score_metrics(split["test_labels"], knn_score(bank, feats, params.detector.knn_k))["auroc"]
        if views == [IMAGE_AS_IS] and not scales and pooling == "avg":  # scored like the default is already the textbook score
            single_view[name] = auroc[name]
        else:
            bank, feats = (extract(net, x, runtime, batch, [IMAGE_AS_IS], desc="textbook").pooled for x in (normal, test_images))
            single_view[name] = score_metrics(split["test_labels"], knn_score(bank, feats, params.detector.knn_k))["auroc"]
        print(
            f"{name}: plain SimCLR + kNN AUROC {100 * auroc[name]:.1f} scored as the default's kNN, "
            f"{100 * single_view[name]:.1f} textbook (image alone, last stage), after {seconds[-1]:.0f} s of training"
        )
    result = {
        "git_commit": git_commit(),
        "epochs": epochs,
        "seed": seed,
        "auroc": auroc,
        "mean_auroc": float(np.mean(list(auroc.values()))),
        "views": [list(v) for v in views],
        "knn_scales": list(scales),
        "knn_pooling": pooling,
        "auroc_single_view": single_view,
        "mean_auroc_single_view": float(np.mean(list(single_view.values()))),
        "mean_train_seconds": float(np.mean(seconds)),
        "timing": timing,
    }
    io.write_json(args.out, result)
    print(f"mean plain SimCLR + kNN AUROC {100 * result['mean_auroc']:.1f} over {len(auroc)} classes; written to {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
