"""One pass of the frozen network over images and their test-time views (quarter turns, mirror image).

Each forward pass yields what the later stages need from it: the deviation maps of the image as it is,
the pooled feature of every view (the kNN score compares each view with the same view of the normal
training images and averages over views, CSI's ensemble over shifted views), and the rotation score
-mean_k log p(k | rot_k(x)), which needs the four unmirrored turns. Sharing the passes means no view is
computed twice. The kNN feature is the average-pooled map of the last stage, or of the stages in
`detector.knn_scales`, each L2-normalised and concatenated; with `detector.knn_pooling: avg_max`, each of those
stages' max-pooled map too, every part L2-normalised, side by side.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import numpy as np
import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from anomem.data import to_float
from anomem.errors import NumericalError
from anomem.model import ROTATIONS, AnoMemNet, rotate
from anomem.params import Params
from anomem.runtime import Runtime

View = tuple[int, bool]  # (quarter turns, mirrored)
IMAGE_AS_IS: View = (0, False)
FLOAT16_MAX = float(np.finfo(np.float16).max)


class Extracted(NamedTuple):
    maps: dict[int, np.ndarray] | None  # scale -> (N, C_s, H_s, W_s) in map_dtype, with maps=True
    pooled: np.ndarray | None  # (N, len(views), D) float32, when views are asked for
    rotation: np.ndarray | None  # (N,) float64, with rotation=True


def scoring_views(turns: bool, mirror: bool) -> list[View]:
    """The views the kNN score averages over; the image as it is comes first."""
    return [(k, m) for m in ((False, True) if mirror else (False,)) for k in (range(ROTATIONS) if turns else (0,))]


def knn_feature(net: AnoMemNet, feats: dict[int, torch.Tensor], scales: tuple[int, ...] = (), pooling: str = "avg") -> torch.Tensor:
    """The pooled feature the kNN score compares, from the stages in `scales` (empty: the last). With `pooling` avg:
    the last stage's pooled feature alone when that is the only stage, one stage's average-pooled map as it is, else
    each stage's average-pooled map L2-normalised (so no stage outweighs another), side by side. With avg_max: each
    stage's average- and max-pooled maps, every part L2-normalised, side by side."""
    if pooling == "avg_max":
        maps = [feats[s].float() for s in scales or (net.encoder.num_stages,)]
        return torch.cat([F.normalize(pooled, dim=1) for f in maps for pooled in (f.mean((2, 3)), f.amax((2, 3)))], dim=1)
    if not scales or list(scales) == [net.encoder.num_stages]:
        return net.pooled(feats)
    if len(scales) == 1:
        return feats[scales[0]].float().mean((2, 3))
    return torch.cat([F.normalize(feats[s].float().mean((2, 3)), dim=1) for s in scales], dim=1)


def knn_feature_dim(net: AnoMemNet, scales: tuple[int, ...] = (), pooling: str = "avg") -> int:
    channels = sum(net.encoder.channels[s] for s in scales) if scales else net.encoder.out_dim
    return 2 * channels if pooling == "avg_max" else channels


def recompute_bn_statistics(net: AnoMemNet, images: np.ndarray, runtime: Runtime, batch_size: int, turns: bool) -> None:
    """`detector.bn_recompute`: the encoder's BatchNorm statistics from the un-augmented uint8 NHWC `images`,
    and from their three quarter turns too when `turns` (the views the scores pass), in float32 as `extract` runs."""
    net.to(runtime.device)

    def batches():
        for start in range(0, images.shape[0], batch_size):
            x = to_float(images[start : start + batch_size]).to(runtime.device, memory_format=runtime.memory_format())
            for turn in range(ROTATIONS) if turns else (0,):
                yield rotate(x, torch.full((x.shape[0],), turn))

    net.recompute_bn_statistics(batches())


def require_storable(d: torch.Tensor, scale: int, map_dtype: str, split: str) -> None:
    """A NumericalError when deviation maps are not finite, or would overflow to inf as float16."""
    peak = float(d.abs().max()) if d.numel() else 0.0
    if not math.isfinite(peak):
        raise NumericalError(f"{split}: the stage-1 model gives non-finite features at S{scale}: its training diverged (lower train.lr)")
    if map_dtype == "float16" and peak > FLOAT16_MAX:
        raise NumericalError(
            f"{split}: deviation maps at S{scale} reach |D| = {peak:.3g}, beyond float16's largest value {FLOAT16_MAX:g}, so they "
            "would be stored as inf. Features this large come from a stage-1 model whose BatchNorm statistics have not settled "
            "(very few training steps): train stage 1 longer (train.epochs), take them from the clean normal images "
            "(detector.bn_recompute: true), or store float32 maps (detector.map_dtype: float32)"
        )


@torch.no_grad()
def extract(
    net: AnoMemNet,
    images: np.ndarray,
    runtime: Runtime,
    batch_size: int,
    views: list[View] = (),
    rotation: bool = False,
    maps: bool = False,
    desc: str = "extract",
    map_dtype: str = "float16",
    knn_scales: tuple[int, ...] = (),
    knn_pooling: str = "avg",
) -> Extracted:
    """For uint8 NHWC images: the kNN feature of each of `views`, the rotation score, and the deviation maps.

    Runs in float32: a deviation is a small difference of two features, which bf16 would blur. The maps are
    stored as `map_dtype` (float16 halves the disk of the largest output).
    """
    if rotation and net.rotation_head is None:
        raise ValueError("the rotation score needs a network with a rotation head (contrastive.rotation_weight > 0)")
    n = images.shape[0]
    if n == 0 and maps:  # an empty split (no known anomalies in one_class) still gets maps of the right shape
        one = extract(
            net, np.zeros((1, *images.shape[1:]), np.uint8), runtime, 1, views, rotation, maps, desc, map_dtype, knn_scales, knn_pooling
        )
        return Extracted(
            {s: m[:0] for s, m in one.maps.items()},
            None if one.pooled is None else one.pooled[:0],
            None if one.rotation is None else one.rotation[:0],
        )
    net.eval().to(runtime.device)
    slot = {view: i for i, view in enumerate(views)}
    passes = list(dict.fromkeys([*([IMAGE_AS_IS] if maps else []), *views, *(((k, False) for k in range(ROTATIONS)) if rotation else ())]))
    deviation: dict[int, np.ndarray] | None = {} if maps else None
    pooled = np.empty((n, len(views), knn_feature_dim(net, knn_scales, knn_pooling)), np.float32) if views else None
    scores = np.empty(n, np.float64) if rotation else None
    for start in tqdm(range(0, n, batch_size), desc=desc, unit="batch", dynamic_ncols=True):
        x = to_float(images[start : start + batch_size]).to(runtime.device, memory_format=runtime.memory_format())
        end = start + x.shape[0]
        total = torch.zeros(x.shape[0], device=x.device)
        for turn, mirrored in passes:
            feats = net.features(rotate(x.flip(3) if mirrored else x, torch.full((x.shape[0],), turn)))
            if deviation is not None and (turn, mirrored) == IMAGE_AS_IS:
                for s, d in net.deviation(feats).items():
                    d = d.float()
                    require_storable(d, s, map_dtype, desc)
                    deviation.setdefault(s, np.empty((n, *d.shape[1:]), map_dtype))[start:end] = d.cpu().numpy()
            if pooled is None and not rotation:
                continue
            if (turn, mirrored) in slot:
                pooled[start:end, slot[turn, mirrored]] = knn_feature(net, feats, knn_scales, knn_pooling).cpu().numpy()
            if rotation and not mirrored:
                total += net.rotation_nll(net.pooled(feats), turn)
        if scores is not None:
            scores[start:end] = (total / ROTATIONS).cpu().numpy()
    return Extracted(deviation, pooled, scores)


def trained_network(params: Params, saved: dict) -> AnoMemNet:
    """The stage-1 network of a saved model.pt, with the BatchNorm statistics it was trained with."""
    net = AnoMemNet.from_params(params)
    net.load_state_dict(saved["model"])
    return net


def freeze(net: AnoMemNet, params: Params, train_normal: np.ndarray, runtime: Runtime) -> AnoMemNet:
    """`net` as every scoring pass uses it: with `detector.bn_recompute`, its BatchNorm statistics taken anew
    from the clean normal training images (uint8 NHWC `train_normal`)."""
    if params.detector.bn_recompute:
        turned = params.detector.knn_turns or net.rotation_head is not None
        recompute_bn_statistics(net, train_normal, runtime, params.train.eval_batch_size, turns=turned)
    return net


def extract_split(
    net: AnoMemNet, images: np.ndarray, params: Params, runtime: Runtime, desc: str, scored: bool, bank: bool = False
) -> Extracted:
    """`extract` with the detector params' settings: the deviation maps always; the kNN views for a `scored` split and
    for the kNN `bank`; the rotation score for a `scored` split when the network has a rotation head."""
    d = params.detector
    return extract(
        net,
        images,
        runtime,
        params.train.eval_batch_size,
        views=scoring_views(d.knn_turns, d.knn_mirror) if scored or bank else [],
        rotation=scored and net.rotation_head is not None,
        maps=True,
        desc=desc,
        map_dtype=d.map_dtype,
        knn_scales=tuple(d.knn_scales),
        knn_pooling=d.knn_pooling,
    )
