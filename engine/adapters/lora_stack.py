"""LoRA stack composition on one transformer, through diffusers + peft, recomposed only on change.

Seed 004's lessons, as rules:

- a file is loaded once (``load_lora_weights``, adapter named by its content hash) and kept while any stage of
  the run's stacks holds it; a file no stage holds any more is deleted (``delete_adapters``) and its ledger row
  goes with it;
- a change of strengths or enabled flags only calls ``set_adapters``; an unchanged stack does no LoRA work at
  all. ``counters`` counts loads, deletes and ``set_adapters`` calls so tests and the bench can prove it;
- adapters are never fused (``fuse_lora`` fails on SDNQ and is not bit-exact to undo), and they are *inactive*
  outside a LoRA-stack run: ``deactivate`` (``disable_lora``, a flag on every LoRA layer) runs in ``finally``,
  so the Text-to-image tab, which shares these components, computes the base model bit for bit;
- the stack's ``fingerprint`` (content hashes, strengths, order, enabled flags) goes into every cache key.

The adapters go to ``set_adapters`` in a canonical order (by content hash): the sum of LoRA deltas does not
depend on the order, and a fixed order makes it bit-identical too (float addition is not associative).
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import json
import threading
from dataclasses import dataclass, field

import torch

from engine.adapters.lora_families import model_family
from engine.adapters.lora_files import LoraInfo, target_table
from engine.errors import EngineError


@dataclass(frozen=True)
class StackItem:
    """One resolved entry of a stack: the file's converted weights and how it should be applied."""

    info: LoraInfo
    weight: float
    enabled: bool
    label: str

    @property
    def adapter(self) -> str:
        return adapter_name(self.info.content_hash)


def adapter_name(content_hash: str) -> str:
    return f"lora_{content_hash[:16]}"


def fingerprint(items: list[StackItem] | tuple[StackItem, ...]) -> str:
    """Files by content hash, strengths, order and enabled flags: equal fingerprints, equal results."""
    data = [(i.info.content_hash, float(i.weight), bool(i.enabled)) for i in items]
    return hashlib.sha256(json.dumps(data).encode()).hexdigest()[:16]


def composition(items) -> tuple[tuple[str, float], ...]:
    """What ``set_adapters`` gets: enabled, non-zero entries in canonical order."""
    return tuple(sorted((i.adapter, float(i.weight)) for i in items if i.enabled and i.weight != 0.0))


@dataclass
class Counters:
    loads: int = 0
    deletes: int = 0
    set_adapters: int = 0

    def as_dict(self) -> dict:
        return {"loads": self.loads, "deletes": self.deletes, "set_adapters": self.set_adapters}


@dataclass
class _Loaded:
    info: LoraInfo
    ledger_name: str
    layers: torch.nn.Module = field(repr=False)


class LoraComposer:
    """The LoRA state of one transformer (shared by every pipeline built on it)."""

    def __init__(self, store, transformer: torch.nn.Module, ledger_prefix: str):
        self.store = store
        self.transformer = transformer
        self.ledger_prefix = ledger_prefix
        self.table = target_table(transformer)  # taken before any LoRA wraps a layer
        self.family = model_family(transformer)  # which LoRA layouts apply, and which files are refused
        self.counters = Counters()
        self._loaded: dict[str, _Loaded] = {}  # adapter name -> what is loaded
        self._applied: tuple | None = None  # composition last given to set_adapters
        self._active = False
        self._tuners: list | None = None  # the peft layers this transformer holds, found again after a load/delete
        self._lock = threading.RLock()

    @classmethod
    def of(cls, store, pipe, ledger_prefix: str) -> LoraComposer:
        """The composer of ``pipe``'s transformer, created on first use and kept on the transformer itself
        (it lives exactly as long as the weights it describes; the engine keeps no global state)."""
        return cls.on(store, pipe.transformer, ledger_prefix)

    @classmethod
    def on(cls, store, transformer: torch.nn.Module, ledger_prefix: str) -> LoraComposer:
        """The composer of one transformer (each Wan expert has its own: one stack per expert)."""
        composer = getattr(transformer, "_studio_lora_composer", None)
        if composer is None:
            composer = cls(store, transformer, ledger_prefix)
            transformer._studio_lora_composer = composer
        return composer

    # ------------------------------------------------------------ files
    def loaded(self) -> list[str]:
        return list(self._loaded)

    def loaded_infos(self) -> list[LoraInfo]:
        return [e.info for e in self._loaded.values()]

    def ledger_names(self) -> list[str]:
        return [e.ledger_name for e in self._loaded.values()]

    def pending(self, keep: list[StackItem]) -> bool:
        """Whether ``sync(keep)`` would load or delete anything."""
        wanted = {i.adapter for i in keep}
        return wanted != set(self._loaded)

    def sync(self, keep: list[StackItem]) -> None:
        """Load what ``keep`` holds and is not loaded yet; delete what is loaded and not in ``keep``.

        All-or-nothing: if a load fails, the adapters this call loaded are deleted again and the error
        says which file failed; the stack is as it was."""
        wanted = {i.adapter: i for i in keep}
        with self._lock, _peft():
            new: list[str] = []
            current = None
            try:
                for name, item in wanted.items():
                    if name not in self._loaded:
                        current = item
                        self._load(name, item)
                        new.append(name)
            except Exception as exc:
                if current is not None and current.adapter not in new:  # a load that failed half-way
                    with contextlib.suppress(Exception):
                        self.transformer.delete_adapters(current.adapter)
                for name in new:
                    self._delete(name)
                if isinstance(exc, EngineError):
                    raise
                label = current.label if current else "?"
                raise EngineError(f"could not load LoRA {label}: {str(exc).splitlines()[0][:300]}") from exc
            finally:
                if new:  # load_lora_weights activated the new adapter alone, and only on its own layers
                    self._applied = None
                    self._active = False
                self._tuners = None
            for name in [n for n in self._loaded if n not in wanted]:
                self._delete(name)

    def _load(self, name: str, item: StackItem) -> None:
        # the model's own loader (not the pipeline's): the keys are converted already, and one call targets
        # exactly this transformer, so two Wan experts never share an adapter by accident
        self.transformer.load_lora_adapter(dict(item.info.state_dict), adapter_name=name, prefix="transformer")
        self.counters.loads += 1
        layers = _adapter_layers(self.transformer, name)
        ledger = self.store.register_module(f"{self.ledger_prefix}/lora/{item.label}#{name[5:13]}", layers, "lora",
                                            part_of=self.transformer)
        # the converted tensors now live in the peft layers: keep the summary, not a second copy in RAM
        self._loaded[name] = _Loaded(dataclasses.replace(item.info, state_dict={}), ledger, layers)

    def _delete(self, name: str) -> None:
        entry = self._loaded.pop(name)
        self.transformer.delete_adapters(name)
        self.counters.deletes += 1
        self.store.unregister_module(entry.layers)
        self._applied = None
        self._tuners = None

    def _tuner_layers(self) -> list:
        """The transformer's peft LoRA layers, found once per set of loaded files: every run switches them on and
        off, and walking every module of a 14B transformer (thousands) for it each run is work for nothing."""
        if self._tuners is None:
            from peft.tuners.tuners_utils import BaseTunerLayer

            from engine.adapters.lora_forward import install

            self._tuners = [m for m in self.transformer.modules() if isinstance(m, BaseTunerLayer)]
            install(self._tuners)  # peft's arithmetic without its two full-size temporaries per adapter
        return self._tuners

    def _switch(self, on: bool) -> None:
        """Every LoRA layer on or off: ``enable_lora`` / ``disable_lora`` without their walk over every module and
        without peft's ``requires_grad`` toggling on every adapter weight (a training concern: nothing here
        trains), i.e. only the flag the layers' forward reads. A peft without that flag gets its own call."""
        for layer in self._tuner_layers():
            if hasattr(layer, "_disable_adapters"):
                layer._disable_adapters = not on
            else:
                layer.enable_adapters(on)

    # ------------------------------------------------------------ activation
    def activate(self, items: list[StackItem]) -> bool:
        """Make exactly ``items`` (enabled, with their strengths) the active LoRAs. Returns whether
        ``set_adapters`` had to be called (False: the composition was already in place)."""
        wanted = composition(items)
        missing = [a for a, _ in wanted if a not in self._loaded]
        if missing:
            raise EngineError(f"internal: LoRA {missing[0]} was not loaded before activation")
        with self._lock, _peft():
            if not self._loaded:
                self._active = False
                return False
            self._colocate()
            if not self._active:
                self._switch(True)
                self._active = True
            if wanted != self._applied:
                if wanted:
                    self.transformer.set_adapters([a for a, _ in wanted], [w for _, w in wanted])
                else:  # nothing enabled: no adapter may contribute (peft has no empty active set)
                    self._switch(False)
                    self._active = False
                self.counters.set_adapters += 1
                self._applied = wanted
                return True
            return False

    def _colocate(self) -> None:
        """Every LoRA layer where its base layer is: a ledger eviction may have moved a LoRA row on its own
        (it is a row of its own so that its bytes show), and a forward pass needs both on one device."""
        moved = []
        for module in self._tuner_layers():
            base = getattr(module, "base_layer", None)
            weight = getattr(base, "weight", None)
            if weight is None or weight.device.type == "meta":
                continue
            for part in ("lora_A", "lora_B"):
                for layer in getattr(module, part, {}).values():
                    if layer.weight.device != weight.device:
                        layer.to(weight.device)
                        moved.append(layer)
        if moved:
            self.store.memory.refresh([e.ledger_name for e in self._loaded.values()
                                       if e.ledger_name in self.store.memory])

    def deactivate(self) -> None:
        """No adapter contributes until the next ``activate``: the shared transformer is the base model."""
        with self._lock, _peft():
            if self._loaded:  # always: layers a load wrapped since the last activate must be off too
                self._switch(False)
            self._active = False

    def is_active(self) -> bool:
        """Whether any LoRA layer of this transformer would contribute to a forward pass now."""
        from peft.tuners.tuners_utils import BaseTunerLayer

        return any(isinstance(m, BaseTunerLayer) and not m.disable_adapters and m.active_adapters
                   for m in self.transformer.modules())

    def unload_all(self) -> None:
        with self._lock, _peft():
            for name in list(self._loaded):
                self._delete(name)
            self._active = False


def _peft():
    """Every peft call in inference mode: a memory mode that streamed the transformer (from disk) leaves
    inference tensors behind, and peft toggles ``requires_grad`` on every adapter of each layer it touches,
    which torch refuses for inference tensors outside this mode. Nothing here is ever trained."""
    return torch.inference_mode()


def _adapter_layers(transformer: torch.nn.Module, adapter: str) -> torch.nn.Module:
    """One module holding (references to) the lora_A/lora_B layers of ``adapter``: its ledger row, whose
    bytes are exactly that adapter's weights and whose ``.to()`` moves only them."""
    layers = torch.nn.ModuleList()
    for module in transformer.modules():
        for part in ("lora_A", "lora_B"):
            holder = getattr(module, part, None)
            if isinstance(holder, torch.nn.ModuleDict) and adapter in holder:
                layers.append(holder[adapter])
    return layers
