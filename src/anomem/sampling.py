"""Which known anomalies join each training step (unbalanced setting), in both stages."""

from __future__ import annotations

from typing import Literal

import torch

KnownSampling = Literal["replacement", "epoch"]


class KnownAnomalyDraws:
    """`per_step` indices into `count` known anomalies for each step, drawn with the given generator.

    replacement: independent uniform draws each step (an anomaly may come twice in a step, or never).
    epoch: a shuffled pass over all of them, refilled when it runs out, so each is drawn once before any repeats.
    """

    def __init__(self, count: int, per_step: int, mode: KnownSampling, generator: torch.Generator):
        if count < 1 or per_step < 1:
            raise ValueError(f"need at least one known anomaly and one per step, got count={count}, per_step={per_step}")
        self.count, self.per_step, self.mode, self.generator = count, min(per_step, count), mode, generator
        self._queue = torch.empty(0, dtype=torch.long)

    def next(self) -> torch.Tensor:
        if self.mode == "replacement":
            return torch.randint(0, self.count, (self.per_step,), generator=self.generator)
        while self._queue.numel() < self.per_step:
            self._queue = torch.cat([self._queue, torch.randperm(self.count, generator=self.generator)])
        pick, self._queue = self._queue[: self.per_step], self._queue[self.per_step :]
        return pick

    def state_dict(self) -> dict:
        return {"queue": self._queue.clone()}

    def load_state_dict(self, state: dict) -> None:
        self._queue = state["queue"].clone()
