"""Time a whole pipeline run: wall time, each stage's time, peak memory, and the disk it leaves.

    python -m benchmarks.grid                # runs `dvc repro`, writes reports/benchmarks/grid.json
    python -m benchmarks.grid -- dvc exp run -S memory.enabled=false

The command's output streams through unchanged. A stage's time runs from DVC's "Running stage" line to
the next one (or the end), so it includes the stage's Python start-up. Peak memory is the largest
resident set of any one process of the tree, and of the tree as a whole, sampled every 0.2 s.
Disk is counted by `du`: `data/` and `.dvc/cache` each on its own, and both together with a hard-linked
file counted once (DVC's cache.type hardlink). The cache also keeps earlier runs' outputs until `dvc gc`.
`--disk-only` measures the disk again into an existing record.
"""

from __future__ import annotations

import argparse
import re
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path

import psutil

from anomem import io

STAGE_LINE = re.compile(r"Running stage '([^']+)'")
OUT = Path("reports/benchmarks/grid.json")
DISK_PATHS = ("data", ".dvc/cache")


def _sample_memory(proc: psutil.Process, peaks: dict, stop: threading.Event) -> None:
    while not stop.is_set():
        try:
            tree = [proc, *proc.children(recursive=True)]
            rss = [p.memory_info().rss for p in tree if p.is_running()]
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            rss = []
        if rss:
            peaks["process"] = max(peaks["process"], max(rss))
            peaks["tree"] = max(peaks["tree"], sum(rss))
        stop.wait(0.2)


def disk_bytes(*paths: str) -> dict[str, int]:
    """Bytes under each path on its own, and under all of them with a hard-linked file counted once (du -sb)."""
    present = [p for p in paths if Path(p).exists()]
    if not present:
        return {}

    def du(*where: str) -> int:
        out = subprocess.run(["du", "-sb", "-c", *where], capture_output=True, text=True, check=True).stdout
        return int(out.strip().split("\n")[-1].split("\t")[0])

    return {**{p: du(p) for p in present}, "total_without_second_copies": du(*present)}


def _dvc_cache_type() -> str | None:
    dvc = shutil.which("dvc") or shutil.which("dvc", path=str(Path(sys.executable).parent))
    if dvc is None:
        return None
    return subprocess.run([dvc, "config", "cache.type"], capture_output=True, text=True).stdout.strip() or "default (copy)"


def _now(seconds: float | None = None) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(seconds))


def run(command: list[str]) -> dict:
    began = time.time()
    proc = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, bufsize=1)
    peaks = {"process": 0, "tree": 0}
    stop = threading.Event()
    sampler = threading.Thread(target=_sample_memory, args=(psutil.Process(proc.pid), peaks, stop), daemon=True)
    sampler.start()
    stages: dict[str, float] = {}
    current, current_start = None, began
    for line in proc.stdout:
        sys.stdout.write(line)
        match = STAGE_LINE.search(line)
        if match:
            now = time.time()
            if current is not None:
                stages[current] = now - current_start
            current, current_start = match.group(1), now
    rc = proc.wait()
    end = time.time()
    if current is not None:
        stages[current] = end - current_start
    stop.set()
    sampler.join()
    by_kind: dict[str, list[float]] = {}
    for name, seconds in stages.items():
        by_kind.setdefault(name.split("@")[0], []).append(seconds)
    return {
        "command": command,
        "exit_code": rc,
        "wall_seconds": end - began,
        "peak_rss_bytes_one_process": peaks["process"],
        "peak_rss_bytes_all_processes": peaks["tree"],
        "stage_seconds": stages,
        "stage_seconds_summary": {k: {"count": len(v), "mean": sum(v) / len(v), "total": sum(v)} for k, v in by_kind.items()},
        "disk_bytes": disk_bytes(*DISK_PATHS),
        "dvc_cache_type": _dvc_cache_type(),
        "finished_at": _now(end),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=OUT)
    parser.add_argument("--disk-only", action="store_true", help="measure the disk again into --out's existing record; run nothing")
    parser.add_argument("command", nargs="*", default=["dvc", "repro"])
    args = parser.parse_args(argv)
    if args.disk_only:
        result = {**io.read_json(args.out), "disk_bytes": disk_bytes(*DISK_PATHS), "disk_measured_at": _now()}
        io.write_json(args.out, result)
        print(f"disk: {result['disk_bytes']}; written to {args.out}")
        return 0
    result = run(args.command or ["dvc", "repro"])
    io.write_json(args.out, result)
    print(f"grid: exit {result['exit_code']} after {result['wall_seconds']:.0f}s; written to {args.out}")
    return result["exit_code"]


if __name__ == "__main__":
    sys.exit(main())
