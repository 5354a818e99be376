"""AnoMem's stage-1 network: encoder E, one memory per scale, projection head g.

Plain path: p = g(avgpool(E(v))).
Memory path: the same encoder, with F_s replaced by its memory read-out after every memory scale.
Rotation head (optional, CSI-style shifting transformation): predicts which of 0/90/180/270 degrees
a view was turned by, from avgpool(E(v)); its test-time score is in views.py.
"""

from __future__ import annotations

from collections.abc import Iterable

import torch
from torch import nn
from torch.optim.swa_utils import update_bn

from anomem.encoder import CifarResNet
from anomem.memory import HopfieldMemory
from anomem.params import MemoryParams, ModelParams, Params

# Inputs are [0, 1] images. `model.input_norm: fixed` maps them with this affine map, which keeps the model
# independent of the data set's statistics; `dataset` replaces it with the training images' channel statistics.
FIXED_INPUT_MEAN, FIXED_INPUT_STD = 0.5, 0.25


ROTATIONS = 4  # 0, 90, 180 and 270 degrees


def rotate(x: torch.Tensor, quarter_turns: torch.Tensor) -> torch.Tensor:
    """Turn each image x[i] (NCHW, square) by quarter_turns[i] x 90 degrees."""
    if x.shape[2] != x.shape[3] and bool((quarter_turns % 2 == 1).any()):
        raise ValueError(f"quarter turns need square images, got {x.shape[2]}x{x.shape[3]}")
    out = x.clone()
    for k in range(1, ROTATIONS):
        pick = (quarter_turns == k).nonzero().flatten().to(x.device)
        if pick.numel():
            out[pick] = torch.rot90(x[pick], k, dims=(2, 3))
    return out


class AnoMemNet(nn.Module):
    """`memory.enabled: false` builds the plain SimCLR network: no memories, and D_s is F_s itself."""

    def __init__(self, model: ModelParams, memory: MemoryParams, rotation_head: bool = False):
        super().__init__()
        self.encoder = CifarResNet(model.arch, model.width)
        # Buffers, so that a saved model carries the statistics it was trained with. The fixed map is no statistic:
        # it stays out of the state dict, so models saved before `model.input_norm` existed still load.
        self.dataset_stats = model.input_norm == "dataset"
        self.register_buffer("input_mean", torch.full((1, 3, 1, 1), FIXED_INPUT_MEAN), persistent=self.dataset_stats)
        self.register_buffer("input_std", torch.full((1, 3, 1, 1), FIXED_INPUT_STD), persistent=self.dataset_stats)
        self.map_scales = sorted(memory.scales)
        self.scales = self.map_scales if memory.enabled else []
        self.memories = nn.ModuleDict(
            {str(s): HopfieldMemory(memory.size, self.encoder.channels[s], memory.beta, memory.read) for s in self.scales}
        )
        self.memory_init = memory.init
        self.deviation_path = memory.deviation_path
        d = self.encoder.out_dim
        self.projector = nn.Sequential(
            nn.Linear(d, d, bias=False),
            *([nn.BatchNorm1d(d)] if model.proj_bn else []),
            nn.ReLU(inplace=True),
            nn.Linear(d, model.proj_dim),
        )
        self.rotation_head = nn.Linear(d, ROTATIONS) if rotation_head else None

    @classmethod
    def from_params(cls, params: Params) -> AnoMemNet:
        return cls(
            params.model,
            params.memory,
            rotation_head=params.contrastive.rotation_weight > 0,
        )

    def memory(self, scale: int) -> HopfieldMemory:
        return self.memories[str(scale)]

    @torch.no_grad()
    def set_input_stats(self, mean: torch.Tensor, std: torch.Tensor) -> None:
        """Normalise inputs with these per-channel statistics (3 values each) instead of the fixed map."""
        if not self.dataset_stats:
            raise ValueError("this network uses the fixed input map (model.input_norm: fixed); its statistics are not set")
        if mean.numel() != 3 or std.numel() != 3 or bool((std <= 0).any()):
            raise ValueError(f"input statistics need 3 means and 3 positive stds, got {mean.tolist()} and {std.tolist()}")
        self.input_mean.copy_(mean.view(1, 3, 1, 1))
        self.input_std.copy_(std.view(1, 3, 1, 1))

    def features(self, x: torch.Tensor) -> dict[int, torch.Tensor]:
        """F_s for every stage, on the plain path."""
        return self.encoder((x - self.input_mean) / self.input_std)

    def pooled(self, feats: dict[int, torch.Tensor]) -> torch.Tensor:
        return feats[self.encoder.num_stages].float().mean((2, 3))

    def project(self, pooled: torch.Tensor) -> torch.Tensor:
        return self.projector(pooled)

    def memory_path(self, feats: dict[int, torch.Tensor]) -> torch.Tensor:
        """p^mem, starting from the plain F_s of the first memory scale (the stages before it are shared)."""
        first = self.scales[0]
        h = self.memory(first)(feats[first])
        if first < self.encoder.num_stages:
            hook = lambda s, f: self.memory(s)(f) if s in self.scales else f
            h = self.encoder.run_stages(h, first + 1, hook)[self.encoder.num_stages]
        return self.project(h.float().mean((2, 3)))

    @torch.no_grad()
    def init_memories(self, x: torch.Tensor, generator: torch.Generator | None = None) -> None:
        """Seed every memory that is not yet seeded: from features of the batch x, or (`memory.init: noise`) from noise."""
        feats = self.features(x) if self.memory_init == "features" else None
        for s in self.scales:
            if not bool(self.memory(s).initialized):
                if feats is None:
                    self.memory(s).init_from_noise(generator)
                else:
                    self.memory(s).init_from_features(feats[s], generator)

    def recompute_bn_statistics(self, batches: Iterable[torch.Tensor]) -> None:
        """Set every encoder BatchNorm's running mean and variance to their average over `batches` (what `features`
        takes), in place of the moving average over the last training steps' augmented views. Leaves the net in eval mode."""
        update_bn(((x - self.input_mean) / self.input_std for x in batches), self.encoder)
        self.eval()

    def rotation_nll(self, pooled: torch.Tensor, turn: int) -> torch.Tensor:
        """-log p(turn | view) from the rotation head, for views that were all turned by `turn` quarter turns."""
        return -torch.log_softmax(self.rotation_head(pooled).float(), dim=1)[:, turn]

    @torch.no_grad()
    def deviation(self, feats: dict[int, torch.Tensor]) -> dict[int, torch.Tensor]:
        """D_s = F_s - read(F_s) at every map scale, from the plain-path `features` (F_s itself without memories).

        With `memory.deviation_path: memory`, F_s of a scale above the first memory scale is taken on the memory
        path instead: after the read-outs of the memory scales below it.
        """
        if not self.scales:
            return {s: feats[s] for s in self.map_scales}
        if self.deviation_path == "plain":
            return {s: feats[s] - self.memory(s)(feats[s]) for s in self.scales}
        out: dict[int, torch.Tensor] = {}

        def read_and_keep(s: int, f: torch.Tensor) -> torch.Tensor:
            if s not in self.scales:
                return f
            read = self.memory(s)(f)
            out[s] = f - read
            return read

        first = self.scales[0]
        h = read_and_keep(first, feats[first])
        if first < self.scales[-1]:
            self.encoder.run_stages(h, first + 1, read_and_keep)
        return out
