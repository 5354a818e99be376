"""Data: load and check the raw images, draw the index splits, and augment whole batches of tensors.

Raw data is read once, checked, and written as one uint8 copy; every (class, setting) split is indices into it.
"""

from __future__ import annotations

import hashlib
import zipfile
import zlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn

from anomem.errors import DataError
from anomem.params import ARCH_STAGES, SETTINGS, DataParams, Params, uses_shifted_negatives


@dataclass(frozen=True)
class ImageSet:
    images: np.ndarray  # (N, H, W, 3) uint8, RGB (grayscale sources repeated to three channels)
    labels: np.ndarray  # (N,) int64
    source_channels: int = 3  # 1 when the archive held grayscale images


def _check_image_shape(images, file: Path) -> None:
    allowed = "(N, H, W, 3), or (N, H, W) / (N, H, W, 1) for grayscale"
    if not isinstance(images, np.ndarray) or images.ndim not in (3, 4):
        raise DataError(f"{file}: 'images' must have shape {allowed}, got {getattr(images, 'shape', type(images))}")
    if images.ndim == 3 and images.shape[2] in (3, 4):
        raise DataError(f"{file}: 'images' must have shape {allowed}, got {images.shape}: that is one colour image, not a stack of them")
    if images.ndim == 4 and images.shape[3] not in (1, 3):
        hint = ": it looks channels-first, so transpose it to (N, H, W, C)" if images.shape[1] in (1, 3) else ""
        raise DataError(f"{file}: 'images' must have shape {allowed}, got {images.shape}{hint}")


def as_rgb_images(images, file: Path) -> np.ndarray:
    """Checked uint8 NHWC images; grayscale ones become RGB by repeating their one channel."""
    _check_image_shape(images, file)
    if images.dtype != np.uint8:
        raise DataError(f"{file}: 'images' must be uint8 (0..255), got {images.dtype}")
    if images.ndim == 3 or images.shape[3] == 1:
        images = np.repeat(images.reshape(*images.shape[:3], 1), 3, axis=3)
    return images


def _check_arrays(images, labels, file: Path, num_classes: int) -> ImageSet:
    """Checked arrays; grayscale images become RGB by repeating their one channel."""
    rgb = as_rgb_images(images, file)
    source_channels = 1 if images.ndim == 3 else images.shape[3]
    if labels.ndim != 1 or labels.shape[0] != rgb.shape[0]:
        raise DataError(f"{file}: 'labels' must have shape ({rgb.shape[0]},), got {labels.shape}")
    if not np.issubdtype(labels.dtype, np.integer):
        raise DataError(f"{file}: 'labels' must be integers, got {labels.dtype}")
    if labels.size and (labels.min() < 0 or labels.max() >= num_classes):
        bad = labels[(labels < 0) | (labels >= num_classes)]
        raise DataError(f"{file}: labels must lie in 0..{num_classes - 1}; found {np.unique(bad)[:5].tolist()}")
    return ImageSet(np.ascontiguousarray(rgb), labels.astype(np.int64), source_channels)


def read_npz(file: Path, num_classes: int) -> ImageSet:
    """Read one archive in the layout of shared/data/cifar10/README.md: arrays 'images' and 'labels'."""
    if not file.is_file():
        raise DataError(f"{file}: missing (expected an npz with arrays 'images' and 'labels')")
    if file.stat().st_size == 0:
        raise DataError(f"{file}: empty file")
    try:
        with np.load(file, allow_pickle=False) as archive:
            missing = {"images", "labels"} - set(archive.files)
            if missing:
                raise DataError(f"{file}: lacks array(s) {sorted(missing)}; has {archive.files}")
            images, labels = archive["images"], archive["labels"]
    except DataError:
        raise
    except (
        zipfile.BadZipFile,
        zlib.error,
        EOFError,
        ValueError,
        OSError,
        KeyError,
    ) as exc:
        raise DataError(f"{file}: corrupt or truncated archive ({type(exc).__name__}: {exc})") from None
    return _check_arrays(images, labels, file, num_classes)


def load_from_folder(folder: Path, params: DataParams) -> tuple[ImageSet, ImageSet, dict]:
    """Train and test sets from `{dataset}_train.npz` / `{dataset}_test.npz` in `folder`."""
    if not folder.is_dir():
        raise DataError(
            f"{folder}: data folder does not exist (ANOMEM_DATA_DIR / ANOMEM_CIFAR10_DIR must name the folder with the npz files)"
        )
    files = {split: folder / f"{params.dataset}_{split}.npz" for split in ("train", "test")}
    if not any(f.exists() for f in files.values()):
        raise DataError(f"{folder}: no {params.dataset}_train.npz or {params.dataset}_test.npz in this folder")
    train = read_npz(files["train"], params.num_classes)
    test = read_npz(files["test"], params.num_classes)
    if train.images.shape[1:] != test.images.shape[1:]:
        raise DataError(f"{files['test']}: image shape {test.images.shape[1:]} differs from train's {train.images.shape[1:]}")
    source = {split: {"file": str(f), "sha256": _sha256(f)} for split, f in files.items()}
    return train, test, source


def download_cifar10(root: Path) -> tuple[ImageSet, ImageSet, dict]:
    """The original CIFAR-10 through torchvision (needs internet)."""
    from torchvision.datasets import CIFAR10

    try:
        sets = [CIFAR10(str(root), train=t, download=True) for t in (True, False)]
    except Exception as exc:  # torchvision raises several kinds on network failure
        raise DataError(
            f"could not download CIFAR-10 into {root} ({exc}); with no internet, set ANOMEM_CIFAR10_DIR "
            "to a folder holding cifar10_train.npz and cifar10_test.npz"
        ) from None
    train, test = (ImageSet(np.asarray(s.data, np.uint8), np.asarray(s.targets, np.int64)) for s in sets)
    return train, test, {"download": "torchvision.datasets.CIFAR10", "root": str(root)}


def _sha256(file: Path) -> str:
    h = hashlib.sha256()
    with open(file, "rb") as f:
        for block in iter(lambda: f.read(1 << 22), b""):
            h.update(block)
    return h.hexdigest()


def make_split(
    train_labels: np.ndarray,
    test_labels: np.ndarray,
    cls: int,
    setting: str,
    params: DataParams,
) -> dict[str, np.ndarray]:
    """Indices of one (class, setting): normal train/val, known anomalies train/val, and the test split.

    The normal part depends on the class and split_seed only, so both settings share it and differ
    only by their known anomalies. Label 1 means anomaly.
    """
    if setting not in SETTINGS:
        raise ValueError(f"setting must be one of {SETTINGS}, got {setting!r}")
    rng = np.random.default_rng([params.split_seed, cls])
    normal = rng.permutation(np.flatnonzero(train_labels == cls))
    n_val = int(round(params.val_fraction * normal.size))
    if normal.size - n_val < 2 or n_val < 1:
        raise DataError(
            f"class {cls} has {normal.size} training images: too few to hold out {params.val_fraction:.0%} "
            "for validation and still train (need at least 3)"
        )
    split = {
        "val_normal": np.sort(normal[:n_val]),
        "train_normal": np.sort(normal[n_val:]),
    }
    known = np.empty(0, np.int64)
    if setting == "unbalanced":
        krng = np.random.default_rng([params.split_seed, cls, 1])
        others = np.array([c for c in range(params.num_classes) if c != cls])
        chosen = krng.choice(others, params.n_known_outlier_classes, replace=False)
        pool = np.flatnonzero(np.isin(train_labels, chosen))
        n_known = int(round(params.ratio_known_outlier * normal.size))
        if n_known < 2 or n_known > pool.size:
            raise DataError(
                f"class {cls}, unbalanced: data.ratio_known_outlier={params.ratio_known_outlier} asks for {n_known} "
                f"known anomalies; classes {sorted(chosen.tolist())} hold {pool.size} and at least 2 are needed"
            )
        known = krng.permutation(krng.choice(pool, n_known, replace=False))
    n_known_val = int(round(params.val_fraction * known.size))
    split["val_known"] = np.sort(known[:n_known_val])
    split["train_known"] = np.sort(known[n_known_val:])
    split["test"] = np.arange(test_labels.size)
    split["test_labels"] = (test_labels != cls).astype(np.int64)
    if split["test_labels"].sum() in (0, split["test_labels"].size):
        raise DataError(f"class {cls}: the test split needs both normal and anomalous images")
    return split


def quarter_turn_users(params: Params, settings: tuple[str, ...] | list[str]) -> list[str]:
    """The params (as `key=value`) that turn images by quarter turns, which only square images allow."""
    users = []
    if params.contrastive.rotation_weight > 0:
        users.append(f"contrastive.rotation_weight={params.contrastive.rotation_weight:g} (the rotation head)")
    if params.contrastive.shifted_instances > 1:
        users.append(f"contrastive.shifted_instances={params.contrastive.shifted_instances} (turned images as negatives)")
    if params.detector.knn_turns:
        users.append("detector.knn_turns=true (the kNN score over four turns)")
    if any(uses_shifted_negatives(params, s) for s in settings):
        users.append("detector.shifted_negatives=true (turned normals as the one_class detector's known anomalies)")
    return users


def require_square_for_turns(image_hw: tuple[int, ...], params: Params, settings: tuple[str, ...] | list[str]) -> None:
    """A DataError, before any work, when the images are not square but a param turns them by 90 degrees."""
    h, w = image_hw[:2]
    users = quarter_turn_users(params, settings)
    if h != w and users:
        raise DataError(
            f"the images are {h}x{w} pixels, not square, and a quarter turn would make them {w}x{h}; these params turn them: "
            f"{'; '.join(users)}. Switch them off (contrastive.rotation_weight: 0, contrastive.shifted_instances: 1, detector.knn_turns: false, "
            "detector.shifted_negatives: false) or crop the images to a square"
        )


def training_view_hw(image_hw: tuple[int, ...], params: Params) -> tuple[int, int]:
    """Stage 1's view size: the images' (h, w) times contrastive.view_scale, rounded; a DataError, before any work, when the
    encoder's last stage would get no map from it."""
    scale = params.contrastive.view_scale
    view_hw = (max(1, round(image_hw[0] * scale)), max(1, round(image_hw[1] * scale)))
    halvings = ARCH_STAGES[params.model.arch] - 1  # every stage after the first halves the map
    if min(view_hw) < 2**halvings:
        raise DataError(
            f"contrastive.view_scale = {scale:g} makes {image_hw[0]}x{image_hw[1]} images into {view_hw[0]}x{view_hw[1]} training views, "
            f"and {params.model.arch} halves its input {halvings} times, so views under {2**halvings} pixels leave its last stage "
            f"no map; raise view_scale to at least {2**halvings / min(image_hw[:2]):.3g} (1 = the images' own size)"
        )
    return view_hw


def quarter_turned(images: np.ndarray, seed: int) -> np.ndarray:
    """Each uint8 NHWC image turned by a random 90, 180 or 270 degrees: CSI's "shifted" copies of normal data."""
    if images.shape[1] != images.shape[2]:
        raise ValueError(f"quarter turns need square images, got {images.shape[1]}x{images.shape[2]}")
    turns = np.random.default_rng(seed).integers(1, 4, images.shape[0])
    out = np.empty_like(images)
    for k in (1, 2, 3):
        pick = np.flatnonzero(turns == k)
        out[pick] = np.rot90(images[pick], k, axes=(1, 2))
    return out


def channel_stats(images: np.ndarray | torch.Tensor, chunk: int = 4096) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-channel mean and std of uint8 NHWC images on the [0, 1] scale, summed in float64 chunk by chunk."""
    n = images.shape[0]
    if n == 0:
        raise ValueError("channel statistics need at least one image")
    total, squares = torch.zeros(3, dtype=torch.float64), torch.zeros(3, dtype=torch.float64)
    for start in range(0, n, chunk):
        x = torch.as_tensor(np.asarray(images[start : start + chunk])).to(torch.float64) / 255.0
        total += x.sum((0, 1, 2))
        squares += (x**2).sum((0, 1, 2))
    count = n * images.shape[1] * images.shape[2]
    mean = total / count
    std = (squares / count - mean**2).clamp_min(0).sqrt().clamp_min(1e-3)  # a constant channel must not divide by 0
    return mean.float(), std.float()


def to_float(images: np.ndarray | torch.Tensor) -> torch.Tensor:
    """uint8 NHWC -> float NCHW in [0, 1]."""
    if not isinstance(images, torch.Tensor):
        images = torch.from_numpy(np.require(images, requirements="W"))  # copies only a read-only (memory-mapped) array
    return images.permute(0, 3, 1, 2).float().div_(255.0)


class ContrastiveViews(nn.Module):
    """SimCLR views of a whole batch, with per-sample random parameters (kornia)."""

    def __init__(
        self,
        view_hw: tuple[int, int],
        crop_min_scale: float,
        color_jitter: list[float],
        jitter_p: float,
        grayscale_p: float,
    ):
        super().__init__()
        import kornia.augmentation as K

        self.augment = nn.Sequential(
            K.RandomResizedCrop(tuple(view_hw), scale=(crop_min_scale, 1.0)),
            K.RandomHorizontalFlip(),
            K.ColorJitter(*color_jitter, p=jitter_p),
            K.RandomGrayscale(p=grayscale_p),
        )

    @classmethod
    def from_params(cls, params: Params, image_hw: tuple[int, ...]) -> ContrastiveViews:
        """The views `contrastive` asks for, of images image_hw in size, at `training_view_hw`."""
        c = params.contrastive
        return cls(training_view_hw(image_hw, params), c.crop_min_scale, c.color_jitter, c.jitter_p, c.grayscale_p)

    @torch.no_grad()
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.augment(x).clamp_(0.0, 1.0)
