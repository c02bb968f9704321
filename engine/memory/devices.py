"""Per-device memory readouts: CUDA through the allocator, the CPU through psutil.

Every CUDA call is guarded by ``torch.cuda.is_available()``: without CUDA several of them
silently return 0 instead of raising, which would show a healthy-looking empty GPU.
"""

from __future__ import annotations

import resource
import sys

import psutil
import torch


def cuda_stats(index: int = 0) -> dict:
    free, total = torch.cuda.mem_get_info(index)
    return {
        "device": f"cuda:{index}",
        "name": torch.cuda.get_device_name(index),
        "total": int(total),
        "used": int(total - free),
        "free": int(free),
        "allocated": int(torch.cuda.memory_allocated(index)),
        "reserved": int(torch.cuda.memory_reserved(index)),
        "peak": int(torch.cuda.max_memory_allocated(index)),
    }


def cpu_stats() -> dict:
    vm = psutil.virtual_memory()
    proc = psutil.Process()
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    peak_bytes = peak if sys.platform == "darwin" else peak * 1024  # Linux reports KiB
    return {
        "device": "cpu",
        "name": "System RAM",
        "total": int(vm.total),
        "used": int(vm.total - vm.available),
        "free": int(vm.available),
        "allocated": int(proc.memory_info().rss),  # this process
        "reserved": int(proc.memory_info().rss),
        "peak": int(peak_bytes),
    }


def device_stats() -> list[dict]:
    """Readouts for every accelerator and for system RAM, accelerators first."""
    out = []
    if torch.cuda.is_available():
        out.extend(cuda_stats(i) for i in range(torch.cuda.device_count()))
    out.append(cpu_stats())
    return out


def reset_peak() -> None:
    if torch.cuda.is_available():
        for i in range(torch.cuda.device_count()):
            torch.cuda.reset_peak_memory_stats(i)


def default_compute_device() -> str:
    return "cuda" if torch.cuda.is_available() else "cpu"


def free_cached() -> None:
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
