"""A rank's peak memory: the accelerator's highest allocation, else the process's peak
resident set."""

from __future__ import annotations

import resource
import sys


def peak_memory_bytes() -> int | None:
    """CUDA: torch.cuda.max_memory_allocated(); otherwise the process's peak RSS
    (getrusage's ru_maxrss, in KiB on Linux, in bytes on macOS)."""
    torch = sys.modules.get("torch")
    if torch is not None and torch.cuda.is_available() and torch.cuda.is_initialized():
        return int(torch.cuda.max_memory_allocated())
    try:
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    except (OSError, ValueError):
        return None
    return int(peak) if sys.platform == "darwin" else int(peak) * 1024
