"""Atomic writes: a finished file or the old one, never half a file; a full disk named clearly."""

from __future__ import annotations

import errno
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from anomem import io
from anomem.errors import DiskFullError


def _temporaries(folder: Path) -> list[Path]:
    return sorted(folder.rglob(".tmp-*"))


def _enospc(*_args, **_kwargs):
    raise OSError(errno.ENOSPC, "No space left on device")


# ---- success ---------------------------------------------------------------------------------------


def test_atomic_path_success(tmp_path):
    target = tmp_path / "out.txt"
    with io.atomic_path(target) as tmp:
        assert tmp != target
        assert tmp.parent == target.parent  # same folder, so the rename is atomic
        assert tmp.name.startswith(".tmp-out.txt.")
        tmp.write_text("hello")
        assert not target.exists()  # nothing at the final name until the body is done
    assert target.read_text() == "hello"
    assert _temporaries(tmp_path) == []


def test_atomic_path_replaces_old_file(tmp_path):
    target = tmp_path / "out.txt"
    target.write_text("old")
    with io.atomic_path(target) as tmp:
        tmp.write_text("new")
        assert target.read_text() == "old"
    assert target.read_text() == "new"
    assert _temporaries(tmp_path) == []


def test_atomic_path_makes_parent_folders(tmp_path):
    target = tmp_path / "a" / "b" / "c.txt"
    with io.atomic_path(target) as tmp:
        tmp.write_text("x")
    assert target.read_text() == "x"


def test_write_json(tmp_path):
    target = tmp_path / "m.json"
    obj = {"b": [1, 2.5, None], "a": {"z": "text", "y": True}}
    io.write_json(target, obj)
    text = target.read_text()
    assert json.loads(text) == obj
    assert text.endswith("\n")
    assert text.index('"a"') < text.index('"b"')  # sorted keys, stable diffs
    assert io.read_json(target) == obj
    assert _temporaries(tmp_path) == []


def test_write_text(tmp_path):
    io.write_text(tmp_path / "t.txt", "line\n")
    assert (tmp_path / "t.txt").read_text() == "line\n"
    assert _temporaries(tmp_path) == []


def test_save_npy(tmp_path):
    target = tmp_path / "a.npy"
    arr = np.arange(24, dtype=np.float16).reshape(2, 3, 4)
    io.save_npy(target, arr)
    back = np.load(target)
    np.testing.assert_array_equal(back, arr)
    assert back.dtype == np.float16
    assert _temporaries(tmp_path) == []


def test_save_npz(tmp_path):
    target = tmp_path / "s.npz"
    io.save_npz(target, x=np.arange(3), y=np.ones((2, 2)))
    with np.load(target) as f:
        assert sorted(f.files) == ["x", "y"]
        np.testing.assert_array_equal(f["x"], np.arange(3))
    assert target.suffix == ".npz" and not (tmp_path / "s.npz.npz").exists()
    assert _temporaries(tmp_path) == []


# ---- failure keeps the old file, or none -----------------------------------------------------------


def test_failure_keeps_old_content(tmp_path):
    target = tmp_path / "out.txt"
    target.write_text("old")
    with pytest.raises(RuntimeError, match="boom"):
        with io.atomic_path(target) as tmp:
            tmp.write_text("half of the ne")
            raise RuntimeError("boom")
    assert target.read_text() == "old"
    assert _temporaries(tmp_path) == []


def test_failure_leaves_no_file(tmp_path):
    target = tmp_path / "out.txt"
    with pytest.raises(ValueError):
        with io.atomic_path(target) as tmp:
            tmp.write_text("partial")
            raise ValueError
    assert not target.exists()
    assert list(tmp_path.iterdir()) == []


def test_keyboard_interrupt_cleans_up(tmp_path):
    target = tmp_path / "out.txt"
    target.write_text("old")
    with pytest.raises(KeyboardInterrupt):
        with io.atomic_path(target) as tmp:
            tmp.write_text("partial")
            raise KeyboardInterrupt
    assert target.read_text() == "old"
    assert _temporaries(tmp_path) == []


def test_write_json_unserialisable_keeps_old(tmp_path):
    target = tmp_path / "m.json"
    io.write_json(target, {"a": 1})
    with pytest.raises(TypeError):
        io.write_json(target, {"a": object()})
    assert io.read_json(target) == {"a": 1}
    assert _temporaries(tmp_path) == []


def test_save_npy_failure_keeps_old(tmp_path, monkeypatch):
    target = tmp_path / "a.npy"
    io.save_npy(target, np.arange(3))

    def half_then_fail(f, array):
        f.write(b"\x93NUMPY partial")
        raise RuntimeError("killed")

    monkeypatch.setattr(io.np, "save", half_then_fail)
    with pytest.raises(RuntimeError):
        io.save_npy(target, np.arange(10))
    monkeypatch.undo()
    np.testing.assert_array_equal(np.load(target), np.arange(3))
    assert _temporaries(tmp_path) == []


def test_other_oserror_is_not_disk_full(tmp_path):
    target = tmp_path / "out.txt"
    with pytest.raises(OSError) as info:
        with io.atomic_path(target):
            raise OSError(errno.EACCES, "denied")
    assert not isinstance(info.value, DiskFullError)
    assert info.value.errno == errno.EACCES
    assert not target.exists()
    assert _temporaries(tmp_path) == []


# ---- a full disk -----------------------------------------------------------------------------------


def test_enospc_in_body_is_disk_full(tmp_path):
    target = tmp_path / "big.bin"
    target.write_text("old")
    with pytest.raises(DiskFullError) as info:
        with io.atomic_path(target) as tmp:
            tmp.write_text("par")
            raise OSError(errno.ENOSPC, "No space left on device")
    assert str(target) in str(info.value)
    assert "disk full" in str(info.value)
    assert target.read_text() == "old"
    assert _temporaries(tmp_path) == []


def test_enospc_from_write_json(tmp_path, monkeypatch):
    target = tmp_path / "m.json"
    monkeypatch.setattr(Path, "write_text", _enospc)
    with pytest.raises(DiskFullError) as info:
        io.write_json(target, {"a": 1})
    monkeypatch.undo()
    assert str(target) in str(info.value)
    assert not target.exists()
    assert _temporaries(tmp_path) == []


def test_enospc_from_save_npy(tmp_path, monkeypatch):
    target = tmp_path / "a.npy"
    monkeypatch.setattr(io.np, "save", _enospc)
    with pytest.raises(DiskFullError) as info:
        io.save_npy(target, np.arange(3))
    monkeypatch.undo()
    assert str(target) in str(info.value)
    assert _temporaries(tmp_path) == []


def _short_write(arrays_written: list):
    """np.save as numpy behaves when the disk fills mid-array: part of the bytes land, then an OSError without errno."""

    def save(f, array, **_kwargs):
        f.write(b"\x93NUMPY" + bytes(100))
        arrays_written.append(array)
        raise OSError(f"{array.nbytes} requested and 100 written")

    return save


@pytest.mark.parametrize("free, disk_full", [(4096, True), (10**12, False)])
def test_a_short_write_is_disk_full_only_when_the_disk_is(tmp_path, monkeypatch, free, disk_full):
    target = tmp_path / "maps.npy"
    written: list = []
    monkeypatch.setattr(io.np, "save", _short_write(written))
    monkeypatch.setattr(io.shutil, "disk_usage", lambda path: shutil._ntuple_diskusage(10**12, 10**12 - free, free))
    with pytest.raises((OSError, DiskFullError)) as info:
        io.save_npy(target, np.zeros(1000))
    monkeypatch.undo()
    assert written and isinstance(info.value, DiskFullError) == disk_full
    assert (str(target) in str(info.value)) if disk_full else "requested and 100 written" in str(info.value)
    assert not target.exists() and _temporaries(tmp_path) == []


def test_enospc_from_fsync(tmp_path, monkeypatch):
    # the data may only hit the disk at fsync; a full disk there is reported the same way
    target = tmp_path / "late.txt"
    monkeypatch.setattr(io.os, "fsync", _enospc)
    with pytest.raises(DiskFullError) as info:
        io.write_text(target, "x")
    monkeypatch.undo()
    assert str(target) in str(info.value)
    assert not target.exists()
    assert _temporaries(tmp_path) == []


def test_require_free_space(tmp_path):
    need = shutil.disk_usage(tmp_path).free * 10
    with pytest.raises(DiskFullError) as info:
        io.require_free_space(tmp_path, need, "the deviation maps")
    assert str(tmp_path) in str(info.value)
    assert "the deviation maps" in str(info.value)


def test_require_free_space_enough_makes_folder(tmp_path):
    folder = tmp_path / "new" / "dir"
    io.require_free_space(folder, 1, "a small file")
    assert folder.is_dir()


# ---- stale temporaries -----------------------------------------------------------------------------


def test_remove_stale_temporaries(tmp_path):
    (tmp_path / "sub").mkdir()
    stale = [tmp_path / ".tmp-a.npy.xyz", tmp_path / "sub" / ".tmp-model.pt.123"]
    keep = [tmp_path / "a.npy", tmp_path / "x.tmp-y", tmp_path / "sub" / "tmp-z", tmp_path / "sub" / ".tmpfile"]
    for f in stale + keep:
        f.write_text("x")
    io.remove_stale_temporaries(tmp_path)
    assert not any(f.exists() for f in stale)
    assert all(f.exists() for f in keep)


def test_remove_stale_temporaries_missing_folder(tmp_path):
    io.remove_stale_temporaries(tmp_path / "absent")
    assert not (tmp_path / "absent").exists()


def test_leftover_of_a_killed_write_is_removed(tmp_path):
    target = tmp_path / "out.txt"
    ctx = io.atomic_path(target)
    tmp = ctx.__enter__()  # a run killed here never reaches __exit__
    tmp.write_text("partial")
    assert _temporaries(tmp_path) == [tmp]
    io.remove_stale_temporaries(tmp_path)
    assert _temporaries(tmp_path) == []
    assert not target.exists()


# ---- permissions -----------------------------------------------------------------------------------


@pytest.mark.parametrize("write", [lambda p: io.write_json(p, {}), lambda p: io.save_npy(p, np.zeros(2)), lambda p: io.write_text(p, "")])
def test_written_files_are_readable_by_others(tmp_path, write):
    umask = os.umask(0)
    os.umask(umask)
    if umask & 0o044:
        pytest.skip(f"umask {umask:o} forbids group/other read")
    target = tmp_path / "f.out"
    write(target)
    mode = target.stat().st_mode & 0o777
    assert mode & 0o044 != 0
    assert mode == 0o666 & ~umask


def test_load_torch_round_trip_and_clear_errors(tmp_path):
    import torch

    from anomem.errors import DataError

    io.save_torch(tmp_path / "model.pt", {"model": {"w": torch.arange(3)}})
    assert torch.equal(io.load_torch(tmp_path / "model.pt")["model"]["w"], torch.arange(3))
    with pytest.raises(DataError, match="missing"):
        io.load_torch(tmp_path / "absent.pt")
    (tmp_path / "cut.pt").write_bytes((tmp_path / "model.pt").read_bytes()[:40])  # a truncated write
    with pytest.raises(DataError, match="cut.pt: not a readable torch file"):
        io.load_torch(tmp_path / "cut.pt")


@pytest.mark.parametrize("kind", ["npy", "npy-mmap", "npz"])
def test_load_arrays_round_trip_and_clear_errors(tmp_path, kind):
    from anomem.errors import DataError

    arrays = {"a": np.arange(5000), "b": np.ones((3, 2))}
    if kind == "npz":
        path = tmp_path / "split.npz"
        io.save_npz(path, **arrays)
        load = lambda p: io.load_npz(p, "`dvc repro prepare_data`")  # noqa: E731
        loaded = load(path)
        assert loaded.keys() == arrays.keys() and all(np.array_equal(loaded[k], arrays[k]) for k in arrays)
    else:
        path = tmp_path / "maps.npy"
        io.save_npy(path, arrays["a"])
        load = lambda p: io.load_npy(p, "`dvc repro prepare_data`", mmap=kind == "npy-mmap")  # noqa: E731
        assert np.array_equal(load(path), arrays["a"])
    with pytest.raises(DataError, match=r"absent\.\w+: missing; run `dvc repro prepare_data` first"):
        load(tmp_path / f"absent{path.suffix}")
    cut = tmp_path / f"cut{path.suffix}"
    cut.write_bytes(path.read_bytes()[:300])  # a truncated write
    with pytest.raises(DataError, match=r"cut\.\w+: not a readable numpy file .*re-run `dvc repro prepare_data`"):
        load(cut)


def _can_mount_a_tmpfs() -> bool:
    try:
        return subprocess.run(["unshare", "-rm", "true"], capture_output=True, timeout=30).returncode == 0
    except (OSError, subprocess.TimeoutExpired):
        return False


@pytest.mark.skipif(not _can_mount_a_tmpfs(), reason="needs unprivileged user and mount namespaces (unshare -rm)")
def test_a_real_full_disk_is_disk_full_for_every_writer(tmp_path):
    """On a 1 MB tmpfs: numpy's short write (no errno) and torch's zip writer end as DiskFullError too, leaving nothing."""
    disk = tmp_path / "disk"
    disk.mkdir()
    script = f"""
import os, numpy as np, torch
from anomem import io
from anomem.errors import DiskFullError
writers = {{"maps.npy": lambda p: io.save_npy(p, np.zeros(500_000)), "model.pt": lambda p: io.save_torch(p, {{"w": torch.zeros(500_000)}}),
           "split.npz": lambda p: io.save_npz(p, a=np.zeros(500_000))}}
for name, write in writers.items():
    try:
        write("{disk}/" + name)
    except DiskFullError as err:
        print("disk full:", name, err)
print("left:", os.listdir("{disk}"))
"""
    mounted = f"mount -t tmpfs -o size=1m tmpfs {disk} && exec {sys.executable} -c '{script}'"
    result = subprocess.run(["unshare", "-rm", "sh", "-c", mounted], capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    for name in ("maps.npy", "model.pt", "split.npz"):
        assert f"disk full: {name} disk full while writing {disk}/{name}" in result.stdout, result.stdout
    assert "left: []" in result.stdout
