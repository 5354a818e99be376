"""AnoMemNet: plain and memory paths, where the MACL gradient goes, deviation maps and memory seeding.

Width 8, not 4: on this CPU (AVX2, no native bf16) a channels_last fp32 backward through the 4->8 channel
1x1 stride-2 shortcut conv crashes inside torch/oneDNN (see the report); width 8 does not hit it.
"""

from __future__ import annotations

import pytest
import torch
from torch import nn

from anomem.losses import macl_loss
from anomem.model import AnoMemNet, rotate
from anomem.params import parse_params

WIDTH, PROJ, SIZE = 8, 16, 16


def _net(arch="resnet20", scales=(2, 3), size=SIZE, beta=10.0, seed=0) -> AnoMemNet:
    p = parse_params(
        {"model": {"arch": arch, "width": WIDTH, "proj_dim": PROJ}, "memory": {"scales": list(scales), "size": size, "beta": beta}}
    )
    torch.manual_seed(seed)
    return AnoMemNet(p.model, p.memory)


def _images(n=8, seed=0) -> torch.Tensor:
    return torch.rand(n, 3, 32, 32, generator=torch.Generator().manual_seed(seed))


def test_default_params_build_a_working_net(params):
    net = AnoMemNet(params.model, params.memory).eval()
    assert net.scales == sorted(params.memory.scales)
    assert all(net.memory(s).size == params.memory.size for s in net.scales)
    with torch.no_grad():
        p = net.project(net.pooled(net.features(_images(2))))
    assert p.shape == (2, params.model.proj_dim)


@pytest.mark.parametrize("arch,scales", [("resnet20", (2, 3)), ("resnet20", (1,)), ("resnet18", (2, 4))])
def test_plain_and_memory_path_shapes(arch, scales):
    net = _net(arch, scales)
    assert net.scales == sorted(scales)
    for s in scales:
        assert net.memory(s).dim == net.encoder.channels[s]
    x = _images()
    net.init_memories(x)
    net.eval()
    with torch.no_grad():
        feats = net.features(x)
        pooled = net.pooled(feats)
        p = net.project(pooled)
        p_mem = net.memory_path(feats)
    assert pooled.shape == (8, net.encoder.out_dim)
    assert p.shape == p_mem.shape == (8, PROJ)
    assert torch.isfinite(p_mem).all()
    assert not torch.allclose(p, p_mem), "the memory read must change the representation"


def test_memory_path_replaces_each_memory_scale_by_its_read():
    net = _net("resnet18", (2, 4))
    x = _images()
    net.init_memories(x)
    net.eval()
    with torch.no_grad():
        feats = net.features(x)
        h = net.memory(2)(feats[2])
        h = net.encoder.stages[2](h)  # stage 3: no memory
        h = net.memory(4)(net.encoder.stages[3](h))
        expected = net.project(h.mean((2, 3)))
        assert torch.allclose(net.memory_path(feats), expected, atol=1e-5)


@pytest.mark.parametrize("channels_last", [False, True])
def test_macl_backward_reaches_encoder_memories_and_projector(channels_last):
    net = _net()
    x = _images(16)
    net.init_memories(x)
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    net.to(memory_format=fmt).train()
    g = torch.Generator().manual_seed(1)
    v1 = (x + 0.05 * torch.randn(x.shape, generator=g)).clamp(0, 1)
    v2 = (x + 0.05 * torch.randn(x.shape, generator=g)).clamp(0, 1)
    inputs = torch.cat([v1, v2]).contiguous(memory_format=fmt)

    feats = net.features(inputs)
    p_all = net.project(net.pooled(feats))
    p_mem = net.memory_path(feats)
    variance = sum(net.memory(s).variance_penalty() for s in net.scales)
    loss, _ = macl_loss(p_all[:16], p_all[16:], p_mem[:16], p_mem[16:], variance, 0.2, 1.0, 1.0)
    loss.backward()

    convs = [(n, m) for n, m in net.encoder.named_modules() if isinstance(m, nn.Conv2d)]
    assert len(convs) > 10
    for name, m in convs:
        assert m.weight.grad is not None and m.weight.grad.abs().sum() > 0, name
    for s in net.scales:
        grad = net.memory(s).items.grad
        assert grad is not None and torch.isfinite(grad).all() and grad.abs().sum() > 0, s
    for name, prm in net.projector.named_parameters():
        assert prm.grad is not None and prm.grad.abs().sum() > 0, name


def test_deviation_maps_per_memory_scale():
    net = _net()
    x = _images()
    net.init_memories(x)
    net.eval()
    feats = net.features(x)
    maps = net.deviation(feats)
    assert sorted(maps) == [2, 3]
    for s in (2, 3):
        assert maps[s].shape == feats[s].shape
        assert torch.allclose(maps[s], feats[s] - net.memory(s)(feats[s]), atol=1e-6)
        assert maps[s].abs().mean() > 1e-3  # a 16-item memory cannot hold every location
    assert not maps[2].requires_grad


def test_deviation_vanishes_when_memory_holds_every_location():
    x = _images(1)
    net = _net(size=256, beta=1000.0).eval()  # 16x16 = 256 locations at S2, 8x8 = 64 at S3
    with torch.no_grad():
        feats = net.features(x)
        for s in net.scales:
            locs = feats[s].permute(0, 2, 3, 1).reshape(-1, feats[s].shape[1])
            net.memory(s).items.copy_(locs.repeat(256 // locs.shape[0], 1))
        maps = net.deviation(feats)
    for s in net.scales:
        rel = maps[s].norm() / feats[s].norm()
        assert rel < 1e-2, (s, rel.item())

    # and the check can fail: a memory of other images' features leaves a real deviation
    with torch.no_grad():
        other = net.features(_images(1, seed=5))
        for s in net.scales:
            locs = other[s].permute(0, 2, 3, 1).reshape(-1, other[s].shape[1])
            net.memory(s).items.copy_(locs.repeat(256 // locs.shape[0], 1))
        maps = net.deviation(feats)
    assert all(maps[s].norm() / feats[s].norm() > 0.1 for s in net.scales)


def test_init_memories_seeds_only_uninitialised_memories():
    net = _net().eval()
    with torch.no_grad():
        net.memory(2).items.fill_(7.0)
        net.memory(2).initialized.fill_(True)
    x = _images()
    net.init_memories(x, torch.Generator().manual_seed(0))
    assert torch.all(net.memory(2).items == 7.0), "an initialised memory is left alone"
    assert bool(net.memory(3).initialized)
    with torch.no_grad():
        locs = net.features(x)[3].permute(0, 2, 3, 1).reshape(-1, net.encoder.channels[3])
    assert (net.memory(3).items.detach()[:, None, :] == locs[None]).all(-1).any(1).all()

    seeded = net.memory(3).items.detach().clone()
    net.init_memories(_images(seed=9))
    assert torch.equal(net.memory(3).items, seeded), "a second call changes nothing"


def test_rotate_turns_each_image_by_its_own_quarter_turns():
    x = _images(4)
    turns = torch.tensor([0, 1, 2, 3])
    out = rotate(x, turns)
    for i, k in enumerate(turns.tolist()):
        assert torch.equal(out[i], torch.rot90(x[i], k, dims=(1, 2)))
    assert torch.equal(rotate(rotate(x, turns), (4 - turns) % 4), x)


def test_rotation_head_is_built_only_when_weighted():
    base = {"model": {"arch": "resnet20", "width": WIDTH, "proj_dim": PROJ}, "memory": {"size": SIZE}}
    unweighted = parse_params({**base, "contrastive": {"rotation_weight": 0.0}, "detector": {"combine": ["detector"]}})
    assert AnoMemNet.from_params(unweighted).rotation_head is None
    net = AnoMemNet.from_params(parse_params({**base, "contrastive": {"rotation_weight": 1.0}}))
    assert net.rotation_head.out_features == 4


def test_without_memory_the_net_is_plain_and_deviation_is_the_feature_map():
    p = parse_params({"model": {"arch": "resnet20", "width": WIDTH, "proj_dim": PROJ}, "memory": {"enabled": False, "scales": [2, 3]}})
    net = AnoMemNet.from_params(p).eval()
    assert net.scales == [] and len(net.memories) == 0
    x = _images(3)
    feats = net.features(x)
    maps = net.deviation(feats)
    assert sorted(maps) == [2, 3]
    for s in (2, 3):
        assert torch.equal(maps[s], feats[s])


def _net_with(**groups) -> AnoMemNet:
    raw = {"model": {"arch": "resnet20", "width": WIDTH, "proj_dim": PROJ}, "memory": {"scales": [2, 3], "size": SIZE}}
    for group, values in groups.items():
        raw[group].update(values)
    p = parse_params(raw)
    torch.manual_seed(0)
    return AnoMemNet(p.model, p.memory)


def test_fixed_input_norm_is_the_affine_map_bit_for_bit():
    """The buffers hold 0.5 and 0.25 exactly, so the default gives the features of the plain (x - 0.5) / 0.25."""
    net = _net_with().eval()
    x = _images()
    got = net.features(x)
    expected = net.encoder((x - 0.5) / 0.25)
    assert all(torch.equal(got[s], expected[s]) for s in got)
    assert "input_mean" not in net.state_dict()  # so the models saved before the param existed load unchanged
    with pytest.raises(ValueError, match="fixed input map"):
        net.set_input_stats(torch.full((3,), 0.4), torch.full((3,), 0.2))


def test_dataset_input_stats_change_the_features_and_travel_in_the_state_dict():
    net = _net_with(model={"input_norm": "dataset"}).eval()
    x = _images()
    before = net.features(x)[3]
    net.set_input_stats(torch.tensor([0.4, 0.5, 0.6]), torch.tensor([0.2, 0.3, 0.25]))
    assert not torch.allclose(net.features(x)[3], before)
    state = net.state_dict()
    assert torch.equal(state["input_std"].flatten(), torch.tensor([0.2, 0.3, 0.25]))
    with pytest.raises(ValueError, match="positive"):
        net.set_input_stats(torch.zeros(3), torch.zeros(3))


def test_projection_head_without_batchnorm():
    net = _net_with(model={"proj_bn": False})
    assert not any(isinstance(m, nn.BatchNorm1d) for m in net.projector)
    assert net.project(torch.randn(4, net.encoder.out_dim)).shape == (4, PROJ)
    assert any(isinstance(m, nn.BatchNorm1d) for m in _net_with().projector)


def test_noise_init_seeds_items_without_features():
    net = _net_with(memory={"init": "noise"})
    net.init_memories(_images(2), torch.Generator().manual_seed(0))
    for s in net.scales:
        assert bool(net.memory(s).initialized) and abs(net.memory(s).items.std().item() - 1) < 0.2


def test_memory_path_deviation_reads_the_scales_below_first():
    plain, mem = _net_with(), _net_with(memory={"deviation_path": "memory"})
    x = _images()
    plain.init_memories(x)
    mem.load_state_dict(plain.state_dict())
    plain.eval(), mem.eval()
    feats = plain.features(x)
    d_plain, d_mem = plain.deviation(feats), mem.deviation(feats)
    assert torch.equal(d_plain[2], d_mem[2])  # the first memory scale sees the same F_2 on both paths
    f3_mem = mem.encoder.run_stages(mem.memory(2)(feats[2]), 3)[3]
    assert torch.allclose(d_mem[3], f3_mem - mem.memory(3)(f3_mem), atol=1e-6)
    assert not torch.allclose(d_mem[3], d_plain[3], atol=1e-3)


def test_rotation_nll_is_the_negative_log_probability_of_the_turn():
    p = parse_params({"model": {"arch": "resnet20", "width": WIDTH, "proj_dim": PROJ}, "contrastive": {"rotation_weight": 1.0}})
    net = AnoMemNet.from_params(p)
    pooled = torch.randn(5, net.encoder.out_dim)
    probs = torch.softmax(net.rotation_head(pooled), dim=1)
    assert torch.allclose(net.rotation_nll(pooled, 2), -probs[:, 2].log(), atol=1e-5)


def test_recomputed_bn_statistics_are_the_exact_average_over_the_batches():
    net = _net()
    batches = [_images(8, seed=1), _images(8, seed=2)]
    stem_bn = net.encoder.stem[1]
    momentum = stem_bn.momentum
    net.recompute_bn_statistics(iter(batches))
    with torch.no_grad():
        conv = torch.cat([net.encoder.stem[0]((x - net.input_mean) / net.input_std) for x in batches])
    torch.testing.assert_close(stem_bn.running_mean, conv.mean((0, 2, 3)), rtol=1e-4, atol=1e-5)
    assert int(stem_bn.num_batches_tracked) == 2 and stem_bn.momentum == momentum and not net.training


def test_recomputing_bn_statistics_rescues_a_net_whose_running_statistics_never_settled():
    """A stage 1 of very few steps leaves running statistics far from its features; eval-mode features then explode."""
    net = _net()
    for m in net.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.running_var.fill_(1e-4)
    x = _images(16, seed=3)
    with torch.no_grad():
        exploded = net.eval().features(x)[3].abs().max()
        net.recompute_bn_statistics([x])
        settled = net.features(x)[3].abs().max()
    assert exploded > 1e4 and settled < 50
