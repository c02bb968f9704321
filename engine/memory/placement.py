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


def weights_dtype(module: torch.nn.Module) -> str:
    """The dtype most of the module's parameter bytes are in, and a second one that holds a sizeable share
    ("float8_e4m3fn + float32": an fp8 file kept as stored, its embedders and biases in the compute dtype)."""
    by_dtype: dict[str, int] = {}
    for p in module.parameters():
        name = str(p.dtype).replace("torch.", "")
        by_dtype[name] = by_dtype.get(name, 0) + p.numel() * p.element_size()
    if not by_dtype:
        return "none"
    ranked = sorted(by_dtype, key=by_dtype.get, reverse=True)
    total = sum(by_dtype.values())
    return ranked[0] + (f" + {ranked[1]}" if len(ranked) > 1 and by_dtype[ranked[1]] >= 0.05 * total else "")


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
