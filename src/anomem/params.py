"""Typed, validated params: one model per group of params.yaml. The only place params are read.

Every default is the CPU profile's value (profiles/cpu.yaml; a test keeps the two equal), so a params
file that leaves a key out gets what `dvc repro` runs, not an older or weaker setting.

Every check runs before any work: unknown keys (with the close match suggested), types,
ranges, allowed values and combinations that make no sense.
"""

from __future__ import annotations

import difflib
import re
from pathlib import Path
from typing import Annotated, Any, Literal, TypeVar, get_args

import yaml
from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    field_validator,
    model_validator,
)

from anomem.errors import ParamsError

SETTINGS = ("one_class", "unbalanced")

# Choices the library's classes take as plain strings too (the PyOD-style API needs no Params).
MemoryRead = Literal["cosine", "dot"]
Pooling = Literal["avg_max", "avg"]
LossReduction = Literal["separate", "joint"]
ScaleWeights = Literal["inverse_energy", "uniform"]


def check_choice(name: str, value: str, choices: Any) -> str:
    """value if it is one of the Literal `choices`, else a ValueError that names both: the check of a direct
    library call, where no Params validated the string."""
    allowed = get_args(choices)
    if value not in allowed:
        raise ValueError(f"{name} must be one of {', '.join(map(repr, allowed))}; got {value!r}")
    return value


# Stages (feature-map scales) each architecture has: S1..S3 for the CIFAR ResNet-20 family, S1..S4 for ResNet-18/34.
ARCH_STAGES = {
    "resnet20": 3,
    "resnet32": 3,
    "resnet44": 3,
    "resnet18": 4,
    "resnet34": 4,
}

# Class names of the data sets the project knows; a folder of npz in the CIFAR layout may use either.
DATASETS = {
    "cifar10": (
        "airplane",
        "automobile",
        "bird",
        "cat",
        "deer",
        "dog",
        "frog",
        "horse",
        "ship",
        "truck",
    ),
}


class _Group(BaseModel):
    # strict: YAML `yes`, "10" or 2.0 must not pass silently as a bool, an int or a class index.
    model_config = ConfigDict(extra="forbid", frozen=True, strict=True)


class DataParams(_Group):
    dataset: str = Field("cifar10", pattern=r"^[A-Za-z0-9_-]+$")
    class_names: list[str] = Field(default_factory=list, description="required for a data set anomem does not know")
    val_fraction: float = Field(0.1, gt=0.0, lt=0.5)
    ratio_known_outlier: float = Field(0.05, ge=0.0, le=1.0)
    n_known_outlier_classes: int = Field(9, ge=1)
    split_seed: int = Field(0, ge=0)

    @model_validator(mode="after")
    def _known_or_named(self) -> DataParams:
        known = DATASETS.get(self.dataset)
        if known is None and len(self.class_names) < 2:
            raise ValueError(
                f"data.dataset = {self.dataset!r} is not one anomem knows ({', '.join(DATASETS)}); "
                "list its classes in data.class_names (at least 2), in label order"
            )
        if known is not None and self.class_names and tuple(self.class_names) != known:
            raise ValueError(f"data.class_names must be empty or {list(known)} for {self.dataset}")
        if len(set(self.class_names)) != len(self.class_names):
            raise ValueError(f"data.class_names has a repeated name: {self.class_names}")
        return self

    @property
    def names(self) -> tuple[str, ...]:
        """The class names, by label index."""
        return DATASETS.get(self.dataset) or tuple(self.class_names)

    @property
    def num_classes(self) -> int:
        return len(self.names)


class ModelParams(_Group):
    arch: Literal["resnet20", "resnet32", "resnet44", "resnet18", "resnet34"] = "resnet20"
    # At width 4, torch 2.14.1 channels_last convolutions crash natively on an AVX2 CPU (segfault seen here).
    width: int = Field(8, ge=8, le=256)
    proj_dim: int = Field(128, ge=8, le=4096)
    # fixed: (x - 0.5) / 0.25, independent of the data; dataset: per-channel mean and std of the normal training images.
    input_norm: Literal["fixed", "dataset"] = "fixed"
    proj_bn: bool = True  # BatchNorm1d between the projection head's two linear layers


class MemoryParams(_Group):
    enabled: bool = True  # false: the plain SimCLR baseline (no memories; D_s is F_s)
    scales: list[int] = Field(default_factory=lambda: [2, 3])
    # >= 2: the variance term is a std over the items, undefined for one item.
    size: int = Field(64, ge=2, le=65536)
    beta: float = Field(10.0, gt=0.0, le=1000.0)
    var_weight: float = Field(1.0, ge=0.0)
    # cosine: softmax(beta * z_hat . M_hat^T) . M; dot: softmax(beta * z . M^T / sqrt(C)) . M (scaled dot-product).
    read: MemoryRead = "cosine"
    # features: encoder features at random locations of one un-augmented batch; noise: standard normal items.
    init: Literal["features", "noise"] = "features"
    # plain: D_s = F_s - read(F_s) with F_s from the plain path; memory: F_s after the reads of the scales below s.
    deviation_path: Literal["plain", "memory"] = "plain"

    @field_validator("scales")
    @classmethod
    def _scales(cls, v: list[int]) -> list[int]:
        if not v:
            raise ValueError("must list at least one scale (e.g. [2, 3])")
        if len(set(v)) != len(v):
            raise ValueError(f"has a repeated scale: {v}")
        return sorted(v)


def non_empty_unique(v: list) -> list:
    """A list param that must name something, each entry once."""
    if not v:
        raise ValueError("must not be empty")
    if len(set(v)) != len(v):
        raise ValueError(f"has a repeated entry: {v}")
    return v


L = TypeVar("L", bound=list)
NonEmptyUnique = Annotated[L, AfterValidator(non_empty_unique)]


class ContrastiveParams(_Group):
    temperature: float = Field(0.2, gt=0.0, le=10.0)
    plain_weight: float = Field(1.0, ge=0.0)
    rotation_weight: float = Field(1.0, ge=0.0, description="CSI-style rotation prediction; 0 turns it off")
    # CSI's shifted instances: each step's images under this many distinct quarter turns, each turn its own instance.
    shifted_instances: int = Field(4, ge=1, le=4)
    # Stage 1's views (the crop's output) at this fraction of the images' side; 1 = full size. Scoring always sees full images.
    view_scale: float = Field(0.5, gt=0.0, le=1.0)
    crop_min_scale: float = Field(0.2, gt=0.0, le=1.0)
    color_jitter: list[float] = Field(default_factory=lambda: [0.4, 0.4, 0.4, 0.1])
    jitter_p: float = Field(0.8, ge=0.0, le=1.0)
    grayscale_p: float = Field(0.2, ge=0.0, le=1.0)

    @field_validator("color_jitter")
    @classmethod
    def _jitter(cls, v: list[float]) -> list[float]:
        if len(v) != 4 or any(x < 0 for x in v) or v[3] > 0.5:
            raise ValueError("must be [brightness, contrast, saturation, hue], all >= 0 and hue <= 0.5")
        return v


class TrainParams(_Group):
    device: Literal["auto", "cpu", "cuda"] = "auto"
    precision: Literal["auto", "bf16", "fp32"] = "auto"
    epochs: int = Field(6, ge=1)
    batch_size: int = Field(256, ge=2)
    known_batch_size: int = Field(32, ge=1)
    lr: float = Field(0.4, gt=0.0)
    momentum: float = Field(0.9, ge=0.0, lt=1.0)
    weight_decay: float = Field(5e-4, ge=0.0)
    warmup_epochs: int = Field(1, ge=0)
    schedule: Literal["cosine", "step"] = "cosine"  # after warm-up; step: x0.1 at 50 % and again at 75 % of the steps
    decay_memory: bool = False  # weight decay on the memory items too (BN weights and biases never decay)
    known_negatives: bool = True  # unbalanced: known anomalies as extra negatives of the plain NT-Xent
    # replacement: each step draws known anomalies at random; epoch: each is drawn once before any repeats.
    known_sampling: Literal["replacement", "epoch"] = "replacement"
    checkpoint_every_epochs: int = Field(1, ge=1)
    eval_batch_size: int = Field(1000, ge=1)
    num_threads: int = Field(0, ge=0, description="torch CPU threads; 0 keeps torch's default")


class DetectorParams(_Group):
    channels: int = Field(32, ge=1)
    hidden: int = Field(128, ge=1)
    rep_dim: int = Field(32, ge=1)
    epochs: int = Field(30, ge=1)
    batch_size: int = Field(256, ge=2)
    known_batch_size: int = Field(8, ge=1)
    lr: float = Field(1e-3, gt=0.0)
    weight_decay: float = Field(1e-6, ge=0.0)
    eta: float = Field(1.0, ge=0.0)
    eps: float = Field(1e-6, gt=0.0)
    pooling: Pooling = "avg_max"  # global pooling of each scale's branch
    # separate: mean(normal) + eta * mean(known); joint: one mean over the batch (the Deep SAD reference code).
    loss_reduction: LossReduction = "separate"
    optimizer: Literal["adam", "sgd"] = "adam"  # sgd: momentum 0.9, the same lr and weight decay
    select: Literal["best_val", "last"] = "best_val"  # the epoch kept: lowest validation objective, or the last
    known_sampling: Literal["replacement", "epoch"] = "replacement"
    map_dtype: Literal["float16", "float32"] = "float16"  # deviation maps on disk
    # the deviation reference score's scale weights: 1 / mean training energy, or 1 for every scale.
    scale_weights: ScaleWeights = "inverse_energy"
    # one_class: maps of normal images turned by 90/180/270 degrees stand in for known anomalies (CSI's
    # shifted negatives). Not in unbalanced: 4,500 turned copies would crowd out the 225 real anomalies.
    shifted_negatives: bool = True
    # Before extraction, the encoder's BatchNorm statistics are averaged anew over the un-augmented normal training
    # images (and their turns, where the scores use turned views), instead of the training's moving average.
    bn_recompute: bool = False
    knn_k: int = Field(1, ge=1)
    # Test-time views of the kNN score, each scored against the same view of the normal training images:
    # the four quarter turns (CSI's shifted views) and the mirror image of each.
    knn_turns: bool = True
    knn_mirror: bool = False
    # Encoder stages whose pooled maps make the kNN feature (each L2-normalised, side by side);
    # empty: the last stage, as SimCLR and CSI score it.
    knn_scales: list[int] = Field(default_factory=lambda: [2, 3])
    # avg: each of those stages' average-pooled map; avg_max: its max-pooled map beside it (each part L2-normalised).
    knn_pooling: Literal["avg", "avg_max"] = "avg_max"
    # The headline `combined` sums these scores, each standardised on the normal validation images; a
    # listed score the run lacks (rotation without a rotation head) is left out.
    combine: NonEmptyUnique[list[Literal["detector", "rotation", "knn", "deviation"]]] = Field(
        default_factory=lambda: ["detector", "rotation", "knn"]
    )
    # unbalanced: sum only the subset of `combine` with the best validation AUROC (normal vs known anomalies).
    pick_by_validation: bool = True

    @field_validator("knn_scales")
    @classmethod
    def _knn_scales(cls, v: list[int]) -> list[int]:
        if len(set(v)) != len(v):
            raise ValueError(f"has a repeated scale: {v}")
        return sorted(v)


class ExperimentParams(_Group):
    classes: NonEmptyUnique[list[int]] = Field(default_factory=lambda: list(range(10)))
    settings: NonEmptyUnique[list[Literal["one_class", "unbalanced"]]] = Field(default_factory=lambda: list(SETTINGS))
    seeds: NonEmptyUnique[list[int]] = Field(default_factory=lambda: [0])

    @field_validator("seeds")
    @classmethod
    def _seeds(cls, v: list[int]) -> list[int]:
        if any(s < 0 for s in v):
            raise ValueError("seeds must be >= 0")
        return v


class TrackingParams(_Group):
    enabled: bool = True
    experiment_name: str = Field("anomem", min_length=1)
    continue_on_failure: bool = False
    retries: int = Field(3, ge=0, le=20)


class Params(_Group):
    data: DataParams = DataParams()
    model: ModelParams = ModelParams()
    memory: MemoryParams = MemoryParams()
    contrastive: ContrastiveParams = ContrastiveParams()
    train: TrainParams = TrainParams()
    detector: DetectorParams = DetectorParams()
    experiment: ExperimentParams = ExperimentParams()
    tracking: TrackingParams = TrackingParams()

    @model_validator(mode="after")
    def _combinations(self) -> Params:
        n_stages = ARCH_STAGES[self.model.arch]
        for key, scales in (("memory.scales", self.memory.scales), ("detector.knn_scales", self.detector.knn_scales)):
            bad = [s for s in scales if not 1 <= s <= n_stages]
            if bad:
                raise ValueError(f"{key} = {scales}: {self.model.arch} has stages 1..{n_stages}, not {bad}")
        n = self.data.num_classes
        bad = [c for c in self.experiment.classes if not 0 <= c < n]
        if bad:
            names = ", ".join(f"{i}={name}" for i, name in enumerate(self.data.names))
            raise ValueError(f"experiment.classes = {bad}: {self.data.dataset} has class indices 0..{n - 1} ({names})")
        if "unbalanced" in self.experiment.settings and self.data.n_known_outlier_classes > n - 1:  # one_class draws none
            raise ValueError(
                f"data.n_known_outlier_classes = {self.data.n_known_outlier_classes}: "
                f"{self.data.dataset} has only {n - 1} classes besides the normal one to draw the unbalanced setting's known anomalies from"
            )
        if self.contrastive.rotation_weight == 0 and self.detector.combine == ["rotation"]:
            raise ValueError("detector.combine = [rotation] sums nothing: contrastive.rotation_weight = 0 trains no rotation head")
        if self.train.batch_size % self.contrastive.shifted_instances:
            raise ValueError(
                f"train.batch_size = {self.train.batch_size} counts instances, and contrastive.shifted_instances = "
                f"{self.contrastive.shifted_instances} turns of each image must fill it: make the batch a multiple of it"
            )
        if "unbalanced" in self.experiment.settings and self.data.ratio_known_outlier == 0:
            raise ValueError("data.ratio_known_outlier = 0 leaves the unbalanced setting without known anomalies")
        return self

    def to_dict(self) -> dict[str, Any]:
        return self.model_dump(mode="json")


def _allowed_keys(model: type[BaseModel], loc: tuple) -> list[str]:
    for part in loc:
        field = model.model_fields.get(part) if isinstance(part, str) else None
        if field is None or not (isinstance(field.annotation, type) and issubclass(field.annotation, BaseModel)):
            break
        model = field.annotation
    return list(model.model_fields)


def _format_error(err: dict, raw: dict, source: str) -> str:
    loc = tuple(err["loc"])
    key = ".".join(str(p) for p in loc)
    if err["type"] == "extra_forbidden":
        allowed = _allowed_keys(Params, loc[:-1])
        close = difflib.get_close_matches(str(loc[-1]), allowed, n=1)
        hint = f"; did you mean '{'.'.join(str(p) for p in loc[:-1] + (close[0],))}'?" if close else ""
        return f"{source}: unknown key '{key}'{hint} Allowed here: {', '.join(allowed)}."
    value = raw
    for part in loc:
        value = (
            value.get(part)
            if isinstance(value, dict)
            else (value[part] if isinstance(value, list) and isinstance(part, int) and part < len(value) else None)
        )
    msg = err["msg"].removeprefix("Value error, ")
    if not key:  # a combination of groups
        return f"{source}: {msg}"
    return f"{source}: {key} = {value!r}: {msg}"


def parse_params(raw: Any, source: str = "params.yaml") -> Params:
    """Validate a params mapping; raise ParamsError naming every bad key, its value and what is allowed."""
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        raise ParamsError(f"{source}: expected a mapping of groups (data, model, ...), got {type(raw).__name__}")
    try:
        return Params.model_validate(raw)
    except ValidationError as exc:
        lines = [_format_error(e, raw, source) for e in exc.errors()]
        raise ParamsError("invalid params:\n  " + "\n  ".join(lines)) from None


class _YamlLoader(yaml.SafeLoader):
    """YAML 1.1 as PyYAML reads it, plus the exponent floats YAML 1.2 allows (1e-3, 5e-05).

    `dvc exp run -S train.lr=0.00005` writes `5e-05` into params.yaml, and DVC reads it as a float; plain
    PyYAML would read a string and the float check would then fail on a value the user never typed.
    """


_YamlLoader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(r"^[-+]?(?:[0-9][0-9_]*(?:\.[0-9_]*)?|\.[0-9_]+)[eE][-+]?[0-9]+$"),
    list("-+0123456789."),
)


def read_yaml(text: str) -> Any:
    """Parse YAML the way DVC does for params: exponent floats are floats."""
    return yaml.load(text, Loader=_YamlLoader)  # a SafeLoader: plain data only


def load_params(path: str | Path = "params.yaml") -> Params:
    path = Path(path)
    if not path.is_file():
        raise ParamsError(f"{path}: no such params file (run from the repo root, or pass --params)")
    try:
        raw = read_yaml(path.read_text())
    except yaml.YAMLError as exc:
        raise ParamsError(f"{path}: not valid YAML: {exc}") from None
    return parse_params(raw, source=str(path))


def flatten(d: dict, prefix: str = "") -> dict[str, Any]:
    """{"a": {"b": 1}} -> {"a.b": 1}."""
    out: dict[str, Any] = {}
    for k, v in d.items():
        if isinstance(v, dict):
            out.update(flatten(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v
    return out


def uses_shifted_negatives(params: Params, setting: str) -> bool:
    """Whether a pair's detector trains with turned copies of the normal images as known anomalies."""
    return params.detector.shifted_negatives and setting == "one_class"


def pair_id(cls: int, setting: str, seed: int) -> str:
    """The name of one (class, setting, seed) run; matches DVC's matrix stage suffix."""
    return f"{cls}-{setting}-{seed}"
