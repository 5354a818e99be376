"""Which pooled feature should the kNN score compare? Every variant, scored on the features of trained stage-1 models.

    python -m benchmarks.knn_probe                     # the grid's models of classes 2 3 5 0, one_class
    python -m benchmarks.knn_probe --classes 0 1 2 3 4 5 6 7 8 9
    python -m benchmarks.knn_probe --root DIR --out reports/benchmarks/knn_probe_plain.json
        # models kept by `python -m benchmarks.ablate --keep DIR -S ...` (a plain SimCLR run, say)
    python -m benchmarks.knn_probe --resize 0.5         # every image scored at half its side (the CPU profile's views)

Nothing is trained: it reads <root>/data/models/<pair>/model.pt with <root>/params.yaml (what `dvc repro` or
`benchmarks.ablate --keep` left) and the images in data/prepared. Stage 1 is deterministic on the CPU, so the
grid's models give the same figures as a re-training. The bank is the normal training images; every variant but
"image alone" averages over the four quarter turns, each scored against the same turn of the bank, as the
committed kNN score does (`detector.knn_turns`). "+ rotation" sums a variant with the rotation score, each
standardised on val_normal (ensemble.combined_score). With a rotation head, two more rows ask whether the head
is what limits the rotation score: a 4-way logistic regression refit on the bank's clean turned features (the trained
head saw augmented views), scored as the head is; their "+ rotation" column sums them with the committed kNN score.
`--resize` scales every image (bank and queries) before the passes, to score at the training views' size. Mean
AUROC per variant lands in reports/benchmarks/knn_probe.json and is printed as a markdown table.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from sklearn.covariance import LedoitWolf
from sklearn.linear_model import LogisticRegression
from sklearn.preprocessing import StandardScaler
from tqdm.auto import tqdm

from anomem import io, layout
from anomem.data import to_float
from anomem.ensemble import combined_score
from anomem.knn import knn_score
from anomem.metrics import score_metrics
from anomem.model import ROTATIONS, AnoMemNet, rotate
from anomem.params import Params, load_params, pair_id
from anomem.runtime import git_commit, make_runtime
from anomem.views import trained_network
from benchmarks.common import load_split

OUT = Path("reports/benchmarks/knn_probe.json")
Features = dict[str, np.ndarray]  # "avg{s}" / "max{s}": (N, turns, C_s); "z": (N, turns, P); "rotation": (N,)


@torch.no_grad()
def turned_features(net: AnoMemNet, images: np.ndarray, batch_size: int, device: torch.device, side: int | None = None) -> Features:
    """Average- and max-pooled F_s of every stage, and the projection z, for each quarter turn of uint8 NHWC images
    (resized to side x side first, bilinear with antialiasing, when `side` is given)."""
    net.eval().to(device)
    out: dict[str, list[np.ndarray]] = {}
    for start in tqdm(range(0, images.shape[0], batch_size), desc="features", unit="batch", dynamic_ncols=True, leave=False):
        x = to_float(images[start : start + batch_size]).to(device)
        if side is not None and x.shape[-2:] != (side, side):
            x = F.interpolate(x, size=(side, side), mode="bilinear", antialias=True, align_corners=False)
        per_turn: dict[str, list[torch.Tensor]] = {}
        rotation = torch.zeros(x.shape[0], device=device)
        for turn in range(ROTATIONS):
            feats = net.features(rotate(x, torch.full((x.shape[0],), turn)))
            for s, f in feats.items():
                per_turn.setdefault(f"avg{s}", []).append(f.float().mean((2, 3)))
                per_turn.setdefault(f"max{s}", []).append(f.float().amax((2, 3)))
            pooled = net.pooled(feats)
            per_turn.setdefault("z", []).append(net.project(pooled).float())
            if net.rotation_head is not None:
                rotation += net.rotation_nll(pooled, turn)
        for key, views in per_turn.items():
            out.setdefault(key, []).append(torch.stack(views, 1).cpu().numpy())
        if net.rotation_head is not None:
            out.setdefault("rotation", []).append((rotation / ROTATIONS).cpu().numpy().astype(np.float64))
    return {key: np.concatenate(parts) for key, parts in out.items()}


def side_by_side(features: Features, keys: tuple[str, ...]) -> np.ndarray:
    """The named features, each L2-normalised, concatenated along the feature axis (N, turns, sum of C)."""
    return np.concatenate([F.normalize(torch.from_numpy(features[k]), dim=-1).numpy() for k in keys], axis=-1)


def mahalanobis_score(bank: Features, query: Features, keys: tuple[str, ...]) -> np.ndarray:
    """Squared Mahalanobis distance to the bank (Ledoit-Wolf covariance) of the named features concatenated,
    per turn, averaged over turns."""
    b, q = (np.concatenate([f[k] for k in keys], axis=-1) for f in (bank, query))
    return np.mean([LedoitWolf().fit(b[:, turn]).mahalanobis(q[:, turn]) for turn in range(q.shape[1])], axis=0)


def csi_score(bank: Features, query: Features) -> np.ndarray:
    """CSI's score on z, negated so that higher means more anomalous: -(max cosine similarity x norm), per turn, averaged."""
    b = F.normalize(torch.from_numpy(bank["z"]), dim=-1)
    q = torch.from_numpy(query["z"])
    similarity = torch.einsum("ntd,mtd->ntm", F.normalize(q, dim=-1), b).amax(-1)
    return (-(similarity * q.norm(dim=-1)).mean(1)).numpy().astype(np.float64)


def refit_rotation_score(bank: Features, query: Features, keys: tuple[str, ...]) -> np.ndarray:
    """-mean_k log p(k | turn k) from a 4-way logistic regression fit on the bank's turned features (the named
    features concatenated, standardised on the bank): the rotation score with a head that saw clean images."""
    b, q = (np.concatenate([f[k] for k in keys], axis=-1) for f in (bank, query))
    turns, dim = b.shape[1], b.shape[2]
    scaler = StandardScaler().fit(b.reshape(-1, dim))
    head = LogisticRegression(max_iter=1000).fit(scaler.transform(b.reshape(-1, dim)), np.tile(np.arange(turns), b.shape[0]))
    log_p = head.predict_log_proba(scaler.transform(q.reshape(-1, dim))).reshape(q.shape[0], turns, turns)
    return -np.mean([log_p[:, k, k] for k in range(turns)], axis=0)


def refit_rotation_variants(last: int) -> dict[str, tuple[str, ...]]:
    """The features each refit rotation head reads, by row name."""
    both = tuple(f"{pool}{s}" for pool in ("avg", "max") for s in (last - 1, last))
    return {
        f"rotation head refit on the bank's clean turns, S{last} pooled": (f"avg{last}",),
        f"rotation head refit on the bank's clean turns, S{last - 1} and S{last} average- and max-pooled": both,
    }


def committed_variant(last: int) -> str:
    """The row name of the kNN score the pipeline committed before 2026-12-04 (the last stage, average-pooled)."""
    return f"S{last} pooled (the committed kNN score)"


def scale_keys(prefix: str, scales: range) -> tuple[str, ...]:
    return tuple(f"{prefix}{s}" for s in scales)


def variants(last: int) -> dict[str, Callable[[Features, Features], np.ndarray]]:
    """Each kNN feature or score, by name; `last` is the encoder's last stage (S3 for the CIFAR ResNets)."""
    knn = lambda keys, k=1, turns=slice(None): lambda b, q: knn_score(side_by_side(b, keys)[:, turns], side_by_side(q, keys)[:, turns], k)
    below = last - 1
    return {
        committed_variant(last): knn((f"avg{last}",)),
        f"S{last}, the image alone (no turns)": knn((f"avg{last}",), turns=slice(0, 1)),
        f"S{below} pooled": knn((f"avg{below}",)),
        f"S{below} and S{last} side by side": knn(scale_keys("avg", range(below, last + 1))),
        f"S1 to S{last} side by side": knn(scale_keys("avg", range(1, last + 1))),
        f"S{below} and S{last}, average- and max-pooled": knn(
            scale_keys("avg", range(below, last + 1)) + scale_keys("max", range(below, last + 1))
        ),
        "projection output z": knn(("z",)),
        "z, CSI's score (similarity x norm)": csi_score,
        f"S{last}, k = 5": knn((f"avg{last}",), k=5),
        f"Mahalanobis on S{last}": lambda b, q: mahalanobis_score(b, q, (f"avg{last}",)),
        f"Mahalanobis on S{below} and S{last}": lambda b, q: mahalanobis_score(b, q, scale_keys("avg", range(below, last + 1))),
        f"Mahalanobis on S1 to S{last}": lambda b, q: mahalanobis_score(b, q, scale_keys("avg", range(1, last + 1))),
    }


def probe_pair(
    net: AnoMemNet, cls: int, setting: str, batch_size: int, device: torch.device, resize: float = 1.0
) -> dict[str, dict[str, float]]:
    """AUROC of every variant on one pair's test split, alone and (with a rotation head) summed with the rotation score."""
    split = load_split(cls, setting)
    train = np.load(layout.images_file("train"), mmap_mode="r")
    test = np.load(layout.images_file("test"), mmap_mode="r")
    side = None if resize == 1.0 else max(1, round(train.shape[1] * resize))
    bank = turned_features(net, train[split["train_normal"]], batch_size, device, side)
    # Test and val_normal in one pass and one score call, so each variant fits its bank statistics once.
    queries = turned_features(net, np.concatenate([test[split["test"]], train[split["val_normal"]]]), batch_size, device, side)
    n_test = len(split["test"])
    labels = split["test_labels"]
    rotation = queries.get("rotation")
    result: dict[str, dict[str, float]] = {}
    committed = committed_variant(net.encoder.num_stages)
    for name, score in variants(net.encoder.num_stages).items():
        scores = score(bank, queries)
        if name == committed:
            committed_knn = scores
        result[name] = {"knn": score_metrics(labels, scores[:n_test])["auroc"]}
        if rotation is not None:
            summed = combined_score({"knn": (scores[:n_test], scores[n_test:]), "rotation": (rotation[:n_test], rotation[n_test:])})
            result[name]["knn+rotation"] = score_metrics(labels, summed)["auroc"]
    if rotation is not None:
        result["the rotation score alone"] = {"knn": score_metrics(labels, rotation[:n_test])["auroc"]}
        for name, keys in refit_rotation_variants(net.encoder.num_stages).items():
            refit = refit_rotation_score(bank, queries, keys)
            summed = combined_score({"knn": (committed_knn[:n_test], committed_knn[n_test:]), "rotation": (refit[:n_test], refit[n_test:])})
            result[name] = {"knn": score_metrics(labels, refit[:n_test])["auroc"], "knn+rotation": score_metrics(labels, summed)["auroc"]}
    return result


def load_model(root: Path, params: Params, pair: str) -> AnoMemNet:
    made_by = f"{layout.made_by('train_contrastive_memory', pair)} (or `benchmarks.ablate --keep {root}`)"
    return trained_network(params, io.load_torch(root / layout.model_file(pair), made_by))


def markdown(per_class: dict[str, dict[str, dict[str, float]]]) -> str:
    """Mean AUROC (%) of each variant over the classes, alone and with the rotation score ("–" where a model has none)."""

    def mean_cell(name: str, column: str) -> str:
        values = [scores[name].get(column) for scores in per_class.values()]
        return "–" if None in values else f"{100 * np.mean(values):.1f}"

    lines = [f"| kNN feature or score ({len(per_class)} classes) | mean AUROC | + rotation |", "|---|---|---|"]
    lines += [f"| {name} | {mean_cell(name, 'knn')} | {mean_cell(name, 'knn+rotation')} |" for name in next(iter(per_class.values()))]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--root", type=Path, default=Path("."), help="the folder holding params.yaml and data/models")
    parser.add_argument("--classes", type=int, nargs="+", default=[2, 3, 5, 0])
    parser.add_argument("--setting", default="one_class", choices=("one_class", "unbalanced"))
    parser.add_argument("--out", type=Path, default=OUT)
    parser.add_argument("--resize", type=float, default=1.0, help="score every image at this fraction of its side (default 1: as is)")
    args = parser.parse_args(argv)
    if not 0 < args.resize <= 4:
        parser.error(f"--resize {args.resize:g}: expected a fraction of the images' side in (0, 4]")
    params = load_params(args.root / "params.yaml")
    runtime = make_runtime(params.train.device, params.train.num_threads, params.train.precision)
    seed = params.experiment.seeds[0]
    per_class = {}
    for cls in args.classes:
        pair = pair_id(cls, args.setting, seed)
        per_class[f"{cls}_{params.data.names[cls]}"] = probe_pair(
            load_model(args.root, params, pair), cls, args.setting, params.train.eval_batch_size, runtime.device, args.resize
        )
        print(f"{pair}: done", flush=True)
    table = markdown(per_class)
    io.write_json(args.out, {"git_commit": git_commit(), "root": str(args.root), "setting": args.setting, "seed": seed, "resize": args.resize,
                             "classes": args.classes, "auroc": per_class, "table": table})  # fmt: skip
    print(table)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
