"""Stage evaluate: metrics for every pair and score, their means, the summary table and the figures."""

from __future__ import annotations

import numpy as np

from anomem import io, layout, plots
from anomem.errors import DataError, run_cli
from anomem.metrics import aggregate, score_metrics
from anomem.params import Params, flatten, load_params, pair_id
from anomem.report import available_scores, summary_markdown
from anomem.stagekit import stage_arguments
from anomem.tracking import parent_tracker, stage_run

DEFAULT_PROFILE = "profiles/cpu.yaml"


def changed_params(params: Params) -> dict[str, tuple]:
    """Params that differ from the default profile's."""
    defaults, here = (
        flatten(load_params(DEFAULT_PROFILE).to_dict()),
        flatten(params.to_dict()),
    )
    return {k: (defaults.get(k), v) for k, v in here.items() if defaults.get(k) != v}


def main() -> None:
    args = stage_arguments(__doc__, pair=False)
    params = load_params(args.params)
    e = params.experiment
    names = list(params.data.names)
    scores = {}
    for setting in e.settings:
        for cls in e.classes:
            for seed in e.seeds:
                pair = pair_id(cls, setting, seed)
                scores[pair] = io.load_npz(layout.scores_file(pair), layout.made_by("train_detector", pair))
    present = [available_scores([k.removeprefix("score_") for k in s]) for s in scores.values()]
    if any(p != present[0] for p in present):
        raise DataError("the pairs were scored with different params (their score sets differ); re-run `dvc repro`")
    score_names, headline = present[0], present[0][0]
    per_pair: dict = {}
    for setting in e.settings:
        for cls in e.classes:
            for seed in e.seeds:
                s = scores[pair_id(cls, setting, seed)]
                per_pair.setdefault(setting, {}).setdefault(cls, {})[seed] = {
                    k: score_metrics(s["labels"], s[f"score_{k}"]) for k in score_names
                }
    metrics = aggregate(per_pair, names)
    combined_parts = {  # seeds that picked differently are listed side by side
        setting: {
            f"{cls}_{names[cls]}": " / ".join(
                dict.fromkeys(" + ".join(scores[pair_id(cls, setting, seed)]["combined_parts"]) for seed in e.seeds)
            )
            for cls in e.classes
        }
        for setting in e.settings
    }
    test_images = io.load_npy(layout.images_file("test"), layout.PREPARED_BY, mmap=True)

    with stage_run(params, "evaluate") as run:
        io.write_json(layout.REPORTS / "metrics.json", metrics)
        io.write_text(
            layout.REPORTS / "summary.md",
            summary_markdown(metrics, changed_params(params), e.seeds, combined_parts),
        )
        seed = e.seeds[0]
        for setting in e.settings:
            first = {cls: scores[pair_id(cls, setting, seed)] for cls in e.classes}
            figures = {
                f"roc_{setting}.png": plots.roc_figure(
                    {f"{c} {names[c]}": (s["labels"], s[f"score_{headline}"]) for c, s in first.items()},
                    f"ROC, {headline} score, {setting} (seed {seed})",
                ),
                f"histograms_{setting}.png": plots.histogram_figure(
                    np.concatenate([s["labels"] for s in first.values()]),
                    {k: np.concatenate([_standardise(s[f"score_{k}"], s["labels"]) for s in first.values()]) for k in score_names},
                    f"{setting}: scores standardised per class on its normal test images",
                ),
                f"heatmaps_{setting}.png": plots.heatmap_figure(
                    np.stack([test_images[s["top_index"][0]] for s in first.values()]),
                    {sc: np.stack([s[f"heat_s{sc}"][0] for s in first.values()]) for sc in params.memory.scales},
                    [float(s["score_detector"][s["top_index"][0]]) for s in first.values()],
                    [f"normal={names[c]}" for c in first],
                    f"{setting}: highest-scored test image per normal class, and its deviation energy",
                ),
            }
            for name, fig in figures.items():
                io.save_figure(layout.PLOTS / name, fig)
                run.log_figure(fig, name)
                plots.close(fig)
        run.log_metrics({"mean": metrics["mean"]})
        run.log_artifact(layout.REPORTS / "summary.md")
    experiment_run = parent_tracker(params)
    experiment_run.log_params(params.to_dict())  # so that two experiments compare side by side in the UI
    experiment_run.log_metrics({"mean": metrics["mean"]})
    experiment_run.finish()
    for setting, by_class in per_pair.items():
        for cls, by_seed in by_class.items():
            for seed, values in by_seed.items():
                parent_tracker(params, pair_id(cls, setting, seed)).log_metrics({"test": values})
    for setting, m in metrics["mean"].items():
        print(f"{setting}: " + ", ".join(f"{k} AUROC {100 * m[k]['auroc']:.1f}" for k in score_names))


def _standardise(score: np.ndarray, labels: np.ndarray) -> np.ndarray:
    normal = score[labels == 0]
    return (score - normal.mean()) / (normal.std() + 1e-12)


if __name__ == "__main__":
    run_cli(main)
