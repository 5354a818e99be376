"""Stage prepare_data: read and check the raw images, write one uint8 copy and the index splits."""

from __future__ import annotations

import os
from pathlib import Path

from anomem import io, layout
from anomem.data import download_cifar10, load_from_folder, make_split, require_square_for_turns, training_view_hw
from anomem.errors import DataError, run_cli
from anomem.params import load_params
from anomem.stagekit import stage_arguments
from anomem.tracking import stage_run


def main() -> None:
    args = stage_arguments(__doc__, pair=False)
    params = load_params(args.params)
    folder = os.environ.get("ANOMEM_DATA_DIR") or (os.environ.get("ANOMEM_CIFAR10_DIR") if params.data.dataset == "cifar10" else None)
    if folder:
        train, test, source = load_from_folder(Path(folder), params.data)
    elif params.data.dataset == "cifar10":
        train, test, source = download_cifar10(layout.RAW)
    else:
        raise DataError(
            f"data.dataset = {params.data.dataset!r}: set ANOMEM_DATA_DIR to the folder with {params.data.dataset}_train.npz and {params.data.dataset}_test.npz"
        )
    require_square_for_turns(train.images.shape[1:3], params, params.experiment.settings)
    training_view_hw(train.images.shape[1:3], params)
    # Every split is drawn before anything is written: a class too small for its split fails here.
    splits = {
        (c, s): make_split(train.labels, test.labels, c, s, params.data)
        for c in params.experiment.classes
        for s in params.experiment.settings
    }
    with stage_run(params, "prepare_data") as run:
        io.remove_stale_temporaries(layout.PREPARED)
        for name, data in (("train", train), ("test", test)):
            io.save_npy(layout.images_file(name), data.images)
            io.save_npy(layout.labels_file(name), data.labels)
        counts = {}
        for (c, s), split in splits.items():
            io.save_npz(layout.split_file(c, s), **split)
            counts[f"{c}-{s}"] = {k: int(v.size) for k, v in split.items() if k != "test_labels"}
        manifest = {
            "class_names": list(params.data.names),
            "image_shape": list(train.images.shape[1:]),
            "source_channels": train.source_channels,
            "train_count": int(train.labels.size),
            "test_count": int(test.labels.size),
            "source": source,
            "splits": counts,
        }
        io.write_json(layout.PREPARED / "manifest.json", manifest)
        run.log_metrics({"train_images": train.labels.size, "test_images": test.labels.size})
        run.log_artifact(layout.PREPARED / "manifest.json")
        print(f"prepared {train.labels.size} train / {test.labels.size} test images and {len(splits)} splits in {layout.PREPARED}")


if __name__ == "__main__":
    run_cli(main)
