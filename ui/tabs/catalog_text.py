"""The SDNQ catalog tab's text: table rows, the entry panel, sizes and progress in words, the run's info line.
Pure functions of catalog entries and results, tested without a browser."""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

from engine import Result
from engine.catalog import service as catalog_service
from engine.catalog.presets import CatalogEntry
from engine.hub import download as engine_hub

COLUMNS = ["entry", "architecture", "quantization", "download ≈GB", "VRAM ≈GB", "pipeline / supported", "cache",
           "on disk"]
DATATYPES = ["str", "str", "str", "number", "number", "str", "str", "str"]

TASK_WORDS = {"text_to_image": "text to image", "image_edit": "image edit", "image_to_video": "image to video",
              "text_to_video": "text to video"}


def bytes_text(n: int | float | None) -> str:
    """Decimal units, as the catalog's download sizes (``17.40 GB``, ``3.2 MB``); "–" for nothing."""
    if not n:
        return "–"
    if n < 1000:
        return f"{int(n)} B"
    if n < 1e6:
        return f"{n / 1e3:.1f} kB"
    if n < 1e9:
        return f"{n / 1e6:.1f} MB"
    return f"{n / 1e9:.2f} GB"


def progress_text(done: int, total: int | None) -> str:
    """``12.3 MB / 17.40 GB``: the text on the download bar (the bar itself shows the percentage)."""
    if not total:
        return f"{bytes_text(done)} so far"
    return f"{bytes_text(done)} / {bytes_text(total)}"


def capacity_text(limit_bytes: int, source: str) -> str:
    """What "fits my GPU" compares against: ``≤ 24 GB (NVIDIA RTX 4090 VRAM)``, ``≤ 62 GB system RAM (no GPU found)``."""
    size = f"≤ {limit_bytes / 2**30:.0f} GB"
    return f"{size} {source}" if "(" in source else f"{size} ({source})"


def pipeline_text(entry: CatalogEntry, demo: bool = False) -> str:
    """The pipeline column: the diffusers class, what it is for when this tab cannot run it, and demo support."""
    if not entry.supported or not entry.pipeline:
        return "✗ not supported"
    text = entry.pipeline
    if entry.task != "text_to_image":
        text += f" · {TASK_WORDS.get(entry.task, entry.task)} (other tab)"
    elif demo:
        text += " · demo ✓" if entry.demo else " · no demo"
    return text


def catalog_table(rows: Iterable[catalog_service.CatalogRow], demo: bool = False) -> list[list]:
    """One list per ``CatalogRow``, in :data:`COLUMNS` order."""
    return [
        [r.entry.id, r.entry.architecture, r.entry.quantization, r.entry.download_gb, r.entry.vram_gb,
         pipeline_text(r.entry, demo), r.state_label, bytes_text(r.cache.bytes_on_disk)]
        for r in rows
    ]


def table_label(shown: int, total: int) -> str:
    return f"{shown} of {total} entries · click a row to pick it"


def entry_details(entry: CatalogEntry, cache: engine_hub.CacheState | None, demo: bool) -> str:
    """The panel beside the table for the picked entry: what it is, its notes, its defaults, where it runs."""
    lines = [f"**{entry.id}** · `{entry.repo_id}` · {entry.architecture} · {entry.quantization}"
             + (f" (SVD rank {entry.svd_rank})" if entry.svd_rank else "")]
    if entry.notes:
        lines.append(entry.notes)
    width, height = entry.default_size
    defaults = f"{width}×{height}, {entry.default_steps} steps, guidance {entry.default_guidance:g}"
    if entry.default_frames:
        defaults += f", {entry.default_frames} frames"
    lines.append(f"Defaults: {defaults} · download ≈{entry.download_gb:g} GB · VRAM ≈{entry.vram_gb:g} GB")
    if cache is not None:
        where = f" in `{cache.path}`" if cache.complete and cache.path else ""
        kept = f" ({bytes_text(cache.bytes_on_disk)} on disk; Download resumes)" if cache.state == "partial" else ""
        lines.append(f"Cache: **{catalog_service.STATE_LABELS[cache.state]}**{kept}{where}")
    if not entry.supported or not entry.pipeline:
        lines.append("⚠️ Not supported in this version: it cannot be generated with here.")
    elif entry.task != "text_to_image":
        lines.append(f"⚠️ A {TASK_WORDS.get(entry.task, entry.task)} model: this tab makes images from text, so it "
                     "cannot be generated with here.")
    elif demo:
        lines.append("Demo: generates with the tiny int8 Flux stand-in (64 px, 2 steps)." if entry.demo else
                     "⚠️ Demo mode has no stand-in for this architecture: start without `--demo` to generate with it.")
    return "\n\n".join(lines)


def format_result(result: Result) -> str:
    """The line under the gallery: timings, the pipeline, where the files went, and every warning."""
    t = result.timings
    parts = [f"{label} {t[key]:.2f} s" for key, label in
             (("load", "load"), ("to_device", "to device"), ("denoise_decode", "denoise + decode")) if key in t]
    model = result.metadata.get("entry") or ""
    pipeline = result.metadata.get("pipeline") or ""
    images = [f for f in result.files if f.endswith(".png")]
    where = f" in `{Path(images[0]).parent}`" if images else ""
    files = ", ".join(f"`{Path(f).name}`" for f in images)
    text = f"**{t.get('total', 0.0):.2f} s** ({' · '.join(parts)})"
    if model or pipeline:
        text += f" · {' · '.join(p for p in (model, pipeline) if p)}"
    text += f" · saved {files}{where}"
    for warning in result.metadata.get("warnings") or []:
        text += f"\n\n⚠️ {warning}"
    return text
