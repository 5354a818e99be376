"""HopfieldMemory: the read, its attention, seeding from features, health figures and the variance term."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from anomem.memory import HopfieldMemory


def _memory(size=16, dim=8, beta=10.0, seed=0) -> HopfieldMemory:
    torch.manual_seed(seed)
    mem = HopfieldMemory(size, dim, beta)
    with torch.no_grad():
        mem.items.copy_(torch.randn(size, dim))
    return mem


def _locations(fmap: torch.Tensor) -> torch.Tensor:
    return fmap.permute(0, 2, 3, 1).reshape(-1, fmap.shape[1])


def test_read_has_the_input_shape():
    mem = _memory()
    fmap = torch.randn(2, 8, 5, 7)
    out = mem(fmap)
    assert out.shape == fmap.shape
    assert out.dtype == fmap.dtype
    assert torch.isfinite(out).all()


def test_attention_rows_are_distributions():
    mem = _memory()
    att = mem.attention(torch.randn(3, 8, 4, 6))
    assert att.shape == (3 * 4 * 6, 16)
    assert (att >= 0).all()
    assert torch.allclose(att.sum(1), torch.ones(att.shape[0]), atol=1e-6)


def test_read_is_the_attention_weighted_sum_of_raw_items():
    mem = _memory()
    fmap = torch.randn(2, 8, 3, 3)
    z = F.normalize(_locations(fmap), dim=1)
    m = F.normalize(mem.items.detach(), dim=1)
    att = torch.softmax(mem.beta * z @ m.t(), dim=1)
    expected = (att @ mem.items.detach()).view(2, 3, 3, 8).permute(0, 3, 1, 2)
    assert torch.allclose(mem(fmap), expected, atol=1e-6)


def test_fused_read_has_the_gradients_of_softmax_then_matmul():
    """forward() goes through scaled_dot_product_attention; training must see the same gradients as the formula."""
    mem = _memory()
    fmap = torch.randn(2, 8, 3, 3, requires_grad=True)
    weights = torch.randn(2, 8, 3, 3)
    (mem(fmap) * weights).sum().backward()
    fused = (fmap.grad.clone(), mem.items.grad.clone())
    fmap.grad, mem.items.grad = None, None
    explicit = (mem.attention(fmap) @ mem.items).view(2, 3, 3, 8).permute(0, 3, 1, 2)
    (explicit * weights).sum().backward()
    assert fused[0].abs().sum() > 0 and fused[1].abs().sum() > 0
    assert torch.allclose(fused[0], fmap.grad, atol=1e-5)
    assert torch.allclose(fused[1], mem.items.grad, atol=1e-5)


def test_large_beta_reads_the_most_similar_item():
    """With beta large the softmax is an arg-max: read(z) = the (raw, unnormalised) item closest in cosine."""
    mem = _memory(size=16, dim=8, beta=1000.0)
    g = torch.Generator().manual_seed(1)
    idx = torch.randint(0, 16, (2 * 4 * 4,), generator=g)
    scale = torch.rand(idx.numel(), 1, generator=g) * 5 + 0.1  # cosine ignores scale; the read must not
    z = mem.items.detach()[idx] * scale + 0.02 * torch.randn(idx.numel(), 8, generator=g)
    fmap = z.view(2, 4, 4, 8).permute(0, 3, 1, 2)

    cos = F.normalize(z, dim=1) @ F.normalize(mem.items.detach(), dim=1).t()
    assert torch.equal(cos.argmax(1), idx)
    read = _locations(mem(fmap))
    assert torch.allclose(read, mem.items.detach()[idx], atol=1e-4)


def test_init_from_features_copies_feature_vectors():
    mem = HopfieldMemory(12, 8, 10.0)
    assert not bool(mem.initialized)
    fmap = torch.randn(2, 8, 4, 4)
    mem.init_from_features(fmap, torch.Generator().manual_seed(0))

    assert bool(mem.initialized)
    locs = _locations(fmap)
    # each item is exactly one location's feature vector
    match = (mem.items.detach()[:, None, :] == locs[None, :, :]).all(-1)
    assert match.any(1).all()
    # seeding is reproducible with the same generator, and differs with another
    other = HopfieldMemory(12, 8, 10.0)
    other.init_from_features(fmap, torch.Generator().manual_seed(0))
    assert torch.equal(other.items, mem.items)
    third = HopfieldMemory(12, 8, 10.0)
    third.init_from_features(fmap, torch.Generator().manual_seed(1))
    assert not torch.equal(third.items, mem.items)


def test_initialized_flag_travels_in_the_state_dict():
    mem = _memory()
    mem.init_from_features(torch.randn(1, 8, 4, 4))
    fresh = HopfieldMemory(16, 8, 10.0)
    fresh.load_state_dict(mem.state_dict())
    assert bool(fresh.initialized)
    assert torch.equal(fresh.items, mem.items)


def test_health_keys_and_ranges():
    mem = _memory(size=16)
    h = mem.health(torch.randn(2, 8, 6, 6))
    assert set(h) == {"attention_entropy", "attention_entropy_max", "items_used", "item_std"}
    assert h["attention_entropy_max"] == pytest.approx(math.log(16))
    assert 0.0 <= h["attention_entropy"] <= math.log(16) + 1e-6
    assert 1 <= h["items_used"] <= 16 and float(h["items_used"]).is_integer()
    assert h["item_std"] == pytest.approx(mem.items.detach().std(0).mean().item())


def test_health_extremes():
    # identical items: uniform attention (max entropy), and one item wins every location
    same = HopfieldMemory(8, 4, 10.0)
    with torch.no_grad():
        same.items.copy_(torch.ones(8, 4))
    h = same.health(torch.randn(2, 4, 3, 3))
    assert h["attention_entropy"] == pytest.approx(math.log(8), abs=1e-5)
    assert h["items_used"] == 1
    assert h["item_std"] == 0

    # orthogonal items queried by themselves: every item wins somewhere
    ortho = HopfieldMemory(4, 4, 100.0)
    with torch.no_grad():
        ortho.items.copy_(torch.eye(4))
    fmap = torch.eye(4).view(1, 2, 2, 4).permute(0, 3, 1, 2)
    h = ortho.health(fmap)
    assert h["items_used"] == 4
    assert h["attention_entropy"] == pytest.approx(math.log(4), abs=1e-3)  # the mean attention is uniform


def test_variance_penalty_zero_when_spread_and_positive_when_collapsed():
    mem = HopfieldMemory(16, 8, 10.0)
    with torch.no_grad():
        sign = torch.tensor([1.0, -1.0]).repeat(8)[:, None]
        mem.items.copy_(2.0 * sign.expand(16, 8))  # std per dim = 2 * sqrt(16/15) > 1
    assert mem.items.std(0).min() >= 1
    assert mem.variance_penalty().item() == 0.0

    with torch.no_grad():
        mem.items.copy_(torch.full((16, 8), 0.3))  # identical items
    assert mem.variance_penalty().item() == pytest.approx(1.0)

    with torch.no_grad():
        mem.items.copy_(0.5 * sign.expand(16, 8) * math.sqrt(15 / 16))  # std exactly 0.5
    assert mem.variance_penalty().item() == pytest.approx(0.5, abs=1e-6)


def test_variance_penalty_gradient_spreads_nearly_collapsed_items():
    torch.manual_seed(0)
    mem = HopfieldMemory(16, 8, 10.0)
    with torch.no_grad():
        mem.items.copy_(torch.ones(16, 8) + 1e-2 * torch.randn(16, 8))
    before = mem.items.detach().std(0)
    mem.variance_penalty().backward()
    assert torch.isfinite(mem.items.grad).all() and mem.items.grad.abs().sum() > 0
    with torch.no_grad():
        mem.items -= 1.0 * mem.items.grad
    assert (mem.items.detach().std(0) > before).all()


def test_channels_last_input():
    mem = _memory()
    fmap = torch.randn(2, 8, 5, 5)
    cl = fmap.contiguous(memory_format=torch.channels_last)
    out, out_cl = mem(fmap), mem(cl)
    assert out_cl.shape == fmap.shape
    assert out_cl.is_contiguous(memory_format=torch.channels_last)
    assert out.is_contiguous()
    assert torch.allclose(out, out_cl, atol=1e-6)
    assert torch.allclose(mem.attention(fmap), mem.attention(cl), atol=1e-6)

    seeded_a, seeded_b = HopfieldMemory(6, 8, 10.0), HopfieldMemory(6, 8, 10.0)
    seeded_a.init_from_features(fmap, torch.Generator().manual_seed(3))
    seeded_b.init_from_features(cl, torch.Generator().manual_seed(3))
    assert torch.equal(seeded_a.items, seeded_b.items)


def test_gradient_reaches_items_and_input():
    mem = _memory()
    fmap = torch.randn(2, 8, 3, 3, requires_grad=True)
    mem(fmap).square().sum().backward()
    assert mem.items.grad is not None and mem.items.grad.abs().sum() > 0
    assert fmap.grad is not None and fmap.grad.abs().sum() > 0


def test_params_reject_a_one_item_memory():
    # The variance term is a std over the items: undefined (NaN) for one item, so params stop it first.
    from anomem.errors import ParamsError
    from anomem.params import parse_params

    with pytest.raises(ParamsError, match=r"memory.size = 1"):
        parse_params({"memory": {"size": 1}})
    assert torch.isfinite(_memory(size=2, dim=4).variance_penalty())


def test_dot_read_is_scaled_dot_product_attention_over_raw_items():
    torch.manual_seed(0)
    mem = HopfieldMemory(16, 8, 2.0, read="dot")
    with torch.no_grad():
        mem.items.copy_(torch.randn(16, 8))
    fmap = torch.randn(2, 8, 3, 3)
    z = _locations(fmap)
    att = torch.softmax(2.0 * z @ mem.items.t() / math.sqrt(8), dim=1)
    assert torch.allclose(mem.attention(fmap), att, atol=1e-6)
    expected = (att @ mem.items).view(2, 3, 3, 8).permute(0, 3, 1, 2)
    assert torch.allclose(mem(fmap), expected, atol=1e-5)
    cosine = _memory(beta=2.0)
    assert not torch.allclose(cosine(fmap), mem(fmap), atol=1e-3)  # the two reads really differ


def test_unknown_read_is_refused():
    with pytest.raises(ValueError, match="read must be"):
        HopfieldMemory(4, 8, 1.0, read="l2")


def test_init_from_noise_seeds_standard_normal_items():
    mem = HopfieldMemory(512, 16, 10.0)
    mem.init_from_noise(torch.Generator().manual_seed(0))
    assert bool(mem.initialized)
    assert abs(mem.items.mean().item()) < 0.05 and abs(mem.items.std().item() - 1) < 0.05
