"""The two smaller files in ``presets/``: ``models.json`` (the real model references and the demo model each maps to)
and ``vram_profiles.json`` (recommended swap settings per GPU memory size)."""

from __future__ import annotations

import os
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

from engine.catalog.preset_files import (
    ID,
    PIPELINE_NAME,
    PRESETS_DIR,
    REPO_ID,
    SLUG,
    entry_checker,
    entry_list,
    read_cached,
    read_json,
    show,
)
from engine.errors import InputError
from engine.requests import SwapSettings

MODELS_PATH = PRESETS_DIR / "models.json"
VRAM_PROFILES_PATH = PRESETS_DIR / "vram_profiles.json"
VRAM_JOB_KINDS: tuple[str, ...] = ("text_to_image", "i2v")


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


# ---------------------------------------------------------------- models.json
_MODEL_FIELDS = ("id", "repo_id", "architecture", "pipeline", "jobs", "demo")


def load_models(path: str | os.PathLike | None = None) -> list[ModelPreset]:
    """Read and check ``presets/models.json`` (or ``path``); raises :class:`CatalogError`."""
    return read_cached(path, MODELS_PATH, _parse_models)


def _parse_models(path: Path) -> tuple[ModelPreset, ...]:
    out: list[ModelPreset] = []
    seen: dict[str, int] = {}
    for i, raw in enumerate(entry_list(path, read_json(path), "models")):
        check, data = entry_checker(path, i, raw)
        preset_id = check.string(data, "id", pattern=ID, hint="must not start or end with spaces")
        repo_id = check.string(data, "repo_id", pattern=REPO_ID, hint="must be a hub repo id of the form owner/name")
        architecture = check.string(data, "architecture")
        pipeline = check.string(data, "pipeline", empty_ok=True)
        if pipeline and not PIPELINE_NAME.match(pipeline):
            raise check.fail("pipeline", f"must be a diffusers pipeline class name or \"\", got {pipeline!r}")
        jobs = check.require(data, "jobs")
        if not isinstance(jobs, list) or not jobs or not all(isinstance(j, str) and j for j in jobs):
            raise check.fail("jobs", f"must be a non-empty list of job names, got {show(jobs)}")
        demo = check.string(data, "demo", pattern=SLUG, hint="must be a demo model folder name")
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


# ---------------------------------------------------------------- VRAM profiles
_PROFILE_FIELDS = ("vram_gb", "label", "examples", "swap", "notes")


def load_vram_profiles(path: str | os.PathLike | None = None) -> list[VramProfile]:
    """Read and check ``presets/vram_profiles.json`` (or ``path``), sorted by ``vram_gb``; raises :class:`CatalogError`."""
    return read_cached(path, VRAM_PROFILES_PATH, _parse_vram_profiles)


def _parse_vram_profiles(path: Path) -> tuple[VramProfile, ...]:
    out: list[VramProfile] = []
    seen: dict[int, int] = {}
    for i, raw in enumerate(entry_list(path, read_json(path), "profiles")):
        check, data = entry_checker(path, i, raw, what="profile")
        vram_gb = check.integer(data, "vram_gb", lo=1, hi=100_000)
        check.entry_id = check.entry_id or f"{vram_gb} GB"
        label = check.string(data, "label")
        examples = check.string(data, "examples", empty_ok=True) if "examples" in data else ""
        notes = check.string(data, "notes", empty_ok=True)
        swap_raw = check.require(data, "swap")
        if not isinstance(swap_raw, dict):
            raise check.fail("swap", f"must be an object of job kind -> swap settings, got {show(swap_raw)}")
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
