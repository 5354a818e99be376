"""Stage extract_deviation_maps: freeze E and the memories, write D_s for every split (float16 by default), the kNN score's
pooled features of each test-time view, and the rotation score."""

from __future__ import annotations

import time

import numpy as np

from anomem import io, layout
from anomem.data import quarter_turned, require_square_for_turns
from anomem.deviation import map_bytes
from anomem.errors import run_cli
from anomem.params import uses_shifted_negatives
from anomem.stagekit import pair_stage
from anomem.tracking import stage_run
from anomem.views import extract_split, freeze, trained_network

SPLITS = ("train_normal", "val_normal", "train_known", "val_known", "test")
SHIFTED = {
    "train_shifted": "train_normal",
    "val_shifted": "val_normal",
}  # turned copies of these normal splits
SCORED = ("val_normal", "val_known", "test")  # the splits the reference scores are needed on


def main() -> None:
    stage = pair_stage(__doc__)
    args, params, pair, runtime = stage.args, stage.params, stage.pair, stage.runtime

    split = io.load_npz(layout.split_file(args.cls, args.setting), layout.PREPARED_BY)
    images = {name: io.load_npy(layout.images_file(name), layout.PREPARED_BY, mmap=True) for name in ("train", "test")}
    require_square_for_turns(images["train"].shape[1:3], params, [args.setting])
    sources = {name: images["test" if name == "test" else "train"][split[name]] for name in SPLITS}
    if uses_shifted_negatives(params, args.setting):
        sources.update({name: quarter_turned(np.asarray(sources[normal]), args.seed) for name, normal in SHIFTED.items()})
    saved = io.load_torch(layout.model_file(pair), layout.made_by("train_contrastive_memory", pair))
    net = trained_network(params, saved)
    total = sum(batch.shape[0] for batch in sources.values())
    needed = map_bytes(net, images["train"].shape[1:3], total, params.detector.map_dtype)
    io.require_free_space(layout.deviation_dir(pair).parent, int(needed * 1.05), f"the deviation maps of {pair}")

    with stage_run(params, "extract_deviation_maps", pair, args.seed) as run:
        began = time.perf_counter()
        net = freeze(net, params, sources["train_normal"], runtime)
        energy = {}
        for name, batch in sources.items():
            got = extract_split(net, batch, params, runtime, desc=name, scored=name in SCORED, bank=name == layout.KNN_BANK)
            for s, m in got.maps.items():
                io.save_npy(layout.deviation_maps_file(pair, name, s), m)
                if m.shape[0]:
                    energy[f"{name}_s{s}_mean_energy"] = float((m[:2000].astype(np.float32) ** 2).sum(1).mean())
            if got.pooled is not None:
                io.save_npy(layout.pooled_file(pair, name), got.pooled)
            if got.rotation is not None:
                io.save_npy(layout.rotation_file(pair, name), got.rotation)
        seconds = time.perf_counter() - began
        run.log_metrics({**energy, "seconds": seconds, "bytes": needed, "images": total})
    print(f"{pair}: {total} images -> {needed / 1e6:.0f} MB of deviation maps in {seconds:.1f}s")


if __name__ == "__main__":
    run_cli(main)
