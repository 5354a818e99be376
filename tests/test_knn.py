"""The kNN reference score: 1 - mean cosine similarity to the k nearest normal training features."""

from __future__ import annotations

import numpy as np
import pytest

from anomem.knn import knn_score


def _angles(*theta):
    return np.stack([np.cos(theta), np.sin(theta)], 1).astype(np.float32)


def test_a_query_in_the_bank_scores_zero():
    rng = np.random.default_rng(0)
    bank = rng.normal(size=(50, 16)).astype(np.float32)
    s = knn_score(bank, bank[:7])
    assert s.shape == (7,) and s.dtype == np.float64
    assert np.allclose(s, 0.0, atol=1e-6)
    assert np.allclose(knn_score(bank, 3.0 * bank[:7]), 0.0, atol=1e-6), "cosine: the scale does not matter"


def test_far_points_score_higher():
    bank = _angles(0.0, 0.1, -0.1, 0.2)
    q = _angles(0.05, np.pi / 2, np.pi)
    s = knn_score(bank, q)
    assert s[0] < s[1] < s[2]
    assert s[0] == pytest.approx(1 - np.cos(0.05), abs=1e-6)
    assert s[1] == pytest.approx(1 - np.cos(np.pi / 2 - 0.2), abs=1e-6)
    assert s[2] == pytest.approx(1 - np.cos(np.pi - 0.2), abs=1e-6)


def test_k_averages_the_k_nearest():
    bank = _angles(0.0, 0.3, 0.6, 2.0)
    q = _angles(0.0)
    cos = np.cos([0.0, 0.3, 0.6, 2.0])
    for k in (1, 2, 3, 4):
        assert knn_score(bank, q, k=k)[0] == pytest.approx(1 - cos[:k].mean(), abs=1e-6)
    assert knn_score(bank, q, k=10)[0] == pytest.approx(1 - cos.mean(), abs=1e-6), "k is capped at the bank size"


def test_chunking_and_empty_queries():
    rng = np.random.default_rng(1)
    bank, q = rng.normal(size=(40, 8)), rng.normal(size=(25, 8))
    assert np.allclose(knn_score(bank, q, k=3, chunk=4), knn_score(bank, q, k=3), atol=1e-7)
    empty = knn_score(bank, q[:0])
    assert empty.shape == (0,)
