"""What the SDNQ catalog tab asks of the engine besides runs: entries with their cache state,
what "fits my GPU" means here, and downloads (outside the device lock: they use no GPU)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from engine.catalog.presets import CatalogEntry, catalog_entry, filter_catalog, load_catalog
from engine.hub import download as hub
from engine.hub import verify as hub_verify

STATE_LABELS = {"absent": "not downloaded", "partial": "partial", "complete": "complete"}


@dataclass(frozen=True)
class CatalogRow:
    entry: CatalogEntry
    cache: hub.CacheState

    @property
    def state_label(self) -> str:
        return STATE_LABELS[self.cache.state]


def capacity(engine) -> tuple[int, str]:
    """Bytes a model may use on this machine's compute device, and where that figure comes from."""
    if engine.memory.budget_bytes is not None:
        return engine.memory.budget_bytes, "memory budget"
    from engine.memory import device_stats  # torch: only once the page asks, never at import

    stats = device_stats()  # accelerators first, system RAM last
    compute = next((d for d in stats if d["device"].startswith(engine.memory.compute_device)), None)
    if compute is not None and compute["device"] != "cpu":
        return compute["total"], f"{compute['name']} VRAM"
    return stats[-1]["total"], "system RAM (no GPU found)"


def rows(engine, architecture=None, quantization=None, fits: bool = False, text: str = "") -> list[CatalogRow]:
    fits_bytes = capacity(engine)[0] if fits else None
    entries = filter_catalog(load_catalog(), architecture=architecture, quantization=quantization,
                             fits_vram_bytes=fits_bytes, text=text)
    return [CatalogRow(e, hub.cache_state(e.repo_id)) for e in entries]


def entry(entry_id: str) -> CatalogEntry:
    return catalog_entry(load_catalog(), entry_id)


def download(entry_id: str, progress=None, cancel=None) -> Path:
    """Fetch a catalog model into the HF cache (resumable); a complete one returns at once."""
    e = entry(entry_id)
    return hub.download(e.repo_id, expected_bytes=e.download_bytes, progress=progress, cancel=cancel)


def verify(entry_id: str, repair: bool = False, progress=None, cancel=None) -> hub_verify.VerifyReport:
    """Re-hash a catalog model's cached files against the hub's checksums; ``repair`` fetches bad ones again."""
    e = entry(entry_id)
    return hub_verify.verify(e.repo_id, repair=repair, progress=progress, cancel=cancel)
