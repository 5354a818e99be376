"""What the benchmarks share: the prepared images of one class, and params variants."""

from __future__ import annotations

import numpy as np
import torch

from anomem import io, layout
from anomem.macl import train_macl
from anomem.model import AnoMemNet
from anomem.params import Params
from anomem.runtime import make_runtime, seed_everything


def load_split(cls: int, setting: str = "one_class") -> dict[str, np.ndarray]:
    return io.load_npz(layout.split_file(cls, setting), layout.PREPARED_BY)


def load_class_images(params: Params, cls: int) -> np.ndarray:
    """The normal training images of class `cls` (uint8 NHWC), from data/prepared."""
    split = load_split(cls)
    return np.ascontiguousarray(io.load_npy(layout.images_file("train"), layout.PREPARED_BY, mmap=True)[split["train_normal"]])


def variant(
    params: Params,
    memory_enabled: bool | None = None,
    rotation_weight: float | None = None,
    epochs: int | None = None,
    shifted_instances: int | None = None,
) -> Params:
    """params with the memory switched, the rotation weight, the shifted instances or the epochs replaced."""
    memory, contrastive, train = params.memory, params.contrastive, params.train
    if memory_enabled is not None:
        memory = memory.model_copy(update={"enabled": memory_enabled})
    if rotation_weight is not None:
        contrastive = contrastive.model_copy(update={"rotation_weight": rotation_weight})
    if shifted_instances is not None:
        contrastive = contrastive.model_copy(update={"shifted_instances": shifted_instances})
    if epochs is not None:
        train = train.model_copy(update={"epochs": epochs})
    return params.model_copy(update={"memory": memory, "contrastive": contrastive, "train": train})


def step_throughput(params: Params, images: torch.Tensor, epochs: int = 4) -> dict:
    """Images/s of the stage-1 loop (augmentation included): the median epoch after a warm-up epoch."""
    seed_everything(0)
    runtime = make_runtime(params.train.device, params.train.num_threads, params.train.precision)
    net = AnoMemNet.from_params(params)
    tuned = params.model_copy(update={"train": params.train.model_copy(update={"epochs": epochs, "warmup_epochs": 0})})
    timed = train_macl(net, images, None, tuned, runtime, seed=0, progress=False)[1:]
    return {
        "images_per_second": float(np.median([h["images_per_second"] for h in timed])),
        "epoch_seconds": float(np.median([h["epoch_seconds"] for h in timed])),
        "timed_epochs": len(timed),
    }
