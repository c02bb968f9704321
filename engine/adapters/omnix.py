"""OmniX task adapters over a shared Flux transformer: which files, checked before loading, loaded through
diffusers' LoRA loader for one run, and removed again so the shared transformer is left as it was.

The repository layout is upstream's (HKU-MMLab/OmniX ``pipeline_omnix.py:18-51``):
``<repo>/<task>/<adapter>/pytorch_lora_weights.safetensors``, one adapter per batch item, condition first.
"""

from __future__ import annotations

import contextlib
from pathlib import Path

import torch
from peft.tuners.lora import LoraLayer

from engine.adapters.omnix_attention import CrossItemFluxAttnProcessor, route_items
from engine.errors import InputError, ModelLoadError
from engine.panorama.tasks import TASKS, adapter_name


def check_adapter_folder(root: Path, tasks, transformer: torch.nn.Module, base_label: str) -> None:
    """Every file a task needs is there and fits this transformer, checked from the safetensors headers before
    anything loads: a missing task or a LoRA made for another base model gets a message, not a shape error."""
    from safetensors import safe_open

    modules = dict(transformer.named_modules())
    for task in tasks:
        spec = TASKS[task]
        for adapter in spec.adapters:
            path = root / spec.weight_name(adapter)
            if not path.is_file():
                raise InputError("adapters", f"the adapter folder has no {task} adapters: {spec.weight_name(adapter)} "
                                             f"is missing from {root}")
            try:
                with safe_open(str(path), "pt") as f:
                    shapes = {k: tuple(f.get_slice(k).get_shape()) for k in f.keys()}
            except Exception as exc:  # a truncated or foreign file: safetensors says why
                raise ModelLoadError(f"cannot read {spec.weight_name(adapter)}: {exc}") from None
            _check_fits(spec.weight_name(adapter), shapes, modules, base_label)


def _check_fits(name: str, shapes: dict, modules: dict, base_label: str) -> None:
    lora = {k: v for k, v in shapes.items() if ".lora_A." in k or ".lora_B." in k}
    if not lora:
        raise ModelLoadError(f"{name} holds no LoRA weights (no lora_A/lora_B tensors); is it an OmniX adapter?")
    for key, shape in lora.items():
        module_name = key.split(".lora_")[0].removeprefix("transformer.")
        module = modules.get(module_name)
        if not key.startswith("transformer.") or module is None:
            raise ModelLoadError(
                f"{name} was made for another base model: it has weights for {module_name!r}, which the "
                f"{base_label} transformer does not have"
            )
        if not isinstance(module, torch.nn.Linear) or len(shape) != 2:
            continue
        want = module.in_features if ".lora_A." in key else module.out_features
        got = shape[1] if ".lora_A." in key else shape[0]
        if got != want:
            side = "inputs" if ".lora_A." in key else "outputs"
            raise ModelLoadError(
                f"{name} was made for another base model: its {module_name} has {got} {side}, the {base_label} "
                f"transformer's has {want} (OmniX adapters fit FLUX.1-dev)"
            )


_UNSET = object()


@contextlib.contextmanager
def _quiet_diffusers():
    from diffusers.utils import logging

    level = logging.get_verbosity()
    logging.set_verbosity_error()
    try:
        yield
    finally:
        logging.set_verbosity(level)


class AdapterWeights(torch.nn.Module):
    """A ledger view of one loaded adapter: the very LoRA parameters peft put into the transformer.

    The adapter lives inside the transformer and moves with it (the memory strategies move the transformer), so
    moving this view is a no-op: an eviction of the view can never pull LoRA weights out from under a layer."""

    def __init__(self, params: list[torch.nn.Parameter]):
        super().__init__()
        self.weights = torch.nn.ParameterList(params)

    def _apply(self, fn, recurse=True):
        return self


class OmniXSession:
    """OmniX on a shared Flux pipeline for the length of one run.

    Entering notes the transformer's attention processors and peft state, then loads every chosen task's adapter
    pair with diffusers' ``load_lora_weights`` (upstream's call and file names), each registered in the ledger.
    That happens before the pipeline call, so the memory mode places the transformer with its adapters in it
    (the transformer first comes wholly into memory: ``MemoryManager.materialise``).
    ``task(name)`` routes batch items to that task's pair and installs the cross-item attention for the length
    of the task; leaving the session removes every adapter and restores what was noted (also after a cancel or
    an exception), so another tab's next run sees the transformer as it was.
    """

    def __init__(self, pipe, root: Path, memory, tasks, label: str = "OmniX"):
        self.pipe, self.root, self.memory, self.label = pipe, Path(root), memory, label
        self.tasks = tuple(tasks)
        self.transformer = pipe.transformer
        self.peak_ledger_bytes = 0  # what the ledger held with the adapters in
        self._entries: list[str] = []

    def __enter__(self):
        t = self.transformer
        self._processors = dict(t.attn_processors)
        self._had_peft = bool(getattr(t, "peft_config", None))
        self._active = list(t.active_adapters()) if self._had_peft else []
        self._flag = t.__dict__.get("_hf_peft_config_loaded", _UNSET)
        self._in_memory()
        try:
            for task in self.tasks:
                self._load(task)
        except BaseException:
            self.__exit__(None, None, None)
            raise
        self.peak_ledger_bytes = sum(self.memory.entry(n).bytes for n in self.memory.names())
        return self

    def _load(self, task: str) -> None:
        spec = TASKS[task]
        for adapter in spec.adapters:
            name = adapter_name(task, adapter)
            with _quiet_diffusers():  # it says, per file, that the text encoder gets no LoRA keys: true
                self.pipe.load_lora_weights(str(self.root), weight_name=spec.weight_name(adapter), adapter_name=name,
                                            local_files_only=True)
            params = [p for n, p in self.transformer.named_parameters() if f".{name}." in n]
            entry = f"{self.label}/{spec.folder}/{adapter}"
            self.memory.register(entry, AdapterWeights(params), "lora", part_of=self.transformer)
            self._entries.append(entry)

    def _in_memory(self) -> None:
        """peft must wrap (and unwrap) layers whose weights are real: a memory mode may have left the transformer
        streamed or on disk (another tab's run, or this run's mode by the time the session ends)."""
        name = self.memory.name_of(self.transformer)
        if name is not None:
            self.memory.materialise([name])

    def __exit__(self, *exc):
        t = self.transformer
        self._in_memory()
        t.set_attn_processor(dict(self._processors))  # it consumes the dict
        for entry in self._entries:
            self.memory.unregister(entry)
        self._entries.clear()
        if not self._had_peft:
            if getattr(t, "peft_config", None) is not None or any(isinstance(m, LoraLayer) for m in t.modules()):
                t.unload_lora()  # no adapters were there before: take the peft wrappers off again
            t.__dict__.pop("_hf_peft_config_loaded", None)
            if self._flag is not _UNSET:
                t._hf_peft_config_loaded = self._flag
            return False
        ours = [n for n in (getattr(t, "peft_config", None) or {}) if n.startswith("omnix_")]
        if ours:
            t.delete_adapters(ours)
        if self._active:
            t.set_adapters(self._active)
        return False

    @contextlib.contextmanager
    def task(self, task: str):
        """Item *i* through this task's adapter *i*, keys and values joined across items, for the block."""
        names = tuple(adapter_name(task, a) for a in TASKS[task].adapters)
        handles = route_items(self.transformer, names)
        try:
            self.transformer.set_attn_processor(CrossItemFluxAttnProcessor())
            yield names
        finally:
            for h in handles:
                h.remove()
            self.transformer.set_attn_processor(dict(self._processors))
