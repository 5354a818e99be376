"""The GPU bundle: prepare_data draws the same splits from it, every row a split reads is intact, and it is small."""

from __future__ import annotations

import numpy as np
from benchmarks import gpu_bundle

from anomem.data import load_from_folder, make_split
from anomem.params import parse_params

SETTINGS = ["one_class", "unbalanced"]


def write_toy_dataset(folder, n_per_class=(60, 60, 60, 60), n_test=40, seed=0):
    rng = np.random.default_rng(seed)
    labels = np.repeat(np.arange(len(n_per_class)), n_per_class)
    for split, y in (("train", labels), ("test", np.arange(n_test) % len(n_per_class))):
        images = rng.integers(0, 256, (y.size, 8, 8, 3), dtype=np.uint8)
        np.savez_compressed(folder / f"toy_{split}.npz", images=images, labels=y)


def test_bundle_keeps_the_splits_and_the_rows_they_read(tmp_path):
    source, out = tmp_path / "source", tmp_path / "bundle"
    source.mkdir()
    write_toy_dataset(source)
    data = parse_params(
        {
            "data": {"dataset": "toy", "class_names": ["a", "b", "c", "d"], "n_known_outlier_classes": 2, "ratio_known_outlier": 0.1},
            "experiment": {"classes": [1]},
        }
    ).data

    manifest = gpu_bundle.build_bundle(source, data, [1], SETTINGS, out)

    (train, test, _), (packed_train, packed_test, _) = load_from_folder(source, data), load_from_folder(out, data)
    np.testing.assert_array_equal(packed_train.labels, train.labels)
    np.testing.assert_array_equal(packed_test.images, test.images)
    used = set()
    for setting in SETTINGS:
        split = make_split(train.labels, test.labels, 1, setting, data)
        packed = make_split(packed_train.labels, packed_test.labels, 1, setting, data)
        for part, rows in split.items():
            np.testing.assert_array_equal(packed[part], rows)
        for part in ("train_normal", "val_normal", "train_known", "val_known"):
            np.testing.assert_array_equal(packed_train.images[split[part]], train.images[split[part]])
            used.update(split[part].tolist())
    unused = np.setdiff1d(np.arange(train.labels.size), sorted(used))
    assert unused.size > 0 and not packed_train.images[unused].any()
    assert manifest["train_rows_kept"] == len(used)
    assert manifest["bytes"]["toy_train.npz"] < (source / "toy_train.npz").stat().st_size
