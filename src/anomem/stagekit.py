"""What every stage script shares: its command-line arguments, checked against params."""

from __future__ import annotations

import argparse

from anomem.errors import ParamsError
from anomem.params import SETTINGS, load_params


def stage_arguments(description: str | None, pair: bool = True, argv: list[str] | None = None) -> argparse.Namespace:
    """--params, and for a per-pair stage --cls, --setting and --seed."""
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--params", default="params.yaml", help="params file (default: params.yaml)")
    if pair:
        parser.add_argument("--cls", type=int, required=True, help="normal class index")
        parser.add_argument("--setting", choices=SETTINGS, required=True)
        parser.add_argument("--seed", type=int, required=True)
    args = parser.parse_args(argv)
    if pair:
        # A hand-typed --cls 10 fails as clearly as the same value in params.yaml would.
        params = load_params(args.params)
        if not 0 <= args.cls < params.data.num_classes:
            raise ParamsError(f"--cls {args.cls}: {params.data.dataset} has class indices 0..{params.data.num_classes - 1}")
    return args
