"""reports/summary.md: a column per score present (headline first), mean rows, published figures labelled."""

from __future__ import annotations

from anomem.metrics import aggregate
from anomem.report import available_scores, summary_markdown

NAMES = ["airplane", "automobile", "bird"]


def _metrics(scores: tuple[str, ...]) -> dict:
    per_pair = {
        "one_class": {
            c: {
                seed: {s: {"auroc": 0.6 + 0.1 * c + 0.01 * seed + 0.001 * i, "aupr": 0.9, "fpr95": 0.5} for i, s in enumerate(scores)}
                for seed in (0, 1)
            }
            for c in (0, 2)
        }
    }
    return aggregate(per_pair, NAMES)


def test_scores_come_headline_first_whatever_order_they_arrive_in():
    assert available_scores(["knn", "detector", "combined", "rotation", "deviation"]) == [
        "combined",
        "detector",
        "rotation",
        "deviation",
        "knn",
    ]
    assert available_scores({"knn": 1, "deviation": 1, "detector": 1}) == ["detector", "deviation", "knn"]


def test_summary_has_a_column_per_present_score_and_the_mean_row():
    text = summary_markdown(_metrics(("knn", "detector", "combined")), {"memory.size": (64, 16)}, [0, 1])
    assert "| class | combined | detector | knn |" in text
    assert "**combined** (the headline)" in text and "**rotation**" not in text
    assert "| 0_airplane | 60.7 ± 0.5 | 60.6 ± 0.5 | 60.5 ± 0.5 |" in text
    # The mean over classes 0 and 2 of per-class means, ± the std over classes.
    assert "| **mean** | **70.7** ± 10.0 | **70.6** ± 10.0 | **70.5** ± 10.0 |" in text
    assert "not measured here" in text and "| `memory.size` | 64 | 16 |" in text


def test_summary_of_the_default_profile_says_so():
    assert "None: this is the default CPU profile." in summary_markdown(_metrics(("detector",)), {}, [0, 1])
