"""What dvc.yaml and dvc.lock say about a pair's stages: which params each reads, which values made its outputs,
and whether those outputs are still the ones dvc.lock recorded. For tools beside the pipeline (`anomem score`,
`benchmarks.ablate`); the stages themselves never read these files.
"""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import yaml

from anomem.errors import DataError
from anomem.params import read_yaml

PAIR_STAGES = ("train_contrastive_memory", "extract_deviation_maps", "train_detector")  # dvc.yaml's per-pair stages, in order


def stage_params(dvc_yaml: Path) -> dict[str, set[str]]:
    """The params each pair stage reads, as dvc.yaml lists them."""
    stages = yaml.safe_load(dvc_yaml.read_text())["stages"]
    return {name: set(stages[name].get("params", [])) for name in PAIR_STAGES}


def locked_params(dvc_lock: Path) -> dict[str, dict[str, Any]]:
    """The param values dvc.lock recorded, per stage instance (`train_detector@3-one_class-0`); empty without dvc.lock.
    Read once per call: parsing the grid's lock takes about 0.4 s."""
    if not dvc_lock.is_file():
        return {}
    stages = (read_yaml(dvc_lock.read_text()) or {}).get("stages", {})  # DVC writes 1e-06 for 0.000001
    return {name: entry.get("params", {}).get("params.yaml", {}) for name, entry in stages.items()}


def differing_params(recorded: dict[str, Any], now: dict[str, Any]) -> dict[str, tuple[Any, Any]]:
    """The flat keys whose recorded value is not the one in `now` (flat too): key -> (recorded, now)."""
    return {k: (v, now.get(k)) for k, v in recorded.items() if now.get(k) != v}


def dvc_status(root: Path, stages: list[str]) -> dict[str, list]:
    """`dvc status --json` of these stage instances in `root`: {stage: [changes]}, empty when all are up to date."""
    done = subprocess.run([sys.executable, "-m", "dvc", "status", "--json", *stages], cwd=root, capture_output=True, text=True)
    if done.returncode != 0:
        raise DataError(f"`dvc status` failed in {root}:\n{done.stderr[-2000:]}")
    return json.loads(done.stdout or "{}")


def changed_outputs(root: Path, stages: list[str]) -> list[str] | None:
    """The stage instances whose outputs in `root` are not those dvc.lock recorded, or None where DVC is not installed.
    Changed deps or params are not counted: they say what a re-run would do, not what is on disk."""
    if importlib.util.find_spec("dvc") is None:
        return None
    status = dvc_status(root, stages)
    return sorted(
        name for name, changes in status.items() if any("changed outs" in change for change in changes if isinstance(change, dict))
    )
