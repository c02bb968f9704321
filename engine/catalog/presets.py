"""The SDNQ catalog (``presets/sdnq_catalog.json``): its entries, loaded and checked, and the filters the catalog
tab and ``engine.catalog.service`` use. With ``model_presets`` (models.json, vram_profiles.json) and
``preset_files`` (how a presets file is read and checked) this is the only reader of ``presets/``; their public
names stay importable from here.

No torch, no diffusers, no gradio here: the UI imports this to fill its dropdowns.
"""

from __future__ import annotations

import difflib
import os
import re
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from engine.catalog.model_presets import (  # noqa: F401  (re-exported)
    MODELS_PATH,
    VRAM_JOB_KINDS,
    VRAM_PROFILES_PATH,
    ModelPreset,
    VramProfile,
    load_models,
    load_vram_profiles,
    model_preset,
    profile_for_vram,
)
from engine.catalog.preset_files import (  # noqa: F401  (re-exported)
    ID,
    PIPELINE_NAME,
    PRESETS_DIR,
    REPO_ID,
    SLUG,
    CatalogError,
    Checker,
    PresetError,
    entry_checker,
    entry_list,
    read_cached,
    read_json,
    resolve,
    show,
)
from engine.errors import InputError

CATALOG_PATH = PRESETS_DIR / "sdnq_catalog.json"

#: Architecture names allowed in the catalog, in the order the UI lists them.
ARCHITECTURES: tuple[str, ...] = (
    "Flux", "Flux2", "Chroma", "Qwen-Image", "Qwen-Image-Edit", "Z-Image", "SD3.5", "SDXL",
    "Wan", "Chrono", "Hunyuan", "GLM", "LTX2", "Ideogram",
)
TASKS: tuple[str, ...] = ("text_to_image", "image_edit", "image_to_video", "text_to_video")
ALL = "All"  # the "no filter" choice of a dropdown

_SVD_SUFFIX = re.compile(r"-svd-r(\d+)$")
_QUANT_NAME = re.compile(r"^[a-z0-9][a-z0-9_-]{0,31}$")


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


_CATALOG_FIELDS = (
    "id", "repo_id", "architecture", "task", "quantization", "svd_rank", "download_gb", "vram_gb", "pipeline",
    "supported", "default_steps", "default_guidance", "default_size", "default_frames", "demo", "notes",
)


def load_catalog(path: str | os.PathLike | None = None) -> list[CatalogEntry]:
    """Read and check ``presets/sdnq_catalog.json`` (or ``path``); raises :class:`CatalogError`."""
    return read_cached(path, CATALOG_PATH, _parse_catalog)


def _parse_catalog(path: Path) -> tuple[CatalogEntry, ...]:
    entries = [_parse_catalog_entry(path, i, raw) for i, raw in enumerate(entry_list(path, read_json(path), "entries"))]
    seen_ids: dict[str, int] = {}
    seen_repos: dict[str, int] = {}
    for i, entry in enumerate(entries):
        check = Checker(path, i, entry.id)
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
    check, data = entry_checker(path, index, raw)
    entry_id = check.string(data, "id", pattern=ID, hint="must not start or end with spaces (100 characters at most)")
    repo_id = check.string(data, "repo_id", pattern=REPO_ID, hint="must be a hub repo id of the form owner/name")
    architecture = check.choice(data, "architecture", ARCHITECTURES)
    task = check.choice(data, "task", TASKS)
    quantization = check.string(data, "quantization", pattern=_QUANT_NAME,
                                hint="must be a short lower-case name such as int8, uint4 or 4bit-dynamic")
    svd_rank = check.integer(data, "svd_rank", lo=1, hi=4096, optional=True)
    suffix = _SVD_SUFFIX.search(repo_id)
    expected_rank = int(suffix.group(1)) if suffix else None
    if svd_rank != expected_rank:
        raise check.fail("svd_rank", f"must be {show(expected_rank)} to match the repo id {repo_id!r}, got {show(svd_rank)}")
    download_gb = check.number(data, "download_gb", positive=True, hi=10_000)
    vram_gb = check.number(data, "vram_gb", positive=True, hi=10_000)
    pipeline = check.optional_string(data, "pipeline", pattern=PIPELINE_NAME,
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
    demo = check.optional_string(data, "demo", pattern=SLUG, hint="must be a demo model folder name")
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
