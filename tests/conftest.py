"""Shared fixtures: a small slice of real CIFAR-10, synthetic deviation maps, and the default params."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
import torch

from anomem.params import Params

REPO = Path(__file__).resolve().parents[1]

torch.set_num_threads(1)  # the unit tests are small; leave the other core to whatever runs beside them


def cifar10_dir() -> Path:
    return Path(os.environ.get("ANOMEM_CIFAR10_DIR") or REPO.parent / "shared" / "data" / "cifar10")


@pytest.fixture(scope="session")
def cifar_train_slice() -> tuple[np.ndarray, np.ndarray]:
    """1,000 real training images (100 per class), uint8 NHWC, and their labels."""
    path = cifar10_dir() / "cifar10_train.npz"
    if not path.exists():
        pytest.fail(f"real CIFAR-10 is needed for this test: set ANOMEM_CIFAR10_DIR (looked in {path})")
    with np.load(path) as f:
        labels = f["labels"]
        idx = np.concatenate([np.flatnonzero(labels == c)[:100] for c in range(10)])
        return f["images"][idx], labels[idx]


@pytest.fixture
def params() -> Params:
    return Params()


def make_deviation_maps(n_normal: int, n_anomalous: int, seed: int = 0, channels=(16, 32), sizes=(16, 8)):
    """Synthetic multi-scale maps: normals are small noise; anomalies carry a bright local blob.

    Returns ({scale: (N, C, H, W) float16}, labels) with label 1 for the planted anomalies.
    """
    rng = np.random.default_rng(seed)
    n = n_normal + n_anomalous
    maps = {}
    for s, (c, hw) in enumerate(zip(channels, sizes), start=2):
        m = rng.normal(0, 0.3, (n, c, hw, hw)).astype(np.float32)
        for i in range(n_normal, n):
            y, x = rng.integers(0, hw - 2, 2)
            m[i, : c // 2, y : y + 3, x : x + 3] += rng.normal(2.0, 0.3)
        maps[s] = m.astype(np.float16)
    labels = np.r_[np.zeros(n_normal, np.int64), np.ones(n_anomalous, np.int64)]
    return maps, labels


@pytest.fixture
def deviation_maps():
    return make_deviation_maps
