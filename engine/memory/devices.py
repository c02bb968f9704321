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


# What the plan keeps back from the GPU's free memory. The CUDA context is already outside ``mem_get_info``'s free
# figure once torch has touched the device; the reserve covers what appears after the plan: cuBLAS workspaces
# (up to 32 MiB per handle and stream, two streams), cuDNN/conv workspaces of the VAE (hundreds of MiB at large
# sizes), the caching allocator's rounding (2 MiB pages, 20 MiB segments) and fragmentation, which grows with
# the card (the 2%), and a desktop or another process taking a little more meanwhile.
RESERVE_FIXED = 512 * 2**20
RESERVE_FRACTION = 0.02


def cuda_reserve(total: int) -> int:
    return RESERVE_FIXED + int(RESERVE_FRACTION * total)


def planning_budget(device: str) -> tuple[int, str] | None:
    """The bytes a run may plan for on ``device``: free now, plus what this process's allocator already holds
    (its cached blocks and the app's loaded models, which the run reuses or evicts), minus ``cuda_reserve``; and
    a line saying so. None without CUDA (a CPU run has no device budget)."""
    if not device.startswith("cuda") or not torch.cuda.is_available():
        return None
    index = torch.device(device).index or 0
    free, total = torch.cuda.mem_get_info(index)
    held = int(torch.cuda.memory_reserved(index))
    reserve = cuda_reserve(int(total))
    budget = max(0, int(free) + held - reserve)
    note = (f"budget {budget / 2**30:.1f} GiB = {free / 2**30:.1f} GiB free + {held / 2**30:.1f} held by this app "
            f"- {reserve / 2**30:.1f} reserve (CUDA workspaces, allocator rounding, other processes)")
    return budget, note


def host_available() -> int:
    """RAM the system can give now without swapping (psutil's ``available``)."""
    return int(psutil.virtual_memory().available)


def default_compute_device() -> str:
    return "cuda" if torch.cuda.is_available() else "cpu"


def free_cached() -> None:
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
