"""Where and how tensors run: device, precision, threads and seeds, set in one place."""

from __future__ import annotations

import contextlib
import os
import platform
import random
import subprocess
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch


@dataclass(frozen=True)
class Runtime:
    device: torch.device
    bf16: bool

    def autocast(self):
        """bf16 autocast where it pays (CUDA, CPUs with native bf16); a no-op in fp32."""
        if not self.bf16:
            return contextlib.nullcontext()
        return torch.autocast(self.device.type, dtype=torch.bfloat16)

    def memory_format(self) -> torch.memory_format:
        return torch.channels_last


def cpu_has_native_bf16() -> bool:
    """AVX512-BF16 or AMX. Without them bf16 is emulated: measured 10x slower than fp32 on an AVX2 EPYC."""
    try:
        flags = Path("/proc/cpuinfo").read_text()
    except OSError:
        return False
    return "avx512_bf16" in flags or "amx_bf16" in flags


def make_runtime(device: str = "auto", num_threads: int = 0, precision: str = "auto") -> Runtime:
    if device == "cuda" and not torch.cuda.is_available():
        from anomem.errors import ParamsError

        raise ParamsError("train.device = 'cuda' but no CUDA device is visible; use 'auto' or 'cpu'")
    resolved = "cuda" if device == "cuda" or (device == "auto" and torch.cuda.is_available()) else "cpu"
    if num_threads:
        torch.set_num_threads(num_threads)
    bf16 = precision == "bf16" or (precision == "auto" and (resolved == "cuda" or cpu_has_native_bf16()))
    return Runtime(torch.device(resolved), bf16)


def seed_everything(seed: int) -> None:
    """Seed Python, NumPy and torch (CPU and CUDA), and ask for deterministic kernels."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)
    torch.use_deterministic_algorithms(True, warn_only=True)
    torch.backends.cudnn.benchmark = False
    os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")


def rng_state() -> dict:
    state = {
        "python": random.getstate(),
        "numpy": np.random.get_state(),
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict) -> None:
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def project_root() -> Path:
    """The repository root, also from inside a DVC temp experiment workspace."""
    root = Path(os.environ.get("DVC_ROOT") or Path.cwd()).resolve()
    parts = root.parts
    for i in range(len(parts) - 2):
        if parts[i : i + 3] == (".dvc", "tmp", "exps"):
            return Path(*parts[:i])
    return root


def git_commit(cwd: str | Path = ".") -> str:
    try:
        rev = subprocess.run(
            ["git", "rev-parse", "HEAD"],
            cwd=cwd,
            capture_output=True,
            text=True,
            timeout=10,
        )
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"],
            cwd=cwd,
            capture_output=True,
            text=True,
            timeout=10,
        )
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    if rev.returncode != 0:
        return "unknown"
    return rev.stdout.strip() + ("-dirty" if dirty.stdout.strip() else "")


def environment() -> dict[str, str]:
    """Versions worth recording with every run."""
    import sklearn
    import torchvision

    from anomem import __version__

    env = {
        "anomem": __version__,
        "python": platform.python_version(),
        "torch": torch.__version__,
        "torchvision": torchvision.__version__,
        "numpy": np.__version__,
        "scikit-learn": sklearn.__version__,
        "platform": platform.platform(),
        "torch_threads": str(torch.get_num_threads()),
        "cuda": torch.version.cuda or "none",
    }
    with contextlib.suppress(ImportError):
        import kornia

        env["kornia"] = kornia.__version__
    return env
