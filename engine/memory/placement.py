"""Where a module's tensors are, read from the tensors themselves (the ledger never trusts its own books)."""

from __future__ import annotations

import torch


def module_bytes(module: torch.nn.Module) -> int:
    """Bytes of every parameter and buffer, shared tensors counted once."""
    seen, total = set(), 0
    for t in _tensors(module):
        key = (t.data_ptr(), t.device) if t.device.type != "meta" else id(t)
        if key not in seen:
            seen.add(key)
            total += t.numel() * t.element_size()
    return total


def _tensors(module: torch.nn.Module):
    yield from module.parameters()
    yield from module.buffers()


def real_device(module: torch.nn.Module) -> str:
    """Where the module's tensors really are: 'cpu', 'cuda:0', 'meta', 'mixed' or 'none'."""
    found = {_device_name(t.device) for t in _tensors(module)}
    if not found:
        return "none"
    return found.pop() if len(found) == 1 else "mixed"


def bytes_by_device(module: torch.nn.Module) -> dict[str, int]:
    out: dict[str, int] = {}
    for t in _named_tensors(module).values():
        dev = _device_name(t.device)
        out[dev] = out.get(dev, 0) + t.numel() * t.element_size()
    return out


def _device_name(dev: torch.device) -> str:
    if dev.type == "cuda":
        return f"cuda:{dev.index if dev.index is not None else torch.cuda.current_device()}"
    return dev.type


def _named_tensors(module: torch.nn.Module) -> dict[str, torch.Tensor]:
    named = dict(module.named_parameters())
    named.update(module.named_buffers())  # non-persistent buffers too: they vanish on 'meta'
    return named
