"""Disk offload of a whole module: its tensors into one safetensors file, the module left on the meta device."""

from __future__ import annotations

from pathlib import Path

import torch
from safetensors import safe_open
from safetensors.torch import save_file

from engine.memory.transfer import collect_slots, held_tensor, set_tensor, stored_key


def save_module(module: torch.nn.Module, path: Path) -> None:
    # tied weights (T5's shared embedding) are one tensor with several owners: saved once, restored tied
    slots = collect_slots(module)
    tensors = {k: held_tensor(s).detach().to("cpu").contiguous() for k, s in slots.items()}
    save_file(tensors, str(path))
    del tensors
    for slot in slots.values():
        set_tensor(slot, torch.empty(slot.shape, dtype=slot.dtype, device="meta"))


def load_module(name: str, module: torch.nn.Module, path: Path) -> None:
    with safe_open(str(path), framework="pt") as f:
        stored = set(f.keys())
        for key, slot in collect_slots(module).items():
            found = stored_key(key, stored)
            if found is None:  # added while the module waited on disk (a LoRA layer): it is in memory
                if held_tensor(slot).device.type == "meta":
                    raise RuntimeError(f"{name}: {key} is neither in {path.name} nor in memory (the module was "
                                       "changed while on disk: MemoryManager.materialise must come first)")
                continue
            set_tensor(slot, f.get_tensor(found))
    path.unlink(missing_ok=True)
