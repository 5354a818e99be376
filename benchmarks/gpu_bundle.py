"""Pack what a run on the lent GPU machine needs into one folder that fits the 64 MiB that travel there.

    python -m benchmarks.gpu_bundle --params profiles/paper.yaml --classes 0 3 --out gpu_bundle --wheels

Only the working tree travels to that machine (no ../shared, no dvc, mlflow, pydantic or kornia). This
writes, under --out:
- `<dataset>_train.npz` and `<dataset>_test.npz` in the layout prepare_data reads. Every label is kept,
  so prepare_data draws the very same splits there; the training rows that no split of the requested
  (class, setting) pairs uses are zeroed, so they compress to almost nothing. The archives are
  LZMA-compressed zips, which numpy reads like any npz.
- with --wheels, the wheels of the packages that machine lacks, at the versions installed here.
- `manifest.json`: what was kept and the bytes of each file.

On the GPU machine (carry the folder; the device README has the pip line):
    pip install --no-index --no-deps --target /tmp/site gpu_bundle/wheels/*.whl
    PYTHONPATH=/tmp/site:src ANOMEM_CIFAR10_DIR=gpu_bundle python3 -m benchmarks.gpu_paper --budget-s 500
(benchmarks.gpu_paper fits the epochs to the budget; the README's GPU section has the whole command.)
"""

from __future__ import annotations

import argparse
import importlib.metadata
import os
import subprocess
import sys
import zipfile
from pathlib import Path

import numpy as np

from anomem import io
from anomem.data import load_from_folder, make_split
from anomem.errors import DataError, run_cli
from anomem.params import DataParams, load_params

# What the device machine's Python lacks (its package list in the device library's KINDS.md).
MISSING_ON_DEVICE = ("pydantic", "pydantic-core", "annotated-types", "typing-inspection", "kornia", "kornia-rs")
TRAVEL_LIMIT = 64 * 2**20


def used_train_rows(
    train_labels: np.ndarray, test_labels: np.ndarray, classes: list[int], settings: list[str], data: DataParams
) -> np.ndarray:
    """Sorted indices of the training rows that any split of the (class, setting) pairs reads."""
    rows = []
    for cls in classes:
        for setting in settings:
            split = make_split(train_labels, test_labels, cls, setting, data)
            rows += [split[part] for part in ("train_normal", "val_normal", "train_known", "val_known")]
    return np.unique(np.concatenate(rows))


def save_lzma_npz(path: Path, **arrays: np.ndarray) -> None:
    """An npz whose members are LZMA-compressed (np.load reads it; about a quarter smaller than deflate here)."""
    with io.atomic_path(path) as tmp, zipfile.ZipFile(tmp, "w", compression=zipfile.ZIP_LZMA) as archive:
        for name, array in arrays.items():
            with archive.open(f"{name}.npy", "w", force_zip64=True) as member:
                np.lib.format.write_array(member, np.ascontiguousarray(array), allow_pickle=False)


def download_wheels(folder: Path, packages: tuple[str, ...] = MISSING_ON_DEVICE) -> list[str]:
    """Wheels for the device machine (CPython 3.12, x86-64 Linux) at the versions installed here."""
    pins = [f"{name}=={importlib.metadata.version(name)}" for name in packages]
    platforms = [f"manylinux_2_{n}_x86_64" for n in (17, 24, 27, 28, 31, 34, 35, 39)] + ["manylinux2014_x86_64"]
    cmd = [sys.executable, "-m", "pip", "download", "--quiet", "--no-deps", "--only-binary=:all:"]
    cmd += ["--python-version", "3.12", "--implementation", "cp", "-d", str(folder)]
    for platform in platforms:
        cmd += ["--platform", platform]
    subprocess.run(cmd + pins, check=True)
    return pins


def build_bundle(source: Path, data: DataParams, classes: list[int], settings: list[str], out: Path) -> dict:
    """Write the compact archives of `classes` x `settings` into `out`; return the manifest."""
    train, test, _ = load_from_folder(source, data)
    keep = used_train_rows(train.labels, test.labels, classes, settings, data)
    images = np.zeros_like(train.images)
    images[keep] = train.images[keep]
    out.mkdir(parents=True, exist_ok=True)
    files = {split: out / f"{data.dataset}_{split}.npz" for split in ("train", "test")}
    save_lzma_npz(files["train"], images=images, labels=train.labels)
    save_lzma_npz(files["test"], images=test.images, labels=test.labels)
    return {
        "source": str(source),
        "classes": classes,
        "settings": settings,
        "train_rows_kept": int(keep.size),
        "train_rows": int(train.labels.size),
        "bytes": {f.name: f.stat().st_size for f in files.values()},
    }


def folder_bytes(folder: Path) -> int:
    return sum(f.stat().st_size for f in folder.rglob("*") if f.is_file())


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--params", default="profiles/paper.yaml", help="its data group decides the splits")
    parser.add_argument("--classes", type=int, nargs="+", default=[0, 3])
    parser.add_argument("--settings", nargs="+", default=["one_class", "unbalanced"])
    parser.add_argument("--source", type=Path, help="the folder with the npz files (default: ANOMEM_DATA_DIR, else ANOMEM_CIFAR10_DIR)")
    parser.add_argument("--out", type=Path, default=Path("gpu_bundle"))
    parser.add_argument("--wheels", action="store_true", help="also download the wheels the device machine lacks")
    args = parser.parse_args(argv)
    source = args.source or os.environ.get("ANOMEM_DATA_DIR") or os.environ.get("ANOMEM_CIFAR10_DIR")
    if not source:
        raise DataError("no data folder: pass --source or set ANOMEM_DATA_DIR / ANOMEM_CIFAR10_DIR")
    manifest = build_bundle(Path(source), load_params(args.params).data, args.classes, args.settings, args.out)
    if args.wheels:
        manifest["wheels"] = download_wheels(args.out / "wheels")
    io.write_json(args.out / "manifest.json", manifest)
    total = folder_bytes(args.out)
    print(f"{args.out}: {manifest['train_rows_kept']} of {manifest['train_rows']} training rows kept, {total / 2**20:.1f} MiB in all")
    if total > TRAVEL_LIMIT:
        print(f"{args.out} is over the 64 MiB that travel: ask for fewer classes", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    run_cli(main)
