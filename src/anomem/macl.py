"""Stage 1: memory-augmented contrastive learning (MACL). A training loop on tensors, with callbacks.

It knows nothing of files: the caller passes `save_checkpoint` and `resume_from`, and gets per-epoch logs.
Checkpoints are taken at epoch ends and hold everything a bit-identical continuation needs: weights,
optimiser, schedule, all RNG states and the data-order generator.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable

import torch
from tqdm.auto import tqdm

from anomem.data import ContrastiveViews, channel_stats, to_float
from anomem.errors import NumericalError
from anomem.losses import macl_loss, nt_xent
from anomem.model import ROTATIONS, AnoMemNet, rotate
from anomem.params import Params
from anomem.runtime import Runtime, rng_state, set_rng_state
from anomem.sampling import KnownAnomalyDraws

EpochCallback = Callable[[dict], None]
CheckpointCallback = Callable[[dict], None]

_HEALTH_BATCH = 256


def build_optimizer(net: AnoMemNet, params: Params, steps_per_epoch: int):
    t = params.train
    decay, no_decay = [], []
    for name, p in net.named_parameters():
        # No weight decay on BN and biases; none on the memory items either unless asked (it pulls the prototypes to zero).
        exempt = p.ndim <= 1 or (name.startswith("memories.") and not t.decay_memory)
        (no_decay if exempt else decay).append(p)
    opt = torch.optim.SGD(
        [
            {"params": decay, "weight_decay": t.weight_decay},
            {"params": no_decay, "weight_decay": 0.0},
        ],
        lr=t.lr,
        momentum=t.momentum,
    )
    total = t.epochs * steps_per_epoch
    warmup = min(t.warmup_epochs * steps_per_epoch, max(total - 1, 0))

    def schedule(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        progress = (step - warmup) / max(total - warmup, 1)
        if t.schedule == "step":
            return 0.1 ** ((progress >= 0.5) + (progress >= 0.75))
        return 0.5 * (1 + math.cos(math.pi * progress))

    return opt, torch.optim.lr_scheduler.LambdaLR(opt, schedule)


def train_macl(
    net: AnoMemNet,
    normal_images: torch.Tensor,
    known_images: torch.Tensor | None,
    params: Params,
    runtime: Runtime,
    seed: int,
    on_epoch: EpochCallback | None = None,
    save_checkpoint: CheckpointCallback | None = None,
    resume_from: dict | None = None,
    progress: bool = True,
) -> list[dict]:
    """Train encoder, memories and projector in place. Images are uint8 NHWC tensors on the CPU.

    Known anomalies (unbalanced setting) take only the plain path and serve as extra negatives
    (unless `train.known_negatives` is false, when stage 1 ignores them).
    With `contrastive.rotation_weight` > 0, both views of an image are turned by the same random quarter
    turn (after augmentation) and the rotation head learns to name it. With `contrastive.shifted_instances`
    K > 1 (CSI's shifted instances), each step takes batch_size / K images, each under K distinct random
    quarter turns, and every turned copy is its own instance: the same image under another turn is a
    negative. An epoch then takes K times the steps. `contrastive.view_scale` < 1 makes the views smaller than the
    images (0.5: 16-pixel views of 32-pixel images, about a quarter of the step's convolution work); the memories are
    seeded from, and later stages score, the images at their own size. Without memories
    (`memory.enabled: false`) the loss is the plain NT-Xent alone: the SimCLR baseline.
    Returns the per-epoch logs.
    """
    t, c = params.train, params.contrastive
    device = runtime.device
    shifts = c.shifted_instances
    images_per_step = min(t.batch_size // shifts, normal_images.shape[0])
    steps_per_epoch = normal_images.shape[0] // images_per_step
    views = ContrastiveViews.from_params(params, normal_images.shape[1:3]).to(device)
    net.to(device, memory_format=runtime.memory_format())
    optimizer, scheduler = build_optimizer(net, params, steps_per_epoch)
    order = torch.Generator().manual_seed(seed)
    health_x = to_float(normal_images[:_HEALTH_BATCH]).to(device, memory_format=runtime.memory_format())
    rotating = c.rotation_weight > 0
    turning = rotating or shifts > 1
    if rotating and net.rotation_head is None:
        raise ValueError("contrastive.rotation_weight > 0 needs AnoMemNet(..., rotation_head=True)")
    if not t.known_negatives or known_images is None or not known_images.shape[0]:
        known_images = None
    known_draws = None if known_images is None else KnownAnomalyDraws(known_images.shape[0], t.known_batch_size, t.known_sampling, order)

    history: list[dict] = []
    start_epoch = 0
    if resume_from is not None:
        net.load_state_dict(resume_from["model"])
        optimizer.load_state_dict(resume_from["optimizer"])
        scheduler.load_state_dict(resume_from["scheduler"])
        order.set_state(resume_from["order_rng"])
        set_rng_state(resume_from["rng"])
        history = list(resume_from["history"])
        start_epoch = resume_from["epoch"] + 1
        if known_draws is not None and "known_draws" in resume_from:
            known_draws.load_state_dict(resume_from["known_draws"])
    else:
        if params.model.input_norm == "dataset":  # before the memories are seeded from features
            net.set_input_stats(*channel_stats(normal_images))
        if not all(bool(net.memory(s).initialized) for s in net.scales):
            net.eval()
            first = normal_images[torch.randperm(normal_images.shape[0], generator=order)[:images_per_step]]
            with runtime.autocast():
                net.init_memories(
                    to_float(first).to(device, memory_format=runtime.memory_format()),
                    generator=order,
                )

    bar = tqdm(
        total=t.epochs * steps_per_epoch,
        initial=start_epoch * steps_per_epoch,
        desc="MACL",
        unit="step",
        disable=not progress,
        dynamic_ncols=True,
    )
    for epoch in range(start_epoch, t.epochs):
        net.train()
        perm = torch.randperm(normal_images.shape[0], generator=order)
        sums: dict[str, float] = {}
        began = time.perf_counter()
        for step in range(steps_per_epoch):
            x = to_float(normal_images[perm[step * images_per_step : (step + 1) * images_per_step]]).to(device)
            if shifts > 1:
                turns = distinct_turns(x.shape[0], shifts, order)
                x = x.repeat_interleave(shifts, dim=0)
            elif turning:
                turns = torch.randint(0, ROTATIONS, (x.shape[0],), generator=order)
            n = x.shape[0]
            stacks = [views(x), views(x)]
            if turning:
                stacks = [rotate(v, turns) for v in stacks]
            if known_draws is not None:
                xa = to_float(known_images[known_draws.next()]).to(device)
                stacks += [views(xa), views(xa)]
            inputs = torch.cat(stacks).contiguous(memory_format=runtime.memory_format())
            known_negatives_of = lambda p: p[2 * n :] if p.shape[0] > 2 * n else None
            with runtime.autocast():
                feats = net.features(inputs)
                pooled = net.pooled(feats)
                p_all = net.project(pooled)
                if net.scales:
                    p_mem = net.memory_path({s: f[: 2 * n] for s, f in feats.items()})
                rotation_logits = net.rotation_head(pooled[: 2 * n]) if rotating else None
            if net.scales:
                variance = sum(net.memory(s).variance_penalty() for s in net.scales)
                loss, parts = macl_loss(
                    p_all[:n], p_all[n : 2 * n], p_mem[:n], p_mem[n:], variance,
                    c.temperature, c.plain_weight, params.memory.var_weight, known_negatives=known_negatives_of(p_all),
                )  # fmt: skip
            else:
                loss = nt_xent(
                    p_all[:n],
                    p_all[n : 2 * n],
                    c.temperature,
                    known_negatives_of(p_all),
                )
                parts = {
                    "loss": float(loss.detach()),
                    "loss_plain": float(loss.detach()),
                }
            if rotating:
                rotation = torch.nn.functional.cross_entropy(rotation_logits.float(), turns.repeat(2).to(device))
                loss = loss + c.rotation_weight * rotation
                parts.update(loss=float(loss.detach()), loss_rotation=float(rotation.detach()))
            if not math.isfinite(parts["loss"]):
                raise NumericalError(f"MACL loss became {parts['loss']} at epoch {epoch}, step {step}; lower train.lr")
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            scheduler.step()
            for k, v in parts.items():
                sums[k] = sums.get(k, 0.0) + v
            bar.update(1)
            bar.set_postfix(epoch=epoch + 1, loss=f"{parts['loss']:.3f}")
        seconds = time.perf_counter() - began
        log = {k: v / steps_per_epoch for k, v in sums.items()}
        log.update(
            epoch=epoch,
            lr=scheduler.get_last_lr()[0],
            epoch_seconds=seconds,
            images_per_second=steps_per_epoch * images_per_step * shifts / seconds,
        )
        log.update(memory_health(net, health_x, runtime))
        history.append(log)
        if on_epoch is not None:
            on_epoch(log)
        last = epoch == t.epochs - 1
        if save_checkpoint is not None and not last and (epoch + 1) % t.checkpoint_every_epochs == 0:
            save_checkpoint(
                {
                    "epoch": epoch,
                    "model": net.state_dict(),
                    "optimizer": optimizer.state_dict(),
                    "scheduler": scheduler.state_dict(),
                    "order_rng": order.get_state(),
                    "rng": rng_state(),
                    **({"known_draws": known_draws.state_dict()} if known_draws is not None else {}),
                    "history": history,
                }
            )
    bar.close()
    return history


def distinct_turns(n_images: int, k: int, generator: torch.Generator) -> torch.Tensor:
    """k distinct random quarter turns for each of n_images, image by image: shape (n_images * k,)."""
    return torch.argsort(torch.rand(n_images, ROTATIONS, generator=generator), dim=1)[:, :k].flatten()


@torch.no_grad()
def memory_health(net: AnoMemNet, x: torch.Tensor, runtime: Runtime) -> dict[str, float]:
    net.eval()
    with runtime.autocast():
        feats = net.features(x)
    out: dict[str, float] = {}
    for s in net.scales:
        for k, v in net.memory(s).health(feats[s]).items():
            out[f"memory_s{s}_{k}"] = v
    return out
