"""The kNN reference score: cosine distance from a pooled feature to its nearest normal training features."""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F


def knn_score(train_features: np.ndarray, features: np.ndarray, k: int = 1, chunk: int = 2048) -> np.ndarray:
    """1 - mean cosine similarity to the k nearest training features; higher means more anomalous.

    Features (N, D), or (N, V, D) with a view axis (views.extract): each view is then scored against
    the same view of the training features, and the scores are averaged over views.
    """
    if features.ndim == 3:
        if train_features.ndim != 3 or train_features.shape[1] != features.shape[1]:
            raise ValueError(f"views differ: training features {train_features.shape}, scored features {features.shape}")
        return sum(knn_score(train_features[:, v], features[:, v], k, chunk) for v in range(features.shape[1])) / features.shape[1]
    bank = F.normalize(torch.as_tensor(train_features, dtype=torch.float32), dim=1)
    k = min(k, bank.shape[0])
    out = []
    for start in range(0, features.shape[0], chunk):
        q = F.normalize(torch.as_tensor(features[start : start + chunk], dtype=torch.float32), dim=1)
        out.append(1.0 - (q @ bank.t()).topk(k, dim=1).values.mean(1))
    return torch.cat(out).numpy().astype(np.float64) if out else np.empty(0)
