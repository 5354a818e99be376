"""Stage extract_deviation_maps: freeze E and the memories, write D_s for every split as float16."""

from __future__ import annotations

import time

import numpy as np
import torch

from anomem import io, layout
from anomem.stagekit import stage_arguments
from anomem.deviation import extract, map_bytes
from anomem.errors import run_cli
from anomem.model import AnoMemNet
from anomem.params import load_params, pair_id
from anomem.runtime import make_runtime, seed_everything
from anomem.tracking import stage_run

SPLITS = ("train_normal", "val_normal", "train_known", "val_known", "test")


def main() -> None:
    args = stage_arguments(__doc__)
    params = load_params(args.params)
    pair = pair_id(args.cls, args.setting, args.seed)
    runtime = make_runtime(params.train.device, params.train.num_threads, params.train.precision)
    seed_everything(args.seed)

    net = AnoMemNet(params.model, params.memory)
    net.load_state_dict(torch.load(layout.model_dir(pair) / "model.pt", map_location="cpu", weights_only=False)["model"])
    with np.load(layout.split_file(args.cls, args.setting)) as f:
        split = {k: f[k] for k in f.files}
    images = {"train": np.load(layout.images_file("train"), mmap_mode="r"), "test": np.load(layout.images_file("test"), mmap_mode="r")}
    out = layout.deviation_dir(pair)
    total = sum(split[s].size for s in SPLITS)
    needed = map_bytes(net, images["train"].shape[1:3], total)
    io.require_free_space(out.parent, int(needed * 1.05), f"the deviation maps of {pair}")

    with stage_run(params, "extract_deviation_maps", pair, args.seed) as run:
        began = time.perf_counter()
        energy = {}
        for name in SPLITS:
            source = images["test" if name == "test" else "train"]
            maps, pooled = extract(net, source[split[name]], runtime, params.train.eval_batch_size, desc=name)
            for s, m in maps.items():
                io.save_npy(out / f"{name}_s{s}.npy", m)
                if m.shape[0]:
                    energy[f"{name}_s{s}_mean_energy"] = float((m[:2000].astype(np.float32) ** 2).sum(1).mean())
            io.save_npy(out / f"{name}_pooled.npy", pooled)
        seconds = time.perf_counter() - began
        run.log_metrics({**energy, "seconds": seconds, "bytes": needed, "images": total})
    print(f"{pair}: {total} images -> {needed / 1e6:.0f} MB of deviation maps in {seconds:.1f}s")


if __name__ == "__main__":
    run_cli(main)
