"""SDNQ catalog: browse the SDNQ-quantized models, download one, generate with it, or quantize your own.

Four parts, top to bottom:

- **Browse**: the catalog table (``engine.catalog.service.rows``) with architecture / quantization / text filters
  and "fits my GPU"; picking a row (or the entry dropdown) shows the entry's notes and fills its defaults.
- **Download**: ``catalog_service.download`` with a byte progress bar and its own cancel; downloads run in
  their own concurrency group, so they never wait behind a GPU run (nor a run behind them).
- **Generate**: a ``CatalogRequest`` for the picked entry or a local SDNQ folder, run on the engine in the GPU pool.
- **Quantize your own**: a ``QuantizeRequest`` (SDNQ) on a local diffusers folder; the new folder is then
  offered as the local folder to generate with.

Everything that turns widget values into text or requests is a pure function (tested without a browser);
``build`` only wires them to widgets.
"""

from __future__ import annotations

import re
import time
from collections.abc import Callable, Iterable
from pathlib import Path

import gradio as gr

from engine import Cancelled, CatalogRequest, InputError, ModelRef, QuantizeRequest, Result
from engine.catalog import service as catalog_service
from engine.catalog.presets import ALL, CatalogEntry, architectures, load_catalog, quantizations
from engine.hub import download as engine_hub
from engine.requests import SDNQ_DTYPES

from .. import comfy_io
from ..components import (
    CONTROLS,
    CancelSlots,
    as_int,
    image_output,
    run_with_feedback,
    seed_input,
    steps_slider,
    threadsafe,
)
from ..memory_mode import memory_mode_widget, swap_field
from ..run_handler import TabRun

DOWNLOADS = "downloads"  # concurrency group of the download button: never the GPU pool
DOWNLOAD_LIMIT = 2  # downloads at once, across all sessions

COLUMNS = ["entry", "architecture", "quantization", "download ≈GB", "VRAM ≈GB", "pipeline / supported", "cache",
           "on disk"]
DATATYPES = ["str", "str", "str", "number", "number", "str", "str", "str"]

SOURCE_ENTRY = "Catalog entry"
SOURCE_FOLDER = "Local folder"
SOURCES = (SOURCE_ENTRY, SOURCE_FOLDER)

COMPONENTS = ("transformer", "text_encoder", "text_encoder_2", "vae")
DEFAULT_COMPONENTS = ("transformer",)

TASK_WORDS = {"text_to_image": "text to image", "image_edit": "image edit", "image_to_video": "image to video",
              "text_to_video": "text to video"}

LABELS = {  # request field -> widget label, so an error names what the user sees
    "source": "Model source", "entry": "Catalog entry", "model": "Local folder", "prompt": "Prompt",
    "negative_prompt": "Negative prompt", "width": "Width", "height": "Height", "steps": "Steps",
    "guidance_scale": "Guidance", "true_cfg_scale": "True CFG", "seed": "Seed", "swap": "Memory mode",
}
QUANTIZE_LABELS = {
    "source": "Source folder", "output_name": "Output name", "weights_dtype": "Weights dtype",
    "group_size": "Group size", "use_svd": "SVD", "svd_rank": "SVD rank", "components": "Components",
    "keep_sensitive_layers": "Keep sensitive layers at 16 bit",
}
DOWNLOAD_LABELS = {"entry": "Catalog entry"}

DEMO_NOTE = (
    "**Demo mode**: entries marked *demo ✓* (the Flux text-to-image ones) run on the tiny int8 Flux stand-in, so "
    "their images are noise; the other entries need real weights. **Download** still fetches the real files and "
    "needs the real Hugging Face hub (or a mirror in `HF_ENDPOINT`)."
)


# ---------------------------------------------------------------- pure formatting
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


def filter_value(choice: str | None) -> str | None:
    """A dropdown's "All" (or nothing) is no filter."""
    return None if choice in (None, "", ALL) else choice


def table_label(shown: int, total: int) -> str:
    return f"{shown} of {total} entries · click a row to pick it"


def entry_defaults(entry: CatalogEntry, demo: bool) -> dict:
    """Width, height, steps and guidance to start from: the entry's, or 64 px / 2 steps on the tiny demo models."""
    if demo:
        return {"width": 64, "height": 64, "steps": 2, "guidance": entry.default_guidance}
    width, height = entry.default_size
    return {"width": width, "height": height, "steps": entry.default_steps, "guidance": entry.default_guidance}


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


def suggest_output_name(source: str, weights_dtype: str, taken: Iterable[str] = ()) -> str:
    """``<source folder>-sdnq-<dtype>``, with ``-2``, ``-3`` ... when that folder already exists."""
    stem = Path(str(source or "").rstrip("/\\")).name or "model"
    stem = re.sub(r"[^A-Za-z0-9._-]+", "-", stem).strip("-._") or "model"
    base = f"{stem}-sdnq-{weights_dtype or 'int8'}"[:90]
    taken = set(taken)
    name, n = base, 2
    while name in taken:
        name, n = f"{base}-{n}", n + 1
    return name


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


def size_change(before: int, after: int) -> str:
    """``7.0 MB → 2.5 MB (35%)``."""
    ratio = f" ({after / before:.0%})" if before else ""
    return f"{bytes_text(before)} → {bytes_text(after)}{ratio}"


def format_quantize_result(result: Result) -> str:
    """Sizes before and after, per component and in total, and the folder written."""
    meta = result.metadata
    lines = [f"**Saved** `{meta.get('output', '')}`",
             f"Whole model: {size_change(meta.get('total_before') or 0, meta.get('total_after') or 0)}"]
    sizes = meta.get("sizes") or {}
    if sizes:
        lines.append("Quantized components:\n" + "\n".join(
            f"- {name}: {size_change(s.get('before') or 0, s.get('after') or 0)}" for name, s in sizes.items()))
    elif (meta.get("summary") or "").strip():
        lines.append("Quantized components:\n" + "\n".join(f"- {x}" for x in meta["summary"].strip().splitlines()))
    seconds = result.timings.get("total") or sum(result.timings.get(k, 0.0) for k in ("quantize", "save"))
    lines.append(f"Took {seconds:.1f} s. The folder is now the **Local folder** under *Generate*: press Run to try it.")
    return "\n\n".join(lines)


# ---------------------------------------------------------------- requests
def build_generate_request(
    source: str, entry: str, local_path: str, prompt: str, negative_prompt: str, width, height, steps,
    guidance_scale, seed, use_quantized_matmul: bool = False, use_torch_compile: bool = False, *swap_values,
) -> CatalogRequest:
    """The ``CatalogRequest`` these widget values describe, validated (raises ``InputError`` naming the field).

    ``source`` picks between the catalog ``entry`` (id or repo id) and a ``local_path`` holding an SDNQ model.
    """
    if source not in SOURCES:
        raise InputError("source", f"must be one of {', '.join(SOURCES)}; got {source!r}")
    common = dict(
        prompt=prompt if prompt is not None else "", negative_prompt=negative_prompt or "", width=as_int(width),
        height=as_int(height), steps=as_int(steps), guidance_scale=guidance_scale, seed=as_int(seed),
        use_quantized_matmul=bool(use_quantized_matmul), use_torch_compile=bool(use_torch_compile),
        **swap_field(swap_values),
    )
    if source == SOURCE_ENTRY:
        if not (entry or "").strip():
            raise InputError("entry", "pick an entry in the table or the dropdown")
        request = CatalogRequest(entry=catalog_service.entry(entry).id, **common)  # unknown -> InputError("entry")
    else:
        path = (local_path or "").strip()
        if not path:
            raise InputError("model.path", "enter the folder of an SDNQ model (the one holding model_index.json)")
        request = CatalogRequest(model=ModelRef(path=path), **common)
    request.validate()
    return request


def build_quantize_request(
    source: str, output_name: str, weights_dtype: str, group_size, use_svd: bool, svd_rank,
    components: Iterable[str] | None, keep_sensitive_layers: bool = True,
) -> QuantizeRequest:
    """The ``QuantizeRequest`` these widget values describe, validated (raises ``InputError`` naming the field)."""
    path = (source or "").strip()
    if not path:
        raise InputError("source.path", "pick a model or enter the folder of a diffusers model (with model_index.json)")
    request = QuantizeRequest(
        source=ModelRef(path=path), output_name=(output_name or "").strip(), weights_dtype=weights_dtype,
        group_size=as_int(group_size) if group_size not in (None, "") else 0, use_svd=bool(use_svd),
        svd_rank=as_int(svd_rank), components=tuple(components or ()),
        keep_sensitive_layers=bool(keep_sensitive_layers),
    )
    request.validate()
    if not (Path(path) / "model_index.json").is_file():
        raise InputError("source.path", f"{path} is not a diffusers model folder (it has no model_index.json)")
    return request


# ---------------------------------------------------------------- engine-side helpers
def table_rows(engine, architecture: str | None, quantization: str | None, fits: bool, text: str) -> list[list]:
    rows = catalog_service.rows(engine, architecture=filter_value(architecture),
                                quantization=filter_value(quantization), fits=bool(fits), text=text or "")
    return catalog_table(rows, engine.demo)


def quantize_sources(engine) -> list[tuple[str, str]]:
    """(label, folder) choices for the quantize source: the demo flux-dev in demo mode, and every diffusers
    folder directly under the models directory (not the demo ones, not what was quantized already)."""
    choices: list[tuple[str, str]] = []
    if engine.demo:
        from engine.demo import demo_path

        choices.append(("demo flux-dev (tiny, full precision)", str(demo_path(engine.models_dir, "flux-dev"))))
    models = Path(engine.models_dir)
    if models.is_dir():
        for child in sorted(models.iterdir()):
            if child.name not in ("demo", "sdnq") and (child / "model_index.json").is_file():
                choices.append((child.name, str(child)))
    return choices


def quantized_names(engine) -> set[str]:
    folder = Path(engine.models_dir) / "sdnq"
    return {p.name for p in folder.iterdir()} if folder.is_dir() else set()


def byte_progress(progress: gr.Progress) -> Callable[[int, int, str], None]:
    """The hub's ``progress(done_bytes, total_bytes, message)`` on a ``gr.Progress`` bar, in bytes."""

    def report(done: int, total: int | None, message: str = "") -> None:
        fraction = min(done / total, 1.0) if total else 0.0
        text = progress_text(done, total)
        if message and not message.startswith(("Downloading", "Verifying")):  # "retrying (2/5)", a restart: say why
            text += f" · {message}"
        progress(fraction, desc=text)

    return threadsafe(report)


# ---------------------------------------------------------------- widgets
def build(engine) -> comfy_io.Fill:
    catalog = load_catalog()
    by_id = {e.id: e for e in catalog}
    first = next((e for e in catalog if e.task == "text_to_image" and e.supported and (e.demo or not engine.demo)),
                 catalog[0])
    d = entry_defaults(first, engine.demo)
    limit, limit_source = catalog_service.capacity(engine)
    generator, quantizer, download_slots = TabRun(engine, LABELS), TabRun(engine, QUANTIZE_LABELS), CancelSlots()

    def cache_of(entry: CatalogEntry) -> engine_hub.CacheState | None:
        try:
            return engine_hub.cache_state(entry.repo_id)
        except Exception:  # a broken cache folder must not break the page
            return None

    # ------------------------------------------------------------ browse
    gr.Markdown("### Browse the SDNQ catalog\nSDNQ-quantized models: sizes are estimates; the cache column is this "
                "machine's Hugging Face cache.")
    if engine.demo:
        gr.Markdown(DEMO_NOTE, elem_id="catalog-demo-note")
    with gr.Row():
        arch = gr.Dropdown([ALL, *architectures(catalog)], value=ALL, label="Architecture", scale=2, min_width=140)
        quant = gr.Dropdown([ALL, *quantizations(catalog)], value=ALL, label="Quantization", scale=2, min_width=140)
        search = gr.Textbox(label="Search", placeholder="e.g. flux schnell", scale=3, min_width=160,
                            elem_id="catalog-search")
        fits = gr.Checkbox(label="Fits my GPU", info=capacity_text(limit, limit_source), scale=3, min_width=220,
                           elem_id="catalog-fits")
        refresh = gr.Button("↻ Refresh", size="sm", scale=0, min_width=100)
    initial = table_rows(engine, ALL, ALL, False, "")
    table = gr.Dataframe(
        value=initial, headers=COLUMNS, datatype=DATATYPES, interactive=False, wrap=True, max_height=420,
        label=table_label(len(initial), len(catalog)), show_label=True, elem_id="catalog-table",
        column_widths=["20%", "10%", "10%", "8%", "7%", "22%", "12%", "11%"],
    )
    filters = [arch, quant, fits, search]

    with gr.Row():
        with gr.Column(scale=5):
            entry = gr.Dropdown([(e.label, e.id) for e in catalog], value=first.id, label="Catalog entry",
                                allow_custom_value=True, elem_id="catalog-entry",
                                info="click a row above, or type an entry id or repo id")
            details = gr.Markdown(entry_details(first, cache_of(first), engine.demo), elem_id="catalog-details")
        with gr.Column(scale=3):
            # taller than a status line: the byte progress bar is drawn over it
            download_status = gr.Markdown("", elem_classes=["run-status"], elem_id="catalog-download-status",
                                          min_height=72, render=False)
            with gr.Row():
                download = gr.Button("Download", variant="secondary", scale=3, elem_id="catalog-download")
                download_cancel = gr.Button("Cancel download", variant="stop", scale=2, min_width=90,
                                            elem_id="catalog-download-cancel")
            with gr.Row():
                verify = gr.Button("Verify", variant="secondary", size="sm", scale=2, elem_id="catalog-verify")
                refetch = gr.Checkbox(label="re-fetch bad files", value=False, scale=3, elem_id="catalog-refetch",
                                      info="sha256 of every cached file against the hub's")
            download_status.render()
            gr.Markdown("Downloads go to the Hugging Face cache and resume where they stopped: press Download again "
                        "after a cancel or a lost connection. They run beside generation, not in its queue.",
                        elem_classes=["catalog-hint"])

    # ------------------------------------------------------------ generate
    gr.Markdown("### Generate")
    with gr.Row():
        with gr.Column(scale=5):
            with gr.Row():
                source = gr.Radio(list(SOURCES), value=SOURCE_ENTRY, label="Model source", scale=2,
                                  elem_id="catalog-source")
                local_path = gr.Textbox(label="Local folder", scale=3, elem_id="catalog-local-path",
                                        placeholder="/path/to/an/sdnq-model (with model_index.json)")
            prompt = gr.Textbox(label="Prompt", lines=3, placeholder="a lighthouse on a cliff at dusk, oil painting",
                                elem_id="catalog-prompt")
            with gr.Row():
                width = gr.Slider(16, 2048, value=d["width"], step=16, precision=0, label="Width")
                height = gr.Slider(16, 2048, value=d["height"], step=16, precision=0, label="Height")
            with gr.Row():
                steps = steps_slider(d["steps"])
                guidance = gr.Slider(0, 30, value=d["guidance"], step=0.5, label="Guidance")
            seed = seed_input(0, elem_id="catalog-seed")
            with gr.Row():
                use_qmm = gr.Checkbox(label="int8 quantized matmul", value=False,
                                      info="faster int8 matmul on a CUDA GPU with Triton")
                use_compile = gr.Checkbox(label="torch.compile", value=False,
                                          info="faster after a slow first run; needs a compiler")
            with gr.Accordion("Negative prompt", open=False):
                negative = gr.Textbox(label="Negative prompt", lines=1, placeholder="what to avoid")
            memory = memory_mode_widget(engine, "text_to_image", "catalog")
            run = generator.run_row("catalog", cancel_api="catalog_cancel")
            comfy = comfy_io.ExportPanel(engine, "catalog")
        with gr.Column(scale=6):
            image = image_output("catalog")
            memory.trace_plot.render()

    def plan_request(source_kind, entry_id, path, w, h, n_steps, *swap_values):
        return build_generate_request(source_kind, entry_id, path, "plan", "", w, h, n_steps, 3.5, 0, False, False,
                                      *swap_values)

    generator.plan(memory, plan_request, [source, entry, local_path, width, height, steps, *memory.inputs])

    # ------------------------------------------------------------ quantize your own
    sources = quantize_sources(engine)
    first_source = sources[0][1] if sources else ""
    with gr.Accordion("Quantize your own model with SDNQ", open=False, elem_id="catalog-quantize"):
        gr.Markdown("Quantize a local diffusers folder (one with `model_index.json`) and save it under "
                    f"`{Path(engine.models_dir) / 'sdnq'}`; the result loads like any SDNQ model.")
        with gr.Row():
            q_source = gr.Dropdown(sources, value=first_source or None, label="Source folder", scale=3,
                                   allow_custom_value=True, elem_id="catalog-q-source",
                                   info="pick one, or type the path of a diffusers folder")
            q_name = gr.Textbox(suggest_output_name(first_source, "int8", quantized_names(engine)),
                                label="Output name", scale=2, elem_id="catalog-q-name",
                                info="folder name: letters, digits, . _ -")
        with gr.Row():
            q_dtype = gr.Dropdown(list(SDNQ_DTYPES), value="int8", label="Weights dtype", min_width=120)
            q_group = gr.Number(0, label="Group size", precision=0, minimum=0, min_width=120,
                                info="0 = automatic; else a power of two")
            q_svd = gr.Checkbox(label="SVD correction", value=False, min_width=120,
                                info="low-rank fix-up: better quality at 4 bits and below")
            q_rank = gr.Slider(1, 512, value=32, step=1, label="SVD rank", min_width=160, interactive=False)
        with gr.Row():
            q_components = gr.CheckboxGroup(list(COMPONENTS), value=list(DEFAULT_COMPONENTS), label="Components",
                                            info="which parts to quantize (the model must have them)", scale=3)
            q_keep = gr.Checkbox(label="Keep sensitive layers at 16 bit", value=True, scale=2,
                                 info="embedders, final norm, some modulation layers: better quality, bigger files")
        q_run = quantizer.run_row("catalog-q", cancel_api="catalog_quantize_cancel", label="Quantize")
        q_result = gr.Markdown("", elem_id="catalog-q-result")
        q_comfy = comfy_io.ExportPanel(engine, "catalog_q", "ComfyUI workflow (quantize)")

    # ------------------------------------------------------------ handlers: browse
    def refresh_table(architecture, quantization, fits_gpu, text):
        rows = table_rows(engine, architecture, quantization, fits_gpu, text)
        return gr.update(value=rows, label=table_label(len(rows), len(catalog)))

    for trigger in (arch.change, quant.change, fits.change, search.submit, refresh.click):
        trigger(refresh_table, filters, table, concurrency_limit=None, concurrency_id=CONTROLS,
                show_progress="hidden", api_visibility="private")
    search.change(refresh_table, filters, table, concurrency_limit=None, concurrency_id=CONTROLS,
                  show_progress="hidden", api_name="catalog_table", trigger_mode="always_last")

    def pick_row(evt: gr.SelectData):
        row = evt.row_value or []
        return row[0] if row and row[0] in by_id else gr.update()

    table.select(pick_row, None, entry, concurrency_limit=None, concurrency_id=CONTROLS, show_progress="hidden",
                 api_visibility="private")

    def show_entry(entry_id):
        try:
            e = catalog_service.entry(entry_id)
        except InputError as exc:
            return {details: f"⚠️ {exc.message}"}
        defaults = entry_defaults(e, engine.demo)
        return {
            details: entry_details(e, cache_of(e), engine.demo),
            width: defaults["width"], height: defaults["height"], steps: defaults["steps"],
            guidance: defaults["guidance"], source: SOURCE_ENTRY,
        }

    entry.change(show_entry, entry, [details, width, height, steps, guidance, source], concurrency_limit=None,
                 concurrency_id=CONTROLS, show_progress="hidden", api_visibility="private")
    local_path.input(lambda path: SOURCE_FOLDER if (path or "").strip() else gr.update(), local_path, source,
                     queue=False, api_visibility="private")

    # ------------------------------------------------------------ handlers: download
    def run_download(entry_id, architecture, quantization, fits_gpu, text, request: gr.Request,
                     progress=gr.Progress()):
        if not (entry_id or "").strip():
            raise InputError("entry", "pick an entry in the table or the dropdown")
        e = catalog_service.entry(entry_id)
        t0 = time.perf_counter()
        with download_slots.held(request) as cancel:
            # no status text while it runs: the byte progress bar is drawn over the status line
            progress(0.0, desc=f"Checking {e.repo_id}")
            try:
                catalog_service.download(e.id, byte_progress(progress), cancel)
            except Cancelled:
                cache = cache_of(e)
                kept = bytes_text(cache.bytes_on_disk if cache else 0)
                gr.Warning(f"Download of {e.id} cancelled; {kept} kept. Press Download again to resume.",
                           title="Cancelled")
                yield {
                    download_status: f"Cancelled: {kept} of {e.id} kept. Press **Download** again to resume.",
                    table: refresh_table(architecture, quantization, fits_gpu, text),
                    details: entry_details(e, cache, engine.demo),
                }
                return
        cache = cache_of(e)
        size = bytes_text(cache.bytes_on_disk if cache else 0)
        yield {
            download_status: f"✅ **{e.id}** is downloaded ({size} in {time.perf_counter() - t0:.1f} s).",
            table: refresh_table(architecture, quantization, fits_gpu, text),
            details: entry_details(e, cache, engine.demo),
        }

    def run_verify(entry_id, repair, architecture, quantization, fits_gpu, text, request: gr.Request,
                   progress=gr.Progress()):
        if not (entry_id or "").strip():
            raise InputError("entry", "pick an entry in the table or the dropdown")
        e = catalog_service.entry(entry_id)
        with download_slots.held(request) as cancel:  # "Cancel download" stops a verify too
            progress(0.0, desc=f"Verifying {e.repo_id}")
            try:
                report = catalog_service.verify(e.id, bool(repair), byte_progress(progress), cancel)
            except Cancelled:
                yield {download_status: f"Verify of {e.id} cancelled."}
                return
        mark = "✅" if report.ok else "⚠️"
        yield {
            download_status: f"{mark} " + report.summary().replace("\n", "\n\n"),
            table: refresh_table(architecture, quantization, fits_gpu, text),
            details: entry_details(e, cache_of(e), engine.demo),
        }

    verify.click(
        run_with_feedback(run_verify, download_status, {**DOWNLOAD_LABELS, "repair": "re-fetch bad files"}),
        [entry, refetch, *filters], [download_status, table, details], api_name="catalog_verify",
        concurrency_limit=DOWNLOAD_LIMIT, concurrency_id=DOWNLOADS, show_progress_on=[download_status],
    )

    def cancel_download(request: gr.Request):
        if download_slots.cancel(request):
            return "Cancelling the download: what arrived is kept…"
        return "Nothing to cancel: no download of yours is in progress."

    download.click(
        run_with_feedback(run_download, download_status, DOWNLOAD_LABELS), [entry, *filters],
        [download_status, table, details], api_name="catalog_download", concurrency_limit=DOWNLOAD_LIMIT,
        concurrency_id=DOWNLOADS, show_progress_on=[download_status],
    ).then(  # after a failure too: a partial download shows as "partial"
        refresh_table, filters, table, concurrency_limit=None, concurrency_id=CONTROLS, show_progress="hidden",
        api_visibility="private",
    )
    download_cancel.click(cancel_download, None, download_status, concurrency_limit=None, concurrency_id=CONTROLS,
                          show_progress="hidden", api_name="catalog_download_cancel")

    # ------------------------------------------------------------ handlers: generate
    def run_generate(source_kind, entry_id, path, prompt_text, negative_text, w, h, n_steps, cfg, seed_value, qmm,
                     compile_, mode, max_vram, resident, block_mb, prefetch_, streams, trace,
                     request: gr.Request, progress=gr.Progress()):
        swap_values = (mode, max_vram, resident, block_mb, prefetch_, streams, trace)
        req = build_generate_request(source_kind, entry_id, path, prompt_text, negative_text, w, h, n_steps, cfg,
                                     seed_value, qmm, compile_, *swap_values)
        result = yield from generator.run(req, request, progress)
        yield generator.done(result, image.updates(result, format_result(result)), source_kind, entry_id, path, w,
                             h, n_steps, *swap_values)

    generate_inputs = [source, entry, local_path, prompt, negative, width, height, steps, guidance, seed, use_qmm,
                       use_compile, *memory.inputs]
    comfy.wire(build_generate_request, generate_inputs)
    generator.click(run, run_generate, generate_inputs, image, api_name="catalog_generate").then(  # a run may have downloaded the entry first
        refresh_table, filters, table, concurrency_limit=None, concurrency_id=CONTROLS, show_progress="hidden",
        api_visibility="private",
    )

    # ------------------------------------------------------------ handlers: quantize
    def run_quantize(src, name, dtype, group, svd, rank, comps, keep, request: gr.Request, progress=gr.Progress()):
        req = build_quantize_request(src, name, dtype, group, svd, rank, comps, keep)
        working = f"Quantizing {', '.join(req.components)} to {req.weights_dtype}…"
        result = yield from quantizer.run(req, request, progress, start={quantizer.status: working, q_result: ""})
        output = result.metadata.get("output") or (result.files[0] if result.files else "")
        gr.Info(f"Saved {Path(output).name}: it is now the local folder under Generate.")
        yield quantizer.done(result, {
            q_result: format_quantize_result(result),
            local_path: output,
            source: SOURCE_FOLDER,
            q_name: suggest_output_name(src, dtype, quantized_names(engine)),
        }, status=f"Done: `{Path(output).name}` ({bytes_text(result.metadata.get('total_after'))}).")

    quantize_inputs = [q_source, q_name, q_dtype, q_group, q_svd, q_rank, q_components, q_keep]
    q_comfy.wire(build_quantize_request, quantize_inputs)
    quantizer.click(q_run, run_quantize, quantize_inputs, [quantizer.status, q_result, local_path, source, q_name],
                    api_name="catalog_quantize", show_progress_on=[q_result])

    def rename(src, dtype):
        return suggest_output_name(src, dtype, quantized_names(engine))

    q_svd.change(lambda on: gr.update(interactive=bool(on)), q_svd, q_rank, queue=False, api_visibility="private")
    for trigger in (q_source.change, q_dtype.change):
        trigger(rename, [q_source, q_dtype], q_name, queue=False, api_visibility="private")
    gen_kind, q_kind = ("sdnq_generate",), ("sdnq_quantize",)
    return comfy_io.Fill(gen_kind + q_kind, [
        (source, lambda r: (SOURCE_ENTRY if r.entry else SOURCE_FOLDER) if r.kind == gen_kind[0] else comfy_io.KEEP),
        (entry, lambda r: (r.entry or comfy_io.KEEP) if r.kind == gen_kind[0] else comfy_io.KEEP),
        (local_path, lambda r: (r.model.path or r.model.repo_id) if r.kind == gen_kind[0] and not r.entry
         else comfy_io.KEEP),
        (q_source, lambda r: r.source.path if r.kind == q_kind[0] else comfy_io.KEEP),
        (q_components, lambda r: list(r.components) if r.kind == q_kind[0] else comfy_io.KEEP),
        *comfy_io.attrs((prompt, "prompt"), (negative, "negative_prompt"), (width, "width"), (height, "height"),
                        (steps, "steps"), (guidance, "guidance_scale"), (seed, "seed"),
                        (use_qmm, "use_quantized_matmul"), (use_compile, "use_torch_compile"), kinds=gen_kind),
        *comfy_io.attrs((q_name, "output_name"), (q_dtype, "weights_dtype"), (q_group, "group_size"),
                        (q_svd, "use_svd"), (q_rank, "svd_rank"), (q_keep, "keep_sensitive_layers"), kinds=q_kind)])
