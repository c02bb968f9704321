"""The LoRA stacks of any run: one per transformer (one per Wan expert), through ``LoraComposer``.

Every runner that calls a diffusion transformer wraps its denoising in ``applied(...)``: the stack's files are
resolved and checked, what changed is loaded (an unchanged stack reads no file, loads nothing and calls no
``set_adapters``), each transformer's own composition is made active, and in ``finally`` every adapter is
switched off again, so a cancel or an exception leaves the shared transformers the base model. Rules:

- an empty stack does no LoRA work at all: it only makes sure nothing is active (it deletes nothing, so another
  tab's adapters stay loaded for that tab's next run);
- an entry at strength 0, or disabled, costs nothing unless its file is loaded already (then it stays loaded,
  so toggling it back is only a ``set_adapters``);
- the Wan experts each have a composer of their own: the expert switch changes which stack computes without
  loading or activating anything.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from dataclasses import dataclass, field

from engine.adapters.lora_files import LoraInfo, content_hash, inspect_file
from engine.adapters.lora_stack import LoraComposer, StackItem, fingerprint
from engine.errors import InputError, ModelLoadError
from engine.requests import LoraSpec

EXPERT_NAMES = {"transformer": "high-noise expert", "transformer_2": "low-noise expert"}


def lora_file(spec: LoraSpec, progress=None, cancel=None, cached_only: bool = False) -> str:
    """The local file of a stack entry; a hub entry is fetched into the HF cache (resumable, verified) by
    ``prepare``, outside the device lock; the run itself then only looks it up (``cached_only``)."""
    if not spec.repo_id:
        return spec.path
    from huggingface_hub import hf_hub_download
    from huggingface_hub.errors import EntryNotFoundError, LocalEntryNotFoundError, RepositoryNotFoundError

    if progress is not None:
        progress(0.0, f"fetching LoRA {spec.repo_id}/{spec.filename}")
    try:
        return hf_hub_download(spec.repo_id, spec.filename, revision=spec.revision or None,
                               local_files_only=cached_only)
    except EntryNotFoundError:
        raise ModelLoadError(f"{spec.repo_id} has no file {spec.filename}") from None
    except RepositoryNotFoundError:
        raise ModelLoadError(f"no hub repo {spec.repo_id} (or it is private: log in with a token)") from None
    except LocalEntryNotFoundError:
        raise ModelLoadError(f"{spec.repo_id}/{spec.filename} is not in the local cache and the hub cannot be "
                             "reached") from None
    except OSError as exc:
        raise ModelLoadError(f"could not fetch {spec.repo_id}/{spec.filename}: {exc}") from None


def fetch_files(specs, progress, cancel) -> None:
    """``prepare``'s part: hub entries into the HF cache before the device lock is taken."""
    for spec in specs:
        lora_file(spec, progress, cancel)


def composer_info(composer: LoraComposer, path: str, field_name: str, label: str) -> LoraInfo:
    """A loaded file's converted weights are reused: an unchanged stack reads no file at all."""
    digest = content_hash(path)
    for loaded in composer.loaded_infos():
        if loaded.content_hash == digest:
            return loaded
    return inspect_file(path, composer.table, field_name, label, composer.family)


def _idle_info(path: str) -> LoraInfo:
    """An entry that will not compute (strength 0 / disabled) and is not loaded: known by its hash only."""
    import os

    return LoraInfo(path=path, content_hash=content_hash(path), file_bytes=os.path.getsize(path),
                    layout="not read (strength 0 or disabled)", rank=0, ranks=(0,), targets=(), modules_hit=0,
                    modules_total=0)


def stack_items(composer: LoraComposer, specs: tuple[LoraSpec, ...], field_name: str) -> list[StackItem]:
    """Resolve and check every entry; two entries with the same bytes (even under two names) are refused."""
    items, seen = [], {}
    loaded = {i.content_hash for i in composer.loaded_infos()}
    for i, spec in enumerate(specs):
        path = lora_file(spec, cached_only=True)
        name = f"{field_name}[{i}]"
        idle = not spec.enabled or float(spec.weight) == 0.0
        info = _idle_info(path) if idle and content_hash(path) not in loaded else \
            composer_info(composer, path, name, spec.label)
        if info.content_hash in seen:
            raise InputError(name, f"{spec.label} has the same content as entry {seen[info.content_hash] + 1} "
                                   f"({specs[seen[info.content_hash]].label}); keep one and set its strength")
        seen[info.content_hash] = i
        items.append(StackItem(info, float(spec.weight), bool(spec.enabled), spec.label))
    return items


def keep_set(composer: LoraComposer, items: list[StackItem]) -> list[StackItem]:
    """What a stack holds loaded: the entries that compute, and the idle ones whose file is loaded already."""
    loaded = set(composer.loaded())
    return [i for i in items if (i.enabled and i.weight != 0.0) or i.adapter in loaded]


def weights_in_memory(engine, pipe) -> None:
    """peft wraps the layers a LoRA targets, which renames their tensors (``x.weight`` -> ``x.base_layer.weight``):
    the pipeline's transformers come wholly into memory first, their memory mode taken off (re-applied on the
    next call), see ``MemoryManager.materialise``. Only when the set of files changes."""
    engine.memory.materialise([c.name for c in engine.store.components_of(pipe) if c.role == "transformer"])


def unknown_key_warnings(items: list[StackItem], where: str = "") -> list[str]:
    """One line per LoRA that left something out: how many keys, an example, and its converter's notes."""
    out = []
    for i in items:
        parts = [f"{i.info.unknown_count} key(s) not applied, e.g. {i.info.unknown_example}"] \
            if i.info.unknown_count else []
        parts += list(i.info.notes)
        if parts:
            out.append(f"{where}{i.label}: " + "; ".join(parts))
    return out


def plan_bytes(specs, elem: int, notes: list[str], seen: set | None = None) -> int:
    """What a stack's LoRA layers add inside its transformer's blocks, for ``Engine.plan`` (file bytes at the load
    dtype, as the converted pairs are about the file's size): the entries a fresh engine loads (enabled, strength
    not 0), each file once per transformer (``seen``: the files counted already on it). A hub file not in the
    cache yet is a note, not a download."""
    from pathlib import Path

    from engine.plan import file_bytes

    seen = set() if seen is None else seen
    total = 0
    for spec in specs:
        if not spec.enabled or float(spec.weight) == 0.0:
            continue
        try:
            path = Path(lora_file(spec, cached_only=True))
        except ModelLoadError:
            notes.append(f"{spec.label} is not downloaded yet: its bytes are not in the plan")
            continue
        if path.is_file() and path.resolve() not in seen:
            seen.add(path.resolve())
            total += file_bytes(path, elem)
    return total


def plan_extra(stacks: dict[str, tuple[LoraSpec, ...]], elem: int, extra=None):
    """``extra`` (a ``PlanExtra``, a new one by default) with each stack's bytes on its own transformer (attribute
    = component name: ``transformer``, Wan's ``transformer_2``), where its layers load and stream."""
    from engine.plan import PlanExtra

    extra = PlanExtra() if extra is None else extra
    for attr, specs in stacks.items():
        size = plan_bytes(specs, elem, extra.notes)
        if size:
            extra.in_blocks_of[attr] = extra.in_blocks_of.get(attr, 0) + size
    return extra


@dataclass
class StackRun:
    """What ``applied`` did: per transformer attribute its items, composer and counters before the run."""

    items: dict[str, list[StackItem]] = field(default_factory=dict)
    composers: dict[str, LoraComposer] = field(default_factory=dict)
    before: dict[str, dict] = field(default_factory=dict)

    def fingerprint(self, attr: str = "transformer") -> str:
        return fingerprint(self.items.get(attr, []))

    def key(self) -> str:
        """One fingerprint over every transformer's stack, for cache keys."""
        return "|".join(f"{a}:{self.fingerprint(a)}" for a in sorted(self.items)) or "none"

    def work(self) -> dict:
        total = {"loads": 0, "deletes": 0, "set_adapters": 0}
        for attr, composer in self.composers.items():
            after = composer.counters.as_dict()
            for k in total:
                total[k] += after[k] - self.before[attr][k]
        return total

    def metadata(self) -> dict:
        """``loras`` / ``lora_work`` / ``fingerprint`` for the result (both experts' stacks on Wan)."""
        if not any(self.items.values()):
            return {"lora_work": self.work()} if self.composers else {}
        data: dict = {"lora_work": self.work(), "fingerprint": self.fingerprint()}
        for attr, items in self.items.items():
            rows = [dict(i.info.summary(), weight=i.weight, enabled=i.enabled) for i in items]
            data["loras" if attr == "transformer" else f"loras_{attr.rsplit('_', 1)[-1]}"] = rows
            if attr != "transformer":
                data[f"fingerprint_{attr.rsplit('_', 1)[-1]}"] = self.fingerprint(attr)
        return data

    def warnings(self) -> list[str]:
        many = len([a for a, i in self.items.items() if i]) > 1
        out = []
        for attr, items in self.items.items():
            out += unknown_key_warnings(items, f"{EXPERT_NAMES.get(attr, attr)}: " if many else "")
        return out


@contextlib.contextmanager
def applied(engine, pipe, stacks: dict[str, tuple[tuple[LoraSpec, ...], str]], ledger_prefix: str
            ) -> Iterator[StackRun]:
    """Each transformer of ``pipe`` named in ``stacks`` (attribute -> (specs, request field)) with exactly its
    stack active inside the block; none active after it, whatever happens inside."""
    run = StackRun()
    for attr, (specs, field_name) in stacks.items():
        module = getattr(pipe, attr, None)
        if module is None:
            if specs:
                raise InputError(field_name, f"this model has no {EXPERT_NAMES.get(attr, attr)} to put LoRAs on")
            continue
        if not specs and getattr(module, "_studio_lora_composer", None) is None:
            continue  # never had a LoRA: nothing to switch off, nothing to do
        suffix = "" if attr == "transformer" else f"/{attr}"
        composer = LoraComposer.on(engine.store, module, f"{ledger_prefix}{suffix}")
        run.composers[attr] = composer
        run.before[attr] = composer.counters.as_dict()
        run.items[attr] = stack_items(composer, tuple(specs), field_name)
    try:
        for attr, composer in run.composers.items():
            keep = keep_set(composer, run.items[attr])
            if run.items[attr] and composer.pending(keep):
                weights_in_memory(engine, pipe)
                composer.sync(keep)
        for attr, composer in run.composers.items():
            if run.items[attr]:
                composer.activate(run.items[attr])
            else:
                composer.deactivate()
        yield run
    finally:
        for composer in run.composers.values():
            composer.deactivate()
