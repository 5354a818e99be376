"""Stage train_detector: fit phi on deviation maps, and score the test split with it and the reference scores."""

from __future__ import annotations

import numpy as np

from anomem import io, layout
from anomem.detector import AnomalyDistanceDetector
from anomem.deviation import energy_maps, fit_scale_weights
from anomem.ensemble import combined_score, pick_parts, split_scorers
from anomem.errors import run_cli
from anomem.params import flatten, uses_shifted_negatives
from anomem.stagekit import pair_stage
from anomem.tracking import stage_run

TOP_K = 6  # highest-scored test images kept with their deviation heatmaps


def load_maps(pair: str, split: str, scales: list[int], made_by: str) -> dict[int, np.ndarray]:
    return {s: io.load_npy(layout.deviation_maps_file(pair, split, s), made_by, mmap=True) for s in scales}


def main() -> None:
    stage = pair_stage(__doc__)
    args, params, pair, runtime = stage.args, stage.params, stage.pair, stage.runtime
    scales = params.memory.scales
    shifted = uses_shifted_negatives(params, args.setting)

    names = ("train_normal", "train_known", "val_normal", "val_known", "test") + (("train_shifted", "val_shifted") if shifted else ())
    made_by = layout.made_by("extract_deviation_maps", pair)
    maps = {name: load_maps(pair, name, scales, made_by) for name in names}
    scored = ("val_normal", "val_known", "test")
    pooled = {name: io.load_npy(layout.pooled_file(pair, name), made_by) for name in (layout.KNN_BANK, *scored)}
    rotation = (
        {name: io.load_npy(layout.rotation_file(pair, name), made_by) for name in scored}
        if params.contrastive.rotation_weight > 0
        else None
    )
    test_labels = io.load_npz(layout.split_file(args.cls, args.setting), layout.PREPARED_BY)["test_labels"]

    def stack(normal: str, *anomalous: str) -> tuple[dict[int, np.ndarray], np.ndarray]:
        parts = [normal, *anomalous]
        X = {s: np.concatenate([maps[p][s] for p in parts]) for s in scales}
        counts = [maps[p][scales[0]].shape[0] for p in parts]
        return X, np.r_[np.zeros(counts[0], np.int64), np.ones(sum(counts[1:]), np.int64)]

    X, y = stack("train_normal", "train_known", *(("train_shifted",) if shifted else ()))
    X_val, y_val = stack("val_normal", "val_known", *(("val_shifted",) if shifted else ()))
    with stage_run(params, "train_detector", pair, args.seed) as run:
        detector = AnomalyDistanceDetector(params.detector, runtime.device, seed=args.seed)
        detector.fit(
            X,
            y,
            X_val,
            y_val,
            on_epoch=lambda log: run.log_metrics(log, step=log["epoch"]),
        )
        weights = fit_scale_weights(maps["train_normal"], params.detector.scale_weights)
        scorers = split_scorers(detector, weights, maps, pooled, rotation, params.detector.knn_k)
        scores = {k: score("test") for k, score in scorers.items()}
        parts = tuple(k for k in params.detector.combine if k in scorers)
        # The headline is standardised (and, unbalanced, picked) on validation: only its parts are scored there,
        # plus the detector on val_normal for the threshold.
        val_normal = {k: scorers[k]("val_normal") for k in dict.fromkeys(("detector", *parts))}
        val_known = {k: scorers[k]("val_known") for k in parts}
        if params.detector.pick_by_validation and len(val_known[parts[0]]) and len(parts) > 1:
            parts, val_auroc = pick_parts(parts, val_normal, val_known)
            run.log_metrics({"combined_val_auroc": val_auroc})
        run.set_tags({"combined_parts": "+".join(parts)})
        scores["combined"] = combined_score({k: (scores[k], val_normal[k]) for k in parts})
        top = np.argsort(-scores["detector"], kind="stable")[:TOP_K]
        heat = {f"heat_s{s}": e for s, e in energy_maps({s: maps["test"][s][top] for s in scales}).items()}
        io.save_npz(
            layout.scores_file(pair),
            labels=test_labels, top_index=top, val_normal_detector=val_normal["detector"], combined_parts=np.array(parts),
            threshold=np.float64(np.percentile(val_normal["detector"], 95)),
            **{f"score_{k}": v for k, v in scores.items()}, **heat,
        )  # fmt: skip
        # The params too, so that `anomem score` can refuse others where no dvc.lock records them (not the
        # grid's experiment group or tracking: they say nothing of this pair's computation).
        fitted_with = {k: v for k, v in flatten(params.to_dict()).items() if not k.startswith(("experiment.", "tracking."))}
        io.save_torch(layout.detector_file(pair), {**detector.state_dict(), "scale_weights": weights, "params": fitted_with})
        io.write_json(
            layout.scores_dir(pair) / "history.json",
            {"history": detector.history, "best_epoch": detector.best_epoch},
        )
        run.log_metrics({"best_epoch": detector.best_epoch})
    print(
        f"{pair}: detector fitted (best epoch {detector.best_epoch}), {scores['detector'].size} test images scored; "
        f"combined = {' + '.join(parts)}"
    )


if __name__ == "__main__":
    run_cli(main)
