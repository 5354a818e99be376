"""The `anomem` command: check-params, profile, gate."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from anomem.errors import ParamsError, run_cli
from anomem.io import read_json, write_json, write_text
from anomem.params import load_params

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
    args = parser.parse_args(argv if argv is not None else sys.argv[1:])
    run_cli(lambda: args.func(args))


if __name__ == "__main__":
    main()
