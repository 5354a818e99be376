"""The anomaly distance detector (Deep SVDD / Deep SAD on deviation maps), on synthetic maps with planted anomalies."""

from __future__ import annotations

import io

import numpy as np
import pytest
import torch
from sklearn.metrics import roc_auc_score
from torch import nn

from anomem.detector import AnomalyDistanceDetector
from anomem.params import parse_params


def _params(**over):
    d = {"channels": 8, "hidden": 32, "rep_dim": 16, "epochs": 10, "batch_size": 64, "lr": 1e-3}
    d.update(over)
    return parse_params({"detector": d}).detector


def _subset(X, idx):
    return {s: m[idx] for s, m in X.items()}


@pytest.fixture
def data(deviation_maps):
    train, _ = deviation_maps(256, 0, seed=0)
    test, y_test = deviation_maps(200, 200, seed=1)
    return train, test, y_test


def test_one_class_fit_separates_planted_anomalies(data):
    train, test, y_test = data
    det = AnomalyDistanceDetector(_params(), seed=0, progress=False).fit(train)
    scores = det.decision_function(test)
    assert scores.shape == (400,) and scores.dtype == np.float64
    assert np.all(scores >= 0)
    assert roc_auc_score(y_test, scores) > 0.9
    assert len(det.history) == 10 and [h["epoch"] for h in det.history] == list(range(10))
    assert det.history[-1]["train_loss"] < 0.5 * det.history[0]["train_loss"]
    assert det.best_epoch == 9 and "val_loss" not in det.history[0]


def test_deep_sad_with_known_anomalies(deviation_maps, data):
    _, test, y_test = data
    X, y = deviation_maps(256, 16, seed=2)
    sad = AnomalyDistanceDetector(_params(), seed=0, progress=False).fit(X, y)
    svdd = AnomalyDistanceDetector(_params(), seed=0, progress=False).fit(_subset(X, y == 0))

    assert roc_auc_score(y_test, sad.decision_function(test)) > 0.9
    s_sad, s_svdd = sad.decision_function(X), svdd.decision_function(X)
    assert s_sad[y == 1].mean() > 5 * s_sad[y == 0].mean()
    # the known-anomaly term pushes them out: far more than a one-class fit leaves them (same centre, same seed)
    assert torch.allclose(sad.center, svdd.center)
    assert s_sad[y == 1].mean() > 10 * s_svdd[y == 1].mean()


def test_network_has_no_bias(data):
    det = AnomalyDistanceDetector(_params(epochs=1), progress=False).fit(data[0])
    names = [n for n, _ in det.net.named_parameters()]
    assert names and not any(n.endswith("bias") for n in names)
    layers = [m for m in det.net.modules() if isinstance(m, (nn.Conv2d, nn.Linear))]
    assert len(layers) == 2 * 2 + 2 and all(m.bias is None for m in layers)


def test_center_is_the_mean_normal_embedding_before_training(deviation_maps):
    X, y = deviation_maps(128, 16, seed=3)
    normal = _subset(X, y == 0)
    # a negligible learning rate leaves phi as it was when the centre was taken
    frozen = AnomalyDistanceDetector(_params(epochs=1, lr=1e-12), seed=4, progress=False).fit(X, y)
    with torch.no_grad():
        emb = frozen.net({s: torch.as_tensor(m, dtype=torch.float32) for s, m in normal.items()})
        emb_all = frozen.net({s: torch.as_tensor(m, dtype=torch.float32) for s, m in X.items()})
    assert torch.allclose(frozen.center, emb.mean(0), atol=1e-5)
    assert not torch.allclose(frozen.center, emb_all.mean(0), atol=1e-5), "known anomalies stay out of the centre"
    # training does not move it
    trained = AnomalyDistanceDetector(_params(epochs=5), seed=4, progress=False).fit(X, y)
    assert torch.allclose(trained.center, frozen.center)
    assert trained.center.abs().min() >= trained.params.eps


def test_validation_keeps_the_best_epoch(data, deviation_maps):
    train, _, _ = data
    val, y_val = deviation_maps(64, 8, seed=5)
    logs = []
    det = AnomalyDistanceDetector(_params(epochs=8), seed=0, progress=False).fit(train, X_val=val, y_val=y_val, on_epoch=logs.append)
    assert logs == det.history and len(logs) == 8
    val_losses = [h["val_loss"] for h in det.history]
    assert all(np.isfinite(val_losses))
    assert det.best_epoch == int(np.argmin(val_losses))
    assert det.best_epoch < 7, "with these maps the validation objective turns up, so restoring is observable"
    # the weights of the best epoch are the ones kept
    assert det.objective(val, y_val) == pytest.approx(min(val_losses), rel=1e-5)
    assert det.state_dict()["best_epoch"] == det.best_epoch


@pytest.mark.parametrize(
    "make_y",
    [
        pytest.param(lambda n: np.r_[np.zeros(n - 1), 2], id="value-2"),
        pytest.param(lambda n: np.r_[np.zeros(n - 1), -1], id="value-minus-1"),
        pytest.param(lambda n: np.zeros(n - 1), id="too-short"),
        pytest.param(lambda n: np.zeros((n, 1)), id="wrong-shape"),
        pytest.param(lambda n: np.ones(n), id="all-anomalies"),
    ],
)
def test_bad_y_raises(deviation_maps, make_y):
    X, _ = deviation_maps(16, 0)
    with pytest.raises(ValueError):
        AnomalyDistanceDetector(_params(epochs=1), progress=False).fit(X, make_y(16))


def test_fractional_y_raises(deviation_maps):
    X, _ = deviation_maps(16, 0)
    with pytest.raises(ValueError):
        AnomalyDistanceDetector(_params(epochs=1), progress=False).fit(X, np.r_[np.zeros(15), 0.5])


def test_other_misuse_raises(deviation_maps):
    X, _ = deviation_maps(16, 0)
    det = AnomalyDistanceDetector(_params(epochs=1), progress=False)
    with pytest.raises(RuntimeError):
        det.decision_function(X)
    with pytest.raises(ValueError, match="same number"):
        det.fit({2: X[2], 3: X[3][:8]})


def test_state_dict_round_trip(data):
    train, test, _ = data
    det = AnomalyDistanceDetector(_params(epochs=3), seed=0, progress=False).fit(train)
    buf = io.BytesIO()
    torch.save(det.state_dict(), buf)
    buf.seek(0)
    loaded = AnomalyDistanceDetector(_params(epochs=3), seed=123, progress=False).load_state_dict(torch.load(buf, weights_only=False))
    assert np.array_equal(loaded.decision_function(test), det.decision_function(test))
    assert loaded.best_epoch == det.best_epoch == 2


def test_same_seed_same_scores(data):
    train, test, _ = data
    a = AnomalyDistanceDetector(_params(epochs=3), seed=7, progress=False).fit(train).decision_function(test)
    b = AnomalyDistanceDetector(_params(epochs=3), seed=7, progress=False).fit(train).decision_function(test)
    c = AnomalyDistanceDetector(_params(epochs=3), seed=8, progress=False).fit(train).decision_function(test)
    assert np.array_equal(a, b)
    assert not np.allclose(a, c)


def test_select_last_keeps_the_last_epoch(data, deviation_maps):
    train, _, _ = data
    val, y_val = deviation_maps(64, 8, seed=5)
    det = AnomalyDistanceDetector(_params(epochs=8, select="last"), seed=0, progress=False).fit(train, X_val=val, y_val=y_val)
    assert det.best_epoch == 7
    assert det.objective(val, y_val) == pytest.approx(det.history[-1]["val_loss"], rel=1e-5)


@pytest.mark.parametrize(
    "over",
    [
        {"pooling": "avg"},
        {"optimizer": "sgd", "lr": 1e-5},  # plain SGD needs a far smaller step than Adam on the 1/dist term
        {"loss_reduction": "joint"},
        {"known_sampling": "epoch"},
    ],
    ids=lambda o: next(iter(o.values())),
)
def test_each_alternative_still_separates_planted_anomalies(deviation_maps, data, over):
    train, test, y_test = data
    known, _ = deviation_maps(0, 16, seed=3)
    X = {s: np.concatenate([train[s], known[s]]) for s in train}
    y = np.r_[np.zeros(256, np.int64), np.ones(16, np.int64)]
    det = AnomalyDistanceDetector(_params(known_batch_size=8, **over), seed=0, progress=False).fit(X, y)
    assert roc_auc_score(y_test, det.decision_function(test)) > 0.9
    restored = AnomalyDistanceDetector(_params(known_batch_size=8, **over), progress=False).load_state_dict(det.state_dict())
    assert np.array_equal(restored.decision_function(test), det.decision_function(test))


def test_average_pooling_halves_the_head_input():
    from anomem.detector import DeviationNet

    both, avg = DeviationNet({2: 16, 3: 32}, 8, 32, 16), DeviationNet({2: 16, 3: 32}, 8, 32, 16, pooling="avg")
    assert both.head[0].in_features == 32 and avg.head[0].in_features == 16


def test_a_diverging_fit_names_the_param_to_lower(data):
    train, _, _ = data
    with pytest.raises(FloatingPointError, match="detector.lr"):
        AnomalyDistanceDetector(_params(optimizer="sgd", lr=10.0), progress=False).fit(train)


def test_a_direct_call_with_an_unknown_pooling_names_the_choices():
    from anomem.detector import DeviationNet

    with pytest.raises(ValueError, match="pooling must be one of 'avg_max', 'avg'; got 'mean'"):
        DeviationNet({2: 16}, 8, 32, 16, pooling="mean")
