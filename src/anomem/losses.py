"""NT-Xent, the MACL objective, and the Deep SVDD / Deep SAD objectives of the detector."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from anomem.params import LossReduction, check_choice


def nt_xent(
    a: torch.Tensor,
    b: torch.Tensor,
    temperature: float,
    extra_negatives: torch.Tensor | None = None,
) -> torch.Tensor:
    """SimCLR's NT-Xent over 2N anchors: a_i and b_i are positives, every other row a negative.

    `extra_negatives` (e.g. known anomalies) are only ever negatives: columns, never anchors or positives.
    """
    n = a.shape[0]
    z = F.normalize(torch.cat([a, b]).float(), dim=1)
    candidates = z if extra_negatives is None else torch.cat([z, F.normalize(extra_negatives.float(), dim=1)])
    logits = z @ candidates.t() / temperature
    self_mask = torch.zeros_like(logits, dtype=torch.bool)
    self_mask[:, : 2 * n].fill_diagonal_(True)
    logits = logits.masked_fill(self_mask, float("-inf"))
    targets = torch.cat([torch.arange(n, 2 * n), torch.arange(0, n)]).to(a.device)
    return F.cross_entropy(logits, targets)


def macl_loss(
    p1: torch.Tensor,
    p2: torch.Tensor,
    p1_mem: torch.Tensor,
    p2_mem: torch.Tensor,
    variance_penalty: torch.Tensor,
    temperature: float,
    plain_weight: float,
    var_weight: float,
    known_negatives: torch.Tensor | None = None,
) -> tuple[torch.Tensor, dict[str, float]]:
    """NT-Xent(p1, p2^mem) + NT-Xent(p2, p1^mem) + plain_weight * NT-Xent(p1, p2) + var_weight * sum_s var_s."""
    cross = nt_xent(p1, p2_mem, temperature, known_negatives) + nt_xent(p2, p1_mem, temperature, known_negatives)
    plain = nt_xent(p1, p2, temperature, known_negatives) if plain_weight > 0 else cross.new_zeros(())
    total = cross + plain_weight * plain + var_weight * variance_penalty
    parts = {
        k: float(v.detach())
        for k, v in (
            ("loss", total),
            ("loss_memory", cross),
            ("loss_plain", plain),
            ("loss_variance", variance_penalty),
        )
    }
    return total, parts


def svdd_distance(embedding: torch.Tensor, center: torch.Tensor) -> torch.Tensor:
    return ((embedding - center) ** 2).sum(1)


def deep_sad_loss(dist: torch.Tensor, is_known_anomaly: torch.Tensor, eta: float, eps: float, reduction: str = "separate") -> torch.Tensor:
    """Deep SAD; one-class (Deep SVDD) when no anomaly is known.

    separate: mean over normals of dist + eta * mean over known anomalies of 1/(dist + eps), so the known term
    weighs the same however few anomalies a batch holds. joint: one mean over the batch of dist (normal) or
    eta / (dist + eps) (known), as in the Deep SAD reference code.
    """
    if check_choice("reduction", reduction, LossReduction) == "joint":
        return torch.where(is_known_anomaly, eta / (dist + eps), dist).mean() if dist.numel() else dist.new_zeros(())
    normal = dist[~is_known_anomaly]
    loss = normal.mean() if normal.numel() else dist.new_zeros(())
    known = dist[is_known_anomaly]
    if known.numel():
        loss = loss + eta * (1.0 / (known + eps)).mean()
    return loss
