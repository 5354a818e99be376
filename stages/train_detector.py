"""Stage train_detector: fit phi on deviation maps, and score the test split with it and the reference scores."""

from __future__ import annotations

import numpy as np

from anomem import io, layout
from anomem.detector import AnomalyDistanceDetector
from anomem.deviation import combined_score, deviation_score, fit_scale_weights
from anomem.errors import run_cli
from anomem.knn import knn_score
from anomem.params import uses_shifted_negatives
from anomem.stagekit import pair_stage
from anomem.tracking import stage_run

TOP_K = 6  # highest-scored test images kept with their deviation heatmaps


def load_maps(folder, split: str, scales: list[int]) -> dict[int, np.ndarray]:
    return {s: np.load(folder / f"{split}_s{s}.npy", mmap_mode="r") for s in scales}


def main() -> None:
    stage = pair_stage(__doc__)
    args, params, pair, runtime = stage.args, stage.params, stage.pair, stage.runtime
    folder = layout.deviation_dir(pair)
    scales = params.memory.scales
    shifted = uses_shifted_negatives(params, args.setting)

    names = ("train_normal", "train_known", "val_normal", "val_known", "test") + (("train_shifted", "val_shifted") if shifted else ())
    maps = {name: load_maps(folder, name, scales) for name in names}
    pooled = {name: np.load(folder / f"{name}_pooled.npy") for name in ("train_normal", "test")}
    rotation = (
        {name: np.load(folder / f"{name}_rotation.npy") for name in ("val_normal", "test")}
        if params.contrastive.rotation_weight > 0
        else None
    )
    with np.load(layout.split_file(args.cls, args.setting)) as f:
        test_labels = f["test_labels"]

    def stack(normal: str, *anomalous: str) -> tuple[dict[int, np.ndarray], np.ndarray]:
        parts = [normal, *anomalous]
        X = {s: np.concatenate([maps[p][s] for p in parts]) for s in scales}
        counts = [maps[p][scales[0]].shape[0] for p in parts]
        return X, np.r_[np.zeros(counts[0], np.int64), np.ones(sum(counts[1:]), np.int64)]

    X, y = stack("train_normal", "train_known", *(("train_shifted",) if shifted else ()))
    X_val, y_val = stack("val_normal", "val_known", *(("val_shifted",) if shifted else ()))
    out = layout.scores_dir(pair)
    with stage_run(params, "train_detector", pair, args.seed) as run:
        detector = AnomalyDistanceDetector(params.detector, runtime.device, seed=args.seed)
        detector.fit(
            X,
            y,
            X_val,
            y_val,
            on_epoch=lambda log: run.log_metrics(log, step=log["epoch"]),
        )
        weights = fit_scale_weights(maps["train_normal"])
        scores = {
            "detector": detector.decision_function(maps["test"]),
            "deviation": deviation_score(maps["test"], weights),
            "knn": knn_score(pooled["train_normal"], pooled["test"], params.detector.knn_k),
        }
        val_normal_scores = detector.decision_function(maps["val_normal"])
        if rotation is not None:
            scores["rotation"] = rotation["test"]
            scores["combined"] = combined_score(
                {
                    "detector": (scores["detector"], val_normal_scores),
                    "rotation": (rotation["test"], rotation["val_normal"]),
                }
            )
        top = np.argsort(-scores["detector"], kind="stable")[:TOP_K]
        heat = {f"heat_s{s}": (maps["test"][s][top].astype(np.float32) ** 2).sum(1) for s in scales}
        io.save_npz(
            out / "scores.npz",
            labels=test_labels, top_index=top, val_normal_detector=val_normal_scores,
            threshold=np.float64(np.percentile(val_normal_scores, 95)),
            **{f"score_{k}": v for k, v in scores.items()}, **heat,
        )  # fmt: skip
        io.save_torch(out / "detector.pt", {**detector.state_dict(), "scale_weights": weights})
        io.write_json(
            out / "history.json",
            {"history": detector.history, "best_epoch": detector.best_epoch},
        )
        run.log_metrics({"best_epoch": detector.best_epoch})
    print(f"{pair}: detector fitted (best epoch {detector.best_epoch}), {scores['detector'].size} test images scored")


if __name__ == "__main__":
    run_cli(main)
