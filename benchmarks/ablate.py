"""Run the pipeline's stage scripts without DVC in a scratch folder, with params overridden: one ablation row.

    python -m benchmarks.ablate -S contrastive.rotation_weight=0 --classes 2 3 5 0 --settings one_class

It runs exactly what `dvc exp run -S ...` runs (the same scripts in stages/, in order, pair by pair), but
in a scratch folder that links this repo's data/prepared, so the grid's outputs are never touched and no
DVC experiment is needed. Tracking is off. The mean AUROC of each score lands in
reports/ablations/<name>.json and is printed. Also the way to run the pipeline where DVC is absent
(the GPU machine): `--keep DIR` keeps the scratch folder with every output.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

from anomem import io, layout
from anomem.params import flatten, parse_params

REPO = Path(__file__).resolve().parents[1]
OUT = REPO / "reports" / "ablations"
PAIR_STAGES = ("train_contrastive_memory", "extract_deviation_maps", "train_detector")


def overridden(base: dict, overrides: list[str]) -> dict:
    """base params with KEY=VALUE overrides (VALUE in YAML), as `dvc exp run -S` takes them."""
    params = json.loads(json.dumps(base))
    for item in overrides:
        key, _, value = item.partition("=")
        group, _, name = key.partition(".")
        if not name or group not in params:
            raise SystemExit(f"-S {item}: expected GROUP.KEY=VALUE with GROUP one of {sorted(params)}")
        params[group][name] = yaml.safe_load(value)
    return params


def run_pipeline(params: dict, workdir: Path, prepare: bool = False) -> dict:
    """Run every stage script in workdir for the params' grid; return reports/metrics.json."""
    parse_params(params, "the ablation's params")  # fail before any work
    workdir.mkdir(parents=True, exist_ok=True)
    (workdir / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    for name in ("stages", "profiles"):
        if not (workdir / name).exists():
            (workdir / name).symlink_to(REPO / name)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO / "src"), os.environ.get("PYTHONPATH", "")])}

    def stage(name: str, *args: str) -> None:
        began = time.perf_counter()
        done = subprocess.run([sys.executable, f"stages/{name}.py", *args], cwd=workdir, env=env, capture_output=True, text=True)
        if done.returncode != 0:
            raise SystemExit(f"{name} {' '.join(args)} failed:\n{done.stdout[-2000:]}\n{done.stderr[-4000:]}")
        print(f"  {name} {' '.join(args)}: {time.perf_counter() - began:.0f}s", flush=True)

    prepared = workdir / layout.PREPARED
    if prepare or not (REPO / layout.PREPARED).exists():
        stage("prepare_data")
    elif not prepared.exists():
        prepared.parent.mkdir(parents=True, exist_ok=True)
        prepared.symlink_to(REPO / layout.PREPARED)
    e = params["experiment"]
    for setting in e["settings"]:
        for cls in e["classes"]:
            for seed in e["seeds"]:
                for name in PAIR_STAGES:
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
    args = parser.parse_args(argv)
    base = yaml.safe_load(Path(args.params).read_text())
    params = overridden(base, [f"experiment.classes={args.classes}", f"experiment.settings={args.settings}", *args.overrides])
    params.setdefault("tracking", {})["enabled"] = False
    name = args.name or ("+".join(o.replace("/", "_") for o in args.overrides) or "default")
    began = time.perf_counter()
    if args.keep:
        metrics = run_pipeline(params, args.keep, args.prepare)
    else:
        with tempfile.TemporaryDirectory(prefix="anomem-ablate-") as tmp:
            metrics = run_pipeline(params, Path(tmp), args.prepare)
    seconds = time.perf_counter() - began
    means = {setting: {score: v["auroc"] for score, v in by_score.items()} for setting, by_score in metrics["mean"].items()}
    per_class = {
        setting: {cls: {score: v["auroc"] for score, v in by_score.items()} for cls, by_score in by_class.items()}
        for setting, by_class in metrics["classes"].items()
    }
    row = {"name": name, "overrides": args.overrides, "base": Path(args.params).name, "classes": args.classes, "seconds": seconds,
           "mean_auroc": means, "class_auroc": per_class, "params": flatten(params)}  # fmt: skip
    io.write_json(OUT / f"{name}.json", row)
    for setting, by_score in means.items():
        print(f"{name} [{setting}] " + ", ".join(f"{k} {100 * v:.1f}" for k, v in by_score.items()) + f"  ({seconds:.0f}s)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
