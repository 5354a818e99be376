"""The scores of a pair by name, and the headline `combined`: a sum of them, each standardised on the normal
validation images.

Which scores go in is `detector.combine`. Where the validation split holds labelled anomalies (the
unbalanced setting) and `detector.pick_by_validation` is on, only the subset that separates them best
is summed; one_class has no labelled anomalies to choose with and sums every listed score.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from itertools import combinations

import numpy as np
from sklearn.metrics import roc_auc_score

from anomem.detector import AnomalyDistanceDetector
from anomem.deviation import Maps, deviation_score
from anomem.knn import knn_score
from anomem.layout import KNN_BANK


def split_scorers(
    detector: AnomalyDistanceDetector,
    scale_weights: Mapping[int, float],
    maps: Mapping[str, Maps],
    pooled: Mapping[str, np.ndarray],
    rotation: Mapping[str, np.ndarray] | None,
    knn_k: int,
) -> dict[str, Callable[[str], np.ndarray]]:
    """Every score of a split, by name, as a function of the split's name; higher means more anomalous.

    `maps`, `pooled` and `rotation` map a split's name to its deviation maps, kNN features and rotation scores
    (`views.extract`); `pooled` also holds the kNN bank, `layout.KNN_BANK`. `rotation` is None without a rotation head,
    and there is then no rotation score. A score is computed only when asked for.
    """
    scorers = {
        "detector": lambda split: detector.decision_function(maps[split]),
        "deviation": lambda split: deviation_score(maps[split], scale_weights),
        "knn": lambda split: knn_score(pooled[KNN_BANK], pooled[split], knn_k),
    }
    if rotation is not None:
        scorers["rotation"] = lambda split: rotation[split]
    return scorers


def combined_score(scores: Mapping[str, tuple[np.ndarray, np.ndarray]]) -> np.ndarray:
    """Sum of scores, each standardised by its mean and std on the normal validation images.

    scores maps a name to (scores to combine, validation-normal scores); the test split sets nothing here.
    """
    return sum((values - val.mean()) / (val.std() + 1e-12) for values, val in scores.values())


def pick_parts(
    names: Sequence[str],
    val_normal: Mapping[str, np.ndarray],
    val_known: Mapping[str, np.ndarray],
) -> tuple[tuple[str, ...], float]:
    """The non-empty subset of `names` whose combined score best separates val_known from val_normal.

    Returns the subset and its validation AUROC. Ties go to the smaller subset, then to `names`' order.
    """
    labels = np.r_[np.zeros(len(val_normal[names[0]])), np.ones(len(val_known[names[0]]))]
    if labels.min() == labels.max():
        raise ValueError("picking scores needs both normal and known-anomalous validation images")
    # Standardised once on val_normal; a subset's combined score is then the sum of its columns.
    standardised = {k: combined_score({k: (np.r_[val_normal[k], val_known[k]], val_normal[k])}) for k in names}
    best, best_auroc = (), -1.0
    for size in range(1, len(names) + 1):
        for subset in combinations(names, size):
            auroc = float(roc_auc_score(labels, sum(standardised[k] for k in subset)))
            if auroc > best_auroc:
                best, best_auroc = subset, auroc
    return best, best_auroc
