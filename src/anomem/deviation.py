"""Deviation maps D_s = F_s - read(F_s) on un-augmented images, and the raw deviation reference score."""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np
import torch
from tqdm.auto import tqdm

from anomem.data import to_float
from anomem.model import AnoMemNet
from anomem.runtime import Runtime

Maps = Mapping[int, np.ndarray]  # scale -> (N, C_s, H_s, W_s)


def map_bytes(net: AnoMemNet, image_hw: tuple[int, int], n_images: int) -> int:
    """float16 bytes that the deviation maps of n_images take on disk (stage s halves the size s-1 times)."""
    h, w = image_hw
    per_image = sum(net.encoder.channels[s] * -(-h // 2 ** (s - 1)) * -(-w // 2 ** (s - 1)) for s in net.map_scales)
    return 2 * per_image * n_images


@torch.no_grad()
def extract(
    net: AnoMemNet,
    images: np.ndarray,
    runtime: Runtime,
    batch_size: int,
    desc: str = "deviation",
) -> tuple[dict[int, np.ndarray], np.ndarray]:
    """Maps per scale as float16, and the pooled encoder feature (float32) for each uint8 NHWC image.

    Runs in float32: a deviation is a small difference of two features, which bf16 would blur.
    """
    net.eval().to(runtime.device)
    n = images.shape[0]
    if n == 0:  # an empty split (no known anomalies in one_class) still gets arrays of the right shape
        maps, pooled = extract(net, np.zeros((1, *images.shape[1:]), np.uint8), runtime, 1, desc)
        return {s: m[:0] for s, m in maps.items()}, pooled[:0]
    maps: dict[int, np.ndarray] = {}
    pooled = np.empty((n, net.encoder.out_dim), np.float32)
    for start in tqdm(range(0, n, batch_size), desc=desc, unit="batch", dynamic_ncols=True):
        x = to_float(images[start : start + batch_size]).to(runtime.device, memory_format=runtime.memory_format())
        dev, feat = net.deviation(x)
        for s, d in dev.items():
            if s not in maps:
                maps[s] = np.empty((n, *d.shape[1:]), np.float16)
            maps[s][start : start + x.shape[0]] = d.float().cpu().numpy().astype(np.float16)
        pooled[start : start + x.shape[0]] = feat.cpu().numpy()
    return maps, pooled


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


def fit_scale_weights(train_maps: Maps) -> dict[int, float]:
    """w_s = 1 / mean over the normal training maps of mean_{h,w} ||D_s||^2, so each scale counts alike."""
    return {s: 1.0 / max(float(e.mean()), 1e-12) for s, e in _per_image_energy(train_maps).items()}


def deviation_score(maps: Maps, weights: Mapping[int, float]) -> np.ndarray:
    """sum_s w_s * mean_{h,w} ||D_s||^2; higher means more anomalous."""
    energy = _per_image_energy(maps)
    return sum(weights[s] * energy[s] for s in energy)
