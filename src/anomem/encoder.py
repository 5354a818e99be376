"""The CIFAR ResNet family: a 3x3 stem, no max-pool, and stages S1..Sk that each return a feature map."""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn

# Blocks per stage. The ResNet-20 family has three stages (32, 16, 8 px), ResNet-18/34 four (32, 16, 8, 4 px).
BLOCKS = {
    "resnet20": (3, 3, 3),
    "resnet32": (5, 5, 5),
    "resnet44": (7, 7, 7),
    "resnet18": (2, 2, 2, 2),
    "resnet34": (3, 4, 6, 3),
}

StageHook = Callable[[int, torch.Tensor], torch.Tensor]


class BasicBlock(nn.Module):
    def __init__(self, in_ch: int, out_ch: int, stride: int):
        super().__init__()
        self.conv1 = nn.Conv2d(in_ch, out_ch, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(out_ch)
        self.conv2 = nn.Conv2d(out_ch, out_ch, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(out_ch)
        self.shortcut = nn.Identity()
        if stride != 1 or in_ch != out_ch:
            self.shortcut = nn.Sequential(nn.Conv2d(in_ch, out_ch, 1, stride, bias=False), nn.BatchNorm2d(out_ch))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = torch.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return torch.relu(out + self.shortcut(x))


class CifarResNet(nn.Module):
    """E in method.md. Stages are numbered from 1; `channels[s]` is C_s."""

    def __init__(self, arch: str, width: int):
        super().__init__()
        if arch not in BLOCKS:
            raise ValueError(f"unknown arch {arch!r}; choose one of {sorted(BLOCKS)}")
        self.stem = nn.Sequential(
            nn.Conv2d(3, width, 3, 1, 1, bias=False),
            nn.BatchNorm2d(width),
            nn.ReLU(inplace=True),
        )
        self.stages = nn.ModuleList()
        self.channels: dict[int, int] = {}
        in_ch = width
        for i, n_blocks in enumerate(BLOCKS[arch]):
            out_ch = width * 2**i
            blocks = [BasicBlock(in_ch if b == 0 else out_ch, out_ch, 2 if (b == 0 and i > 0) else 1) for b in range(n_blocks)]
            self.stages.append(nn.Sequential(*blocks))
            self.channels[i + 1] = out_ch
            in_ch = out_ch
        self.num_stages = len(self.stages)
        self.out_dim = in_ch
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")

    def run_stages(self, h: torch.Tensor, first: int, hook: StageHook | None = None) -> dict[int, torch.Tensor]:
        """Run stages first..last on h (the input of stage `first`); `hook(s, F_s)` may replace F_s before it goes on."""
        feats: dict[int, torch.Tensor] = {}
        for s in range(first, self.num_stages + 1):
            h = self.stages[s - 1](h)
            if hook is not None:
                h = hook(s, h)
            feats[s] = h
        return feats

    def forward(self, x: torch.Tensor, hook: StageHook | None = None) -> dict[int, torch.Tensor]:
        return self.run_stages(self.stem(x), 1, hook)
