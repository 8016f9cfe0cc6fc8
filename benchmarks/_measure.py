"""What the benchmarks measure besides time (imported by the scripts beside it)."""

from __future__ import annotations

from pathlib import Path


def peak_rss_mb() -> float:
    """This process's peak resident memory in MB: VmHWM, which starts afresh at exec (getrusage's
    ru_maxrss keeps the parent's peak across fork and exec on Linux)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError("no /proc/self/status: this benchmark measures memory on Linux")
