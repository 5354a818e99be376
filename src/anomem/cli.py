"""The `anomem` command: check-params, profile, gate, score."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from anomem.errors import ParamsError, run_cli
from anomem.io import read_json, write_json, write_text
from anomem.params import SETTINGS, load_params

# The repo's profiles/ (an editable install), else ./profiles.
_REPO_PROFILES = Path(__file__).resolve().parents[2] / "profiles"
PROFILES = _REPO_PROFILES if _REPO_PROFILES.is_dir() else Path("profiles")


def _check_params(args: argparse.Namespace) -> int:
    params = load_params(args.params)
    e = params.experiment
    n = len(e.classes) * len(e.settings) * len(e.seeds)
    print(f"{args.params}: OK ({len(e.classes)} classes x {len(e.settings)} settings x {len(e.seeds)} seeds = {n} pairs)")
    return 0


def _profile(args: argparse.Namespace) -> int:
    source = PROFILES / f"{args.name}.yaml"
    if not source.is_file():
        names = sorted(p.stem for p in PROFILES.glob("*.yaml"))
        raise ParamsError(f"no profile {args.name!r}; choose one of {names}")
    load_params(source)  # never install a profile that does not validate
    write_text(args.params, source.read_text())  # atomic: a kill or full disk keeps the old params.yaml
    print(f"{args.params} <- {source}")
    return 0


def _gate(args: argparse.Namespace) -> int:
    from anomem.gate import compare, derive_tolerances, format_table

    baseline_dir = Path(args.baseline)
    if args.derive:
        tolerances = derive_tolerances(read_json(args.metrics), k=args.k, floor=args.floor)
        write_json(baseline_dir / "metrics.json", read_json(args.metrics))
        write_json(
            baseline_dir / "tolerances.json",
            {
                "k": args.k,
                "floor": args.floor,
                "source": str(args.metrics),
                "tolerances": tolerances,
            },
        )
        print(f"wrote {baseline_dir}/metrics.json and tolerances.json ({len(tolerances)} metrics)")
        return 0
    for name in ("metrics.json", "tolerances.json"):
        if not (baseline_dir / name).is_file():
            raise ParamsError(
                f"{baseline_dir / name}: missing; create the baseline with `anomem gate --derive --metrics FILE --baseline {baseline_dir}`"
            )
    if not Path(args.metrics).is_file():
        raise ParamsError(f"{args.metrics}: missing; run the pipeline first")
    rows = compare(
        read_json(args.metrics),
        read_json(baseline_dir / "metrics.json"),
        read_json(baseline_dir / "tolerances.json")["tolerances"],
    )
    print(format_table(rows))
    failed = [r for r in rows if r.verdict != "ok"]
    print(f"\ngate: {len(rows) - len(failed)} ok, {len(failed)} failed")
    return 1 if failed else 0


def _score(args: argparse.Namespace) -> int:
    import numpy as np

    from anomem.metrics import score_metrics
    from anomem.predict import FLAG_PERCENTILE, PairScorer, read_images, scores_csv, training_image_size
    from anomem.runtime import make_runtime
    from anomem.stagekit import require_class_index

    if args.plot_top < 1:
        raise ParamsError(f"--plot-top {args.plot_top}: must be at least 1")
    percentile = FLAG_PERCENTILE if args.flag_percentile is None else args.flag_percentile
    if not 0 <= percentile <= 100:
        raise ParamsError(f"--flag-percentile {percentile:g}: must lie in 0..100")
    params = load_params(args.params or Path(args.project) / "params.yaml")
    require_class_index(params, args.cls)
    seed = params.experiment.seeds[0] if args.seed is None else args.seed
    runtime = make_runtime(params.train.device, params.train.num_threads, params.train.precision)
    # The inputs first: a wrong path or an empty folder should not wait for the network to load.
    images, names, labels = read_images(args.images, training_image_size(args.project) if args.resize else None)
    scorer = PairScorer(params, args.cls, args.setting, seed, runtime, root=args.project)
    extracted = scorer.extract(images)
    scores = scorer.score_extracted(extracted)
    threshold = scorer.threshold(percentile)
    anomalous = scores["combined"] > threshold
    out = Path(args.out or f"scores-{scorer.pair}.csv")
    write_text(out, scores_csv(names, labels, scores, anomalous))
    print(
        f"{scorer.pair}: {len(names)} images scored; {int(anomalous.sum())} anomalous (combined = {' + '.join(scorer.parts)} "
        f"above {threshold:.3f}, the {percentile:g}th percentile on the normal validation images) -> {out}"
    )
    if args.plot:
        from anomem.deviation import energy_maps
        from anomem.io import save_figure
        from anomem.plots import close, heatmap_figure

        top = np.argsort(-scores["combined"], kind="stable")[: args.plot_top]
        energy = energy_maps({s: m[top] for s, m in extracted.maps.items()})
        fig = heatmap_figure(
            images[top], energy, scores["combined"][top], [names[i] for i in top], f"{scorer.pair}: the highest combined scores"
        )
        save_figure(args.plot, fig)
        close(fig)
        print(f"the {len(top)} highest-scored images with their deviation maps -> {args.plot}")
    if labels is not None:
        if 0 < int((labels == args.cls).sum()) < len(labels):
            auroc = score_metrics(labels != args.cls, scores["combined"])["auroc"]
            print(f"AUROC of combined against the labels (normal = class {args.cls}): {auroc:.4f}")
        else:
            print(f"no AUROC: the labels need images of class {args.cls} (normal) and of other classes")
    return 0


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="anomem", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    check = sub.add_parser("check-params", help="validate params.yaml and exit")
    check.add_argument("--params", default="params.yaml")
    check.set_defaults(func=_check_params)
    profile = sub.add_parser("profile", help="copy profiles/NAME.yaml (cpu, smoke, paper) to params.yaml")
    profile.add_argument("name")
    profile.add_argument("--params", default="params.yaml")
    profile.set_defaults(func=_profile)
    gate = sub.add_parser(
        "gate",
        help="compare a metrics.json with a committed baseline; exit 1 on a regression",
    )
    gate.add_argument("--metrics", default="reports/metrics.json")
    gate.add_argument(
        "--baseline",
        default="reports/baseline",
        help="folder with metrics.json and tolerances.json",
    )
    gate.add_argument(
        "--derive",
        action="store_true",
        help="write the baseline and its tolerances from --metrics (a run with 2+ seeds)",
    )
    gate.add_argument(
        "--k",
        type=float,
        default=3.0,
        help="tolerance = k x the std over seeds (with --derive)",
    )
    gate.add_argument("--floor", type=float, default=0.005, help="smallest tolerance (with --derive)")
    gate.set_defaults(func=_gate)
    score = sub.add_parser(
        "score",
        help="score new images with a trained (class, setting, seed) pair; writes a CSV, higher = more anomalous",
    )
    score.add_argument("images", help=".npy of uint8 (N, H, W[, C]), .npz with 'images' (and 'labels'), an image file, or a folder of them")
    score.add_argument("--cls", type=int, required=True, help="the pair's normal class")
    score.add_argument("--setting", choices=SETTINGS, required=True)
    score.add_argument("--seed", type=int, help="the pair's training seed (default: the first of experiment.seeds)")
    score.add_argument("--project", default=".", help="the anomem project whose data/ holds the pair (default: .)")
    score.add_argument("--params", help="the params the pair was trained with (default: the project's params.yaml)")
    score.add_argument("--out", help="CSV to write (default: scores-CLASS-SETTING-SEED.csv)")
    score.add_argument("--resize", action="store_true", help="resize the images to the training size (bicubic)")
    score.add_argument(
        "--flag-percentile",
        type=float,
        help="flag images whose combined score is above this percentile of the normal validation images' (default: 95)",
    )
    score.add_argument("--plot", help="PNG of the highest-scored images beside their deviation maps ||D_s||^2")
    score.add_argument("--plot-top", type=int, default=8, help="how many images the plot shows (default: 8)")
    score.set_defaults(func=_score)
    args = parser.parse_args(argv if argv is not None else sys.argv[1:])
    run_cli(lambda: args.func(args))


if __name__ == "__main__":
    main()
