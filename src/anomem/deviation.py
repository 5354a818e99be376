"""The size of the deviation maps D_s = F_s - read(F_s) (`views.extract` computes them), and the raw deviation reference score."""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np

from anomem.model import AnoMemNet
from anomem.params import ScaleWeights, check_choice

Maps = Mapping[int, np.ndarray]  # scale -> (N, C_s, H_s, W_s)


def map_bytes(net: AnoMemNet, image_hw: tuple[int, int], n_images: int, map_dtype: str = "float16") -> int:
    """Bytes that the deviation maps of n_images take on disk as map_dtype (stage s halves the size s-1 times)."""
    h, w = image_hw
    per_image = sum(net.encoder.channels[s] * -(-h // 2 ** (s - 1)) * -(-w // 2 ** (s - 1)) for s in net.map_scales)
    return np.dtype(map_dtype).itemsize * per_image * n_images


def energy_maps(maps: Maps) -> dict[int, np.ndarray]:
    """||D_s||^2 at each location, scale -> (N, H_s, W_s) float32: what the deviation heatmaps show."""
    return {s: (np.asarray(m).astype(np.float32) ** 2).sum(1) for s, m in maps.items()}


def _per_image_energy(maps: Maps, chunk: int = 1024) -> dict[int, np.ndarray]:
    """mean_{h,w} ||D_s||^2 per image and scale, in float64, chunked to bound memory."""
    out = {}
    for s, m in maps.items():
        n = m.shape[0]
        out[s] = (
            np.concatenate([(m[i : i + chunk].astype(np.float32) ** 2).sum(1).mean((1, 2)) for i in range(0, n, chunk)]).astype(np.float64)
            if n
            else np.empty(0)
        )
    return out


def fit_scale_weights(train_maps: Maps, rule: str = "inverse_energy") -> dict[int, float]:
    """inverse_energy: w_s = 1 / mean over the normal training maps of mean_{h,w} ||D_s||^2, so each scale counts
    alike; uniform: w_s = 1, so the scales with the largest deviations dominate."""
    if check_choice("rule", rule, ScaleWeights) == "uniform":
        return {s: 1.0 for s in train_maps}
    return {s: 1.0 / max(float(e.mean()), 1e-12) for s, e in _per_image_energy(train_maps).items()}


def deviation_score(maps: Maps, weights: Mapping[int, float]) -> np.ndarray:
    """sum_s w_s * mean_{h,w} ||D_s||^2; higher means more anomalous."""
    energy = _per_image_energy(maps)
    return sum(weights[s] * energy[s] for s in energy)
