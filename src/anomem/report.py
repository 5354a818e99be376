"""reports/summary.md: the table a paper would print, written from reports/metrics.json's data."""

from __future__ import annotations

# Published one-class CIFAR-10 AUROC (method.md); not measured here.
PUBLISHED = {
    "SimCLR (reported by CSI)": 87.9,
    "Rot+Trans": 90.0,
    "CSI (ResNet-18)": 94.3,
    "PANDA (ImageNet-pretrained)": 96.2,
}
SCORES = ("detector", "deviation", "knn")


def summary_markdown(metrics: dict, changed_params: dict[str, tuple], seeds: list[int]) -> str:
    lines = ["# AnoMem results", "", f"AUROC in %, mean over seeds {seeds}; ± is the std over seeds (per class) or over classes (mean row).", ""]
    for setting, by_class in metrics["classes"].items():
        lines += [f"## {setting}", "", "| class | " + " | ".join(SCORES) + " |", "|---|" + "---|" * len(SCORES)]
        for name, scores in by_class.items():
            cells = []
            for s in SCORES:
                e = scores[s]
                cells.append(f"{100 * e['auroc']:.1f}" + (f" ± {100 * e['auroc_seed_std']:.1f}" if "auroc_seed_std" in e else ""))
            lines.append(f"| {name} | " + " | ".join(cells) + " |")
        mean = metrics["mean"][setting]
        lines.append("| **mean** | " + " | ".join(f"**{100 * mean[s]['auroc']:.1f}** ± {100 * mean[s]['auroc_class_std']:.1f}" for s in SCORES) + " |")
        lines.append("")
    lines += ["## Published one-class CIFAR-10 AUROC (not measured here)", "", "| method | AUROC |", "|---|---|"]
    lines += [f"| {k} | {v:.1f} |" for k, v in PUBLISHED.items()]
    lines += ["", "## Params that differ from the defaults", ""]
    if changed_params:
        lines += ["| param | default | here |", "|---|---|---|"] + [f"| `{k}` | {a} | {b} |" for k, (a, b) in sorted(changed_params.items())]
    else:
        lines.append("None: this is the default CPU profile.")
    return "\n".join(lines) + "\n"
