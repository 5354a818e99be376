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

    def replaced(group, **values):
        return group.model_copy(update={k: v for k, v in values.items() if v is not None})

    return params.model_copy(
        update={
            "memory": replaced(params.memory, enabled=memory_enabled),
            "contrastive": replaced(params.contrastive, rotation_weight=rotation_weight, shifted_instances=shifted_instances),
            "train": replaced(params.train, epochs=epochs),
        }
    )


def plain_simclr(params: Params, epochs: int | None = None) -> Params:
    """The plain SimCLR baseline of params: no memories, no rotation head, no turned instances."""
    return variant(params, memory_enabled=False, rotation_weight=0.0, shifted_instances=1, epochs=epochs)


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
