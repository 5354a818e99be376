"""NT-Xent, the MACL objective and the Deep SVDD / Deep SAD objectives."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from anomem.losses import deep_sad_loss, macl_loss, nt_xent, svdd_distance


def _gen(seed=0):
    return torch.Generator().manual_seed(seed)


def _reference_nt_xent(a, b, t, extra=None):
    """Loop-by-loop NT-Xent: anchor i, positive its pair, denominator every other row plus the extras."""
    z = F.normalize(torch.cat([a, b]).double(), dim=1)
    e = F.normalize(extra.double(), dim=1) if extra is not None else z.new_zeros(0, z.shape[1])
    n = a.shape[0]
    losses = []
    for i in range(2 * n):
        j = (i + n) % (2 * n)
        others = [k for k in range(2 * n) if k != i]
        denom = sum(math.exp(float(z[i] @ z[k]) / t) for k in others) + sum(math.exp(float(z[i] @ v) / t) for v in e)
        losses.append(-(float(z[i] @ z[j]) / t - math.log(denom)))
    return sum(losses) / len(losses)


@pytest.mark.parametrize("with_extra", [False, True])
def test_nt_xent_matches_a_reference(with_extra):
    g = _gen()
    a, b = torch.randn(5, 4, generator=g), torch.randn(5, 4, generator=g)
    extra = torch.randn(3, 4, generator=g) if with_extra else None
    assert nt_xent(a, b, 0.5, extra).item() == pytest.approx(_reference_nt_xent(a, b, 0.5, extra), rel=1e-5)


def test_nt_xent_aligned_pairs_beat_random_pairs():
    g = _gen()
    a = torch.randn(64, 16, generator=g)
    aligned = nt_xent(a, a + 0.01 * torch.randn(64, 16, generator=g), 0.2)
    random = nt_xent(a, torch.randn(64, 16, generator=g), 0.2)
    assert torch.isfinite(aligned) and torch.isfinite(random)
    assert aligned < random - 1.0
    assert random.item() == pytest.approx(math.log(127), abs=1.5)  # near chance with 127 candidates


def test_nt_xent_symmetric_scale_invariant_and_finite():
    g = _gen()
    a, b = torch.randn(32, 8, generator=g), torch.randn(32, 8, generator=g)
    assert nt_xent(a, b, 0.2).item() == pytest.approx(nt_xent(b, a, 0.2).item(), rel=1e-6)
    assert nt_xent(1e4 * a, 1e-3 * b, 0.2).item() == pytest.approx(nt_xent(a, b, 0.2).item(), rel=1e-5)
    assert torch.isfinite(nt_xent(a, a.clone(), 0.01))  # logits up to 1/0.01, still finite


def test_extra_negatives_similar_to_anchors_raise_the_loss():
    g = _gen()
    a = torch.randn(32, 16, generator=g)
    b = a + 0.3 * torch.randn(32, 16, generator=g)
    none = nt_xent(a, b, 0.2)
    far = nt_xent(a, b, 0.2, -a)
    near = nt_xent(a, b, 0.2, a + 0.3 * torch.randn(32, 16, generator=g))
    assert near > far >= none
    assert near - none > 0.3


def test_gradient_flows_to_extra_negatives_and_pushes_them_away():
    g = _gen()
    a = torch.randn(16, 8, generator=g, requires_grad=True)
    b = (a.detach() + 0.1 * torch.randn(16, 8, generator=g)).requires_grad_()
    extra = (a.detach()[:4] + 0.3 * torch.randn(4, 8, generator=g)).requires_grad_()
    loss = nt_xent(a, b, 0.2, extra)
    loss.backward()
    assert extra.grad is not None and extra.grad.abs().sum() > 0
    assert a.grad.abs().sum() > 0 and b.grad.abs().sum() > 0
    with torch.no_grad():
        extra2 = extra - 0.5 * extra.grad
    assert nt_xent(a.detach(), b.detach(), 0.2, extra2) < loss.detach()


def test_macl_loss_parts_add_up():
    g = _gen()
    p1, p2, m1, m2, known = (torch.randn(8, 6, generator=g) for _ in range(5))
    var = torch.tensor(0.37)
    total, parts = macl_loss(p1, p2, m1, m2, var, 0.3, 0.5, 2.0, known_negatives=known)
    cross = nt_xent(p1, m2, 0.3, known) + nt_xent(p2, m1, 0.3, known)
    plain = nt_xent(p1, p2, 0.3, known)
    assert parts["loss_memory"] == pytest.approx(cross.item(), rel=1e-6)
    assert parts["loss_plain"] == pytest.approx(plain.item(), rel=1e-6)
    assert parts["loss_variance"] == pytest.approx(0.37)
    assert parts["loss"] == pytest.approx(total.item())
    assert total.item() == pytest.approx(parts["loss_memory"] + 0.5 * parts["loss_plain"] + 2.0 * parts["loss_variance"], rel=1e-6)
    assert all(isinstance(v, float) for v in parts.values())


def test_macl_loss_without_plain_term():
    g = _gen()
    p1, p2, m1, m2 = (torch.randn(8, 6, generator=g) for _ in range(4))
    total, parts = macl_loss(p1, p2, m1, m2, torch.tensor(0.0), 0.2, 0.0, 1.0)
    assert parts["loss_plain"] == 0.0
    assert total.item() == pytest.approx(parts["loss_memory"])


def test_svdd_distance_is_squared_euclidean():
    e = torch.tensor([[1.0, 2.0], [0.0, 0.0], [3.0, -1.0]])
    c = torch.tensor([1.0, 0.0])
    assert torch.allclose(svdd_distance(e, c), torch.tensor([4.0, 1.0, 5.0]))


def test_deep_sad_is_deep_svdd_without_known_anomalies():
    dist = torch.tensor([0.5, 1.0, 2.5, 4.0])
    loss = deep_sad_loss(dist, torch.zeros(4, dtype=torch.bool), eta=3.0, eps=1e-6)
    assert loss.item() == pytest.approx(2.0)


def test_deep_sad_adds_inverse_distance_of_known_anomalies():
    dist = torch.tensor([0.5, 1.0, 2.5, 4.0, 0.25])
    known = torch.tensor([False, False, True, False, True])
    eta, eps = 2.0, 0.1
    expected = (0.5 + 1.0 + 4.0) / 3 + eta * (1 / (2.5 + eps) + 1 / (0.25 + eps)) / 2
    assert deep_sad_loss(dist, known, eta, eps).item() == pytest.approx(expected, rel=1e-6)
    # only known anomalies: the normal part is zero
    assert deep_sad_loss(dist[known], known[known], eta, eps).item() == pytest.approx(eta * (1 / 2.6 + 1 / 0.35) / 2, rel=1e-6)


def test_deep_sad_gradient_pulls_normals_in_and_pushes_known_out():
    dist = torch.tensor([1.0, 2.0, 1.0, 2.0], requires_grad=True)
    known = torch.tensor([False, False, True, True])
    deep_sad_loss(dist, known, 1.0, 1e-6).backward()
    assert (dist.grad[~known] > 0).all()
    assert (dist.grad[known] < 0).all()


def test_joint_deep_sad_is_one_mean_over_the_batch():
    dist = torch.tensor([1.0, 2.0, 0.5, 4.0])
    known = torch.tensor([False, False, True, False])
    eta, eps = 2.0, 1e-6
    expected = (1.0 + 2.0 + eta / (0.5 + eps) + 4.0) / 4
    assert deep_sad_loss(dist, known, eta, eps, "joint").item() == pytest.approx(expected, rel=1e-6)
    # with no known anomaly both reductions are the Deep SVDD mean
    assert deep_sad_loss(dist, torch.zeros(4, dtype=torch.bool), eta, eps, "joint").item() == pytest.approx(1.875)
    assert deep_sad_loss(dist, known, eta, eps, "separate").item() != pytest.approx(expected, rel=1e-3)
    with pytest.raises(ValueError, match="reduction"):
        deep_sad_loss(dist, known, eta, eps, "sum")
