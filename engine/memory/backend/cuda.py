"""The backend on a real GPU: every operation is one or two ``torch.cuda`` calls, through ``api`` (the
``torch.cuda`` module itself, plus the two tensor factories below), so that a test can hand in a recording fake
namespace and compare the calls with the simulator's op record without a GPU.

No ``record_stream`` anywhere: device slabs are allocated on the compute stream once per run and reused through
events (see block_stream.py), so the caching allocator never has to guess when a side-stream copy is done.
"""

from __future__ import annotations

import torch

from engine.memory.backend import Backend


class TorchCuda:
    """The ``torch.cuda`` calls the backend makes, one line each (a fake with the same names records them)."""

    def __init__(self, device: torch.device):
        self.device = device

    def Stream(self):  # noqa: N802  (torch.cuda's name)
        return torch.cuda.Stream(self.device)

    def Event(self):  # noqa: N802
        return torch.cuda.Event()

    def current_stream(self):
        return torch.cuda.current_stream(self.device)

    def stream(self, s):
        return torch.cuda.stream(s)

    def device_empty(self, nbytes: int) -> torch.Tensor:
        return torch.empty(nbytes, dtype=torch.uint8, device=self.device)

    def pinned_empty(self, nbytes: int) -> torch.Tensor:
        return torch.empty(nbytes, dtype=torch.uint8, pin_memory=True)

    def set_per_process_memory_fraction(self, fraction: float) -> None:
        torch.cuda.set_per_process_memory_fraction(fraction, self.device)

    def empty_cache(self) -> None:
        torch.cuda.empty_cache()

    def host_empty_cache(self) -> None:
        empty = getattr(torch._C, "_host_emptyCache", None)  # CUDA builds (torch/cuda/graphs.py calls it too)
        if empty is not None:
            empty()  # the pinned allocator's cache: freed page-locked blocks go back to the OS

    def mem_get_info(self) -> tuple[int, int]:
        return torch.cuda.mem_get_info(self.device)


class CudaBackend(Backend):
    name = "cuda"

    def __init__(self, device: torch.device | str = "cuda", api=None):
        self.device = torch.device(device)
        self.api = api or TorchCuda(self.device)
        self.compute = self.api.current_stream()

    def new_stream(self):
        return self.api.Stream()

    def alloc_device(self, nbytes: int) -> torch.Tensor:
        return self.api.device_empty(nbytes)  # on the current (compute) stream

    def free_device(self, slab: torch.Tensor) -> None:
        pass  # the caller drops its last reference; the allocator caches the block on the compute stream

    def copy(self, dst: torch.Tensor, src: torch.Tensor, stream, slab: int = -1) -> None:
        with self.api.stream(stream):
            dst.copy_(src, non_blocking=True)

    def record(self, stream):
        event = self.api.Event()
        event.record(stream)
        return event

    def wait(self, stream, event) -> None:
        stream.wait_event(event)

    def read(self, stream, slab: int) -> None:
        pass  # the block's kernels are the read

    def alloc_pinned(self, nbytes: int) -> torch.Tensor:
        return self.api.pinned_empty(nbytes)

    def free_pinned(self, slab: torch.Tensor) -> None:
        pass  # dropped by the caller; ``empty_host_cache`` gives the cached block back

    def set_memory_fraction(self, fraction: float) -> None:
        self.api.set_per_process_memory_fraction(min(1.0, max(0.0, fraction)))

    def empty_device_cache(self) -> None:
        self.api.empty_cache()

    def empty_host_cache(self) -> None:
        self.api.host_empty_cache()

    def synchronize(self, stream) -> None:
        stream.synchronize()

    def total_memory(self) -> int:
        return int(self.api.mem_get_info()[1])
