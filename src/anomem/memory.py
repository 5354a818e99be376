"""Modern-Hopfield memory of normal prototypes, one module per scale, and its health figures."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from anomem.params import MemoryRead, check_choice


class HopfieldMemory(nn.Module):
    """N items M in R^{N x C}, read at every spatial location.

    read="cosine": softmax(beta * z_hat . M_hat^T) . M; read="dot": softmax(beta * z . M^T / sqrt(C)) . M.
    """

    def __init__(self, size: int, dim: int, beta: float, read: str = "cosine"):
        super().__init__()
        check_choice("read", read, MemoryRead)
        self.size, self.dim, self.beta, self.read = size, dim, beta, read
        # Both reads are softmax(scale * query . key^T) . M.
        self.scale = beta if read == "cosine" else beta / math.sqrt(dim)
        self.items = nn.Parameter(torch.zeros(size, dim))
        # A buffer, so that a checkpoint remembers whether the items were already seeded from features.
        self.register_buffer("initialized", torch.tensor(False))

    @torch.no_grad()
    def init_from_features(self, fmap: torch.Tensor, generator: torch.Generator | None = None) -> None:
        """Seed the items with encoder features at random locations (method.md: [ours], not noise)."""
        flat = _locations(fmap).float()
        pick = torch.randint(0, flat.shape[0], (self.size,), generator=generator, device="cpu").to(flat.device)
        self.items.copy_(flat[pick])
        self.initialized.fill_(True)

    @torch.no_grad()
    def init_from_noise(self, generator: torch.Generator | None = None) -> None:
        """Seed the items with standard normal noise (the alternative of method.md's [ours] feature seeding)."""
        noise = torch.randn(self.size, self.dim, generator=generator, device="cpu")
        self.items.copy_(noise.to(self.items.device))
        self.initialized.fill_(True)

    def _query_key(self, fmap: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The locations and the items as the read compares them: unit vectors (cosine) or raw (dot)."""
        z = _locations(fmap)
        if self.read == "cosine":
            return F.normalize(z, dim=1), F.normalize(self.items, dim=1).to(z.dtype)
        return z, self.items.to(z.dtype)

    def attention(self, fmap: torch.Tensor) -> torch.Tensor:
        """(B*H*W, N) attention of every location over the items."""
        z, m = self._query_key(fmap)
        return torch.softmax(self.scale * (z @ m.t()), dim=1)

    def forward(self, fmap: torch.Tensor) -> torch.Tensor:
        """The read-out map, same shape as fmap: `attention(fmap) @ items`, fused.

        scaled_dot_product_attention keeps the (B*H*W, N) attention out of autograd's saved tensors. On the
        CPU its speed against softmax then matmul varies by run and scale (reports/benchmarks.md, "Memory read").
        """
        b, c, h, w = fmap.shape
        z, m = self._query_key(fmap)
        read = F.scaled_dot_product_attention(z[None, None], m[None, None], self.items.to(z.dtype)[None, None], scale=self.scale)[0, 0]
        return read.view(b, h, w, c).permute(0, 3, 1, 2).contiguous(memory_format=_format_of(fmap))

    @torch.no_grad()
    def health(self, fmap: torch.Tensor) -> dict[str, float]:
        """Entropy of the mean attention (nats, max log N), items that win at least one location, mean item std."""
        att = self.attention(fmap).float()
        mean_att = att.mean(0)
        entropy = -(mean_att * (mean_att + 1e-12).log()).sum().item()
        used = torch.unique(att.argmax(1)).numel()
        return {
            "attention_entropy": entropy,
            "attention_entropy_max": math.log(self.size),
            "items_used": float(used),
            "item_std": self.items.float().std(0).mean().item(),
        }

    def variance_penalty(self) -> torch.Tensor:
        """mean_d relu(1 - std_d(M)): keeps the prototypes from collapsing onto one point."""
        return torch.relu(1.0 - self.items.float().std(0)).mean()


def _locations(fmap: torch.Tensor) -> torch.Tensor:
    return fmap.permute(0, 2, 3, 1).reshape(-1, fmap.shape[1])


def _format_of(t: torch.Tensor) -> torch.memory_format:
    return torch.channels_last if t.is_contiguous(memory_format=torch.channels_last) and not t.is_contiguous() else torch.contiguous_format
