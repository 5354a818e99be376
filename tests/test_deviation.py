"""Deviation maps: extraction from a tiny AnoMemNet on real images, their size on disk, and the reference score."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from sklearn.metrics import roc_auc_score

from anomem.data import to_float
from anomem.deviation import deviation_score, fit_scale_weights, map_bytes
from anomem.model import AnoMemNet
from anomem.params import parse_params
from anomem.runtime import make_runtime
from anomem.views import IMAGE_AS_IS, extract

RUNTIME = make_runtime("cpu", 0, "fp32")


def _net(arch="resnet20", scales=(2, 3), seed=0, images=None) -> AnoMemNet:
    p = parse_params({"model": {"arch": arch, "width": 8, "proj_dim": 16}, "memory": {"scales": list(scales), "size": 16}})
    torch.manual_seed(seed)
    net = AnoMemNet(p.model, p.memory).eval()
    x = to_float(images) if images is not None else torch.rand(4, 3, 32, 32)
    net.init_memories(x, torch.Generator().manual_seed(seed))
    return net


def _energy(m: np.ndarray) -> np.ndarray:
    return (m.astype(np.float64) ** 2).sum(1).mean((1, 2))


def test_scale_weights_make_each_scale_count_alike(deviation_maps):
    maps, _ = deviation_maps(64, 0, seed=0)
    maps[3] = (maps[3].astype(np.float32) * 4).astype(np.float16)  # one scale much louder than the other
    w = fit_scale_weights(maps)
    assert sorted(w) == [2, 3]
    for s in maps:
        assert np.mean(w[s] * _energy(maps[s])) == pytest.approx(1.0, rel=1e-6)
    assert w[2] / w[3] == pytest.approx(_energy(maps[3]).mean() / _energy(maps[2]).mean(), rel=1e-6)
    assert w[2] > 10 * w[3]


def test_deviation_score_is_the_weighted_energy_and_ranks_anomalies(deviation_maps):
    train, _ = deviation_maps(128, 0, seed=0)
    test, labels = deviation_maps(100, 100, seed=1)
    w = fit_scale_weights(train)
    score = deviation_score(test, w)
    assert score.shape == (200,)
    assert np.allclose(score, sum(w[s] * _energy(test[s]) for s in test), rtol=1e-6)
    assert roc_auc_score(labels, score) > 0.9
    assert np.mean(deviation_score(train, w)) == pytest.approx(len(train), rel=1e-6)  # 1 per scale on the normals


@pytest.mark.parametrize("arch,scales", [("resnet20", (2, 3)), ("resnet18", (1, 4))])
def test_map_bytes_matches_extract(cifar_train_slice, arch, scales):
    images = cifar_train_slice[0][:5]
    net = _net(arch, scales, images=images)
    maps = extract(net, images, RUNTIME, batch_size=2, maps=True).maps  # 2 + 2 + 1: a partial last batch
    assert sorted(maps) == sorted(scales)
    assert sum(m.nbytes for m in maps.values()) == map_bytes(net, (32, 32), 5)
    for s, m in maps.items():
        px = 32 // 2 ** (s - 1)
        assert m.shape == (5, net.encoder.channels[s], px, px)
    assert map_bytes(net, (32, 32), 0) == 0


def test_map_bytes_for_an_odd_image_size(cifar_train_slice):
    images = np.ascontiguousarray(cifar_train_slice[0][:3, :30, :30])  # 30 -> 15 -> 8 px
    net = _net(images=cifar_train_slice[0][:4])
    maps = extract(net, images, RUNTIME, batch_size=3, maps=True).maps
    assert maps[3].shape[2:] == (8, 8)
    assert sum(m.nbytes for m in maps.values()) == map_bytes(net, (30, 30), 3)


def test_extract_dtypes_and_values_match_the_model(cifar_train_slice):
    images = cifar_train_slice[0][:6]
    net = _net(images=images)
    got = extract(net, images, RUNTIME, batch_size=4, views=[IMAGE_AS_IS], maps=True)
    assert all(m.dtype == np.float16 for m in got.maps.values())
    assert got.pooled.dtype == np.float32 and got.pooled.shape == (6, 1, net.encoder.out_dim)
    with torch.no_grad():
        feats = net.features(to_float(images))
        dev = net.deviation(feats)
    for s in got.maps:
        assert np.allclose(got.maps[s].astype(np.float32), dev[s].numpy(), atol=1e-2, rtol=1e-2)
        assert np.abs(got.maps[s]).max() > 0
    assert np.allclose(got.pooled[:, 0], net.pooled(feats).numpy(), atol=1e-4)
    # the batch size changes nothing
    again = extract(net, images, RUNTIME, batch_size=6, views=[IMAGE_AS_IS], maps=True)
    assert all(np.allclose(got.maps[s].astype(np.float32), again.maps[s].astype(np.float32), atol=1e-3) for s in got.maps)
    assert np.allclose(got.pooled, again.pooled, atol=1e-5)


def test_uniform_scale_weights_are_one(deviation_maps):
    maps, _ = deviation_maps(20, 0)
    assert fit_scale_weights(maps, "uniform") == {2: 1.0, 3: 1.0}
    with pytest.raises(ValueError, match="rule"):
        fit_scale_weights(maps, "median")


def test_float32_maps_match_float16_within_its_precision_and_take_twice_the_bytes(cifar_train_slice):
    images = cifar_train_slice[0][:4]
    net = _net("resnet20", (2, 3), images=images)
    half = extract(net, images, RUNTIME, batch_size=2, maps=True).maps
    full = extract(net, images, RUNTIME, batch_size=2, maps=True, map_dtype="float32").maps
    for s in half:
        assert full[s].dtype == np.float32 and half[s].dtype == np.float16
        assert np.allclose(full[s], half[s].astype(np.float32), rtol=1e-3, atol=1e-3)
    assert sum(m.nbytes for m in full.values()) == map_bytes(net, (32, 32), 4, "float32") == 2 * map_bytes(net, (32, 32), 4)
