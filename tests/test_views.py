"""One pass over images and their test-time views: which views, their pooled features, the rotation score, the
deviation maps from the same passes, and the kNN score over views."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from anomem.data import to_float
from anomem.knn import knn_score
from anomem.model import AnoMemNet
from anomem.params import parse_params
from anomem.runtime import make_runtime
from anomem.views import IMAGE_AS_IS, extract, knn_feature_dim, scoring_views

RUNTIME = make_runtime("cpu", 0, "fp32")


def _net(rotation_weight=1.0) -> AnoMemNet:
    p = parse_params(
        {
            "model": {"arch": "resnet20", "width": 8, "proj_dim": 16},
            "memory": {"size": 16},
            "contrastive": {"rotation_weight": rotation_weight},
        }
    )
    torch.manual_seed(0)
    return AnoMemNet.from_params(p).eval()


@pytest.mark.parametrize("turns, mirror, count", [(False, False, 1), (True, False, 4), (False, True, 2), (True, True, 8)])
def test_views_start_with_the_image_as_it_is_and_are_distinct(turns, mirror, count):
    views = scoring_views(turns, mirror)
    assert len(views) == len(set(views)) == count and views[0] == (0, False)


def test_features_of_each_view_are_the_features_of_the_turned_or_mirrored_image(cifar_train_slice):
    images, _ = cifar_train_slice
    net = _net()
    views = scoring_views(turns=True, mirror=True)
    got = extract(net, images[:5], RUNTIME, batch_size=2, views=views)  # 2 + 2 + 1: a partial batch
    pooled = got.pooled
    assert pooled.shape == (5, 8, net.encoder.out_dim) and pooled.dtype == np.float32
    assert got.rotation is None and got.maps is None
    x = to_float(images[:5])
    with torch.no_grad():
        for i, (turn, mirrored) in enumerate(views):
            view = torch.rot90(x.flip(3) if mirrored else x, turn, dims=(2, 3))
            np.testing.assert_allclose(pooled[:, i], net.pooled(net.features(view)).numpy(), rtol=1e-5, atol=1e-6)
    assert not np.allclose(pooled[:, 0], pooled[:, 1]), "a turned view is a different input"


def test_knn_feature_of_several_scales_is_each_pooled_map_normalised_side_by_side(cifar_train_slice):
    images, _ = cifar_train_slice
    net = _net()
    got = extract(net, images[:6], RUNTIME, batch_size=4, views=[IMAGE_AS_IS], knn_scales=(2, 3)).pooled[:, 0]
    assert got.shape == (6, net.encoder.channels[2] + net.encoder.channels[3])
    with torch.no_grad():
        feats = net.features(to_float(images[:6]))
    for part, s in zip(np.split(got, [net.encoder.channels[2]], axis=1), (2, 3)):
        np.testing.assert_allclose(np.linalg.norm(part, axis=1), 1.0, rtol=1e-5)
        pooled = feats[s].mean((2, 3)).numpy()
        np.testing.assert_allclose(part, pooled / np.linalg.norm(pooled, axis=1, keepdims=True), rtol=1e-4, atol=1e-6)
    only_s2 = extract(net, images[:6], RUNTIME, batch_size=4, views=[IMAGE_AS_IS], knn_scales=(2,)).pooled[:, 0]
    np.testing.assert_allclose(only_s2, feats[2].mean((2, 3)).numpy(), rtol=1e-4, atol=1e-6)
    last = extract(net, images[:6], RUNTIME, batch_size=4, views=[IMAGE_AS_IS], knn_scales=(3,)).pooled
    np.testing.assert_array_equal(last, extract(net, images[:6], RUNTIME, batch_size=4, views=[IMAGE_AS_IS]).pooled)


@pytest.mark.parametrize("scales", [(2, 3), ()])
def test_avg_max_knn_feature_is_each_stage_s_average_and_max_pooled_map_normalised(cifar_train_slice, scales):
    images, _ = cifar_train_slice
    net = _net()
    got = extract(net, images[:6], RUNTIME, batch_size=4, views=[IMAGE_AS_IS], knn_scales=scales, knn_pooling="avg_max").pooled[:, 0]
    stages = scales or (net.encoder.num_stages,)
    assert got.shape == (6, knn_feature_dim(net, scales, "avg_max")) == (6, 2 * sum(net.encoder.channels[s] for s in stages))
    with torch.no_grad():
        feats = net.features(to_float(images[:6]))
    expected = [pool(feats[s]) for s in stages for pool in (lambda f: f.mean((2, 3)), lambda f: f.amax((2, 3)))]
    parts = np.split(got, np.cumsum([e.shape[1] for e in expected])[:-1], axis=1)
    for part, pooled in zip(parts, expected, strict=True):
        np.testing.assert_allclose(part, torch.nn.functional.normalize(pooled, dim=1).numpy(), rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize("turns", [False, True])
def test_rotation_score_is_the_mean_loss_over_the_four_turns(cifar_train_slice, turns):
    images, _ = cifar_train_slice
    net = _net()
    rotation = extract(net, images[:10], RUNTIME, batch_size=4, views=scoring_views(turns, False), rotation=True).rotation
    x = to_float(images[:10])
    with torch.no_grad():  # -mean over the four turns of log p(turn k | image turned by k)
        expected = (
            -sum(torch.log_softmax(net.rotation_head(net.pooled(net.features(torch.rot90(x, k, dims=(2, 3))))), 1)[:, k] for k in range(4))
            / 4
        )
    assert rotation.shape == (10,) and rotation.dtype == np.float64 and (rotation >= 0).all()
    np.testing.assert_allclose(rotation, expected.numpy(), rtol=1e-5)


def test_an_empty_split_gets_arrays_of_the_right_shape():
    net = _net()
    got = extract(net, np.zeros((0, 32, 32, 3), np.uint8), RUNTIME, 4, scoring_views(True, False), rotation=True, maps=True)
    assert got.pooled.shape == (0, 4, net.encoder.out_dim) and got.rotation.shape == (0,)
    assert got.maps[2].shape == (0, 16, 16, 16) and got.maps[3].shape == (0, 32, 8, 8)
    assert all(m.dtype == np.float16 for m in got.maps.values())
    maps_only = extract(net, np.zeros((0, 32, 32, 3), np.uint8), RUNTIME, 4, maps=True)
    assert maps_only.pooled is None and maps_only.rotation is None and sorted(maps_only.maps) == [2, 3]


def test_maps_views_and_rotation_from_shared_passes_equal_each_computed_alone(cifar_train_slice):
    images, _ = cifar_train_slice
    net = _net()
    views = scoring_views(turns=True, mirror=False)
    together = extract(net, images[:6], RUNTIME, batch_size=4, views=views, rotation=True, maps=True)
    maps_alone = extract(net, images[:6], RUNTIME, batch_size=4, maps=True).maps
    views_alone = extract(net, images[:6], RUNTIME, batch_size=4, views=views, rotation=True)
    assert sorted(together.maps) == [2, 3]
    for s in together.maps:
        np.testing.assert_array_equal(together.maps[s], maps_alone[s])
    np.testing.assert_array_equal(together.pooled, views_alone.pooled)
    np.testing.assert_array_equal(together.rotation, views_alone.rotation)


def test_the_rotation_score_needs_a_rotation_head(cifar_train_slice):
    images, _ = cifar_train_slice
    with pytest.raises(ValueError, match="rotation head"):
        extract(_net(rotation_weight=0.0), images[:2], RUNTIME, 2, scoring_views(False, False), rotation=True)


def test_knn_over_views_averages_each_view_against_the_same_view_of_the_bank():
    rng = np.random.default_rng(0)
    bank, queries = rng.normal(size=(40, 3, 8)), rng.normal(size=(6, 3, 8))
    per_view = [knn_score(bank[:, v], queries[:, v], k=2) for v in range(3)]
    np.testing.assert_allclose(knn_score(bank, queries, k=2), np.mean(per_view, axis=0), rtol=1e-12)
    np.testing.assert_array_equal(knn_score(bank[:, :1], queries[:, :1]), knn_score(bank[:, 0], queries[:, 0]))
    with pytest.raises(ValueError, match="views differ"):
        knn_score(bank[:, :2], queries)


def test_views_raise_the_knn_score_of_a_planted_anomaly_only_where_views_differ():
    # Normal points lie on a circle in view 0 and on a second circle in view 1; the anomaly is normal in
    # view 0 but off the circle in view 1, so only the two-view score separates it.
    rng = np.random.default_rng(1)
    theta = rng.uniform(0, 2 * np.pi, 200)
    ring = lambda t, z: np.stack([np.cos(t), np.sin(t), np.full_like(t, z)], 1)
    bank = np.stack([ring(theta, 0.0), ring(theta, 1.0)], 1)
    normal_q = np.stack([ring(np.array([0.3]), 0.0), ring(np.array([0.3]), 1.0)], 1)
    anomaly = np.stack([ring(np.array([0.3]), 0.0), ring(np.array([0.3]), -3.0)], 1)
    one_view = knn_score(bank[:, :1], np.concatenate([normal_q, anomaly])[:, :1])
    two_views = knn_score(bank, np.concatenate([normal_q, anomaly]))
    assert one_view[1] == pytest.approx(one_view[0], abs=1e-3)
    assert two_views[1] > two_views[0] + 0.1
