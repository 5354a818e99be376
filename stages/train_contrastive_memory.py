"""Stage train_contrastive_memory: MACL on one (class, setting, seed); resumes from its last checkpoint.

Checkpoints live under the project root (not the DVC temp workspace that `dvc exp run --temp/--queue` deletes
when a run ends), one file per fingerprint, so queued experiments that train the same pair with other params
never overwrite or resume each other's.
"""

from __future__ import annotations

import hashlib
import json

import numpy as np
import torch

from anomem import io, layout
from anomem.data import require_square_for_turns, training_view_hw
from anomem.errors import DataError, run_cli
from anomem.macl import train_macl
from anomem.model import AnoMemNet
from anomem.runtime import environment, git_commit, project_root
from anomem.stagekit import pair_stage
from anomem.tracking import stage_run

# train.* keys that cannot change the trained weights: changing them keeps a checkpoint usable.
NOT_IN_FINGERPRINT = ("eval_batch_size", "checkpoint_every_epochs")


def fingerprint(params, seed: int, split: dict) -> str:
    """What a checkpoint must match to be resumed: the stage's params, the seed and the split."""
    everything = params.to_dict()
    relevant = {k: everything[k] for k in ("model", "memory", "contrastive", "train")}
    relevant["train"] = {k: v for k, v in relevant["train"].items() if k not in NOT_IN_FINGERPRINT}
    h = hashlib.sha256(json.dumps({"params": relevant, "seed": seed}, sort_keys=True).encode())
    h.update(np.ascontiguousarray(split["train_normal"]).tobytes())
    h.update(np.ascontiguousarray(split["train_known"]).tobytes())
    return h.hexdigest()


def main() -> None:
    stage = pair_stage(__doc__)
    args, params, pair, runtime = stage.args, stage.params, stage.pair, stage.runtime

    split = io.load_npz(layout.split_file(args.cls, args.setting), layout.PREPARED_BY)
    train_images = io.load_npy(layout.images_file("train"), layout.PREPARED_BY, mmap=True)
    require_square_for_turns(train_images.shape[1:3], params, [args.setting])
    training_view_hw(train_images.shape[1:3], params)
    normal = torch.from_numpy(np.ascontiguousarray(train_images[split["train_normal"]]))
    known = torch.from_numpy(np.ascontiguousarray(train_images[split["train_known"]])) if split["train_known"].size else None

    fp = fingerprint(params, args.seed, split)
    checkpoint = project_root() / layout.resume_checkpoint(pair, fp)
    resume_dir = checkpoint.parent
    io.remove_stale_temporaries(resume_dir, checkpoint.name)  # a save cut short by a kill; not another run's
    others = sorted(p.name for p in resume_dir.glob("*.pt") if p != checkpoint)
    if others:
        print(f"ignoring {', '.join(others)} in {resume_dir}: made with other params, seed or data")
    resume = None
    if checkpoint.exists():
        try:
            # A resume point is a cache: an unreadable one costs a fresh start, not the run.
            state = io.load_torch(checkpoint, remedy="ignoring it: training starts from epoch 1")
        except DataError as err:
            print(err)
        else:
            if state.get("fingerprint") == fp:
                resume = state
                print(f"resuming {pair} from {checkpoint} (epoch {state['epoch'] + 1} of {params.train.epochs} done)")
            else:
                print(f"ignoring {checkpoint}: it was made with other params, seed or data")

    net = AnoMemNet.from_params(params)
    out = layout.model_dir(pair)
    with stage_run(params, "train_contrastive_memory", pair, args.seed) as run:
        run.set_tags(
            {
                "resumed_from_epoch": resume["epoch"] + 1 if resume else 0,
                "device": str(runtime.device),
            }
        )
        history = train_macl(
            net, normal, known, params, runtime, args.seed,
            on_epoch=lambda log: run.log_metrics(log, step=log["epoch"]),
            save_checkpoint=lambda state: io.save_torch(checkpoint, {**state, "fingerprint": fp}),
            resume_from=resume,
        )  # fmt: skip
        io.save_torch(
            layout.model_file(pair),
            {
                "model": net.cpu().state_dict(),
                "model_params": params.model.model_dump(),
                "memory_params": params.memory.model_dump(),
            },
        )
        meta = {
            "pair": pair,
            "seed": args.seed,
            "git_commit": git_commit(),
            "environment": environment(),
            "device": str(runtime.device),
        }
        io.write_json(out / "history.json", {"history": history, "meta": meta})
        run.log_metrics(
            {
                "final_loss": history[-1]["loss"],
                "mean_images_per_second": float(np.mean([h["images_per_second"] for h in history])),
            }
        )
    checkpoint.unlink(missing_ok=True)
    print(f"{pair}: final loss {history[-1]['loss']:.4f}, {np.mean([h['images_per_second'] for h in history]):.0f} img/s")


if __name__ == "__main__":
    run_cli(main)
