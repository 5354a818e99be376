"""Data: reading and checking npz archives, the index splits, and batch augmentation."""

from __future__ import annotations

import hashlib
import struct
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch

from anomem.data import ContrastiveViews, ImageSet, load_from_folder, make_split, quarter_turned, read_npz, to_float, training_view_hw
from anomem.errors import DataError
from anomem.params import DataParams, parse_params

CIFAR = DataParams()


def _good_arrays(n: int = 20, seed: int = 0):
    rng = np.random.default_rng(seed)
    return rng.integers(0, 256, (n, 32, 32, 3), dtype=np.uint8), np.arange(n, dtype=np.int64) % 10


def _write_npz(path: Path, compressed: bool = False, **arrays) -> Path:
    (np.savez_compressed if compressed else np.savez)(path, **arrays)
    return path


def _read_error(file: Path, num_classes: int = 10) -> str:
    with pytest.raises(DataError) as info:
        read_npz(file, num_classes)
    msg = str(info.value)
    assert str(file) in msg, msg
    return msg


# ---- read_npz / load_from_folder: every bad input is a DataError naming the file ------------------


def test_read_good_npz(tmp_path):
    images, labels = _good_arrays()
    s = read_npz(_write_npz(tmp_path / "a.npz", images=images, labels=labels.astype(np.int32)), 10)
    assert isinstance(s, ImageSet)
    np.testing.assert_array_equal(s.images, images)
    np.testing.assert_array_equal(s.labels, labels)
    assert s.labels.dtype == np.int64
    assert s.images.flags["C_CONTIGUOUS"]


def test_missing_folder(tmp_path):
    folder = tmp_path / "nowhere"
    with pytest.raises(DataError) as info:
        load_from_folder(folder, CIFAR)
    assert str(folder) in str(info.value)
    assert "does not exist" in str(info.value)


def test_empty_folder(tmp_path):
    with pytest.raises(DataError) as info:
        load_from_folder(tmp_path, CIFAR)
    msg = str(info.value)
    assert str(tmp_path) in msg
    assert "cifar10_train.npz" in msg and "cifar10_test.npz" in msg


def test_folder_with_train_only_names_missing_test(tmp_path):
    images, labels = _good_arrays()
    _write_npz(tmp_path / "cifar10_train.npz", images=images, labels=labels)
    with pytest.raises(DataError) as info:
        load_from_folder(tmp_path, CIFAR)
    assert str(tmp_path / "cifar10_test.npz") in str(info.value)
    assert "missing" in str(info.value)


def test_missing_file(tmp_path):
    assert "missing" in _read_error(tmp_path / "absent.npz")


def test_empty_file(tmp_path):
    f = tmp_path / "empty.npz"
    f.write_bytes(b"")
    assert "empty file" in _read_error(f)


@pytest.mark.parametrize("compressed", [False, True])
def test_truncated_archive(tmp_path, compressed):
    images, labels = _good_arrays()
    f = _write_npz(tmp_path / "t.npz", compressed=compressed, images=images, labels=labels)
    data = f.read_bytes()
    f.write_bytes(data[: len(data) // 2])
    assert "corrupt or truncated" in _read_error(f)


def test_garbage_bytes(tmp_path):
    f = tmp_path / "garbage.npz"
    f.write_bytes(np.random.default_rng(1).integers(0, 256, 4096, dtype=np.uint8).tobytes())
    assert "corrupt or truncated" in _read_error(f)


def test_text_file(tmp_path):
    f = tmp_path / "notes.npz"
    f.write_text("this is not an archive\n")
    _read_error(f)


def test_corrupt_member_data_crc(tmp_path):
    """Bytes flipped inside an uncompressed member: the CRC check catches it."""
    images, labels = _good_arrays(50)
    f = _write_npz(tmp_path / "c.npz", images=images, labels=labels)
    data = bytearray(f.read_bytes())
    for k in range(2000, 2064):
        data[k] ^= 0xFF
    f.write_bytes(bytes(data))
    assert "corrupt" in _read_error(f)


def _deflate_start(f: Path, member: str) -> int:
    """Offset of the first byte of a member's compressed data."""
    with zipfile.ZipFile(f) as z:
        info = z.getinfo(member)
    raw = f.read_bytes()
    name_len, extra_len = struct.unpack("<HH", raw[info.header_offset + 26 : info.header_offset + 30])
    return info.header_offset + 30 + name_len + extra_len


def test_corrupt_compressed_stream(tmp_path):
    """A savez_compressed archive (the layout of the real data) whose deflate stream is damaged."""
    images = np.tile(np.arange(32, dtype=np.uint8), (50, 32, 3, 1)).transpose(0, 1, 3, 2).copy()
    labels = np.arange(50) % 10
    f = _write_npz(tmp_path / "z.npz", compressed=True, images=images, labels=labels)
    start = _deflate_start(f, "images.npy")
    data = bytearray(f.read_bytes())
    for k in range(start, start + 16):
        data[k] ^= 0xA5
    f.write_bytes(bytes(data))
    with pytest.raises(DataError) as info:
        read_npz(f, 10)
    assert str(f) in str(info.value)


@pytest.mark.parametrize("missing", ["images", "labels"])
def test_missing_array_key(tmp_path, missing):
    images, labels = _good_arrays()
    arrays = {"images": images, "labels": labels}
    del arrays[missing]
    f = _write_npz(tmp_path / "k.npz", **arrays, other=np.zeros(3))
    msg = _read_error(f)
    assert f"['{missing}']" in msg
    assert "other" in msg  # says what the archive has


@pytest.mark.parametrize("shape", [(20, 32, 32, 4), (20, 3, 32, 32), (32, 32, 3), (20, 32), (2, 20, 32, 32, 3)])
def test_wrong_image_shape(tmp_path, shape):
    f = _write_npz(tmp_path / "s.npz", images=np.zeros(shape, np.uint8), labels=np.zeros(20, np.int64))
    msg = _read_error(f)
    assert "(N, H, W, 3)" in msg
    assert str(shape) in msg


def test_channels_first_images_get_a_hint(tmp_path):
    f = _write_npz(tmp_path / "s.npz", images=np.zeros((20, 3, 32, 32), np.uint8), labels=np.zeros(20, np.int64))
    assert "channels-first" in _read_error(f)


@pytest.mark.parametrize("shape", [(20, 28, 28), (20, 28, 28, 1)])
def test_grayscale_images_are_read_as_rgb(tmp_path, shape):
    gray = np.random.default_rng(0).integers(0, 256, shape, dtype=np.uint8)
    f = _write_npz(tmp_path / "g.npz", images=gray, labels=np.arange(20) % 10)
    got = read_npz(f, 10)
    assert got.images.shape == (20, 28, 28, 3) and got.source_channels == 1
    for channel in range(3):
        np.testing.assert_array_equal(got.images[..., channel], gray.reshape(20, 28, 28))
    rgb = _write_npz(tmp_path / "c.npz", images=np.repeat(gray.reshape(20, 28, 28, 1), 3, 3), labels=np.arange(20) % 10)
    assert read_npz(rgb, 10).source_channels == 3


@pytest.mark.parametrize("dtype", [np.float32, np.int64, np.uint16])
def test_wrong_image_dtype(tmp_path, dtype):
    images, labels = _good_arrays()
    f = _write_npz(tmp_path / "d.npz", images=images.astype(dtype), labels=labels)
    msg = _read_error(f)
    assert "uint8" in msg and np.dtype(dtype).name in msg


def test_float_labels(tmp_path):
    images, labels = _good_arrays()
    f = _write_npz(tmp_path / "fl.npz", images=images, labels=labels.astype(np.float32))
    assert "integers" in _read_error(f)


@pytest.mark.parametrize("bad", [10, -1, 255])
def test_labels_out_of_range(tmp_path, bad):
    images, labels = _good_arrays()
    labels[3] = bad
    f = _write_npz(tmp_path / "l.npz", images=images, labels=labels)
    msg = _read_error(f)
    assert "0..9" in msg
    assert f"[{bad}]" in msg


def test_label_range_follows_num_classes(tmp_path):
    images, labels = _good_arrays()
    f = _write_npz(tmp_path / "l.npz", images=images, labels=labels % 3)
    assert read_npz(f, 3).labels.max() == 2
    msg = _read_error(f, num_classes=2)
    assert "0..1" in msg and "[2]" in msg


@pytest.mark.parametrize("n_labels", [19, 21])
def test_labels_length_mismatch(tmp_path, n_labels):
    images, _ = _good_arrays(20)
    f = _write_npz(tmp_path / "m.npz", images=images, labels=np.zeros(n_labels, np.int64))
    msg = _read_error(f)
    assert "(20,)" in msg and f"({n_labels},)" in msg


def test_labels_2d(tmp_path):
    images, _ = _good_arrays(20)
    f = _write_npz(tmp_path / "m.npz", images=images, labels=np.zeros((20, 1), np.int64))
    assert "'labels'" in _read_error(f)


def test_bad_train_file_in_folder_names_it(tmp_path):
    images, labels = _good_arrays()
    labels[0] = 10
    _write_npz(tmp_path / "cifar10_train.npz", images=images, labels=labels)
    _write_npz(tmp_path / "cifar10_test.npz", images=images, labels=labels % 10)
    with pytest.raises(DataError) as info:
        load_from_folder(tmp_path, CIFAR)
    assert str(tmp_path / "cifar10_train.npz") in str(info.value)


def test_train_and_test_image_shapes_must_agree(tmp_path):
    images, labels = _good_arrays()
    _write_npz(tmp_path / "cifar10_train.npz", images=images, labels=labels)
    _write_npz(tmp_path / "cifar10_test.npz", images=np.zeros((20, 28, 28, 3), np.uint8), labels=labels)
    with pytest.raises(DataError) as info:
        load_from_folder(tmp_path, CIFAR)
    assert str(tmp_path / "cifar10_test.npz") in str(info.value)
    assert "(28, 28, 3)" in str(info.value)


def test_good_folder_loads(tmp_path, cifar_train_slice):
    images, labels = cifar_train_slice
    test_idx = np.arange(0, images.shape[0], 5)
    _write_npz(tmp_path / "cifar10_train.npz", compressed=True, images=images, labels=labels)
    _write_npz(tmp_path / "cifar10_test.npz", images=images[test_idx], labels=labels[test_idx])
    train, test, source = load_from_folder(tmp_path, CIFAR)
    np.testing.assert_array_equal(train.images, images)
    np.testing.assert_array_equal(train.labels, labels)
    np.testing.assert_array_equal(test.images, images[test_idx])
    assert train.images.dtype == np.uint8 and train.labels.dtype == np.int64
    assert set(source) == {"train", "test"}
    for split in ("train", "test"):
        rec = source[split]
        f = tmp_path / f"cifar10_{split}.npz"
        assert rec["file"] == str(f)
        assert isinstance(rec["sha256"], str) and len(rec["sha256"]) == 64
        assert rec["sha256"] == hashlib.sha256(f.read_bytes()).hexdigest()
    assert source["train"]["sha256"] != source["test"]["sha256"]


def test_folder_for_other_dataset_name(tmp_path):
    params = DataParams(dataset="tiny", class_names=["a", "b", "c"], n_known_outlier_classes=2)
    images, labels = _good_arrays(12)
    _write_npz(tmp_path / "tiny_train.npz", images=images, labels=labels % 3)
    _write_npz(tmp_path / "tiny_test.npz", images=images, labels=labels % 3)
    train, _, _ = load_from_folder(tmp_path, params)
    assert train.labels.max() == 2
    # cifar10 file names are not looked for
    with pytest.raises(DataError) as info:
        load_from_folder(tmp_path, CIFAR)
    assert "cifar10_train.npz" in str(info.value)


# ---- make_split -----------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def labels(cifar_train_slice):
    return cifar_train_slice[1].astype(np.int64)


@pytest.mark.parametrize("cls", [0, 3, 9])
def test_normal_split_disjoint_and_complete(labels, cls):
    s = make_split(labels, labels, cls, "one_class", CIFAR)
    tn, vn = s["train_normal"], s["val_normal"]
    assert np.intersect1d(tn, vn).size == 0
    np.testing.assert_array_equal(np.sort(np.r_[tn, vn]), np.flatnonzero(labels == cls))
    assert vn.size == round(0.1 * 100)
    assert np.all(labels[tn] == cls) and np.all(labels[vn] == cls)
    assert np.all(np.diff(tn) > 0) and np.all(np.diff(vn) > 0)  # sorted, unique


def test_val_fraction_respected(labels):
    s = make_split(labels, labels, 2, "one_class", DataParams(val_fraction=0.25))
    assert s["val_normal"].size == 25 and s["train_normal"].size == 75


@pytest.mark.parametrize("cls", [0, 5])
def test_known_anomalies_unbalanced(labels, cls):
    p = DataParams(ratio_known_outlier=0.2)
    s = make_split(labels, labels, cls, "unbalanced", p)
    known = np.r_[s["train_known"], s["val_known"]]
    assert known.size == round(0.2 * 100)
    assert np.unique(known).size == known.size
    assert np.intersect1d(s["train_known"], s["val_known"]).size == 0
    assert s["val_known"].size == round(0.1 * known.size)
    assert not np.any(labels[known] == cls)
    assert len(np.unique(labels[known])) <= 9


@pytest.mark.parametrize("n_classes", [1, 2, 3])
def test_known_anomalies_from_n_classes(labels, n_classes):
    p = DataParams(ratio_known_outlier=0.3, n_known_outlier_classes=n_classes)
    seen = set()
    for cls in range(10):
        s = make_split(labels, labels, cls, "unbalanced", p)
        known_labels = set(labels[np.r_[s["train_known"], s["val_known"]]].tolist())
        assert cls not in known_labels
        assert len(known_labels) <= n_classes
        if n_classes == 1:
            assert len(known_labels) == 1
        seen |= known_labels
    assert len(seen) > n_classes  # the chosen classes differ between normal classes


def test_one_class_has_no_known(labels):
    s = make_split(labels, labels, 4, "one_class", CIFAR)
    assert s["train_known"].size == 0 and s["val_known"].size == 0


def test_settings_share_normal_split(labels):
    a = make_split(labels, labels, 6, "one_class", CIFAR)
    b = make_split(labels, labels, 6, "unbalanced", CIFAR)
    for key in ("train_normal", "val_normal", "test", "test_labels"):
        np.testing.assert_array_equal(a[key], b[key])
    assert b["train_known"].size > 0


def test_split_seed(labels):
    a = make_split(labels, labels, 1, "unbalanced", DataParams(split_seed=0, ratio_known_outlier=0.2))
    b = make_split(labels, labels, 1, "unbalanced", DataParams(split_seed=0, ratio_known_outlier=0.2))
    c = make_split(labels, labels, 1, "unbalanced", DataParams(split_seed=1, ratio_known_outlier=0.2))
    assert a.keys() == b.keys()
    for key in a:
        np.testing.assert_array_equal(a[key], b[key])
    assert not np.array_equal(a["val_normal"], c["val_normal"])
    assert not np.array_equal(a["train_known"], c["train_known"])


def test_different_classes_get_different_permutations(labels):
    # the split depends on the class too, not only on the seed: the positions held out differ
    a = make_split(labels, labels, 0, "one_class", CIFAR)["val_normal"]
    b = make_split(labels, labels, 1, "one_class", CIFAR)["val_normal"]
    pos_a = np.searchsorted(np.flatnonzero(labels == 0), a)
    pos_b = np.searchsorted(np.flatnonzero(labels == 1), b)
    assert not np.array_equal(pos_a, pos_b)


def test_test_labels(labels):
    test_labels = np.r_[labels[::7], 3, 3]
    s = make_split(labels, test_labels, 3, "one_class", CIFAR)
    np.testing.assert_array_equal(s["test"], np.arange(test_labels.size))
    np.testing.assert_array_equal(s["test_labels"], (test_labels != 3).astype(np.int64))
    assert s["test_labels"].dtype == np.int64
    assert s["test_labels"][test_labels == 3].sum() == 0
    assert np.all(s["test_labels"][test_labels != 3] == 1)


def test_test_split_needs_both_kinds(labels):
    with pytest.raises(DataError):
        make_split(labels, np.full(10, 2), 2, "one_class", CIFAR)
    with pytest.raises(DataError):
        make_split(labels, np.full(10, 5), 2, "one_class", CIFAR)


def test_class_too_small(labels):
    small = np.r_[np.full(2, 0), np.repeat(np.arange(1, 10), 50)]
    with pytest.raises(DataError) as info:
        make_split(small, small, 0, "one_class", CIFAR)
    assert "class 0 has 2 training images" in str(info.value)


def test_absent_class(labels):
    none = np.repeat(np.arange(1, 10), 50)
    with pytest.raises(DataError):
        make_split(none, none, 0, "one_class", CIFAR)


def test_ratio_too_high_for_pool():
    # 100 normal images of class 0, only 10 of each other class: ratio 1.0 asks for 100 of 90
    lab = np.r_[np.zeros(100, np.int64), np.repeat(np.arange(1, 10), 10)]
    with pytest.raises(DataError) as info:
        make_split(lab, lab, 0, "unbalanced", DataParams(ratio_known_outlier=1.0))
    assert "100" in str(info.value) and "hold 90" in str(info.value)
    # the one-class setting of the same data is fine
    assert make_split(lab, lab, 0, "one_class", DataParams(ratio_known_outlier=1.0))["train_normal"].size == 90


def test_ratio_too_low_for_two_known(labels):
    with pytest.raises(DataError) as info:
        make_split(labels, labels, 0, "unbalanced", DataParams(ratio_known_outlier=0.01))
    assert "at least 2" in str(info.value)


def test_unknown_setting(labels):
    with pytest.raises(ValueError):
        make_split(labels, labels, 0, "three_class", CIFAR)


# ---- augmentation and conversion ------------------------------------------------------------------


def test_contrastive_views_per_sample(cifar_train_slice):
    torch.manual_seed(0)
    image = to_float(cifar_train_slice[0][:1])
    batch = image.repeat(8, 1, 1, 1)
    views = ContrastiveViews((32, 32), 0.2, [0.4, 0.4, 0.4, 0.1], 0.8, 0.2)(batch)
    assert views.shape == batch.shape
    assert views.dtype == torch.float32
    assert views.min() >= 0.0 and views.max() <= 1.0
    flat = views.flatten(1)
    for i in range(8):
        for j in range(i + 1, 8):
            assert not torch.allclose(flat[i], flat[j]), f"views {i} and {j} are identical"
    # the input is not changed in place
    assert torch.equal(batch, image.repeat(8, 1, 1, 1))


def test_contrastive_views_grayscale_always(cifar_train_slice):
    # grayscale_p = 1 and no jitter: every view has three equal channels
    torch.manual_seed(0)
    x = to_float(cifar_train_slice[0][:4])
    v = ContrastiveViews((32, 32), 0.5, [0.0, 0.0, 0.0, 0.0], 0.0, 1.0)(x)
    assert v.shape == x.shape
    assert torch.allclose(v[:, 0], v[:, 1], atol=1e-6) and torch.allclose(v[:, 1], v[:, 2], atol=1e-6)
    assert not torch.allclose(x[:, 0], x[:, 1], atol=1e-3)  # the input was in colour


def test_contrastive_views_other_size():
    torch.manual_seed(0)
    x = torch.rand(3, 3, 24, 20)
    v = ContrastiveViews((24, 20), 0.5, [0.4, 0.4, 0.4, 0.1], 1.0, 0.5)(x)
    assert v.shape == (3, 3, 24, 20)


@pytest.mark.parametrize("view_scale, expected_hw", [(1.0, (24, 20)), (0.5, (12, 10)), (0.3, (7, 6))])
def test_contrastive_views_from_params_take_view_scale(view_scale, expected_hw):
    torch.manual_seed(0)
    params = parse_params({"contrastive": {"view_scale": view_scale}})
    v = ContrastiveViews.from_params(params, (24, 20))(torch.rand(3, 3, 24, 20))
    assert v.shape == (3, 3, *expected_hw)


@pytest.mark.parametrize(
    "arch, image_side, view_scale, smallest",
    [("resnet20", 32, 0.1, "0.125"), ("resnet18", 32, 0.2, "0.25"), ("resnet20", 12, 0.25, "0.333")],
)
def test_views_too_small_for_the_arch_are_refused_with_the_scale_that_works(arch, image_side, view_scale, smallest):
    raw = {"model": {"arch": arch}, "memory": {"scales": [2, 3]}, "contrastive": {"view_scale": view_scale}}
    params = parse_params(raw)
    with pytest.raises(DataError, match=rf"contrastive.view_scale = {view_scale:g} .*{arch}.* at least {smallest}"):
        training_view_hw((image_side, image_side), params)
    ok = parse_params({**raw, "contrastive": {"view_scale": float(smallest)}})
    assert min(training_view_hw((image_side, image_side), ok)) >= 2 ** (3 if arch == "resnet18" else 2)


def test_to_float_numpy(cifar_train_slice):
    images = cifar_train_slice[0][:5]
    t = to_float(images)
    assert t.shape == (5, 3, 32, 32)
    assert t.dtype == torch.float32
    assert t.min() >= 0.0 and t.max() <= 1.0
    assert abs(t[2, 1, 4, 7].item() - images[2, 4, 7, 1] / 255.0) < 1e-6
    np.testing.assert_allclose(t.permute(0, 2, 3, 1).numpy() * 255.0, images.astype(np.float32), atol=1e-4)


def test_to_float_extremes_and_tensor_input():
    x = np.zeros((2, 4, 4, 3), np.uint8)
    x[1] = 255
    t = to_float(torch.from_numpy(x))
    assert t[0].max() == 0.0 and t[1].min() == 1.0
    assert t.shape == (2, 3, 4, 4)
    assert x[1].min() == 255  # the uint8 input is left alone


def test_quarter_turned_copies_are_turned_never_upright_and_reproducible():
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (60, 8, 8, 3), dtype=np.uint8)
    turned = quarter_turned(images, seed=3)
    assert turned.shape == images.shape and turned.dtype == np.uint8
    found = []
    for original, copy in zip(images, turned):
        ks = [k for k in range(4) if np.array_equal(np.rot90(original, k, axes=(0, 1)), copy)]
        assert ks and 0 not in ks
        found.append(ks[0])
    assert set(found) == {1, 2, 3}
    np.testing.assert_array_equal(turned, quarter_turned(images, seed=3))
