"""The anomaly distance detector phi on deviation maps, with PyOD's fit / decision_function.

phi, per scale: 1x1 conv to k channels, 3x3 conv, ReLU, global average and max pooling (average only with
`detector.pooling: avg`); the scales are concatenated and an MLP maps them to R^d. No biases anywhere, so phi
cannot map everything onto the centre (the Deep SVDD rule). One-class: Deep SVDD; with known anomalies: Deep SAD.
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Mapping

import numpy as np
import torch
from torch import nn
from tqdm.auto import tqdm

from anomem.errors import NumericalError
from anomem.losses import deep_sad_loss, svdd_distance
from anomem.params import DetectorParams, Pooling, check_choice
from anomem.sampling import KnownAnomalyDraws

Maps = Mapping[int, np.ndarray]


class DeviationNet(nn.Module):
    def __init__(self, channels: Mapping[int, int], k: int, hidden: int, rep_dim: int, pooling: str = "avg_max"):
        super().__init__()
        check_choice("pooling", pooling, Pooling)
        self.scales, self.max_pool = sorted(channels), pooling == "avg_max"
        self.branches = nn.ModuleDict(
            {
                str(s): nn.Sequential(
                    nn.Conv2d(channels[s], k, 1, bias=False),
                    nn.Conv2d(k, k, 3, padding=1, bias=False),
                    nn.ReLU(),
                )
                for s in self.scales
            }
        )
        self.head = nn.Sequential(
            nn.Linear((2 if self.max_pool else 1) * k * len(self.scales), hidden, bias=False),
            nn.ReLU(),
            nn.Linear(hidden, rep_dim, bias=False),
        )

    def forward(self, maps: Mapping[int, torch.Tensor]) -> torch.Tensor:
        pooled = []
        for s in self.scales:
            h = self.branches[str(s)](maps[s])
            pooled += [h.mean((2, 3)), h.amax((2, 3))] if self.max_pool else [h.mean((2, 3))]
        return self.head(torch.cat(pooled, 1))


class AnomalyDistanceDetector:
    """fit(X, y) with X a {scale: (N, C, H, W)} mapping of deviation maps and y 1 for known anomalies.

    decision_function(X): ||phi(D) - c||^2, higher means more anomalous. With validation data and `select:
    best_val`, the epoch with the lowest validation objective is kept (the test split is never looked at);
    otherwise the last.
    """

    def __init__(
        self,
        params: DetectorParams,
        device: str | torch.device = "cpu",
        seed: int = 0,
        progress: bool = True,
    ):
        self.params, self.device, self.seed, self.progress = (
            params,
            torch.device(device),
            seed,
            progress,
        )
        self.net: DeviationNet | None = None
        self.center: torch.Tensor | None = None
        self.history: list[dict] = []
        self.best_epoch: int | None = None

    # -- helpers ---------------------------------------------------------------------------------
    def _build(self, channels: Mapping[int, int]) -> DeviationNet:
        p = self.params
        return DeviationNet(channels, p.channels, p.hidden, p.rep_dim, p.pooling).to(self.device)

    def _batch(self, X: Maps, idx: np.ndarray) -> dict[int, torch.Tensor]:
        return {s: torch.as_tensor(np.asarray(X[s][idx]), dtype=torch.float32).to(self.device) for s in X}

    @torch.no_grad()
    def _embed(self, X: Maps) -> torch.Tensor:
        n = _length(X)
        self.net.eval()
        out = [self.net(self._batch(X, np.arange(i, min(i + 1024, n)))) for i in range(0, n, 1024)]
        return torch.cat(out) if out else torch.empty(0, self.params.rep_dim, device=self.device)

    # -- PyOD-style API ---------------------------------------------------------------------------
    def fit(
        self,
        X: Maps,
        y: np.ndarray | None = None,
        X_val: Maps | None = None,
        y_val: np.ndarray | None = None,
        on_epoch: Callable[[dict], None] | None = None,
    ) -> AnomalyDistanceDetector:
        p = self.params
        n = _length(X)
        _require_finite(X, "X")
        if X_val is not None:
            _require_finite(X_val, "X_val")
        y = np.zeros(n, np.int64) if y is None else np.asarray(y)
        if y.shape != (n,) or not np.isin(y, (0, 1)).all():  # checked before the cast, so 0.5 is not read as 0
            raise ValueError(f"y must hold 0 (normal) or 1 (known anomaly) for each of the {n} samples")
        y = y.astype(np.int64)
        normal, known = np.flatnonzero(y == 0), np.flatnonzero(y == 1)
        if normal.size == 0:
            raise ValueError("fit needs at least one normal sample (y == 0)")
        gen = torch.Generator().manual_seed(self.seed)
        torch.manual_seed(self.seed)
        self.net = self._build({s: X[s].shape[1] for s in X})
        with torch.no_grad():
            c = self._embed({s: X[s][normal] for s in X}).mean(0)
            # Deep SVDD: a centre coordinate near 0 lets a trivial solution fit it; push it off zero.
            c[(c.abs() < p.eps) & (c < 0)] = -p.eps
            c[(c.abs() < p.eps) & (c >= 0)] = p.eps
        self.center = c
        if p.optimizer == "adam":
            opt = torch.optim.Adam(self.net.parameters(), lr=p.lr, weight_decay=p.weight_decay)
        else:
            opt = torch.optim.SGD(self.net.parameters(), lr=p.lr, momentum=0.9, weight_decay=p.weight_decay)
        known_draws = KnownAnomalyDraws(known.size, p.known_batch_size, p.known_sampling, gen) if known.size else None
        steps = max(1, normal.size // p.batch_size)
        best, self.history = (float("inf"), None), []
        for epoch in tqdm(
            range(p.epochs),
            desc="detector",
            unit="epoch",
            disable=not self.progress,
            dynamic_ncols=True,
        ):
            self.net.train()
            order = normal[torch.randperm(normal.size, generator=gen).numpy()]
            total = 0.0
            for step in range(steps):
                idx = order[step * p.batch_size : (step + 1) * p.batch_size]
                if known_draws is not None:
                    idx = np.concatenate([idx, known[known_draws.next().numpy()]])
                dist = svdd_distance(self.net(self._batch(X, idx)), self.center)
                loss = deep_sad_loss(dist, torch.as_tensor(y[idx] == 1, device=self.device), p.eta, p.eps, p.loss_reduction)
                if not torch.isfinite(loss):
                    raise NumericalError(f"detector loss became {loss.item()} at epoch {epoch}, step {step}; lower detector.lr")
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                total += loss.item()
            log = {"epoch": epoch, "train_loss": total / steps}
            if X_val is not None and _length(X_val):
                log["val_loss"] = self.objective(X_val, y_val)
                if p.select == "best_val" and log["val_loss"] < best[0]:
                    best = (log["val_loss"], copy.deepcopy(self.net.state_dict()))
                    self.best_epoch = epoch
            self.history.append(log)
            if on_epoch is not None:
                on_epoch(log)
        if best[1] is not None:
            self.net.load_state_dict(best[1])
        else:
            self.best_epoch = p.epochs - 1
        return self

    def decision_function(self, X: Maps) -> np.ndarray:
        if self.net is None:
            raise RuntimeError("call fit() first")
        _require_finite(X, "X")
        return svdd_distance(self._embed(X), self.center).cpu().numpy().astype(np.float64)

    @torch.no_grad()
    def objective(self, X: Maps, y: np.ndarray | None = None) -> float:
        """The training objective (Deep SVDD or Deep SAD) on held-out data."""
        dist = torch.as_tensor(self.decision_function(X))
        known = torch.zeros(dist.shape[0], dtype=torch.bool) if y is None else torch.as_tensor(np.asarray(y) == 1)
        p = self.params
        return float(deep_sad_loss(dist, known, p.eta, p.eps, p.loss_reduction))

    def state_dict(self) -> dict:
        return {
            "net": self.net.state_dict(),
            "center": self.center.cpu(),
            "channels": {s: self.net.branches[str(s)][0].in_channels for s in self.net.scales},
            "best_epoch": self.best_epoch,
        }

    def load_state_dict(self, state: dict) -> AnomalyDistanceDetector:
        self.net = self._build(state["channels"])
        self.net.load_state_dict(state["net"])
        self.center = state["center"].to(self.device)
        self.best_epoch = state.get("best_epoch")
        return self


def _require_finite(X: Maps, name: str) -> None:
    """A ValueError naming the scale and how many maps hold inf or NaN (PyOD's check_array rule), before any training."""
    for s, m in X.items():
        m = np.asarray(m)
        bad = ~np.isfinite(m).reshape(m.shape[0], int(np.prod(m.shape[1:]))).all(1)
        if bad.any():
            raise ValueError(f"{name}[{s}]: {int(bad.sum())} of {len(m)} maps hold inf or NaN (the first is sample {int(np.argmax(bad))})")


def _length(X: Maps) -> int:
    lengths = {m.shape[0] for m in X.values()}
    if len(lengths) != 1:
        raise ValueError(f"every scale must hold the same number of samples, got {sorted(lengths)}")
    return lengths.pop()
