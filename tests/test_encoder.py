"""CifarResNet: stage shapes, channel bookkeeping and the stage hook that the memory path relies on."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from anomem.encoder import BLOCKS, BasicBlock, CifarResNet

ARCH_STAGES = [("resnet20", 3), ("resnet18", 4)]


@pytest.mark.parametrize("width", [4, 8])
@pytest.mark.parametrize("arch,n_stages", ARCH_STAGES)
def test_stage_shapes_channels_and_out_dim(arch, n_stages, width):
    torch.manual_seed(0)
    enc = CifarResNet(arch, width).eval()
    with torch.no_grad():
        feats = enc(torch.rand(2, 3, 32, 32))

    assert sorted(feats) == list(range(1, n_stages + 1))
    for s, f in feats.items():
        px = 32 // 2 ** (s - 1)  # 32, 16, 8[, 4]
        assert f.shape == (2, width * 2 ** (s - 1), px, px), s
        assert (f >= 0).all(), "every stage ends in a ReLU"
    assert enc.num_stages == n_stages
    assert enc.channels == {s: width * 2 ** (s - 1) for s in range(1, n_stages + 1)}
    assert enc.out_dim == width * 2 ** (n_stages - 1) == enc.channels[n_stages]


@pytest.mark.parametrize("arch", ["resnet20", "resnet18"])
def test_blocks_per_stage_follow_the_table(arch):
    enc = CifarResNet(arch, 4)
    assert tuple(sum(isinstance(m, BasicBlock) for m in stage) for stage in enc.stages) == BLOCKS[arch]


def test_unknown_arch_raises():
    with pytest.raises(ValueError, match="unknown arch"):
        CifarResNet("resnet50", 8)


def test_hook_sees_every_stage_in_order_and_identity_hook_changes_nothing():
    torch.manual_seed(0)
    enc = CifarResNet("resnet20", 4).eval()
    x = torch.rand(2, 3, 32, 32)
    seen = []

    def hook(s, f):
        seen.append((s, tuple(f.shape)))
        return f

    with torch.no_grad():
        plain = enc(x)
        hooked = enc(x, hook)
    assert [s for s, _ in seen] == [1, 2, 3]
    assert [shape for _, shape in seen] == [tuple(plain[s].shape) for s in (1, 2, 3)]
    for s in plain:
        assert torch.equal(plain[s], hooked[s])


def test_hook_replaces_the_stage_output():
    """A hook that zeroes stage 2 makes stage 3 a function of the zeros alone."""
    torch.manual_seed(0)
    enc = CifarResNet("resnet20", 4).eval()
    zero2 = lambda s, f: torch.zeros_like(f) if s == 2 else f  # noqa: E731
    with torch.no_grad():
        a = enc(torch.rand(2, 3, 32, 32), zero2)
        b = enc(torch.rand(2, 3, 32, 32) * 3.0, zero2)
        plain = enc(torch.rand(2, 3, 32, 32))
        expected3 = enc.stages[2](torch.zeros_like(a[2]))

    assert torch.count_nonzero(a[2]) == 0, "feats[s] holds what the hook returned"
    assert not torch.equal(a[1], b[1]), "stage 1 still sees the input"
    assert torch.equal(a[3], b[3]), "stage 3 no longer depends on the input"
    assert torch.allclose(a[3], expected3)
    assert not torch.allclose(a[3], plain[3])


def test_run_stages_from_the_middle_matches_forward():
    torch.manual_seed(0)
    enc = CifarResNet("resnet18", 4).eval()
    x = torch.rand(2, 3, 32, 32)
    with torch.no_grad():
        full = enc(x)
        tail = enc.run_stages(full[2], 3)
    assert sorted(tail) == [3, 4]
    for s in (3, 4):
        assert torch.allclose(tail[s], full[s])


def test_gradient_reaches_the_stem_through_every_stage():
    torch.manual_seed(0)
    enc = CifarResNet("resnet20", 4).train()
    enc(torch.rand(4, 3, 32, 32))[3].sum().backward()
    convs = [m for m in enc.modules() if isinstance(m, nn.Conv2d)]
    assert convs and all(m.bias is None for m in convs)
    assert all(m.weight.grad is not None and m.weight.grad.abs().sum() > 0 for m in convs)
