"""The catalog tab's whole path without the browser: browse with cache state, download a catalog entry
from a local fake hub into the HF cache, then load and generate with it through the engine."""

from __future__ import annotations

import numpy as np
import pytest

from engine import CatalogRequest, Engine
from engine.catalog import service as catalog

ENTRY = "FLUX.1-dev-SDNQ-uint4"
GEN = {"prompt": "a lighthouse at dusk", "width": 64, "height": 64, "steps": 2, "seed": 42}


@pytest.fixture
def hub(sdnq_hub):
    return sdnq_hub


def row_for(engine, entry_id):
    rows = catalog.rows(engine, text=entry_id)
    return next(r for r in rows if r.entry.id == entry_id)


def test_browse_download_load_generate(hub, models_dir, tmp_path):
    engine = Engine(device="cpu", models_dir=tmp_path / "models", outputs_dir=tmp_path / "out")
    assert row_for(engine, ENTRY).state_label == "not downloaded"
    assert hub.resolve_gets() == 0  # browsing is offline

    seen = []
    folder = catalog.download(ENTRY, progress=lambda done, total, msg: seen.append((done, total)))
    assert (folder / "model_index.json").is_file()
    assert seen and seen[-1][0] == seen[-1][1] > 0
    assert [d for d, _ in seen] == sorted(d for d, _ in seen)
    row = row_for(engine, ENTRY)
    assert row.state_label == "complete" and row.cache.bytes_on_disk > 0

    hub.reset_counters()
    assert catalog.download(ENTRY) == folder
    assert hub.resolve_gets() == 0  # a complete model is never fetched twice

    result = engine.run(CatalogRequest(entry=ENTRY, **GEN))
    assert result.metadata["entry"] == ENTRY and result.metadata["warnings"] == []
    assert any(m["name"].endswith("/transformer") for m in result.memory["modules"])
    assert hub.resolve_gets() == 0  # the run used the cache

    demo = Engine(device="cpu", models_dir=models_dir, demo=True, outputs_dir=tmp_path / "demo-out")
    same = demo.run(CatalogRequest(entry=ENTRY, **GEN)).images[0]
    assert np.array_equal(np.asarray(result.images[0]), np.asarray(same))  # same files, same pixels


def test_run_downloads_a_missing_entry_first_with_progress(hub, tmp_path):
    engine = Engine(device="cpu", models_dir=tmp_path / "models", outputs_dir=tmp_path / "out")
    messages = []
    result = engine.run(CatalogRequest(entry=ENTRY, **GEN), progress=lambda f, m: messages.append(m))
    assert any(m.startswith("downloading") for m in messages)
    assert len(result.images) == 1
    assert row_for(engine, ENTRY).state_label == "complete"


def test_fits_my_gpu_uses_the_budget(tmp_path):
    engine = Engine(device="cpu", models_dir=tmp_path, outputs_dir=tmp_path, budget_bytes=8 * 2**30)
    limit, source = catalog.capacity(engine)
    assert (limit, source) == (8 * 2**30, "memory budget")
    rows = catalog.rows(engine, fits=True)
    assert rows and all(r.entry.vram_bytes <= limit for r in rows)
    assert len(rows) < len(catalog.rows(engine))
