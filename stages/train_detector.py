"""Stage train_detector: fit phi on deviation maps, and score the test split with it and both references."""

from __future__ import annotations

import numpy as np

from anomem import io, layout
from anomem.stagekit import stage_arguments
from anomem.detector import AnomalyDistanceDetector
from anomem.deviation import deviation_score, fit_scale_weights
from anomem.errors import run_cli
from anomem.knn import knn_score
from anomem.params import load_params, pair_id
from anomem.runtime import make_runtime, seed_everything
from anomem.tracking import stage_run

TOP_K = 6  # highest-scored test images kept with their deviation heatmaps


def load_maps(folder, split: str, scales: list[int]) -> dict[int, np.ndarray]:
    return {s: np.load(folder / f"{split}_s{s}.npy", mmap_mode="r") for s in scales}


def main() -> None:
    args = stage_arguments(__doc__)
    params = load_params(args.params)
    pair = pair_id(args.cls, args.setting, args.seed)
    runtime = make_runtime(params.train.device, params.train.num_threads, params.train.precision)
    seed_everything(args.seed)
    folder = layout.deviation_dir(pair)
    scales = params.memory.scales

    maps = {name: load_maps(folder, name, scales) for name in ("train_normal", "train_known", "val_normal", "val_known", "test")}
    pooled = {name: np.load(folder / f"{name}_pooled.npy") for name in ("train_normal", "test")}
    with np.load(layout.split_file(args.cls, args.setting)) as f:
        test_labels = f["test_labels"]

    def stack(a: str, b: str) -> tuple[dict[int, np.ndarray], np.ndarray]:
        X = {s: np.concatenate([maps[a][s], maps[b][s]]) for s in scales}
        return X, np.r_[np.zeros(maps[a][scales[0]].shape[0], np.int64), np.ones(maps[b][scales[0]].shape[0], np.int64)]

    X, y = stack("train_normal", "train_known")
    X_val, y_val = stack("val_normal", "val_known")
    out = layout.scores_dir(pair)
    with stage_run(params, "train_detector", pair, args.seed) as run:
        detector = AnomalyDistanceDetector(params.detector, runtime.device, seed=args.seed)
        detector.fit(X, y, X_val, y_val, on_epoch=lambda log: run.log_metrics(log, step=log["epoch"]))
        weights = fit_scale_weights(maps["train_normal"])
        scores = {
            "detector": detector.decision_function(maps["test"]),
            "deviation": deviation_score(maps["test"], weights),
            "knn": knn_score(pooled["train_normal"], pooled["test"], params.detector.knn_k),
        }
        val_normal_scores = detector.decision_function(maps["val_normal"])
        top = np.argsort(-scores["detector"], kind="stable")[:TOP_K]
        heat = {f"heat_s{s}": (maps["test"][s][top].astype(np.float32) ** 2).sum(1) for s in scales}
        io.save_npz(
            out / "scores.npz",
            labels=test_labels, top_index=top, val_normal_detector=val_normal_scores,
            threshold=np.float64(np.percentile(val_normal_scores, 95)),
            **{f"score_{k}": v for k, v in scores.items()}, **heat,
        )  # fmt: skip
        io.save_torch(out / "detector.pt", {**detector.state_dict(), "scale_weights": weights})
        io.write_json(out / "history.json", {"history": detector.history, "best_epoch": detector.best_epoch})
        run.log_metrics({"best_epoch": detector.best_epoch})
    print(f"{pair}: detector fitted (best epoch {detector.best_epoch}), {scores['detector'].size} test images scored")


if __name__ == "__main__":
    run_cli(main)
