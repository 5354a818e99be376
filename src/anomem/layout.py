"""Where each stage's outputs live, relative to the repository root. dvc.yaml declares the same paths."""

from __future__ import annotations

from pathlib import Path

PREPARED = Path("data/prepared")
RAW = Path("data/raw")
REPORTS = Path("reports")
PLOTS = REPORTS / "plots"
# What writes data/prepared, for errors about a missing file there.
PREPARED_BY = "`dvc repro prepare_data` (it writes the splits of experiment.classes x experiment.settings)"
# The split whose pooled features the kNN score compares with: extraction writes them, the scores read them.
KNN_BANK = "train_normal"


def images_file(split: str) -> Path:
    return PREPARED / f"{split}_images.npy"


def labels_file(split: str) -> Path:
    return PREPARED / f"{split}_labels.npy"


def split_file(cls: int, setting: str) -> Path:
    return PREPARED / "splits" / f"{cls}-{setting}.npz"


def model_dir(pair: str) -> Path:
    return Path("data/models") / pair


def resume_dir(pair: str) -> Path:
    """Outside every DVC out, so that `dvc repro` after a crash finds the checkpoint."""
    return Path("data/resume") / pair


def resume_checkpoint(pair: str, fingerprint: str) -> Path:
    """One resume point per fingerprint, so runs of the same pair with other params never share one."""
    return resume_dir(pair) / f"{fingerprint[:16]}.pt"


def deviation_dir(pair: str) -> Path:
    return Path("data/deviation") / pair


def scores_dir(pair: str) -> Path:
    return Path("data/scores") / pair
