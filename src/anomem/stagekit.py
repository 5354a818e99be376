"""What every stage script shares: its command-line arguments, checked against params, and the per-pair preamble."""

from __future__ import annotations

import argparse
from dataclasses import dataclass

from anomem.errors import ParamsError
from anomem.params import SETTINGS, Params, load_params, pair_id
from anomem.runtime import Runtime, make_runtime, seed_everything


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
        require_class_index(load_params(args.params), args.cls)
    return args


def require_class_index(params: Params, cls: int) -> None:
    """A hand-typed --cls 10 fails as clearly as the same value in params.yaml would."""
    if not 0 <= cls < params.data.num_classes:
        raise ParamsError(f"--cls {cls}: {params.data.dataset} has class indices 0..{params.data.num_classes - 1}")


@dataclass(frozen=True)
class PairStage:
    args: argparse.Namespace
    params: Params
    pair: str
    runtime: Runtime


def pair_stage(description: str | None) -> PairStage:
    """The preamble of a per-pair stage: arguments, validated params, the pair's name, the device, the seed."""
    args = stage_arguments(description)
    params = load_params(args.params)
    runtime = make_runtime(params.train.device, params.train.num_threads, params.train.precision)
    seed_everything(args.seed)
    return PairStage(args, params, pair_id(args.cls, args.setting, args.seed), runtime)
