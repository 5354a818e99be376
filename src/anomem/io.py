"""Atomic writes: every output goes to a temporary name in its folder, is fsynced, then renamed.

A killed or failed stage therefore leaves either the old file or none, never half of a new one.
A full disk becomes a DiskFullError that names the file.
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import shutil
import tempfile
from collections.abc import Iterator
from io import BytesIO
from pathlib import Path
from typing import Any

import numpy as np

from anomem.errors import DataError, DiskFullError

_TMP_PREFIX = ".tmp-"
_NEARLY_FULL = 1 << 20  # bytes
_DISK_FULL = {errno.ENOSPC, getattr(errno, "EDQUOT", errno.ENOSPC)}
_UMASK = os.umask(0)
os.umask(_UMASK)


@contextlib.contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """Yield a temporary path beside `path`; on success it is renamed onto `path`, on failure removed."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=_TMP_PREFIX + path.name + ".", dir=path.parent)
    os.close(fd)
    tmp = Path(tmp_name)
    os.chmod(tmp, 0o666 & ~_UMASK)  # mkstemp makes 0600; outputs should read like any other file
    try:
        yield tmp
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except OSError as exc:
        # numpy's short write raises OSError without an errno ("N requested and M written"): a full disk
        # shows as no space left while the partial temporary still holds it.
        free = shutil.disk_usage(path.parent).free
        tmp.unlink(missing_ok=True)
        if exc.errno in _DISK_FULL or (exc.errno is None and free < _NEARLY_FULL):
            raise DiskFullError(f"disk full while writing {path} ({free / 1e6:.0f} MB free); free space and re-run") from None
        raise
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def write_json(path: str | Path, obj: Any) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(obj, indent=2, sort_keys=True) + "\n")


def write_text(path: str | Path, text: str) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(text)


def save_npz(path: str | Path, **arrays: np.ndarray) -> None:
    with atomic_path(path) as tmp, open(tmp, "wb") as f:
        np.savez(f, **arrays)


def save_npy(path: str | Path, array: np.ndarray) -> None:
    with atomic_path(path) as tmp, open(tmp, "wb") as f:
        np.save(f, array)


def save_torch(path: str | Path, obj: Any) -> None:
    import torch

    # Serialised in memory first: torch's zip writer turns a full disk into an opaque RuntimeError.
    buffer = BytesIO()
    torch.save(obj, buffer)
    with atomic_path(path) as tmp, open(tmp, "wb") as f:
        f.write(buffer.getbuffer())


def load_torch(path: str | Path, made_by: str = "the stage that writes it", remedy: str | None = None) -> Any:
    """What save_torch wrote, on the CPU; a missing or unreadable file is a DataError that names it and says what
    to do (`remedy`; by default, re-run `made_by`)."""
    import torch

    return _load(path, made_by, "torch", lambda p: torch.load(p, map_location="cpu", weights_only=False), remedy)


def load_npy(path: str | Path, made_by: str = "the stage that writes it", mmap: bool = False) -> np.ndarray:
    """What save_npy wrote (memory-mapped with `mmap`); a missing or unreadable file is a DataError that names it."""
    return _load(path, made_by, "numpy", lambda p: np.load(p, mmap_mode="r" if mmap else None, allow_pickle=False))


def load_npz(path: str | Path, made_by: str = "the stage that writes it") -> dict[str, np.ndarray]:
    """Every array of what save_npz wrote, read in full; a missing or unreadable file is a DataError that names it."""

    def read(p: Path) -> dict[str, np.ndarray]:
        with np.load(p, allow_pickle=False) as archive:
            return {k: archive[k] for k in archive.files}

    return _load(path, made_by, "numpy", read)


def _load(path: str | Path, made_by: str, kind: str, read, remedy: str | None = None):
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: missing; run {made_by} first")
    try:
        return read(path)
    except Exception as exc:  # numpy and torch raise several types for a truncated or foreign file
        raise DataError(f"{path}: not a readable {kind} file ({type(exc).__name__}: {exc}); {remedy or f're-run {made_by}'}") from None


def save_figure(path: str | Path, fig) -> None:
    with atomic_path(path) as tmp:
        fig.savefig(
            tmp,
            format=Path(path).suffix.lstrip(".") or "png",
            dpi=110,
            bbox_inches="tight",
        )


def read_json(path: str | Path) -> Any:
    return json.loads(Path(path).read_text())


def require_free_space(folder: str | Path, needed_bytes: int, what: str) -> None:
    """Fail early, before hours of work, when `folder` cannot hold `needed_bytes`."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    free = shutil.disk_usage(folder).free
    if free < needed_bytes:
        raise DiskFullError(f"not enough disk for {what} in {folder}: need about {needed_bytes / 1e9:.2f} GB, {free / 1e9:.2f} GB free")


def remove_stale_temporaries(folder: str | Path, name: str = "") -> None:
    """Delete temporaries left by a killed run (of the file `name` only, if given), so nothing can mistake them for outputs."""
    folder = Path(folder)
    if folder.is_dir():
        for tmp in folder.rglob(_TMP_PREFIX + name + "*"):
            tmp.unlink(missing_ok=True)
