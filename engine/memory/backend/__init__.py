"""The few operations the streaming memory layer asks of an accelerator, behind one small interface.

``CudaBackend`` (cuda.py) issues them to CUDA; ``SimBackend`` (simulated.py) models CUDA's semantics on the CPU
(streams, events, a caching device allocator, the pinned allocator's power-of-two rounding, a host that runs
ahead of the device) and checks every slab read against the copies in flight, so that CPU tests can prove what a
CPU cannot show. The streamer (block_stream.py) only ever talks to a ``Backend``; both implementations receive
the same calls in the same order, which a test checks (tests/test_memory_sim.py).

Handles: streams and events are opaque objects; device slabs and pinned slabs are 1-D uint8 tensors (on the
meta device when the simulator runs real-size layouts without bytes).
"""

from __future__ import annotations

import torch

OPS = ("new_stream", "alloc_device", "free_device", "copy", "record", "wait", "read", "alloc_pinned",
       "free_pinned", "set_memory_fraction", "empty_device_cache", "empty_host_cache", "synchronize")


class Backend:
    """Interface. ``compute`` is the stream the model computes on (the current stream when the backend was made)."""

    name = ""
    compute: object = None

    def new_stream(self):
        raise NotImplementedError

    def alloc_device(self, nbytes: int) -> torch.Tensor:
        """A device slab of ``nbytes``, allocated on the compute stream (the caching allocator ties it there)."""
        raise NotImplementedError

    def free_device(self, slab: torch.Tensor) -> None:
        raise NotImplementedError

    def copy(self, dst: torch.Tensor, src: torch.Tensor, stream, slab: int = -1) -> None:
        """Queue ``dst.copy_(src)`` on ``stream`` (asynchronous when ``src`` is pinned); ``slab``: which device
        slab ``dst`` lies in (for the simulator's checks and the op record)."""
        raise NotImplementedError

    def record(self, stream):
        """An event recorded on ``stream`` now."""
        raise NotImplementedError

    def wait(self, stream, event) -> None:
        """``stream`` waits (on the device, not the host) until ``event`` has been reached."""
        raise NotImplementedError

    def read(self, stream, slab: int) -> None:
        """A block computing on ``stream`` reads device slab ``slab`` (CUDA: the block's own kernels; recorded)."""
        raise NotImplementedError

    def alloc_pinned(self, nbytes: int) -> torch.Tensor:
        """A page-locked host slab (raises RuntimeError when the system refuses)."""
        raise NotImplementedError

    def free_pinned(self, slab: torch.Tensor) -> None:
        raise NotImplementedError

    def pinned_size(self, nbytes: int) -> int:
        """What the pinned allocator really locks for a request of ``nbytes`` (PyTorch: the next power of two)."""
        return 1 << max(0, int(nbytes) - 1).bit_length() if nbytes > 0 else 0

    def set_memory_fraction(self, fraction: float) -> None:
        raise NotImplementedError

    def empty_device_cache(self) -> None:
        raise NotImplementedError

    def empty_host_cache(self) -> None:
        raise NotImplementedError

    def synchronize(self, stream) -> None:
        """The host waits until ``stream`` has done everything queued on it."""
        raise NotImplementedError

    def total_memory(self) -> int:
        return 0


def backend_for(device: str) -> Backend | None:
    """The backend for a compute device: CUDA's for a GPU; None on the CPU (weights stay where they are)."""
    where = torch.device(device)
    if where.type == "cuda":
        # a device named by the user (--device cuda:7): a sentence, not torch's AssertionError of a CPU-only build
        found = torch.cuda.device_count() if torch.cuda.is_available() else 0
        if found == 0:
            raise ValueError(f"{device}: no usable CUDA GPU here (torch {torch.__version__})")
        if (where.index or 0) >= found:
            raise ValueError(f"{device}: this machine has {found} CUDA GPU(s), cuda:0 to cuda:{found - 1}")
        from engine.memory.backend.cuda import CudaBackend  # noqa: PLC0415  (only on a GPU)

        return CudaBackend(where)
    return None


__all__ = ["OPS", "Backend", "backend_for"]
