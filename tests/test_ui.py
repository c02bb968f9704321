"""The UI layer: pure formatting, request building and error feedback, then the app through its HTTP API."""

from __future__ import annotations

import json
import threading
import time
from pathlib import Path

import gradio as gr
import pytest

from engine import Cancelled, EngineError, InputError, TextToImageRequest, request_from_dict
from tests.conftest import scaled
from ui import vram_panel
from ui.components import CancelSlots, as_int, field_label, run_with_feedback
from ui.tabs.text_to_image import LABELS, build_request

MIB = 2**20
GIB = 2**30

SNAPSHOT = {
    "compute_device": "cuda:0",
    "offload_device": "cpu",
    "budget": 20 * GIB,
    "resident": 12 * GIB,
    "devices": [
        {"device": "cuda:0", "name": "NVIDIA <Test> GPU", "total": 24 * GIB, "used": 14 * GIB, "free": 10 * GIB,
         "allocated": 11 * GIB, "reserved": 12 * GIB, "peak": 13 * GIB},
        {"device": "cpu", "name": "System RAM", "total": 64 * GIB, "used": 8 * GIB, "free": 56 * GIB,
         "allocated": 3 * GIB, "reserved": 3 * GIB, "peak": 4 * GIB},
    ],
    "modules": [
        {"name": "flux/transformer", "role": "transformer", "bytes": 12 * GIB, "dtype": "bfloat16",
         "device": "cuda:0", "bytes_on_compute": 12 * GIB, "in_use": True},
        {"name": "flux/text_encoder_2", "role": "text_encoder", "bytes": 9 * GIB + 512 * MIB, "dtype": "bfloat16",
         "device": "cpu", "bytes_on_compute": 0, "in_use": False},
    ],
}
EMPTY = {"compute_device": "cpu", "offload_device": "cpu", "budget": None, "resident": 0,
         "devices": [SNAPSHOT["devices"][1]], "modules": []}


# ---------------------------------------------------------------- pure formatting
def test_format_devices_shows_each_device_with_used_total_and_process_share():
    out = vram_panel.format_devices(SNAPSHOT)
    assert out.count("class='vram-device'") == 2
    assert "14.0 GiB / 24.0 GiB used" in out
    assert "this process 12.0 GiB" in out  # the CUDA allocator's reservation
    assert "peak 13.0 GiB" in out
    assert "width:50.00%" in out  # 12 of 24 GiB is this process
    assert "width:8.33%" in out  # the other 2 GiB used by someone else
    assert "NVIDIA &lt;Test&gt; GPU" in out and "<Test>" not in out  # names are escaped
    assert out.count("vram-tag") == 1  # only the compute device is tagged


def test_compute_bar_shows_each_module_that_holds_weights_there():
    out = vram_panel.format_devices(SNAPSHOT)
    gpu = out.split("class='vram-device'")[1]
    assert "title='flux/transformer: 12.0 GiB'" in gpu  # its own segment, named on hover
    assert "vram-legend" in gpu and "flux/transformer 12.0 GiB" in gpu
    assert "text_encoder_2" not in out  # on the CPU: no share of the GPU bar
    cpu = out.split("class='vram-device'")[2]
    assert "vram-legend" not in cpu


def test_format_devices_without_devices_says_so():
    assert "No device readout" in vram_panel.format_devices({"devices": []})


def test_module_rows_are_mib_and_in_ledger_order():
    rows = vram_panel.module_rows(SNAPSHOT)
    assert rows == [
        ["flux/transformer", "transformer", 12288.0, "bfloat16", "cuda:0", 12288.0],
        ["flux/text_encoder_2", "text_encoder", 9728.0, "bfloat16", "cpu", 0.0],
    ]
    assert len(rows[0]) == len(vram_panel.COLUMNS)
    assert vram_panel.module_rows(EMPTY) == []


def test_summary_says_no_models_loaded_yet_when_the_ledger_is_empty():
    assert vram_panel.format_summary(EMPTY) == vram_panel.NO_MODULES
    assert "no models loaded yet" in vram_panel.NO_MODULES.lower()
    summary = vram_panel.format_summary(SNAPSHOT)
    assert "2 module(s)" in summary and "12.0 GiB resident" in summary and "budget 20.0 GiB" in summary
    assert "1 in use" in summary


def test_human_bytes_and_timestamp():
    assert vram_panel.human_bytes(None) == "–"
    assert vram_panel.human_bytes(512 * 1024) == "0.5 MiB"
    assert vram_panel.human_bytes(300 * MIB) == "300 MiB"
    assert vram_panel.human_bytes(3 * GIB) == "3.0 GiB"
    assert vram_panel.format_updated(0).startswith("updated ")
    assert len(vram_panel.format_updated(0)) == len("updated HH:MM:SS")


# ---------------------------------------------------------------- request building
GOOD = dict(model="black-forest-labs/FLUX.1-dev", prompt="a red fox", negative_prompt="", width=64, height=48,
            steps=2, guidance_scale=3.5, true_cfg_scale=1.0, seed=7)


def test_build_request_converts_widget_numbers_and_round_trips_as_the_cli_json():
    req = build_request(**{**GOOD, "width": 64.0, "steps": 2.0, "seed": 7.0})
    assert isinstance(req, TextToImageRequest)
    assert (req.width, req.height, req.steps, req.seed) == (64, 48, 2, 7)
    assert all(type(v) is int for v in (req.width, req.steps, req.seed))
    data = json.loads(json.dumps(req.to_dict()))  # what "Save request JSON" writes
    assert data["kind"] == "text_to_image"
    assert request_from_dict(data) == req  # and what `python -m engine run` reads back


@pytest.mark.parametrize(
    ("change", "field", "words"),
    [
        ({"width": 100}, "width", "multiple of 16"),
        ({"height": 20.5}, "height", "whole number"),
        ({"steps": 0}, "steps", "between 1 and"),
        ({"prompt": "   "}, "prompt", "empty"),
        ({"prompt": None}, "prompt", "empty"),
        ({"seed": -1}, "seed", "between 0 and"),
        ({"seed": None}, "seed", "whole number"),
        ({"model": ""}, "model", "repo id"),
        ({"true_cfg_scale": 0.5}, "true_cfg_scale", "between 1 and 30"),
    ],
)
def test_bad_input_raises_input_error_naming_the_field(change, field, words):
    with pytest.raises(InputError) as info:
        build_request(**{**GOOD, **change})
    assert info.value.field == field
    assert words in info.value.message
    assert field_label(info.value.field, LABELS) in LABELS.values()


def test_as_int_only_touches_whole_floats():
    assert as_int(64.0) == 64 and type(as_int(64.0)) is int
    assert as_int(64.5) == 64.5
    assert as_int(None) is None
    assert as_int("x") == "x"


def test_field_label_maps_nested_fields_to_their_widget():
    assert field_label("model.repo_id", LABELS) == "Model"
    assert field_label("swap.mode", LABELS) == "Memory mode"
    assert field_label("unknown_field", LABELS) == "unknown_field"


# ---------------------------------------------------------------- error feedback
STATUS = object()  # stands for the status component: run_with_feedback only uses it as a dict key


def _drain(handler):
    updates = []
    try:
        for update in handler():
            updates.append(update)
    except gr.Error as exc:
        return updates, exc
    return updates, None


def _failing(exc):
    def run():
        yield {"ok": 1}
        raise exc

    return run


def test_input_error_becomes_gr_error_and_a_status_line_naming_the_field():
    updates, err = _drain(run_with_feedback(_failing(InputError("width", "must be a multiple of 16")), STATUS, LABELS))
    assert updates[0] == {"ok": 1}
    assert "**Width**" in updates[-1][STATUS] and "multiple of 16" in updates[-1][STATUS]
    assert isinstance(err, gr.Error) and err.message == "Width: must be a multiple of 16"


def test_engine_error_becomes_gr_error_with_its_message():
    updates, err = _drain(run_with_feedback(_failing(EngineError("no tiny stand-in for x/y")), STATUS, LABELS))
    assert "no tiny stand-in" in updates[-1][STATUS]
    assert err is not None and "no tiny stand-in" in err.message


def test_cancel_is_a_warning_not_an_error(monkeypatch):
    warnings = []
    monkeypatch.setattr(gr, "Warning", lambda message, **kw: warnings.append(message))
    updates, err = _drain(run_with_feedback(_failing(Cancelled()), STATUS, LABELS))
    assert err is None
    assert updates[-1] == {STATUS: "Cancelled."}
    assert warnings == ["Cancelled by the user."]


def test_unexpected_exception_becomes_a_one_line_gr_error():
    updates, err = _drain(run_with_feedback(_failing(ZeroDivisionError("division by zero")), STATUS, LABELS))
    assert err is not None and "ZeroDivisionError: division by zero" in err.message
    assert "Traceback" not in err.message and "Traceback" not in updates[-1][STATUS]


def test_run_with_feedback_keeps_the_signature_gradio_reads():
    import inspect

    def run(a, b, request: gr.Request, progress=gr.Progress()):
        yield {}

    wrapped = run_with_feedback(run, STATUS)
    assert list(inspect.signature(wrapped).parameters) == ["a", "b", "request", "progress"]
    assert inspect.isgeneratorfunction(wrapped)


def test_cancel_slots_are_per_session():
    class Req:
        def __init__(self, session_hash):
            self.session_hash = session_hash

    slots = CancelSlots()
    a, b = Req("a"), Req("b")
    assert not slots.cancel(a)  # nothing running
    event_a, event_b = slots.start(a), slots.start(b)
    assert slots.cancel(a)
    assert event_a.is_set() and not event_b.is_set()
    slots.finish(a, event_a)
    assert not slots.cancel(a)


# ---------------------------------------------------------------- the app over HTTP
def _t2i(client, swap=(), outputs=4, **change):
    """A text-to-image call over HTTP; the memory-mode values are optional (their widget defaults apply)."""
    args = {**GOOD, **change}
    out = client.predict(
        args["model"], args["prompt"], args["negative_prompt"], args["width"], args["height"], args["steps"],
        args["guidance_scale"], args["true_cfg_scale"], args["seed"], *swap, api_name="/text_to_image",
    )
    return out[:outputs]


def test_api_run_in_a_memory_mode_reports_plan_and_measured_peak(client, served):
    engine, _ = served
    gallery, _, _, status, plan, plot = _t2i(client, swap=("block_swap", 0, 1, 100, 1, True, True), outputs=6)
    assert Path(gallery[0]["image"]).is_file() and status.startswith("Done")
    assert "block_swap: 1 of 4 blocks resident" in plan and "Measured" in plan and "moved" in plan
    table = plot["value"]
    assert table["columns"] == ["block", "kind", "ms"]
    assert {kind for _, kind, _ in table["data"]} == {"copy", "compute", "wait"}
    assert {block for block, _, _ in table["data"]} == {0, 1, 2, 3}
    from gradio_client.exceptions import AppError

    with pytest.raises(AppError, match="Memory mode"):
        _t2i(client, swap=("turbo", 0, 1, 100, 1, True, False))


def test_api_text_to_image_returns_an_image_file_and_the_request_json(client, served):
    engine, _ = served
    gallery, info, save_json, status = _t2i(client)
    assert len(gallery) == 1
    image = Path(gallery[0]["image"])
    assert image.is_file() and image.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    from PIL import Image

    with Image.open(image) as im:
        assert im.size == (64, 48)
    saved = json.loads(Path(save_json["value"]).read_text())
    assert request_from_dict(saved) == build_request(**GOOD)
    assert "load" in info and ".png" in info
    assert status.startswith("Done")
    assert any(f.suffix == ".png" for f in Path(engine.outputs_dir).iterdir())


def test_api_bad_input_is_an_error_message_and_the_server_keeps_working(client):
    from gradio_client.exceptions import AppError

    with pytest.raises(AppError) as info:
        _t2i(client, width=100)
    assert "Width" in str(info.value) and "multiple of 16" in str(info.value)
    assert "Traceback" not in str(info.value)
    with pytest.raises(AppError, match="Prompt"):
        _t2i(client, prompt="")
    gallery, *_, status = _t2i(client, seed=8)  # not a dead server
    assert Path(gallery[0]["image"]).is_file() and status.startswith("Done")


def test_api_vram_readout_lists_loaded_modules(client):
    _t2i(client)
    devices_html, summary, table, updated = client.predict(api_name="/vram")
    assert "vram-device" in devices_html
    assert "module(s) registered" in summary
    rows = table["data"] if isinstance(table, dict) else table
    assert any(row[1] == "transformer" for row in rows)
    assert updated.startswith("updated ")


def test_api_cancel_stops_a_long_run_and_readouts_do_not_wait_behind_it(client, served):
    engine, _ = served
    original = engine.run

    def slow_run(request, progress=None, cancel=None):  # >= 5 s for 100 steps on any machine
        def slow_progress(fraction, message):
            progress(fraction, message)
            time.sleep(0.05)

        return original(request, slow_progress, cancel)

    engine.run = slow_run
    try:
        t_start = time.monotonic()
        job = client.submit(GOOD["model"], "a long run", "", 64, 64, 100, 3.5, 1.0, 1, api_name="/text_to_image")
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and not _is_running(job):
            time.sleep(0.05)
        t0 = time.monotonic()
        client.predict(api_name="/vram")  # readouts run in their own group, not behind the run
        readout_s = time.monotonic() - t0
        message = client.predict(api_name="/text_to_image_cancel")
        assert message.startswith("Cancelling")
        status = job.result(timeout=120)[3]
        elapsed = time.monotonic() - t_start
    finally:
        engine.run = original
    assert status == "Cancelled."
    assert readout_s < scaled(2)
    assert elapsed < scaled(5)  # stopped between steps, long before the 100 steps were done
    assert client.predict(api_name="/text_to_image_cancel").startswith("Nothing to cancel")


def test_api_unload_all_empties_the_memory_panel(client, served):
    _t2i(client)
    devices, summary, table, _ = client.predict(api_name="/unload_all")
    assert summary == vram_panel.NO_MODULES
    assert served[0].memory.names() == []
    assert len(_t2i(client)[0]) == 1  # and the next run loads again


def _is_running(job) -> bool:
    from gradio_client.utils import Status

    status = job.status()
    return status.code in (Status.PROGRESS, Status.ITERATING) or bool(job.outputs())


def test_two_clients_runs_are_serialised_on_the_engine(served):
    """GPU work is one at a time: two simultaneous runs never overlap inside engine.run."""
    from tests.conftest import app_client

    engine, url = served
    active, overlaps = [0], []
    original = engine.run
    lock = threading.Lock()

    def counting_run(*args, **kwargs):
        with lock:
            active[0] += 1
            overlaps.append(active[0])
        try:
            return original(*args, **kwargs)
        finally:
            with lock:
                active[0] -= 1

    engine.run = counting_run
    try:
        clients = [app_client(url) for _ in range(2)]
        jobs = [c.submit(GOOD["model"], "x", "", 64, 64, 4, 3.5, 1.0, i, api_name="/text_to_image")
                for i, c in enumerate(clients)]
        for job in jobs:
            assert job.result(timeout=120)[3].startswith("Done")
    finally:
        engine.run = original
    assert overlaps and max(overlaps) == 1


# ---------------------------------------------------------------- Hugging Face Spaces
def test_spaces_gpu_wrapper_is_transparent_off_zerogpu(served):
    """With Hugging Face's own ``spaces`` package installed but no ZeroGPU, the wrapped engine call (with a
    callable duration estimate) runs and returns the engine's result unchanged."""
    pytest.importorskip("spaces")
    from ui import zerogpu
    from ui.tabs import text_to_image as t2i

    engine, _ = served
    wrapped = zerogpu.engine_call(engine)
    req = t2i.build_request(**GOOD)
    result = wrapped(req, None, None)
    assert len(result.images) == 1


def test_spaces_label_comes_from_the_environment_not_the_package(monkeypatch):
    from ui import zerogpu

    for name in ("SPACE_ID", "SPACES_ZERO_GPU"):
        monkeypatch.delenv(name, raising=False)
    assert zerogpu.where() == ""
    monkeypatch.setenv("SPACE_ID", "someone/studio")
    assert zerogpu.where() == "Hugging Face Spaces"
    monkeypatch.setenv("SPACES_ZERO_GPU", "true")
    assert zerogpu.where() == "Hugging Face Spaces (ZeroGPU)"
