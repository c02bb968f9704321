"""Loads and checks the data in ``presets/``: the SDNQ catalog, the model references, the VRAM profiles.

The files are data, edited by hand; this module is the only reader. Every problem is reported as a
:class:`CatalogError` whose message names the file, the entry (index and id) and the field, e.g.
``sdnq_catalog.json entry 7 (FLUX.2-dev-SDNQ-uint4): download_gb must be a positive number, got -1``.
Entry indexes count from 0, as in the JSON array.

No torch, no diffusers, no gradio here: the UI imports this to fill its dropdowns.
"""

from __future__ import annotations

import difflib
import functools
import json
import math
import os
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from engine.errors import EngineError, InputError
from engine.requests import SwapSettings

PRESETS_DIR = Path(__file__).resolve().parents[2] / "presets"
CATALOG_PATH = PRESETS_DIR / "sdnq_catalog.json"
MODELS_PATH = PRESETS_DIR / "models.json"
VRAM_PROFILES_PATH = PRESETS_DIR / "vram_profiles.json"

#: Architecture names allowed in the catalog, in the order the UI lists them.
ARCHITECTURES: tuple[str, ...] = (
    "Flux", "Flux2", "Chroma", "Qwen-Image", "Qwen-Image-Edit", "Z-Image", "SD3.5", "SDXL",
    "Wan", "Chrono", "Hunyuan", "GLM", "LTX2", "Ideogram",
)
TASKS: tuple[str, ...] = ("text_to_image", "image_edit", "image_to_video", "text_to_video")
VRAM_JOB_KINDS: tuple[str, ...] = ("text_to_image", "i2v")
ALL = "All"  # the "no filter" choice of a dropdown

_REPO_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,95}/[A-Za-z0-9][A-Za-z0-9._-]{0,95}$")
_SVD_SUFFIX = re.compile(r"-svd-r(\d+)$")
_PIPELINE_NAME = re.compile(r"^[A-Z][A-Za-z0-9_]*Pipeline$")
_QUANT_NAME = re.compile(r"^[a-z0-9][a-z0-9_-]{0,31}$")
_SLUG = re.compile(r"^[a-z0-9][a-z0-9._-]{0,99}$")
_ID = re.compile(r"^\S(?:.{0,98}\S)?$")


class CatalogError(EngineError):
    """A presets file is missing, is not valid JSON, or holds an entry that breaks the schema."""

    def __init__(self, message: str, *, path: str | os.PathLike | None = None, index: int | None = None,
                 entry_id: str | None = None, field: str | None = None):
        self.path = str(path) if path is not None else None
        self.index = index
        self.entry_id = entry_id
        self.field = field
        super().__init__(message)


PresetError = CatalogError  # the same error for models.json and vram_profiles.json


# ---------------------------------------------------------------- records
@dataclass(frozen=True)
class CatalogEntry:
    """One SDNQ-quantized model of ``presets/sdnq_catalog.json``. Sizes are estimates."""

    id: str
    repo_id: str
    architecture: str
    task: str
    quantization: str
    svd_rank: int | None
    download_gb: float
    vram_gb: float
    pipeline: str | None
    supported: bool
    default_steps: int
    default_guidance: float
    default_size: tuple[int, int]  # (width, height) that vram_gb assumes
    default_frames: int | None
    demo: str | None
    notes: str

    @property
    def vram_bytes(self) -> int:
        return int(self.vram_gb * 2**30)

    @property
    def download_bytes(self) -> int:
        return int(self.download_gb * 10**9)

    @property
    def is_video(self) -> bool:
        return self.task in ("image_to_video", "text_to_video")

    @property
    def needs_image(self) -> bool:
        return self.task in ("image_edit", "image_to_video")

    @property
    def label(self) -> str:
        """Dropdown text: ``FLUX.1-dev-SDNQ-uint4 · Flux · uint4 · ~13 GB VRAM``."""
        text = f"{self.id} · {self.architecture} · {self.quantization} · ~{self.vram_gb:.0f} GB VRAM"
        return text if self.supported else text + " · not supported"

    def to_dict(self) -> dict[str, Any]:
        out = {name: getattr(self, name) for name in self.__dataclass_fields__}
        out["default_size"] = list(self.default_size)
        return out


@dataclass(frozen=True)
class ModelPreset:
    """One real model reference of ``presets/models.json`` and the demo model it maps to."""

    id: str
    repo_id: str
    architecture: str
    pipeline: str  # "" for parts that are not pipelines (adapters, image encoders)
    jobs: tuple[str, ...]
    demo: str


@dataclass(frozen=True)
class VramProfile:
    """Recommended swap settings for one GPU memory size (``presets/vram_profiles.json``)."""

    vram_gb: int
    label: str
    examples: str
    swap: tuple[tuple[str, SwapSettings], ...]  # (job kind, settings), in file order
    notes: str

    @property
    def vram_bytes(self) -> int:
        return self.vram_gb * 2**30

    def swap_for(self, job: str) -> SwapSettings:
        for kind, settings in self.swap:
            if kind == job:
                return settings
        known = ", ".join(kind for kind, _ in self.swap)
        raise InputError("job", f"the {self.label} profile has no swap advice for {job!r}; known: {known}")


# ---------------------------------------------------------------- reading files
def _resolve(path: str | os.PathLike | None, default: Path) -> Path:
    return Path(path).expanduser().resolve() if path is not None else default


def _mtime(path: Path) -> int:
    try:
        return path.stat().st_mtime_ns
    except OSError:
        return -1  # the loader reports the missing file


def _read_json(path: Path) -> Any:
    name = path.name
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise CatalogError(f"{name}: file not found ({path})", path=path) from None
    except (OSError, UnicodeDecodeError) as exc:
        raise CatalogError(f"{name}: cannot read the file ({exc})", path=path) from None
    try:
        return json.loads(text, parse_constant=_reject_constant)
    except json.JSONDecodeError as exc:
        raise CatalogError(
            f"{name} line {exc.lineno} column {exc.colno}: invalid JSON ({exc.msg})", path=path
        ) from None
    except ValueError as exc:  # NaN / Infinity
        raise CatalogError(f"{name}: invalid JSON ({exc})", path=path) from None


def _reject_constant(token: str) -> Any:
    raise ValueError(f"{token} is not allowed in a presets file")


class _Checker:
    """Builds the error messages for one entry of one file."""

    def __init__(self, path: Path, index: int | None = None, entry_id: str | None = None, what: str = "entry"):
        self.path, self.index, self.entry_id, self.what = path, index, entry_id, what

    def where(self) -> str:
        out = self.path.name
        if self.index is not None:
            out += f" {self.what} {self.index}"
        if self.entry_id:
            out += f" ({self.entry_id})"
        return out

    def fail(self, field: str | None, message: str) -> CatalogError:
        prefix = f"{self.where()}: {field} " if field else f"{self.where()}: "
        return CatalogError(prefix + message, path=self.path, index=self.index, entry_id=self.entry_id, field=field)

    # --- field checks; each returns the checked value
    def require(self, data: dict, field: str) -> Any:
        if field not in data:
            raise self.fail(field, "is missing")
        return data[field]

    def string(self, data: dict, field: str, *, empty_ok: bool = False, pattern: re.Pattern | None = None,
               hint: str = "") -> str:
        value = self.require(data, field)
        if not isinstance(value, str):
            raise self.fail(field, f"must be a string, got {_show(value)}")
        if not empty_ok and not value.strip():
            raise self.fail(field, "must not be empty")
        if pattern is not None and value and not pattern.match(value):
            raise self.fail(field, f"{hint or 'has a bad format'}, got {value!r}")
        return value

    def optional_string(self, data: dict, field: str, pattern: re.Pattern | None = None, hint: str = "") -> str | None:
        """A string or null; the key itself must be present."""
        if self.require(data, field) is None:
            return None
        return self.string(data, field, pattern=pattern, hint=hint)

    def choice(self, data: dict, field: str, choices: Sequence[str]) -> str:
        value = self.string(data, field)
        if value not in choices:
            raise self.fail(field, f"must be one of {', '.join(choices)}; got {value!r}")
        return value

    def boolean(self, data: dict, field: str, default: bool | None = None) -> bool:
        if default is not None and field not in data:
            return default
        value = self.require(data, field)
        if not isinstance(value, bool):
            raise self.fail(field, f"must be true or false, got {_show(value)}")
        return value

    def number(self, data: dict, field: str, *, lo: float = 0.0, positive: bool = False, hi: float = math.inf) -> float:
        value = self.require(data, field)
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
            raise self.fail(field, f"must be a {'positive ' if positive else ''}number, got {_show(value)}")
        if positive and value <= 0:
            raise self.fail(field, f"must be a positive number, got {_show(value)}")
        if not lo <= value <= hi:
            raise self.fail(field, f"must be between {lo:g} and {hi:g}, got {_show(value)}")
        return float(value)

    def integer(self, data: dict, field: str, *, lo: int = 1, hi: int = 10**9, optional: bool = False) -> int | None:
        value = self.require(data, field)  # optional: may be null, but must be written out
        if optional and value is None:
            return None
        if isinstance(value, bool) or not isinstance(value, int):
            raise self.fail(field, f"must be a whole number{' or null' if optional else ''}, got {_show(value)}")
        if not lo <= value <= hi:
            raise self.fail(field, f"must be between {lo} and {hi}, got {value}")
        return value

    def no_unknown(self, data: dict, known: Iterable[str]) -> None:
        unknown = sorted(k for k in data if k not in set(known) and not k.startswith("_"))
        if unknown:
            hint = difflib.get_close_matches(unknown[0], list(known), n=1)
            raise self.fail(unknown[0], "is not a known field" + (f" (did you mean {hint[0]!r}?)" if hint else ""))


def _show(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return f"{value:g}" if isinstance(value, float) else str(value)
    if isinstance(value, str):
        return repr(value)
    if isinstance(value, list):
        return "a list"
    if isinstance(value, dict):
        return "an object"
    return f"a {type(value).__name__}"


def _entry_list(path: Path, doc: Any, key: str) -> list:
    check = _Checker(path)
    if not isinstance(doc, dict):
        raise check.fail(None, f"the top level must be a JSON object with an {key!r} list")
    if "version" in doc and doc["version"] != 1:
        raise check.fail("version", f"must be 1, got {_show(doc['version'])}")
    entries = doc.get(key)
    if not isinstance(entries, list):
        raise check.fail(key, f"must be a list of objects, got {_show(entries)}")
    return entries


def _entry_checker(path: Path, index: int, raw: Any, what: str = "entry") -> tuple[_Checker, dict]:
    entry_id = raw.get("id") if isinstance(raw, dict) and isinstance(raw.get("id"), str) else None
    check = _Checker(path, index, entry_id, what)
    if not isinstance(raw, dict):
        raise check.fail(None, f"must be a JSON object, got {_show(raw)}")
    return check, raw


# ---------------------------------------------------------------- the SDNQ catalog
_CATALOG_FIELDS = (
    "id", "repo_id", "architecture", "task", "quantization", "svd_rank", "download_gb", "vram_gb", "pipeline",
    "supported", "default_steps", "default_guidance", "default_size", "default_frames", "demo", "notes",
)


def load_catalog(path: str | os.PathLike | None = None) -> list[CatalogEntry]:
    """Read and check ``presets/sdnq_catalog.json`` (or ``path``); raises :class:`CatalogError`."""
    resolved = _resolve(path, CATALOG_PATH)
    return list(_load_catalog_cached(resolved, _mtime(resolved)))


@functools.lru_cache(maxsize=16)
def _load_catalog_cached(path: Path, _mtime_ns: int) -> tuple[CatalogEntry, ...]:
    entries = [_parse_catalog_entry(path, i, raw) for i, raw in enumerate(_entry_list(path, _read_json(path), "entries"))]
    seen_ids: dict[str, int] = {}
    seen_repos: dict[str, int] = {}
    for i, entry in enumerate(entries):
        check = _Checker(path, i, entry.id)
        if entry.id.casefold() in seen_ids:
            raise check.fail("id", f"is a duplicate of entry {seen_ids[entry.id.casefold()]}: ids must be unique")
        if entry.repo_id.casefold() in seen_repos:
            raise check.fail(
                "repo_id", f"{entry.repo_id!r} is already used by entry {seen_repos[entry.repo_id.casefold()]}"
            )
        seen_ids[entry.id.casefold()] = i
        seen_repos[entry.repo_id.casefold()] = i
    return tuple(entries)


def _parse_catalog_entry(path: Path, index: int, raw: Any) -> CatalogEntry:
    check, data = _entry_checker(path, index, raw)
    entry_id = check.string(data, "id", pattern=_ID, hint="must not start or end with spaces (100 characters at most)")
    repo_id = check.string(data, "repo_id", pattern=_REPO_ID, hint="must be a hub repo id of the form owner/name")
    architecture = check.choice(data, "architecture", ARCHITECTURES)
    task = check.choice(data, "task", TASKS)
    quantization = check.string(data, "quantization", pattern=_QUANT_NAME,
                                hint="must be a short lower-case name such as int8, uint4 or 4bit-dynamic")
    svd_rank = check.integer(data, "svd_rank", lo=1, hi=4096, optional=True)
    suffix = _SVD_SUFFIX.search(repo_id)
    expected_rank = int(suffix.group(1)) if suffix else None
    if svd_rank != expected_rank:
        raise check.fail("svd_rank", f"must be {_show(expected_rank)} to match the repo id {repo_id!r}, got {_show(svd_rank)}")
    download_gb = check.number(data, "download_gb", positive=True, hi=10_000)
    vram_gb = check.number(data, "vram_gb", positive=True, hi=10_000)
    pipeline = check.optional_string(data, "pipeline", pattern=_PIPELINE_NAME,
                                     hint="must be a diffusers pipeline class name ending in 'Pipeline'")
    supported = check.boolean(data, "supported", default=pipeline is not None)
    notes = check.string(data, "notes", empty_ok=True)
    if pipeline is None and supported:
        raise check.fail("supported", "must be false when pipeline is null (nothing can run it)")
    if not supported and not notes.strip():
        raise check.fail("notes", "must say why the entry is not supported")
    default_steps = check.integer(data, "default_steps", lo=1, hi=1000)
    default_guidance = check.number(data, "default_guidance", lo=0.0, hi=100.0)
    size = check.require(data, "default_size")
    if (not isinstance(size, list) or len(size) != 2
            or any(isinstance(v, bool) or not isinstance(v, int) or not 64 <= v <= 8192 or v % 8 for v in size)):
        raise check.fail("default_size", f"must be [width, height], multiples of 8 between 64 and 8192, got {size!r}")
    default_frames = check.integer(data, "default_frames", lo=1, hi=10_000, optional=True)
    if task in ("image_to_video", "text_to_video") and default_frames is None:
        raise check.fail("default_frames", "must be set for a video task")
    demo = check.optional_string(data, "demo", pattern=_SLUG, hint="must be a demo model folder name")
    check.no_unknown(data, _CATALOG_FIELDS)
    return CatalogEntry(
        id=entry_id, repo_id=repo_id, architecture=architecture, task=task, quantization=quantization,
        svd_rank=svd_rank, download_gb=download_gb, vram_gb=vram_gb, pipeline=pipeline, supported=supported,
        default_steps=default_steps, default_guidance=default_guidance, default_size=(size[0], size[1]),
        default_frames=default_frames, demo=demo, notes=notes,
    )


def architectures(catalog: Iterable[CatalogEntry]) -> list[str]:
    """The architectures present in ``catalog``, in :data:`ARCHITECTURES` order."""
    present = {e.architecture for e in catalog}
    return [a for a in ARCHITECTURES if a in present]


def _bits(quantization: str) -> int:
    match = re.search(r"\d+", quantization)
    return int(match.group()) if match else 0


def quantizations(catalog: Iterable[CatalogEntry]) -> list[str]:
    """The quantizations present in ``catalog``: more bits first, then by name (int8, 8bit-dynamic, int4, ...)."""
    return sorted({e.quantization for e in catalog}, key=lambda q: (-_bits(q), q))


def tasks(catalog: Iterable[CatalogEntry]) -> list[str]:
    present = {e.task for e in catalog}
    return [t for t in TASKS if t in present]


def filter_catalog(
    entries: Iterable[CatalogEntry],
    architecture: str | None = None,
    quantization: str | None = None,
    fits_vram_bytes: int | float | None = None,
    text: str = "",
    task: str | None = None,
) -> list[CatalogEntry]:
    """Entries that pass every filter given, in catalog order.

    ``architecture`` / ``quantization`` / ``task``: exact names; ``None``, ``""`` or ``"All"`` means any.
    ``fits_vram_bytes``: keep entries whose ``vram_gb * 2**30`` is at most this many bytes.
    ``text``: every word must occur (case-insensitively) in the id, repo id, architecture, task,
    quantization, pipeline or notes.
    """
    words = (text or "").casefold().split()
    out = []
    for e in entries:
        if architecture not in (None, "", ALL) and e.architecture != architecture:
            continue
        if quantization not in (None, "", ALL) and e.quantization != quantization:
            continue
        if task not in (None, "", ALL) and e.task != task:
            continue
        if fits_vram_bytes is not None and e.vram_gb * 2**30 > fits_vram_bytes:
            continue
        if words:
            haystack = " ".join(
                (e.id, e.repo_id, e.architecture, e.task, e.quantization, e.pipeline or "", e.notes)
            ).casefold()
            if not all(w in haystack for w in words):
                continue
        out.append(e)
    return out


def catalog_entry(entries: Iterable[CatalogEntry], id_or_repo: str) -> CatalogEntry:
    """The entry with this id or repo id (exact first, then ignoring case); raises ``InputError("entry", ...)``."""
    entries = list(entries)
    key = (id_or_repo or "").strip()
    for match in (lambda e: key in (e.id, e.repo_id), lambda e: key.casefold() in (e.id.casefold(), e.repo_id.casefold())):
        for e in entries:
            if match(e):
                return e
    close = difflib.get_close_matches(key, [e.id for e in entries], n=3, cutoff=0.6)
    hint = f" (did you mean {', '.join(close)}?)" if close else ""
    raise InputError("entry", f"unknown catalog entry {id_or_repo!r}{hint}; see the catalog table")


# ---------------------------------------------------------------- models.json
_MODEL_FIELDS = ("id", "repo_id", "architecture", "pipeline", "jobs", "demo")


def load_models(path: str | os.PathLike | None = None) -> list[ModelPreset]:
    """Read and check ``presets/models.json`` (or ``path``); raises :class:`CatalogError`."""
    resolved = _resolve(path, MODELS_PATH)
    return list(_load_models_cached(resolved, _mtime(resolved)))


@functools.lru_cache(maxsize=16)
def _load_models_cached(path: Path, _mtime_ns: int) -> tuple[ModelPreset, ...]:
    out: list[ModelPreset] = []
    seen: dict[str, int] = {}
    for i, raw in enumerate(_entry_list(path, _read_json(path), "models")):
        check, data = _entry_checker(path, i, raw)
        preset_id = check.string(data, "id", pattern=_ID, hint="must not start or end with spaces")
        repo_id = check.string(data, "repo_id", pattern=_REPO_ID, hint="must be a hub repo id of the form owner/name")
        architecture = check.string(data, "architecture")
        pipeline = check.string(data, "pipeline", empty_ok=True)
        if pipeline and not _PIPELINE_NAME.match(pipeline):
            raise check.fail("pipeline", f"must be a diffusers pipeline class name or \"\", got {pipeline!r}")
        jobs = check.require(data, "jobs")
        if not isinstance(jobs, list) or not jobs or not all(isinstance(j, str) and j for j in jobs):
            raise check.fail("jobs", f"must be a non-empty list of job names, got {_show(jobs)}")
        demo = check.string(data, "demo", pattern=_SLUG, hint="must be a demo model folder name")
        check.no_unknown(data, _MODEL_FIELDS)
        if preset_id in seen:
            raise check.fail("id", f"is a duplicate of entry {seen[preset_id]}: ids must be unique")
        seen[preset_id] = i
        out.append(ModelPreset(preset_id, repo_id, architecture, pipeline, tuple(jobs), demo))
    return tuple(out)


def model_preset(presets: Iterable[ModelPreset], id_or_repo: str) -> ModelPreset:
    """The models.json preset with this id or repo id; raises ``InputError("model", ...)``."""
    presets = list(presets)
    key = (id_or_repo or "").strip().casefold()
    for p in presets:
        if key in (p.id.casefold(), p.repo_id.casefold()):
            return p
    raise InputError("model", f"unknown model preset {id_or_repo!r}; known: {', '.join(p.id for p in presets)}")


def demo_for_repo(repo_id: str) -> str | None:
    """The demo model folder that stands in for ``repo_id`` in demo mode, or ``None`` if there is none.

    models.json is asked first, then the SDNQ catalog; repo ids compare without case.
    """
    key = (repo_id or "").strip().casefold()
    for preset in load_models():
        if preset.repo_id.casefold() == key:
            return preset.demo
    for entry in load_catalog():
        if entry.repo_id.casefold() == key:
            return entry.demo
    return None


# ---------------------------------------------------------------- VRAM profiles
_PROFILE_FIELDS = ("vram_gb", "label", "examples", "swap", "notes")


def load_vram_profiles(path: str | os.PathLike | None = None) -> list[VramProfile]:
    """Read and check ``presets/vram_profiles.json`` (or ``path``), sorted by ``vram_gb``; raises :class:`CatalogError`."""
    resolved = _resolve(path, VRAM_PROFILES_PATH)
    return list(_load_vram_profiles_cached(resolved, _mtime(resolved)))


@functools.lru_cache(maxsize=8)
def _load_vram_profiles_cached(path: Path, _mtime_ns: int) -> tuple[VramProfile, ...]:
    out: list[VramProfile] = []
    seen: dict[int, int] = {}
    for i, raw in enumerate(_entry_list(path, _read_json(path), "profiles")):
        check, data = _entry_checker(path, i, raw, what="profile")
        vram_gb = check.integer(data, "vram_gb", lo=1, hi=100_000)
        check.entry_id = check.entry_id or f"{vram_gb} GB"
        label = check.string(data, "label")
        examples = check.string(data, "examples", empty_ok=True) if "examples" in data else ""
        notes = check.string(data, "notes", empty_ok=True)
        swap_raw = check.require(data, "swap")
        if not isinstance(swap_raw, dict):
            raise check.fail("swap", f"must be an object of job kind -> swap settings, got {_show(swap_raw)}")
        missing = [k for k in VRAM_JOB_KINDS if k not in swap_raw]
        if missing:
            raise check.fail(f"swap.{missing[0]}", "is missing")
        swap: list[tuple[str, SwapSettings]] = []
        for kind, settings in swap_raw.items():
            field = f"swap.{kind}"
            try:
                parsed = SwapSettings.from_dict(settings, field + ".")
                parsed.validate(field)
            except InputError as exc:
                raise check.fail(exc.field, exc.message) from None
            swap.append((kind, parsed))
        check.no_unknown(data, _PROFILE_FIELDS)
        if vram_gb in seen:
            raise check.fail("vram_gb", f"{vram_gb} is a duplicate of profile {seen[vram_gb]}")
        seen[vram_gb] = i
        out.append(VramProfile(vram_gb, label, examples, tuple(swap), notes))
    return tuple(sorted(out, key=lambda p: p.vram_gb))


def profile_for_vram(profiles: Sequence[VramProfile], vram_bytes: int | float) -> VramProfile:
    """The largest profile that fits in ``vram_bytes`` (the smallest profile when none does).

    A card reports a little less than its nominal size, so a profile counts as fitting when the card
    has at least 90% of it (an "8 GB" card shows about 7.6 GiB free of 8).
    """
    if not profiles:
        raise InputError("vram", "no VRAM profiles loaded")
    ordered = sorted(profiles, key=lambda p: p.vram_gb)
    fitting = [p for p in ordered if p.vram_bytes * 0.9 <= vram_bytes]
    return fitting[-1] if fitting else ordered[0]
