"""reports/summary.md: the table a paper would print, written from reports/metrics.json's data."""

from __future__ import annotations

# Published one-class CIFAR-10 AUROC (method.md); not measured here.
PUBLISHED = {
    "SimCLR (reported by CSI)": 87.9,
    "Rot+Trans": 90.0,
    "CSI (ResNet-18)": 94.3,
    "PANDA (ImageNet-pretrained)": 96.2,
}
# Every score a pair can have, headline first: `combined` sums some of the others (detector.combine).
SCORES = ("combined", "detector", "rotation", "deviation", "knn")
SCORE_NOTES = {
    "combined": "the sum of the scores in `detector.combine`, each standardised on the normal validation images "
    "(unbalanced: the subset with the best validation AUROC; see the last section)",
    "detector": "the anomaly distance detector on the deviation maps",
    "rotation": "the rotation head's loss over the four turns of the image",
    "deviation": "the deviation maps' weighted energy, no training",
    "knn": "cosine distance of the pooled feature to its nearest normal training feature",
}


def available_scores(names) -> list[str]:
    """The scores among `names`, in SCORES order (the headline first)."""
    return [s for s in SCORES if s in names]


def summary_markdown(
    metrics: dict,
    changed_params: dict[str, tuple],
    seeds: list[int],
    combined_parts: dict[str, dict[str, str]] | None = None,
) -> str:
    """combined_parts: setting -> class -> the scores `combined` summed there (e.g. "detector + knn")."""
    scores = available_scores(next(iter(next(iter(metrics["classes"].values())).values())))
    lines = [
        "# AnoMem results",
        "",
        f"AUROC in %, mean over seeds {seeds}; ± is the std over seeds (per class) or over classes (mean row).",
        "",
    ]
    lines += [f"- **{s}**{' (the headline)' if i == 0 else ''}: {SCORE_NOTES[s]}" for i, s in enumerate(scores)] + [""]
    for setting, by_class in metrics["classes"].items():
        lines += [
            f"## {setting}",
            "",
            "| class | " + " | ".join(scores) + " |",
            "|---|" + "---|" * len(scores),
        ]
        for name, by_score in by_class.items():
            cells = []
            for s in scores:
                e = by_score[s]
                cells.append(f"{100 * e['auroc']:.1f}" + (f" ± {100 * e['auroc_seed_std']:.1f}" if "auroc_seed_std" in e else ""))
            lines.append(f"| {name} | " + " | ".join(cells) + " |")
        mean = metrics["mean"][setting]
        lines.append(
            "| **mean** | "
            + " | ".join(f"**{100 * mean[s]['auroc']:.1f}** ± {100 * mean[s]['auroc_class_std']:.1f}" for s in scores)
            + " |"
        )
        lines.append("")
    lines += [
        "## Published one-class CIFAR-10 AUROC (not measured here)",
        "",
        "| method | AUROC |",
        "|---|---|",
    ]
    lines += [f"| {k} | {v:.1f} |" for k, v in PUBLISHED.items()]
    if combined_parts:
        lines += ["", "## What `combined` sums", ""]
        for setting, by_class in combined_parts.items():
            kinds = sorted(set(by_class.values()))
            if len(kinds) == 1:
                lines.append(f"- {setting}: {kinds[0]}, every class")
            else:
                lines.append(f"- {setting}: " + "; ".join(f"{name}: {parts}" for name, parts in by_class.items()))
    lines += ["", "## Params that differ from the defaults", ""]
    if changed_params:
        lines += ["| param | default | here |", "|---|---|---|"] + [
            f"| `{k}` | {a} | {b} |" for k, (a, b) in sorted(changed_params.items())
        ]
    else:
        lines.append("None: this is the default CPU profile.")
    return "\n".join(lines) + "\n"
