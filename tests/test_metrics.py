"""AUROC / AUPR / FPR@95%TPR and their aggregation into the layout of reports/metrics.json."""

from __future__ import annotations

import numpy as np
import pytest

from anomem.metrics import METRICS, aggregate, mean_std, score_metrics

LABELS = np.r_[np.zeros(50, np.int64), np.ones(50, np.int64)]


def test_perfect_scores():
    scores = LABELS + np.linspace(0, 0.5, 100)
    m = score_metrics(LABELS, scores)
    assert set(m) == set(METRICS)
    assert m == {"auroc": 1.0, "aupr": 1.0, "fpr95": 0.0}


def test_reversed_scores():
    m = score_metrics(LABELS, -(LABELS + np.linspace(0, 0.5, 100)))
    assert m["auroc"] == 0.0
    assert m["fpr95"] == 1.0
    assert m["aupr"] < 0.6


def test_random_scores_are_chance():
    rng = np.random.default_rng(0)
    labels = rng.integers(0, 2, 20000)
    m = score_metrics(labels, rng.random(20000))
    assert m["auroc"] == pytest.approx(0.5, abs=0.02)
    assert m["aupr"] == pytest.approx(labels.mean(), abs=0.02)
    assert m["fpr95"] == pytest.approx(0.95, abs=0.02)


def test_fpr95_by_hand():
    # 20 normals score 0..19; 17 anomalies score above all of them, 3 score 14.5, 9.5 and 4.5.
    # 95 % TPR = 19 of 20 anomalies: the threshold drops to 9.5, above which 10 of 20 normals lie
    # (at 90 % TPR, threshold 14.5, it would be 5 of 20).
    labels = np.r_[np.zeros(20), np.ones(20)].astype(int)
    scores = np.r_[np.arange(20.0), 100 + np.arange(17.0), 14.5, 9.5, 4.5]
    m = score_metrics(labels, scores)
    assert m["fpr95"] == pytest.approx(0.5)
    assert m["auroc"] == pytest.approx((17 * 20 + 15 + 10 + 5) / 400)


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_non_finite_scores_raise(bad):
    scores = np.linspace(0, 1, 100)
    scores[3] = bad
    with pytest.raises(ValueError, match="not finite"):
        score_metrics(LABELS, scores)


def _m(auroc, aupr, fpr95):
    return {"auroc": auroc, "aupr": aupr, "fpr95": fpr95}


def test_aggregate_means_and_stds():
    names = ["airplane", "automobile", "bird", "cat"]
    per_pair = {
        "one_class": {
            0: {0: {"detector": _m(0.8, 0.6, 0.4), "knn": _m(0.6, 0.5, 0.9)}, 1: {"detector": _m(0.9, 0.7, 0.2), "knn": _m(0.7, 0.5, 0.7)}},
            3: {0: {"detector": _m(0.5, 0.4, 1.0), "knn": _m(0.4, 0.3, 0.8)}},
        },
        "unbalanced": {2: {5: {"detector": _m(0.95, 0.9, 0.1)}}},
    }
    out = aggregate(per_pair, names)
    assert set(out) == {"mean", "classes"}
    assert set(out["classes"]) == set(out["mean"]) == {"one_class", "unbalanced"}

    oc = out["classes"]["one_class"]
    assert set(oc) == {"0_airplane", "3_cat"}
    # class 0: mean over its two seeds, and the (population) std over them
    assert oc["0_airplane"]["detector"]["auroc"] == pytest.approx(0.85)
    assert oc["0_airplane"]["detector"]["auroc_seed_std"] == pytest.approx(0.05)
    assert oc["0_airplane"]["detector"]["fpr95"] == pytest.approx(0.3)
    assert oc["0_airplane"]["detector"]["fpr95_seed_std"] == pytest.approx(0.1)
    assert oc["0_airplane"]["knn"]["aupr_seed_std"] == pytest.approx(0.0)
    # class 3: one seed, no seed std
    assert oc["3_cat"]["detector"] == {"auroc": 0.5, "aupr": 0.4, "fpr95": 1.0}

    # mean over classes of the per-class means, with the std over classes
    mean = out["mean"]["one_class"]["detector"]
    assert mean["auroc"] == pytest.approx((0.85 + 0.5) / 2)
    assert mean["auroc_class_std"] == pytest.approx(0.175)
    assert mean["fpr95"] == pytest.approx((0.3 + 1.0) / 2)
    assert mean["fpr95_class_std"] == pytest.approx(0.35)
    assert out["mean"]["one_class"]["knn"]["auroc"] == pytest.approx((0.65 + 0.4) / 2)

    ub = out["mean"]["unbalanced"]
    assert set(ub) == {"detector"}
    assert ub["detector"]["auroc"] == pytest.approx(0.95) and ub["detector"]["auroc_class_std"] == 0.0
    assert out["classes"]["unbalanced"]["2_bird"]["detector"]["aupr"] == pytest.approx(0.9)


def test_mean_std():
    assert mean_std([1.0, 2.0, 3.0, 4.0]) == pytest.approx({"mean": 2.5, "std": np.std([1, 2, 3, 4]), "n": 4})
