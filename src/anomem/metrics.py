"""AUROC, AUPR and FPR at 95% TPR (scikit-learn), and their aggregation over pairs."""

from __future__ import annotations

import numpy as np
from sklearn.metrics import average_precision_score, roc_auc_score, roc_curve

METRICS = ("auroc", "aupr", "fpr95")


def score_metrics(labels: np.ndarray, scores: np.ndarray) -> dict[str, float]:
    """Label 1 = anomaly, and higher scores mean more anomalous. AUPR takes anomalies as the positives."""
    labels = np.asarray(labels)
    scores = np.asarray(scores, dtype=np.float64)
    if not np.all(np.isfinite(scores)):
        raise ValueError(f"{int((~np.isfinite(scores)).sum())} scores are not finite")
    fpr, tpr, _ = roc_curve(labels, scores)
    return {
        "auroc": float(roc_auc_score(labels, scores)),
        "aupr": float(average_precision_score(labels, scores)),
        "fpr95": float(fpr[np.searchsorted(tpr, 0.95, side="left")]),
    }


def mean_std(values: list[float]) -> dict[str, float]:
    arr = np.asarray(values, dtype=np.float64)
    return {
        "mean": float(arr.mean()),
        "std": float(arr.std(ddof=0)),
        "n": int(arr.size),
    }


def aggregate(
    per_pair: dict[str, dict[int, dict[int, dict[str, dict[str, float]]]]],
    class_names: list[str],
) -> dict:
    """per_pair[setting][cls][seed][score][metric] -> the layout of reports/metrics.json.

    classes: the mean over seeds per class (and the std over seeds when there are several);
    mean: the mean over classes of those per-class means, with the std over classes.
    """
    out: dict = {"mean": {}, "classes": {}}
    for setting, by_class in per_pair.items():
        out["classes"][setting] = {}
        class_means: dict[str, dict[str, list[float]]] = {}
        for cls, by_seed in by_class.items():
            name = f"{cls}_{class_names[cls]}"
            out["classes"][setting][name] = {}
            for score in next(iter(by_seed.values())):
                entry = {}
                for metric in METRICS:
                    stats = mean_std([by_seed[s][score][metric] for s in by_seed])
                    entry[metric] = stats["mean"]
                    if stats["n"] > 1:
                        entry[f"{metric}_seed_std"] = stats["std"]
                    class_means.setdefault(score, {}).setdefault(metric, []).append(stats["mean"])
                out["classes"][setting][name][score] = entry
        out["mean"][setting] = {
            score: {
                **{m: mean_std(v)["mean"] for m, v in ms.items()},
                **{f"{m}_class_std": mean_std(v)["std"] for m, v in ms.items()},
            }
            for score, ms in class_means.items()
        }
    return out
