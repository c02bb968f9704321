"""The SDNQ catalog tab: pure table/format/request functions, then the app through its HTTP API
(generate on a catalog entry, quantize the demo Flux and generate with the result, download from a local
fake hub with progress, cancel and resume, an unreachable hub, downloads beside a GPU run)."""

from __future__ import annotations

import contextvars
import json
import os
import shutil
import threading
import time
import uuid
from pathlib import Path

import pytest

from engine import CatalogRequest, InputError, QuantizeRequest, request_from_dict
from engine.catalog import service as catalog
from engine.catalog.presets import ALL, load_catalog
from engine.demo import demo_path
from tests.conftest import SDNQ_ENTRY_REPO, free_port
from ui.components import field_label
from ui.tabs import catalog as tab

ENTRY = "FLUX.1-dev-SDNQ-uint4"
REPO = SDNQ_ENTRY_REPO

BIG_FILE = "transformer/diffusion_pytorch_model.safetensors"
GEN = dict(source=tab.SOURCE_ENTRY, entry=ENTRY, local_path="", prompt="a lighthouse at dusk", negative_prompt="",
           width=64, height=48, steps=2, guidance_scale=3.5, seed=7, use_quantized_matmul=False,
           use_torch_compile=False)


@pytest.fixture(scope="module")
def plain_engine(tmp_path_factory):
    from engine import Engine

    tmp = tmp_path_factory.mktemp("catalog-plain")
    return Engine(device="cpu", models_dir=tmp / "models", outputs_dir=tmp / "out")


# ---------------------------------------------------------------- pure: table and filters
def test_catalog_table_has_one_row_per_entry_in_column_order(plain_engine):
    rows = catalog.rows(plain_engine)
    table = tab.catalog_table(rows)
    assert len(table) == len(rows) == len(load_catalog())
    assert all(len(row) == len(tab.COLUMNS) == len(tab.DATATYPES) for row in table)
    first = dict(zip(tab.COLUMNS, table[0], strict=True))
    assert first["entry"] == ENTRY and first["architecture"] == "Flux" and first["quantization"] == "uint4"
    assert first["download ≈GB"] == pytest.approx(10.4) and first["VRAM ≈GB"] == pytest.approx(12.7)
    assert first["pipeline / supported"] == "FluxPipeline"
    assert first["cache"] == "not downloaded" and first["on disk"] == "–"  # empty HF cache for this session
    pipelines = {row[0]: row[5] for row in table}
    assert pipelines["HunyuanImage3-SDNQ-uint4"] == "✗ not supported"
    assert "image edit (other tab)" in pipelines["Qwen-Image-Edit-2509-SDNQ-uint4"]


def test_demo_mode_marks_the_entries_with_a_stand_in(plain_engine):
    table = {row[0]: row[5] for row in tab.catalog_table(catalog.rows(plain_engine), demo=True)}
    assert table[ENTRY] == "FluxPipeline · demo ✓"
    assert table["Qwen-Image-SDNQ-uint4"].endswith("no demo")


def test_filters_change_the_row_count(plain_engine):
    everything = tab.table_rows(plain_engine, ALL, ALL, False, "")
    flux = tab.table_rows(plain_engine, "Flux", ALL, False, "")
    int8 = tab.table_rows(plain_engine, ALL, "int8", False, "")
    assert 0 < len(flux) < len(everything) and all(r[1] == "Flux" for r in flux)
    assert 0 < len(int8) < len(everything) and all(r[2] == "int8" for r in int8)
    assert [r[0] for r in tab.table_rows(plain_engine, None, "", False, "schnell")] == ["FLUX.1-schnell-SDNQ-uint4"]
    assert tab.table_rows(plain_engine, "Flux", "int8", False, "no such words") == []
    assert tab.table_label(3, 30) == "3 of 30 entries · click a row to pick it"


def test_fits_my_gpu_uses_the_capacity_and_says_which(tmp_path):
    from engine import Engine

    engine = Engine(device="cpu", models_dir=tmp_path, outputs_dir=tmp_path, budget_bytes=12 * 2**30)
    fitting = tab.table_rows(engine, ALL, ALL, True, "")
    assert fitting and all(row[4] <= 12 for row in fitting)
    assert len(fitting) < len(tab.table_rows(engine, ALL, ALL, False, ""))
    assert tab.capacity_text(*catalog.capacity(engine)) == "≤ 12 GB (memory budget)"
    assert tab.capacity_text(24 * 2**30, "NVIDIA GeForce RTX 4090 VRAM") == "≤ 24 GB (NVIDIA GeForce RTX 4090 VRAM)"
    assert tab.capacity_text(62 * 2**30, "system RAM (no GPU found)") == "≤ 62 GB system RAM (no GPU found)"


def test_byte_texts():
    assert tab.bytes_text(None) == tab.bytes_text(0) == "–"
    assert tab.bytes_text(512) == "512 B"
    assert tab.bytes_text(2_900_000) == "2.9 MB"
    assert tab.bytes_text(17_400_000_000) == "17.40 GB"
    assert tab.progress_text(1_000_000, 4_000_000) == "1.0 MB / 4.0 MB"
    assert tab.size_change(7_000_000, 2_450_000) == "7.0 MB → 2.5 MB (35%)"
    assert tab.progress_text(3_000, None) == "3.0 kB so far"


def test_entry_defaults_and_details():
    entry = catalog.entry(ENTRY)
    assert tab.entry_defaults(entry, demo=False) == {"width": 1024, "height": 1024, "steps": 28, "guidance": 3.5}
    assert tab.entry_defaults(entry, demo=True) == {"width": 64, "height": 64, "steps": 2, "guidance": 3.5}
    text = tab.entry_details(entry, None, demo=True)
    assert entry.notes in text and "1024×1024, 28 steps" in text and "tiny int8 Flux" in text
    qwen = tab.entry_details(catalog.entry("Qwen-Image-SDNQ-uint4"), None, demo=True)
    assert "no stand-in" in qwen
    assert "cannot be generated" in tab.entry_details(catalog.entry("Wan2.2-I2V-A14B-SDNQ-uint4"), None, demo=False)


def test_result_texts_show_warnings_and_sizes():
    from engine import Result

    run = Result(request=None, files=["/out/a.png", "/out/a.json"], timings={"total": 1.5, "load": 0.5},
                 metadata={"entry": ENTRY, "pipeline": "FluxPipeline",
                           "warnings": ["torch.compile needs a C++ compiler; running without compile"]})
    text = tab.format_result(run)
    assert "**1.50 s**" in text and ENTRY in text and "`a.png`" in text and "`/out`" in text
    assert "⚠️ torch.compile needs a C++ compiler" in text
    quant = Result(request=None, files=["/m/sdnq/x"], timings={"total": 2.0}, metadata={
        "output": "/m/sdnq/x", "total_before": 8_000_000, "total_after": 3_000_000,
        "sizes": {"transformer": {"before": 7_000_000, "after": 2_000_000}}, "summary": "ignored"})
    text = tab.format_quantize_result(quant)
    assert "`/m/sdnq/x`" in text and "8.0 MB → 3.0 MB (38%)" in text and "- transformer: 7.0 MB → 2.0 MB (29%)" in text


def test_suggest_output_name_avoids_existing_folders():
    assert tab.suggest_output_name("/m/demo/flux-dev", "int8") == "flux-dev-sdnq-int8"
    assert tab.suggest_output_name("/m/flux dev/", "uint4", {"flux-dev-sdnq-uint4"}) == "flux-dev-sdnq-uint4-2"
    assert tab.suggest_output_name("", "int8") == "model-sdnq-int8"


def test_threadsafe_progress_reaches_the_handlers_context_from_worker_threads():
    var = contextvars.ContextVar("event", default=None)
    seen = []
    var.set("event-1")
    report = tab.threadsafe(lambda value: seen.append((value, var.get())))
    worker = threading.Thread(target=report, args=(1,))
    worker.start()
    worker.join()
    report(2)
    assert seen == [(1, "event-1"), (2, "event-1")]


# ---------------------------------------------------------------- pure: requests
def test_build_generate_request_for_an_entry_and_a_local_folder(tmp_path):
    req = tab.build_generate_request(**{**GEN, "width": 64.0, "steps": 2.0, "seed": 7.0, "entry": REPO.lower()})
    assert isinstance(req, CatalogRequest) and req.entry == ENTRY  # a repo id, any case, picks the entry
    assert (req.width, req.steps, req.seed) == (64, 2, 7) and type(req.steps) is int
    assert request_from_dict(json.loads(json.dumps(req.to_dict()))) == req
    folder = tab.build_generate_request(**{**GEN, "source": tab.SOURCE_FOLDER, "local_path": f" {tmp_path} "})
    assert folder.entry == "" and folder.model.path == str(tmp_path)


@pytest.mark.parametrize(
    ("change", "field", "words"),
    [
        ({"width": 100}, "width", "multiple of 16"),
        ({"steps": 0}, "steps", "between 1 and"),
        ({"prompt": ""}, "prompt", "empty"),
        ({"prompt": None}, "prompt", "empty"),
        ({"entry": "FLUX.1-dev-SDNQ-uint5"}, "entry", "unknown catalog entry"),
        ({"entry": ""}, "entry", "pick an entry"),
        ({"source": "Somewhere"}, "source", "must be one of"),
        ({"source": tab.SOURCE_FOLDER}, "model.path", "enter the folder"),
        ({"source": tab.SOURCE_FOLDER, "local_path": "/no/such/folder"}, "model.path", "no such file"),
        ({"seed": -1}, "seed", "between 0 and"),
    ],
)
def test_build_generate_request_names_the_field(change, field, words):
    with pytest.raises(InputError) as info:
        tab.build_generate_request(**{**GEN, **change})
    assert info.value.field == field and words in info.value.message
    assert field_label(info.value.field, tab.LABELS) in tab.LABELS.values()


@pytest.fixture
def diffusers_folder(tmp_path):
    folder = tmp_path / "my-model"
    folder.mkdir()
    (folder / "model_index.json").write_text("{}")
    return folder


QUANT = dict(output_name="my-model-sdnq-int8", weights_dtype="int8", group_size=0, use_svd=False, svd_rank=32,
             components=["transformer"])


def test_build_quantize_request(diffusers_folder):
    req = tab.build_quantize_request(str(diffusers_folder), **{**QUANT, "group_size": 64.0, "use_svd": True})
    assert isinstance(req, QuantizeRequest)
    assert (req.source.path, req.group_size, req.use_svd, req.components) == (
        str(diffusers_folder), 64, True, ("transformer",))
    assert request_from_dict(json.loads(json.dumps(req.to_dict()))) == req
    assert {"int8", "int6", "uint4", "float8_e4m3fn"} <= set(tab.SDNQ_DTYPES)


@pytest.mark.parametrize(
    ("change", "field", "words"),
    [
        ({"output_name": "bad name/.."}, "output_name", "folder name"),
        ({"output_name": ""}, "output_name", "folder name"),
        ({"weights_dtype": "int9"}, "weights_dtype", "must be one of"),
        ({"group_size": 48}, "group_size", "power of two"),
        ({"svd_rank": 0}, "svd_rank", "between 1 and"),
        ({"components": []}, "components", "at least one"),
        ({"source": ""}, "source.path", "pick a model"),
        ({"source": "/no/such/folder"}, "source.path", "no such file"),
    ],
)
def test_build_quantize_request_names_the_field(diffusers_folder, change, field, words):
    args = {"source": str(diffusers_folder), **QUANT, **change}
    with pytest.raises(InputError) as info:
        tab.build_quantize_request(**args)
    assert info.value.field == field and words in info.value.message
    assert field_label(info.value.field, tab.QUANTIZE_LABELS) in tab.QUANTIZE_LABELS.values()


def test_build_quantize_request_wants_a_diffusers_folder(tmp_path):
    with pytest.raises(InputError, match="model_index.json") as info:
        tab.build_quantize_request(str(tmp_path), **QUANT)
    assert info.value.field == "source.path"


# ---------------------------------------------------------------- the app over HTTP
@pytest.fixture
def hub(sdnq_hub):
    return sdnq_hub


@pytest.fixture(scope="module")
def created():
    """Folders a test quantized into the shared app's models dir: removed when the module ends."""
    folders: list[Path] = []
    yield folders
    for folder in folders:
        shutil.rmtree(folder, ignore_errors=True)


def _generate(client, swap=(), **change):
    """Gallery, info, save button, status (the memory-mode values are optional: their widget defaults apply)."""
    args = {**GEN, **change}
    return client.predict(*args.values(), *swap, api_name="/catalog_generate")[:4]


def test_api_generate_with_model_offload_shows_the_plan_and_the_measured_peak(client):
    args = {**GEN}
    out = client.predict(*args.values(), "model_offload", 0, 0, 100, 1, True, False, api_name="/catalog_generate")
    assert out[3].startswith("Done")
    assert "model_offload: one component" in out[4] and "Measured" in out[4]


def _download(client, entry=ENTRY):
    return client.submit(entry, ALL, ALL, False, "", api_name="/catalog_download")


def _rows(table) -> dict[str, list]:
    if isinstance(table, dict) and table.get("__type__") == "update":  # a gr.update(value=..., label=...)
        table = table["value"]
    data = table["data"] if isinstance(table, dict) else table
    return {row[0]: row for row in data}


def _state(client, entry=ENTRY) -> str:
    table = client.predict(ALL, ALL, False, entry, api_name="/catalog_table")
    return _rows(table)[entry][6]


def _wait_running(job, timeout=30.0) -> None:
    from gradio_client.utils import Status

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if job.status().code in (Status.PROGRESS, Status.ITERATING) or job.outputs():
            return
        time.sleep(0.02)
    raise AssertionError("the job never started")


def test_api_generate_on_a_catalog_entry_returns_an_image(client):
    gallery, info, save_json, status = _generate(client)
    image = Path(gallery[0]["image"])
    assert image.is_file() and image.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    from PIL import Image

    with Image.open(image) as im:
        assert im.size == (64, 48)
    saved = json.loads(Path(save_json["value"]).read_text())
    assert saved["kind"] == "sdnq_generate" and saved["entry"] == ENTRY
    assert ENTRY in info and "FluxPipeline" in info and status.startswith("Done")


def test_api_generate_bad_input_names_the_field_and_the_server_keeps_working(client):
    from gradio_client.exceptions import AppError

    with pytest.raises(AppError) as info:
        _generate(client, width=100)
    assert "Width" in str(info.value) and "multiple of 16" in str(info.value) and "Traceback" not in str(info.value)
    with pytest.raises(AppError, match="Catalog entry"):
        _generate(client, entry="no-such-entry")
    with pytest.raises(AppError, match="stand-in"):  # demo mode: no tiny Qwen-Image
        _generate(client, entry="Qwen-Image-SDNQ-uint4")
    assert _generate(client, seed=8)[-1].startswith("Done")


def test_api_quantize_the_demo_flux_then_generate_with_the_folder(client, served, created, models_dir):
    engine, _ = served
    name = f"ui-test-{uuid.uuid4().hex[:8]}"
    folder = Path(engine.models_dir) / "sdnq" / name
    created.append(folder)
    source = str(demo_path(models_dir, "flux-dev"))
    status, result, local_path, source_kind, next_name = client.predict(
        source, name, "int8", 0, False, 32, ["transformer"], True, api_name="/catalog_quantize")
    assert status.startswith("Done") and name in status
    assert "→" in result and "transformer:" in result and str(folder) in result
    assert (folder / "model_index.json").is_file()
    assert local_path == str(folder) and source_kind == tab.SOURCE_FOLDER  # offered to Generate
    assert next_name != name
    gallery, info, _, status = _generate(client, source=tab.SOURCE_FOLDER, local_path=local_path, entry="")
    assert Path(gallery[0]["image"]).is_file() and status.startswith("Done")
    assert "not SDNQ-quantized" not in info  # the folder loads back quantized

    from gradio_client.exceptions import AppError

    with pytest.raises(AppError, match="Output name"):  # the folder exists now
        client.predict(source, name, "int8", 0, False, 32, ["transformer"], True, api_name="/catalog_quantize")


def test_api_download_from_the_hub_completes_the_cache_state(client, hub):
    assert _state(client) == "not downloaded"
    hub.throttle_bps = 4_000_000  # about a second: long enough to watch the byte progress
    job = _download(client)
    descs = []
    while not job.done():
        progress = job.status().progress_data
        descs += [p.desc for p in progress or [] if p.desc]
        time.sleep(0.02)
    status, table, details = job.result(timeout=60)
    assert status.startswith("✅") and ENTRY in status
    row = _rows(table)[ENTRY]
    assert row[6] == "complete" and row[7].endswith("MB")
    assert "Cache: **complete**" in details
    assert any(" MB / " in d for d in descs), descs  # progress in bytes, from the hub's worker threads
    hub.reset_counters()
    assert _download(client).result(timeout=30)[0].startswith("✅")  # complete: nothing fetched again
    assert hub.resolve_gets() == 0


def test_api_download_cancel_keeps_a_partial_and_the_next_download_resumes(client, hub):
    hub.throttle_bps = 800_000
    job = _download(client)
    _wait_running(job)
    deadline = time.monotonic() + 20
    # past the client's first 1 MiB write of the 2.5 MB transformer: something is on disk to resume from
    while hub.body_bytes(BIG_FILE) < 1_300_000 and time.monotonic() < deadline:
        time.sleep(0.02)
    assert client.predict(api_name="/catalog_download_cancel").startswith("Cancelling")
    status, table, _ = job.result(timeout=30)
    assert status.startswith("Cancelled") and "resume" in status
    assert _rows(table)[ENTRY][6] == "partial"
    hub.wait_idle()
    sent_before = hub.body_bytes()
    hub.throttle_bps = None
    hub.reset_counters()
    status, table, _ = _download(client).result(timeout=60)
    assert _rows(table)[ENTRY][6] == "complete"
    assert hub.body_bytes() < sum(f.size for f in hub.repos[REPO].files.values())  # resumed, not restarted
    assert sent_before > 0
    assert client.predict(api_name="/catalog_download_cancel").startswith("Nothing to cancel")


def test_api_verify_names_a_bad_file_and_refetches_it(client, hub):
    status, _, _ = _download(client).result(timeout=60)
    assert status.startswith("✅")
    from engine.hub import download as engine_hub

    folder = engine_hub.cache_state(REPO).path
    blob = Path(os.path.realpath(folder / BIG_FILE))
    data = bytearray(blob.read_bytes())
    data[-1] ^= 0xFF  # same size: only a checksum can tell
    blob.write_bytes(bytes(data))
    status, table, _ = client.predict(ENTRY, False, ALL, ALL, False, "", api_name="/catalog_verify")
    assert status.startswith("⚠️") and BIG_FILE in status and "re-fetch" in status
    hub.reset_counters()
    status, table, _ = client.predict(ENTRY, True, ALL, ALL, False, "", api_name="/catalog_verify")
    assert status.startswith("✅") and "Fetched again and verified" in status
    assert hub.body_bytes() == hub.body_bytes(BIG_FILE) > 0
    assert _rows(table)[ENTRY][6] == "complete"


def test_api_download_with_the_hub_unreachable_is_a_message_and_the_server_keeps_working(
        client, tmp_path, monkeypatch):
    from gradio_client.exceptions import AppError

    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf-home"))
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.setenv("HF_ENDPOINT", f"http://127.0.0.1:{free_port()}")  # nothing listens there
    with pytest.raises(AppError) as info:
        _download(client).result(timeout=60)
    assert "Cannot reach the Hugging Face hub" in str(info.value) and "Traceback" not in str(info.value)
    assert _state(client) == "not downloaded"  # the server answers the next call


def test_api_a_download_does_not_wait_behind_a_gpu_run(client, served, hub):
    engine, _ = served
    original = engine.run
    started = threading.Event()

    def slow_run(request, progress=None, cancel=None):
        def slow_progress(fraction, message):
            started.set()
            progress(fraction, message)
            time.sleep(0.05)

        return original(request, slow_progress, cancel)

    engine.run = slow_run
    try:
        run = client.submit(*{**GEN, "steps": 100}.values(), api_name="/catalog_generate")
        assert started.wait(60)
        t0 = time.monotonic()
        status, table, _ = _download(client).result(timeout=60)
        download_s = time.monotonic() - t0
        assert not run.done()  # the run is still going: the download did not wait for it
        assert client.predict(api_name="/catalog_cancel").startswith("Cancelling")
        assert run.result(timeout=60)[3] == "Cancelled."
    finally:
        engine.run = original
    assert _rows(table)[ENTRY][6] == "complete" and download_s < 5


def test_byte_progress_says_why_when_it_retries_or_restarts():
    seen = []

    def bar(fraction, desc=""):
        seen.append((fraction, desc))

    report = tab.byte_progress(bar)
    report(1_000_000, 4_000_000, "Downloading transformer/x.safetensors")
    report(1_000_000, 4_000_000, "x.safetensors: the hub answered HTTP 503, retrying (2/5) in 1 s")
    assert seen[0] == (0.25, "1.0 MB / 4.0 MB")
    assert seen[1][1] == "1.0 MB / 4.0 MB · x.safetensors: the hub answered HTTP 503, retrying (2/5) in 1 s"
