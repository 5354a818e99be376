"""The `anomem` command: check-params, profile."""

from __future__ import annotations

import argparse
import shutil
import sys
from pathlib import Path

from anomem.errors import ParamsError, run_cli
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
    shutil.copyfile(source, args.params)
    print(f"{args.params} <- {source}")
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
    args = parser.parse_args(argv if argv is not None else sys.argv[1:])
    run_cli(lambda: args.func(args))


if __name__ == "__main__":
    main()
