"""The page: a header (mode, device), the memory panel, and one tab per job."""

from __future__ import annotations

import html
from pathlib import Path

import gradio as gr

import comfy_export

from . import comfy_io, comfy_panel, vram_panel, zerogpu
from .api_inputs import guard_api_inputs
from .components import GPU_POOL, engine_booted, when_booted
from .input_errors import DEFAULT_MAX_UPLOAD_MB
from .pending import PENDING
from .tabs import catalog, i2v, ipadapter, lora_stack, perception, text_to_image

TITLE = "Diffusion Studio"
TABS = (  # (label, module): every module exposes build(engine)
    ("Text to image", text_to_image),
    ("IP-Adapter", ipadapter),
    ("SDNQ catalog", catalog),
    ("Panorama perception", perception),
    ("Image to video", i2v),
    ("LoRA stack", lora_stack),
)
DEMO_NOTE = (
    "Demo mode: tiny random-weight models, so images are noise. "
    "Start without <code>--demo</code> and with real weights for real pictures."
)
CSS = """
.app-header h1 { margin: 0 0 2px 0; font-size: 1.6em; }
.app-header .meta { opacity: 0.8; font-size: 0.95em; }
.app-header .demo-note { margin-top: 6px; padding: 6px 10px; border-radius: 6px;
  background: rgba(250, 204, 21, 0.18); border: 1px solid rgba(202, 138, 4, 0.45); }
.vram-tag { font-size: 0.75em; padding: 0 6px; margin-left: 6px; border-radius: 8px;
  background: rgba(249, 115, 22, 0.2); }
#vram-updated { text-align: right; opacity: 0.6; font-size: 0.85em; }
.run-status { min-height: 2.2em; display: flex; align-items: center; }
.not-built { padding: 12px 0; }
"""


def header_html(engine) -> str:
    """The title line. Before the engine has booted (the page is served before torch loads) the device reads
    "starting…" and the page's load event fills it in."""
    if engine_booted(engine):
        snap = engine.memory.snapshot()
        compute = snap.get("compute_device", engine.device)
        name = next((d.get("name", "") for d in snap.get("devices", []) if d.get("device") == compute), "")
        device = html.escape(f"{compute} ({name})" if name and name != "System RAM" else compute)
        if compute == "cpu":
            device += " · no GPU found, runs are slow"
    else:
        device = "starting…"
    mode = "demo" if engine.demo else "real weights"
    where = f" · {zerogpu.where()}" if zerogpu.where() else ""
    note = f"<div class='demo-note'>{DEMO_NOTE}</div>" if engine.demo else ""
    return (
        f"<div class='app-header'><h1>{TITLE}</h1>"
        f"<div class='meta'>Mode: <b>{mode}</b> · Device: <b>{device}</b>{where}</div>{note}</div>"
    )


def build_app(engine) -> gr.Blocks:
    """The whole page for one engine. GPU events share one concurrency group of size 1 (set per
    event in the tabs); readouts and cancel buttons run in a group without a limit."""
    if getattr(engine, "output_text", False) is None:  # the app's outputs open in ComfyUI: wire the exporter in here
        engine.output_text = comfy_export.png_text
    with gr.Blocks(title=TITLE) as app:
        header = gr.HTML(header_html(engine), elem_id="app-header")
        vram_panel.build(engine)
        comfy = comfy_panel.settings(engine)  # the tabs' pickers register with it
        upload, status = comfy_io.import_box(engine)
        fills, titles = {}, {}
        with gr.Tabs() as tabs:
            for label, module in TABS:
                tab_id = module.__name__.rsplit(".", 1)[-1]
                with gr.Tab(label, id=tab_id):
                    fills[tab_id], titles[tab_id] = module.build(engine), label
        comfy_panel.wire(engine, comfy)
        comfy_io.wire_import(engine, upload, status, tabs, fills, titles)
        when_booted(engine, lambda: header_html(engine), [header])
    # no app.queue(...): gradio's own queue (made with the Blocks) already defaults to one run at a time, the GPU
    # runs set their limit themselves, and each queue() call rebuilds the whole FastAPI app (0.2 s at startup)
    runs = getattr(engine, "concurrent_runs", 1)  # Ray Serve: one run per replica at once, the rest queue
    for fn in app.fns.values():
        if runs > 1 and fn.concurrency_id == GPU_POOL:
            fn.concurrency_limit = runs
    PENDING.install(app, GPU_POOL)  # Cancel reaches a run still waiting in the queue
    return guard_api_inputs(app)  # every event, every tab: a message naming the field for every wrong value


def launch_options(engine, max_upload_mb: float = DEFAULT_MAX_UPLOAD_MB) -> dict:
    """``launch()`` arguments the page needs wherever it is served (the app, tests): look, file access, and the
    largest upload (``max_upload_mb``; 0 = no limit)."""
    return {
        "max_file_size": int(max_upload_mb * 2**20) if max_upload_mb else None,
        "css": CSS,
        "theme": gr.themes.Soft(primary_hue="orange"),
        "allowed_paths": [str(Path(engine.outputs_dir).resolve())],
    }
