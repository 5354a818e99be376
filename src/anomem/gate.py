"""The regression gate: compare a metrics.json with a committed baseline, within committed tolerances.

Tolerances come from the measured spread over seeds (`derive_tolerances`): for a per-class metric,
k times its std over seeds; for a mean over classes, k times the std of that mean,
sqrt(mean_c std_c^2 / n_classes); never below `floor`. Higher is better for AUROC and AUPR, lower
for FPR@95.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from anomem.params import flatten


@dataclass(frozen=True)
class GateRow:
    metric: str
    baseline: float | None
    now: float | None
    tolerance: float

    @property
    def delta(self) -> float | None:
        return None if self.baseline is None or self.now is None else self.now - self.baseline

    @property
    def verdict(self) -> str:
        if self.baseline is None or self.now is None:
            return "MISSING"
        worse = -self.delta if not self.metric.endswith("fpr95") else self.delta
        return "REGRESSION" if worse > self.tolerance else "ok"


def compare(current: dict, baseline: dict, tolerances: dict[str, float]) -> list[GateRow]:
    now, base = flatten(current), flatten(baseline)
    return [GateRow(key, base.get(key), now.get(key), tol) for key, tol in sorted(tolerances.items())]


def derive_tolerances(metrics: dict, k: float = 3.0, floor: float = 0.005, metric_names=("auroc",)) -> dict[str, float]:
    """Tolerances from a metrics.json of a run with several seeds (it must carry *_seed_std)."""
    tolerances: dict[str, float] = {}
    for setting, by_class in metrics["classes"].items():
        per_score: dict[tuple[str, str], list[float]] = {}
        for name, scores in by_class.items():
            for score, entry in scores.items():
                for m in metric_names:
                    if f"{m}_seed_std" not in entry:
                        raise ValueError(
                            f"classes.{setting}.{name}.{score} has no {m}_seed_std: derive tolerances from a run with 2 or more seeds"
                        )
                    std = entry[f"{m}_seed_std"]
                    tolerances[f"classes.{setting}.{name}.{score}.{m}"] = max(floor, k * std)
                    per_score.setdefault((score, m), []).append(std)
        for (score, m), stds in per_score.items():
            std_of_mean = math.sqrt(sum(s * s for s in stds) / len(stds) / len(stds))
            tolerances[f"mean.{setting}.{score}.{m}"] = max(floor, k * std_of_mean)
    return tolerances


def format_table(rows: list[GateRow]) -> str:
    def f(x: float | None) -> str:
        return "-" if x is None else f"{x:.4f}"

    header = ("metric", "baseline", "now", "delta", "tolerance", "verdict")
    body = [
        (
            r.metric,
            f(r.baseline),
            f(r.now),
            "-" if r.delta is None else f"{r.delta:+.4f}",
            f"{r.tolerance:.4f}",
            r.verdict,
        )
        for r in rows
    ]
    widths = [max(len(str(row[i])) for row in [header, *body]) for i in range(len(header))]
    lines = ["  ".join(str(c).ljust(w) for c, w in zip(row, widths)) for row in [header, *body]]
    return "\n".join([lines[0], "  ".join("-" * w for w in widths), *lines[1:]])
