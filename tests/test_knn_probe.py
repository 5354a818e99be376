"""The kNN-feature probe (benchmarks/knn_probe.py): its features match the pipeline's, its scores separate planted anomalies."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
import torch
from benchmarks import knn_probe
from sklearn.metrics import roc_auc_score

from anomem import layout
from anomem.errors import DataError
from anomem.knn import knn_score
from anomem.model import AnoMemNet
from anomem.params import load_params
from anomem.runtime import make_runtime
from anomem.views import extract, scoring_views
from conftest import REPO


@pytest.fixture
def smoke_net():
    params = load_params(REPO / "profiles" / "smoke.yaml")
    torch.manual_seed(0)
    return AnoMemNet.from_params(params), params


def test_the_committed_variant_reads_the_same_features_as_the_extraction_stage(smoke_net, cifar_train_slice):
    net, params = smoke_net
    images = cifar_train_slice[0][:24]
    got = knn_probe.turned_features(net, images, batch_size=10, device=torch.device("cpu"))
    last = net.encoder.num_stages
    assert got[f"avg{last}"].shape == (24, 4, net.encoder.out_dim)
    assert got["z"].shape == (24, 4, params.model.proj_dim)
    assert got["rotation"].shape == (24,)
    for s in range(1, last + 1):
        assert got[f"max{s}"].shape == got[f"avg{s}"].shape
        assert np.all(got[f"max{s}"] >= got[f"avg{s}"] - 1e-6)
    stage = extract(net, images, make_runtime("cpu"), 10, scoring_views(True, False), rotation=True)
    np.testing.assert_allclose(got[f"avg{last}"], stage.pooled, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(got["rotation"], stage.rotation, rtol=1e-5, atol=1e-5)


def gaussian_features(n_normal: int, n_anomalous: int, seed: int = 0) -> tuple[dict, dict, np.ndarray]:
    """Bank and query features (one turn) whose anomalies step off along the normals' thinnest direction."""
    rng = np.random.default_rng(seed)
    spread = np.r_[np.full(7, 1.0), 0.3]  # the last axis barely varies among normals

    def draw(n):
        return rng.normal(0, 1, (n, 8)) * spread

    anomalies = draw(n_anomalous)
    anomalies[:, 7] += 2.0  # far in Mahalanobis terms, close in Euclidean ones
    query = np.r_[draw(n_normal), anomalies]
    to_features = lambda x: {"avg3": x[:, None, :].astype(np.float32), "z": x[:, None, :].astype(np.float32)}
    labels = np.r_[np.zeros(n_normal), np.ones(n_anomalous)]
    return to_features(draw(500)), to_features(query), labels


def test_mahalanobis_finds_an_anomaly_that_steps_off_the_normals_thinnest_direction():
    bank, query, labels = gaussian_features(200, 50)
    mahalanobis = knn_probe.mahalanobis_score(bank, query, ("avg3",))
    assert mahalanobis.shape == (250,)
    assert roc_auc_score(labels, mahalanobis) > 0.95
    assert roc_auc_score(labels, mahalanobis) > roc_auc_score(labels, knn_score(bank["avg3"][:, 0], query["avg3"][:, 0]))


def test_csi_score_ranks_queries_far_from_the_bank_higher():
    rng = np.random.default_rng(0)
    direction = rng.normal(0, 1, 16)
    bank = {"z": (direction + rng.normal(0, 0.1, (100, 4, 16))).astype(np.float32)}
    normal = direction + rng.normal(0, 0.1, (30, 4, 16))
    anomalous = -direction + rng.normal(0, 0.1, (30, 4, 16))
    scores = knn_probe.csi_score(bank, {"z": np.r_[normal, anomalous].astype(np.float32)})
    assert scores.shape == (60,)
    assert roc_auc_score(np.r_[np.zeros(30), np.ones(30)], scores) == 1.0


def test_main_scores_every_variant_of_a_saved_model(tmp_path, monkeypatch, smoke_net, cifar_train_slice):
    net, params = smoke_net
    order = np.random.default_rng(0).permutation(1000)  # the slice is sorted by class; mix the test split
    images, labels = cifar_train_slice[0][order], cifar_train_slice[1][order]
    monkeypatch.chdir(tmp_path)
    shutil.copy(REPO / "profiles" / "smoke.yaml", tmp_path / "params.yaml")
    prepared = tmp_path / layout.PREPARED
    (prepared / "splits").mkdir(parents=True)
    np.save(prepared / "train_images.npy", images[:600])
    np.save(prepared / "test_images.npy", images[600:])
    normal = np.flatnonzero(labels[:600] == 0)
    np.savez(
        layout.split_file(0, "one_class"),
        train_normal=normal[:40],
        val_normal=normal[40:],
        test=np.arange(400),
        test_labels=(labels[600:] != 0).astype(np.int64),
    )
    model = tmp_path / layout.model_dir("0-one_class-0")
    model.mkdir(parents=True)
    torch.save({"model": net.state_dict()}, model / "model.pt")
    out = tmp_path / "probe.json"

    assert knn_probe.main(["--classes", "0", "--out", str(out)]) == 0

    result = json.loads(out.read_text())
    per_variant = result["auroc"]["0_airplane"]
    last = net.encoder.num_stages
    # + the rotation score alone and the refit rotation heads
    assert len(per_variant) == len(knn_probe.variants(last)) + 1 + len(knn_probe.refit_rotation_variants(last))
    for name, cols in per_variant.items():
        assert all(0.0 <= v <= 1.0 for v in cols.values()), name
    assert result["table"].count("\n") == len(per_variant) + 1


def test_a_refit_rotation_head_scores_images_whose_turn_it_cannot_tell_as_anomalous():
    rng = np.random.default_rng(0)
    turns = np.eye(4, dtype=np.float32)

    def turned(n, telling):  # (n, 4 turns, 4 + 4 noise dims): the turn's one-hot where it can be told
        signal = np.broadcast_to(turns, (n, 4, 4)) if telling else rng.random((n, 4, 4), dtype=np.float32)
        return {"avg3": np.concatenate([signal, rng.normal(0, 0.3, (n, 4, 4)).astype(np.float32)], axis=-1)}

    bank = turned(200, telling=True)
    normal, anomalous = turned(50, telling=True), turned(50, telling=False)
    query = {"avg3": np.concatenate([normal["avg3"], anomalous["avg3"]])}

    scores = knn_probe.refit_rotation_score(bank, query, ("avg3",))

    assert scores.shape == (100,)
    assert roc_auc_score(np.r_[np.zeros(50), np.ones(50)], scores) > 0.95


def test_resized_features_are_the_network_s_on_the_resized_images(smoke_net, cifar_train_slice):
    net, _ = smoke_net
    images = cifar_train_slice[0][:6]
    got = knn_probe.turned_features(net, images, batch_size=4, device=torch.device("cpu"), side=16)
    x = torch.nn.functional.interpolate(
        torch.from_numpy(images).permute(0, 3, 1, 2).float() / 255, size=(16, 16), mode="bilinear", antialias=True
    )
    with torch.no_grad():
        expected = net.eval().features(x)[net.encoder.num_stages].mean((2, 3))
    last = got[f"avg{net.encoder.num_stages}"]
    torch.testing.assert_close(torch.from_numpy(last[:, 0]), expected, rtol=1e-4, atol=1e-5)
    assert not np.allclose(last, knn_probe.turned_features(net, images, 4, torch.device("cpu"))[f"avg{net.encoder.num_stages}"])


def test_a_missing_model_names_the_command_that_makes_it(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    shutil.copy(REPO / "profiles" / "smoke.yaml", tmp_path / "params.yaml")
    with pytest.raises(DataError, match=r"dvc repro train_contrastive_memory@3-one_class-0"):
        knn_probe.main(["--classes", "3"])
