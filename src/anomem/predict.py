"""Score new images with one trained pair, as the pipeline scored its test split (`anomem score`).

After `dvc repro`, all that a pair's scores need is on disk: the stage-1 network (data/models/PAIR), the
detector and its scale weights, and which scores the headline sums (data/scores/PAIR), and the kNN bank
and the normal validation images' maps, features and rotation scores (data/deviation/PAIR), which
standardise each part of `combined`. New images take the same passes (`views.extract_split`) and the
same scorers (`ensemble.split_scorers`) as the test split, so the test images score as in scores.npz.
"""

from __future__ import annotations

import csv
from io import StringIO
from pathlib import Path

import numpy as np

from anomem import io, layout
from anomem.data import as_rgb_images
from anomem.detector import AnomalyDistanceDetector
from anomem.ensemble import combined_score, split_scorers
from anomem.errors import DataError, ParamsError
from anomem.params import Params, flatten, pair_id
from anomem.pipeline import PAIR_STAGES, changed_outputs, differing_params, locked_params, stage_params
from anomem.runtime import Runtime
from anomem.views import Extracted, extract_split, freeze, knn_feature_dim, scoring_views, trained_network

FLAG_PERCENTILE = 95.0  # `anomalous` by default: combined above this percentile of the normal validation images' (5 % false alarms there)
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff", ".webp")
NEW = "new"  # the split name the scored images take beside the stored ones
MACHINE_KEYS = frozenset({"train.device", "train.num_threads"})  # where a pair runs, not what it computes: never compared
WIDE_MODES = {"I;16": "16-bit", "I;16B": "16-bit", "I;16L": "16-bit", "I": "32-bit integer", "F": "32-bit float"}  # PIL modes


class PairScorer:
    """One trained (class, setting, seed) pair as a scorer of uint8 NHWC images of its training size.

    `scores(images)` gives every score the pair has and `combined`, the headline; `decision_function(images)`
    gives `combined` alone. Higher means more anomalous (PyOD's convention). `threshold(percentile)` is the
    combined score above which an image is flagged: that percentile of it on the normal validation images.
    """

    def __init__(self, params: Params, cls: int, setting: str, seed: int, runtime: Runtime, root: str | Path = "."):
        root = Path(root)
        self.params, self.runtime, self.pair = params, runtime, pair_id(cls, setting, seed)
        # Every check comes before the first pass through the network (the BatchNorm recompute, last).
        locked = _require_made_with(params, self.pair, root)
        model_file = root / layout.model_file(self.pair)
        saved = io.load_torch(model_file, layout.made_by("train_contrastive_memory", self.pair))
        scored_by = layout.made_by("train_detector", self.pair)
        detector_file = root / layout.detector_file(self.pair)
        state = io.load_torch(detector_file, scored_by)
        if not locked:
            _require_trained_with(params, saved, model_file, root / "dvc.yaml")
            _require_fitted_with(params, state, detector_file, root / "dvc.yaml")
        net = _fitting(model_file, lambda: trained_network(params, saved))
        self.detector = _fitting(
            detector_file,
            lambda: AnomalyDistanceDetector(params.detector, runtime.device, seed=seed, progress=False).load_state_dict(state),
        )
        self.scale_weights = state["scale_weights"]
        self.parts = tuple(str(p) for p in io.load_npz(root / layout.scores_file(self.pair), scored_by)["combined_parts"])

        made_by = layout.made_by("extract_deviation_maps", self.pair)
        maps = {s: io.load_npy(root / layout.deviation_maps_file(self.pair, "val_normal", s), made_by) for s in params.memory.scales}
        self._maps = {"val_normal": maps}
        self._pooled = {name: io.load_npy(root / layout.pooled_file(self.pair, name), made_by) for name in (layout.KNN_BANK, "val_normal")}
        _require_bank_fits(self._pooled[layout.KNN_BANK], net, params, root / layout.pooled_file(self.pair, layout.KNN_BANK))
        self._rotation = (
            {"val_normal": io.load_npy(root / layout.rotation_file(self.pair, "val_normal"), made_by)}
            if net.rotation_head is not None
            else None
        )
        scorers = split_scorers(self.detector, self.scale_weights, self._maps, self._pooled, self._rotation, params.detector.knn_k)
        self._val_normal = {k: scorers[k]("val_normal") for k in self.parts}
        self.val_normal_combined = combined_score({k: (v, v) for k, v in self._val_normal.items()})

        train_images = io.load_npy(root / layout.images_file("train"), layout.PREPARED_BY, mmap=True)
        self.image_shape = tuple(train_images.shape[1:])
        split = io.load_npz(root / layout.split_file(cls, setting), layout.PREPARED_BY)
        self.net = freeze(net, params, train_images[split["train_normal"]], runtime)

    def threshold(self, percentile: float = FLAG_PERCENTILE) -> float:
        """The combined score above which an image is flagged: about (100 - percentile) % of normal images are."""
        return float(np.percentile(self.val_normal_combined, percentile))

    def extract(self, images: np.ndarray, desc: str = "score") -> Extracted:
        """The passes of `images` through the frozen network: deviation maps, kNN features and rotation scores."""
        images = as_rgb_images(images, "the images")
        if images.shape[0] == 0:
            raise DataError("no images to score")
        if tuple(images.shape[1:]) != self.image_shape:
            raise DataError(
                f"the images are {_size(images.shape[1:])}, but {self.pair} was trained on {_size(self.image_shape)}; "
                "resize them to that size (`anomem score --resize`)"
            )
        return extract_split(self.net, images, self.params, self.runtime, desc=desc, scored=True)

    def score_extracted(self, got: Extracted) -> dict[str, np.ndarray]:
        """Every score of the pair for what `extract` gave, and `combined`; each (N,) float64."""
        scorers = split_scorers(
            self.detector,
            self.scale_weights,
            {**self._maps, NEW: got.maps},
            {**self._pooled, NEW: got.pooled},
            None if self._rotation is None else {**self._rotation, NEW: got.rotation},
            self.params.detector.knn_k,
        )
        out = {k: score(NEW) for k, score in scorers.items()}
        out["combined"] = combined_score({k: (out[k], self._val_normal[k]) for k in self.parts})
        return out

    def scores(self, images: np.ndarray) -> dict[str, np.ndarray]:
        """Every score of the pair for uint8 NHWC `images`, and `combined`; each (N,) float64."""
        return self.score_extracted(self.extract(images))

    def decision_function(self, images: np.ndarray) -> np.ndarray:
        return self.scores(images)["combined"]


def scores_csv(names: list[str], labels: np.ndarray | None, scores: dict[str, np.ndarray], anomalous: np.ndarray) -> str:
    """One row per image: its name, its label (when given), `combined`, the other scores, and the 0/1 flag."""
    columns = ["combined", *(k for k in scores if k != "combined")]
    table = StringIO()
    writer = csv.writer(table, lineterminator="\n")
    writer.writerow(["image", *(["label"] if labels is not None else []), *columns, "anomalous"])
    for i, name in enumerate(names):
        label = [int(labels[i])] if labels is not None else []
        writer.writerow([name, *label, *(repr(float(scores[k][i])) for k in columns), int(anomalous[i])])  # repr: exact floats
    return table.getvalue()


def _size(shape: tuple[int, ...]) -> str:
    return f"{shape[0]}x{shape[1]} pixels"


def _require_made_with(params: Params, pair: str, root: Path) -> bool:
    """Where dvc.lock records the pair's three stages: a ParamsError unless these params are the values they ran with,
    and a DataError unless the outputs on disk are the ones it recorded. False where dvc.lock does not record them."""
    lock = root / "dvc.lock"
    stages, locked = [f"{stage}@{pair}" for stage in PAIR_STAGES], locked_params(lock)
    if not all(stage in locked for stage in stages):
        return False
    now = flatten(params.to_dict())
    differ = {k: both for stage in stages for k, both in _differing(locked[stage], now).items()}
    if differ:
        raise ParamsError(
            f"{lock} records other params for {pair}'s outputs than these ({_described(differ)}): "
            "run `dvc repro` with these first, or score with the params it ran with (--params)"
        )
    stale = changed_outputs(root, stages)
    if stale:
        raise DataError(
            f"the outputs of {', '.join(stale)} in {root} are not those {lock} records (a `git checkout` or `git pull` "
            "without `dvc checkout` or `dvc pull`?): run `dvc checkout` (or `dvc repro`) first"
        )
    return True


def _require_trained_with(params: Params, saved: dict, model_file: Path, dvc_yaml: Path) -> None:
    """Where DVC did not run the pair: a ParamsError when the model and memory params that stage 1 reads (per dvc.yaml,
    when the project has one) are not those saved with the network."""
    trained = flatten({group: saved.get(f"{group}_params") or {} for group in ("model", "memory")})
    read = stage_params(dvc_yaml)["train_contrastive_memory"] if dvc_yaml.is_file() else set(trained)
    _require_same(trained, read, params, f"{model_file} was trained")


def _require_fitted_with(params: Params, state: dict, detector_file: Path, dvc_yaml: Path) -> None:
    """Where DVC did not run the pair: a ParamsError when the params that extraction and the detector read (per
    dvc.yaml; without one, as in `benchmarks.ablate --keep` folders, the detector group) are not those saved with
    the detector. Detectors saved before detector.pt recorded its params are checked only by their shapes."""
    fitted = state.get("params")
    if fitted is None:
        return
    if dvc_yaml.is_file():
        read_by = stage_params(dvc_yaml)
        read = read_by["extract_deviation_maps"] | read_by["train_detector"]
    else:
        read = {k for k in fitted if k.startswith("detector.")}
    _require_same(fitted, read, params, f"{detector_file} was fitted")


def _require_same(recorded: dict, read: set[str], params: Params, what: str) -> None:
    """Compare the recorded values of the keys in `read` that these params still have."""
    now = flatten(params.to_dict())
    differ = {k: both for k, both in _differing(recorded, now).items() if k in read and k in now}
    if differ:
        raise ParamsError(
            f"{what} with other params than these ({_described(differ)}): score with the params file it was made "
            "with (--params), or re-run the pipeline with these (`dvc repro`, or `benchmarks.ablate --keep`)"
        )


def _differing(recorded: dict, now: dict) -> dict[str, tuple]:
    """pipeline.differing_params without MACHINE_KEYS: the one comparison both records (dvc.lock, saved files) go through."""
    return {k: both for k, both in differing_params(recorded, now).items() if k not in MACHINE_KEYS}


def _described(differ: dict[str, tuple]) -> str:
    return "; ".join(f"{k}: {there!r} there, {here!r} here" for k, (there, here) in sorted(differ.items()))


def _fitting(file: Path, load):
    """`load()`, with a state dict that does not fit the network these params build turned into a ParamsError."""
    try:
        return load()
    except (RuntimeError, KeyError) as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise ParamsError(
            f"{file} does not fit the network these params build ({first}): score with the params it was made with (--params)"
        ) from None


def _require_bank_fits(bank: np.ndarray, net, params: Params, file: Path) -> None:
    """A ParamsError, before any pass, when the kNN bank was extracted with other test-time views or kNN features."""
    d = params.detector
    views, dim = len(scoring_views(d.knn_turns, d.knn_mirror)), knn_feature_dim(net, tuple(d.knn_scales), d.knn_pooling)
    if bank.shape[1:] != (views, dim):
        raise ParamsError(
            f"{file} holds {bank.shape[1]} views of {bank.shape[2]} features, but these params make {views} of {dim}: "
            "detector.knn_turns, detector.knn_mirror, detector.knn_scales or detector.knn_pooling differ from those extraction ran with "
            "(score with those, --params)"
        )


def training_image_size(root: str | Path = ".") -> tuple[int, int]:
    """(height, width) of the images the project trained on, from the header of data/prepared's training images."""
    return tuple(io.load_npy(Path(root) / layout.images_file("train"), layout.PREPARED_BY, mmap=True).shape[1:3])


def read_images(path: str | Path, resize_to: tuple[int, int] | None = None) -> tuple[np.ndarray, list[str], np.ndarray | None]:
    """uint8 NHWC RGB images, their names and their labels (or None) from an .npy array, an .npz with an 'images'
    array (and 'labels', optional: integer class indices), one image file, or a folder of image files (sorted by name).

    With `resize_to` (height, width), every image is resized to it (PIL, bicubic); otherwise they keep their size.
    """
    path = Path(path)
    if not path.exists():
        raise DataError(f"{path}: missing")
    labels = None
    suffix = path.suffix.lower()
    if path.is_dir():
        files = sorted(p for p in path.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
        if not files:
            raise DataError(f"{path}: no image files here ({', '.join(IMAGE_SUFFIXES)})")
        return _stack([_read_image_file(f, resize_to) for f in files], path), [f.name for f in files], None
    if suffix in IMAGE_SUFFIXES:
        return _stack([_read_image_file(path, resize_to)], path), [path.name], None
    if suffix == ".npy":
        images = io.load_npy(path, "what wrote it")
    elif suffix == ".npz":
        archive = io.load_npz(path, "what wrote it")
        if "images" not in archive:
            raise DataError(f"{path}: lacks an array 'images'; has {sorted(archive)}")
        images, labels = archive["images"], archive.get("labels")
    else:
        raise DataError(f"{path}: not an .npy, .npz, image file or folder of image files")
    images = as_rgb_images(images, path)
    if images.shape[0] == 0:
        raise DataError(f"{path}: holds no images")
    if labels is not None and (labels.shape != (images.shape[0],) or not np.issubdtype(labels.dtype, np.integer)):
        raise DataError(f"{path}: 'labels' must be {images.shape[0]} integer class indices, got {labels.dtype} of shape {labels.shape}")
    if resize_to is not None and tuple(images.shape[1:3]) != tuple(resize_to):
        images = np.stack([_resized(image, resize_to) for image in images])
    return images, [str(i) for i in range(images.shape[0])], labels


def _read_image_file(file: Path, resize_to: tuple[int, int] | None) -> np.ndarray:
    from PIL import Image, ImageOps, UnidentifiedImageError

    try:
        with Image.open(file) as image:
            if image.mode in WIDE_MODES:  # convert("RGB") would clip, not scale, 16-bit and float pixels
                raise DataError(f"{file}: a {image.mode} image ({WIDE_MODES[image.mode]}); convert it to 8 bits per channel first")
            rgb = np.asarray(ImageOps.exif_transpose(image).convert("RGB"))  # upright, as a viewer shows it
    except (UnidentifiedImageError, OSError) as exc:
        raise DataError(f"{file}: not a readable image ({type(exc).__name__}: {exc})") from None
    return _resized(rgb, resize_to) if resize_to is not None and rgb.shape[:2] != tuple(resize_to) else rgb


def _resized(image: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    from PIL import Image

    return np.asarray(Image.fromarray(image).resize((size[1], size[0]), Image.Resampling.BICUBIC))


def _stack(images: list[np.ndarray], source: Path) -> np.ndarray:
    sizes = sorted({image.shape[:2] for image in images})
    if len(sizes) > 1:
        raise DataError(f"{source}: the images differ in size ({', '.join(_size(s) for s in sizes[:4])}); resize them (--resize)")
    return np.stack(images)
