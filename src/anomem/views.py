"""Test-time views of an image (quarter turns, mirror image) and the encoder's pooled feature of each.

The kNN score compares each view with the same view of the normal training images and averages
over views (CSI's ensemble over shifted views). The rotation score -mean_k log p(k | rot_k(x)) needs the
four unmirrored turns, so both are computed from one set of forward passes.
"""

from __future__ import annotations

import numpy as np
import torch
from tqdm.auto import tqdm

from anomem.data import to_float
from anomem.model import ROTATIONS, AnoMemNet, rotate
from anomem.runtime import Runtime

View = tuple[int, bool]  # (quarter turns, mirrored)


def scoring_views(turns: bool, mirror: bool) -> list[View]:
    """The views the kNN score averages over; the image as it is, (0, False), comes first."""
    return [(k, m) for m in ((False, True) if mirror else (False,)) for k in (range(ROTATIONS) if turns else (0,))]


@torch.no_grad()
def view_features(
    net: AnoMemNet,
    images: np.ndarray,
    runtime: Runtime,
    batch_size: int,
    views: list[View],
    rotation: bool = False,
    desc: str = "views",
) -> tuple[np.ndarray, np.ndarray | None]:
    """Pooled features (N, len(views), D) of uint8 NHWC images, and with rotation=True their rotation score (N,)."""
    if rotation and net.rotation_head is None:
        raise ValueError("the rotation score needs a network with a rotation head (contrastive.rotation_weight > 0)")
    net.eval().to(runtime.device)
    n = images.shape[0]
    slot = {view: i for i, view in enumerate(views)}
    passes = list(dict.fromkeys([*views, *(((k, False) for k in range(ROTATIONS)) if rotation else ())]))
    pooled = np.empty((n, len(views), net.encoder.out_dim), np.float32)
    scores = np.empty(n, np.float64) if rotation else None
    for start in tqdm(range(0, n, batch_size), desc=desc, unit="batch", dynamic_ncols=True):
        x = to_float(images[start : start + batch_size]).to(runtime.device, memory_format=runtime.memory_format())
        end = start + x.shape[0]
        total = torch.zeros(x.shape[0], device=x.device)
        for turn, mirrored in passes:
            feature = net.pooled(net.features(rotate(x.flip(3) if mirrored else x, torch.full((x.shape[0],), turn))))
            if (turn, mirrored) in slot:
                pooled[start:end, slot[turn, mirrored]] = feature.cpu().numpy()
            if rotation and not mirrored:
                total -= torch.log_softmax(net.rotation_head(feature).float(), dim=1)[:, turn]
        if scores is not None:
            scores[start:end] = (total / ROTATIONS).cpu().numpy()
    return pooled, scores
