"""Run the pipeline's stage scripts without DVC in a scratch folder, with params overridden: one ablation row.

    python -m benchmarks.ablate -S contrastive.rotation_weight=0 --classes 2 3 5 0 --settings one_class

It runs exactly what `dvc exp run -S ...` runs (the same scripts in stages/, in order, pair by pair), but
in a scratch folder that links this repo's data/prepared, so the grid's outputs are never touched and no
DVC experiment is needed. Tracking is off. The mean AUROC of each score lands in
reports/ablations/<name>.json and is printed. Also the way to run the pipeline where DVC is absent
(the GPU machine): `--keep DIR` keeps the scratch folder with every output.

`--reuse-grid` does what DVC's cache would: a pair stage none of whose params (dvc.yaml) is overridden is
not re-run; its output is linked from the committed grid in data/. That is allowed only where dvc.lock
recorded the same values for every param of that stage and `dvc status` finds the stage up to date, so a
detector-only row costs minutes instead of a re-training.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import yaml

from anomem import io, layout
from anomem.errors import DataError
from anomem.params import flatten, pair_id, parse_params, read_yaml
from anomem.pipeline import PAIR_STAGES, differing_params, dvc_status, locked_params, stage_params

REPO = Path(__file__).resolve().parents[1]
OUT = REPO / "reports" / "ablations"
DATA_FOLDER_VARIABLES = ("ANOMEM_DATA_DIR", "ANOMEM_CIFAR10_DIR")
OUTPUT_DIR = {
    "train_contrastive_memory": layout.model_dir,
    "extract_deviation_maps": layout.deviation_dir,
    "train_detector": layout.scores_dir,
}


def overridden(base: dict, overrides: list[str]) -> dict:
    """base params with KEY=VALUE overrides (VALUE in YAML), as `dvc exp run -S` takes them."""
    params = json.loads(json.dumps(base))
    for item in overrides:
        key, _, value = item.partition("=")
        group, _, name = key.partition(".")
        if not name or group not in params:
            raise SystemExit(f"-S {item}: expected GROUP.KEY=VALUE with GROUP one of {sorted(params)}")
        params[group][name] = read_yaml(value)
    return params


def stages_to_reuse(overrides: list[str], listed: dict[str, set[str]]) -> tuple[str, ...]:
    """The pair stages before the first one that reads an overridden param (all of them when none does)."""
    keys = {item.partition("=")[0] for item in overrides}
    for i, name in enumerate(PAIR_STAGES):
        if keys & listed[name]:
            return PAIR_STAGES[:i]
    return PAIR_STAGES


def check_reusable(params: dict, stage_names: list[str], repo: Path = REPO) -> None:
    """Fail unless the grid's outputs of these stage instances are what `params` would produce."""
    lock_path = repo / "dvc.lock"
    if not lock_path.exists():
        raise SystemExit(f"--reuse-grid: {lock_path} is missing; run the grid (`dvc repro`) first")
    flat, locked = flatten(params), locked_params(lock_path)
    for name in stage_names:
        if name not in locked:
            raise SystemExit(f"--reuse-grid: dvc.lock has no {name}; run the grid (`dvc repro`) first")
        differing = sorted(differing_params(locked[name], flat))
        if differing:
            raise SystemExit(f"--reuse-grid: the grid's {name} ran with other values of {', '.join(differing)}; drop --reuse-grid")
    try:
        changed = dvc_status(repo, stage_names)
    except DataError as err:
        raise SystemExit(f"--reuse-grid: the grid's outputs cannot be trusted: {err}") from None
    if changed:
        raise SystemExit(f"--reuse-grid: these grid stages are not up to date: {', '.join(sorted(changed))}; run `dvc repro` first")


def scratch_stage(params: dict, workdir: Path, seconds: dict[str, float] | None = None) -> Callable[..., None]:
    """Make workdir a scratch copy of the project with these params; return a function that runs one stage script there.

    The function fails with the stage's output when the script fails; each stage's wall time lands in `seconds`,
    keyed by its name and arguments.
    """
    parse_params(params, "the ablation's params")  # fail before any work
    workdir.mkdir(parents=True, exist_ok=True)
    (workdir / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    for name in ("stages", "profiles"):
        if not (workdir / name).exists():
            (workdir / name).symlink_to(REPO / name)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO / "src"), os.environ.get("PYTHONPATH", "")])}
    for name in DATA_FOLDER_VARIABLES:  # the scripts run in workdir: a folder relative to here must still be found
        if env.get(name):
            env[name] = str(Path(env[name]).resolve())

    def stage(name: str, *args: str) -> None:
        began = time.perf_counter()
        done = subprocess.run([sys.executable, f"stages/{name}.py", *args], cwd=workdir, env=env, capture_output=True, text=True)
        if done.returncode != 0:
            raise SystemExit(f"{name} {' '.join(args)} failed:\n{done.stdout[-2000:]}\n{done.stderr[-4000:]}")
        took = time.perf_counter() - began
        if seconds is not None:
            seconds[" ".join((name, *args))] = took
        print(f"  {name} {' '.join(args)}: {took:.0f}s", flush=True)

    return stage


def run_pipeline(
    params: dict, workdir: Path, prepare: bool = False, reuse: tuple[str, ...] = (), seconds: dict[str, float] | None = None
) -> dict:
    """Run every stage script in workdir for the params' grid; return reports/metrics.json.

    Pair stages named in `reuse` are not run: their outputs are linked from this repo's data/. Without
    `prepare`, a data/prepared already in workdir (a link, say) is used as it is. Each stage's wall time
    lands in `seconds` (see scratch_stage).
    """
    stage = scratch_stage(params, workdir, seconds)

    prepared = workdir / layout.PREPARED
    if prepare or (not prepared.exists() and not (REPO / layout.PREPARED).exists()):
        stage("prepare_data")
    elif not prepared.exists():
        prepared.parent.mkdir(parents=True, exist_ok=True)
        prepared.symlink_to(REPO / layout.PREPARED)
    e = params["experiment"]
    pairs = [(cls, setting, seed) for setting in e["settings"] for cls in e["classes"] for seed in e["seeds"]]
    if reuse:
        check_reusable(params, [f"{name}@{pair_id(*pair)}" for pair in pairs for name in reuse])
    for cls, setting, seed in pairs:
        for name in PAIR_STAGES:
            if name in reuse:
                linked = workdir / OUTPUT_DIR[name](pair_id(cls, setting, seed))
                linked.parent.mkdir(parents=True, exist_ok=True)
                linked.symlink_to(REPO / OUTPUT_DIR[name](pair_id(cls, setting, seed)))
                print(f"  {name} --cls {cls} --setting {setting} --seed {seed}: reused from the grid", flush=True)
            else:
                stage(name, "--cls", str(cls), "--setting", setting, "--seed", str(seed))
    stage("evaluate")
    return json.loads((workdir / layout.REPORTS / "metrics.json").read_text())


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("-S", "--set", dest="overrides", action="append", default=[], help="GROUP.KEY=VALUE, as for dvc exp run")
    parser.add_argument("--params", default=str(REPO / "profiles" / "cpu.yaml"), help="the params to start from (default: the cpu profile)")
    parser.add_argument("--classes", type=int, nargs="+", default=[2, 3, 5, 0])
    parser.add_argument("--settings", nargs="+", default=["one_class"])
    parser.add_argument("--name", help="the row's name (default: from the overrides)")
    parser.add_argument("--keep", type=Path, help="run in this folder and keep it (default: a temporary one)")
    parser.add_argument("--prepare", action="store_true", help="run prepare_data instead of linking data/prepared")
    parser.add_argument("--reuse-grid", action="store_true", help="link the outputs of pair stages the overrides do not touch from data/")
    args = parser.parse_args(argv)
    # a killed row unwinds like Ctrl-C: the running stage is stopped and the scratch folder removed
    signal.signal(signal.SIGTERM, lambda signum, frame: sys.exit(128 + signum))
    base = read_yaml(Path(args.params).read_text())
    params = overridden(base, [f"experiment.classes={args.classes}", f"experiment.settings={args.settings}", *args.overrides])
    params.setdefault("tracking", {})["enabled"] = False
    name = args.name or ("+".join(o.replace("/", "_") for o in args.overrides) or "default")
    reuse = stages_to_reuse(args.overrides, stage_params(REPO / "dvc.yaml")) if args.reuse_grid else ()
    if reuse and args.prepare:
        raise SystemExit("--reuse-grid links the grid's outputs, which were made from data/prepared; drop --prepare")
    began = time.perf_counter()
    if args.keep:
        metrics = run_pipeline(params, args.keep, args.prepare, reuse)
    else:
        with tempfile.TemporaryDirectory(prefix="anomem-ablate-") as tmp:
            metrics = run_pipeline(params, Path(tmp), args.prepare, reuse)
    seconds = time.perf_counter() - began
    means = {setting: {score: v["auroc"] for score, v in by_score.items()} for setting, by_score in metrics["mean"].items()}
    per_class = {
        setting: {cls: {score: v["auroc"] for score, v in by_score.items()} for cls, by_score in by_class.items()}
        for setting, by_class in metrics["classes"].items()
    }
    row = {"name": name, "overrides": args.overrides, "base": Path(args.params).name, "classes": args.classes, "seconds": seconds,
           "reused_from_grid": list(reuse), "mean_auroc": means, "class_auroc": per_class, "params": flatten(params)}  # fmt: skip
    io.write_json(OUT / f"{name}.json", row)
    for setting, by_score in means.items():
        print(f"{name} [{setting}] " + ", ".join(f"{k} {100 * v:.1f}" for k, v in by_score.items()) + f"  ({seconds:.0f}s)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
