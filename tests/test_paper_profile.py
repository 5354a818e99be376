"""The paper profile (ResNet-18, memories at S2-S4, rotation head, shifted negatives) at tiny size on the CPU.

Everything but the sizes comes from profiles/paper.yaml: the same code paths a GPU run takes, minus CUDA.
"""

from __future__ import annotations

import numpy as np
import torch
import yaml

from anomem.data import quarter_turned
from anomem.detector import AnomalyDistanceDetector
from anomem.ensemble import combined_score
from anomem.macl import train_macl
from anomem.model import AnoMemNet
from anomem.params import parse_params
from anomem.runtime import make_runtime, seed_everything
from anomem.views import extract, scoring_views
from conftest import REPO

TINY = {"model": {"width": 8}, "memory": {"size": 8}, "train": {"epochs": 1, "batch_size": 64, "device": "cpu"}, "detector": {"epochs": 2}}


def test_paper_profile_runs_every_stage_at_tiny_size(cifar_train_slice):
    raw = yaml.safe_load((REPO / "profiles" / "paper.yaml").read_text())
    for group, values in TINY.items():
        raw[group].update(values)
    params = parse_params(raw, "paper profile, tiny")
    assert params.model.arch == "resnet18" and params.memory.scales == [2, 3, 4]
    assert params.contrastive.rotation_weight > 0 and params.detector.shifted_negatives
    images, labels = cifar_train_slice
    normal, others = images[labels == 0], images[labels != 0][:100]
    runtime = make_runtime("cpu", 0, params.train.precision)
    seed_everything(0)
    net = AnoMemNet.from_params(params)
    history = train_macl(net, torch.as_tensor(normal), None, params, runtime, seed=0, progress=False)
    assert np.isfinite(history[-1]["loss"]) and "loss_rotation" in history[-1]

    maps = extract(net, normal, runtime, batch_size=50, maps=True).maps
    shifted = extract(net, quarter_turned(normal, 0), runtime, batch_size=50, maps=True).maps
    test_images = np.concatenate([normal[:20], others[:20]])
    views = scoring_views(params.detector.knn_turns, params.detector.knn_mirror)
    test = extract(net, test_images, runtime, batch_size=50, views=views, rotation=True, maps=True)
    test_maps, rotation = test.maps, test.rotation
    assert sorted(maps) == [2, 3, 4] and maps[4].shape[1:] == (64, 4, 4)
    X = {s: np.concatenate([maps[s], shifted[s]]) for s in maps}
    y = np.r_[np.zeros(len(normal)), np.ones(len(normal))].astype(np.int64)
    detector = AnomalyDistanceDetector(params.detector, "cpu", seed=0, progress=False).fit(X, y)
    scores = detector.decision_function(test_maps)
    combined = combined_score({"detector": (scores, scores[:20]), "rotation": (rotation, rotation[:20])})
    assert np.isfinite(combined).all() and combined.shape == (40,)
