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


def made_by(stage: str, pair: str) -> str:
    """What writes a pair stage's outputs, for errors about a missing or unreadable file there."""
    return f"`dvc repro {stage}@{pair}`"


def model_dir(pair: str) -> Path:
    return Path("data/models") / pair


def model_file(pair: str) -> Path:
    """The stage-1 network with the model and memory params it was built with."""
    return model_dir(pair) / "model.pt"


def resume_dir(pair: str) -> Path:
    """Outside every DVC out, so that `dvc repro` after a crash finds the checkpoint."""
    return Path("data/resume") / pair


def resume_checkpoint(pair: str, fingerprint: str) -> Path:
    """One resume point per fingerprint, so runs of the same pair with other params never share one."""
    return resume_dir(pair) / f"{fingerprint[:16]}.pt"


def deviation_dir(pair: str) -> Path:
    return Path("data/deviation") / pair


def deviation_maps_file(pair: str, split: str, scale: int) -> Path:
    """D_s of every image of `split`: (N, C_s, H_s, W_s) as detector.map_dtype."""
    return deviation_dir(pair) / f"{split}_s{scale}.npy"


def pooled_file(pair: str, split: str) -> Path:
    """The kNN score's pooled features of each test-time view: (N, views, dim)."""
    return deviation_dir(pair) / f"{split}_pooled.npy"


def rotation_file(pair: str, split: str) -> Path:
    """The rotation score of every image of `split`: (N,)."""
    return deviation_dir(pair) / f"{split}_rotation.npy"


def scores_dir(pair: str) -> Path:
    return Path("data/scores") / pair


def scores_file(pair: str) -> Path:
    """Every score of the test split, the combined parts, the threshold and the top images' heatmaps."""
    return scores_dir(pair) / "scores.npz"


def detector_file(pair: str) -> Path:
    """The fitted detector, its scale weights and the params it was fitted with."""
    return scores_dir(pair) / "detector.pt"
