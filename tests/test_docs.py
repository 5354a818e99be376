"""The README's results table quotes the committed reports/metrics.json, so a grid re-run cannot leave it stale."""

from __future__ import annotations

import json
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
ROW = re.compile(r"^\| (one_class|unbalanced) \| (.+) \|$")


def readme_results() -> tuple[list[str], dict[str, list[str]]]:
    lines = (ROOT / "README.md").read_text().splitlines()
    header = next(i for i, line in enumerate(lines) if line.startswith("| mean AUROC (%) ± std over classes |"))
    scores = [cell.strip() for cell in lines[header].strip("|").split("|")[1:]]
    rows = {}
    for line in lines[header + 2 :]:
        match = ROW.match(line)
        if not match:
            break
        rows[match.group(1)] = [cell.strip() for cell in match.group(2).split("|")]
    return scores, rows


def test_readme_results_match_the_committed_metrics():
    metrics = json.loads((ROOT / "reports" / "metrics.json").read_text())["mean"]
    scores, rows = readme_results()
    assert set(rows) == set(metrics), "the README's results table must have a row per setting in reports/metrics.json"
    for setting, cells in rows.items():
        for score, cell in zip(scores, cells, strict=True):
            m = metrics[setting][score]
            assert cell == f"{100 * m['auroc']:.1f} ± {100 * m['auroc_class_std']:.1f}", (setting, score)
