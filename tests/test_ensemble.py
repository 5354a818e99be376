"""The headline score: standardised sums, and the subset picked on labelled validation anomalies."""

import numpy as np
import pytest
from sklearn.metrics import roc_auc_score

from anomem.ensemble import combined_score, pick_parts


def test_combined_score_standardises_each_part_on_validation_normals():
    rng = np.random.default_rng(0)
    labels = np.r_[np.zeros(500), np.ones(500)]
    # Two scores on wildly different scales, each separating the classes a little.
    a_test = 1000 * (rng.normal(size=1000) + 0.5 * labels)
    b_test = 0.001 * (rng.normal(size=1000) + 0.5 * labels)
    a_val, b_val = 1000 * rng.normal(size=300), 0.001 * rng.normal(size=300)
    combined = combined_score({"a": (a_test, a_val), "b": (b_test, b_val)})
    z = (a_test - a_val.mean()) / a_val.std() + (b_test - b_val.mean()) / b_val.std()
    np.testing.assert_allclose(combined, z, rtol=1e-6, atol=1e-8)
    # Both parts count alike, so the sum separates better than either part alone.
    assert roc_auc_score(labels, combined) > max(roc_auc_score(labels, a_test), roc_auc_score(labels, b_test)) + 0.02


def _validation(shifts: dict[str, float], n_normal: int = 400, n_known: int = 60, seed: int = 0):
    """Scores whose known anomalies sit `shift` standard deviations above the normals, independent noise each."""
    rng = np.random.default_rng(seed)
    normal = {k: rng.normal(size=n_normal) for k in shifts}
    known = {k: rng.normal(size=n_known) + shift for k, shift in shifts.items()}
    return normal, known


def test_pick_drops_a_score_that_only_adds_noise():
    normal, known = _validation({"detector": 2.0, "rotation": 0.0, "knn": 0.0})
    parts, auroc = pick_parts(("detector", "rotation", "knn"), normal, known)
    assert parts == ("detector",)
    assert auroc > 0.9


def test_pick_keeps_two_scores_that_each_carry_signal():
    normal, known = _validation({"detector": 1.0, "rotation": 0.0, "knn": 1.0})
    parts, auroc = pick_parts(("detector", "rotation", "knn"), normal, known)
    assert parts == ("detector", "knn")
    single = max(pick_parts((k,), normal, known)[1] for k in ("detector", "knn"))
    assert auroc > single


def test_pick_prefers_fewer_parts_on_a_tie():
    normal, known = _validation({"a": 10.0, "b": 10.0})  # each alone already separates perfectly
    assert pick_parts(("b", "a"), normal, known) == (("b",), 1.0)


def test_pick_needs_known_anomalies():
    normal, known = _validation({"detector": 1.0}, n_known=0)
    with pytest.raises(ValueError, match="known-anomalous validation images"):
        pick_parts(("detector",), normal, known)
