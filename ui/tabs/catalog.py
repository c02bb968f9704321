"""SDNQ catalog: browse the SDNQ-quantized models, download one, generate with it, or quantize your own.

Four parts, top to bottom:

- **Browse**: the catalog table (``engine.catalog.service.rows``) with architecture / quantization / text filters
  and "fits my GPU"; picking a row (or the entry dropdown) shows the entry's notes and fills its defaults.
- **Download**: ``catalog_service.download`` with a byte progress bar and its own cancel; downloads run in
  their own concurrency group, so they never wait behind a GPU run (nor a run behind them).
- **Generate**: a ``CatalogRequest`` for the picked entry or a local SDNQ folder, run on the engine in the GPU pool.
- **Quantize your own**: a ``QuantizeRequest`` (SDNQ) on a local diffusers folder; the new folder is then
  offered as the local folder to generate with.

Browse and Generate are here; Download is ``catalog_download.py``, Quantize ``catalog_quantize.py``, the text
they all show ``catalog_text.py`` (their public names stay importable from here). Everything that turns widget
values into text or requests is a pure function (tested without a browser); ``build`` only wires them to widgets.
"""

from __future__ import annotations

import gradio as gr

from engine import CatalogRequest, InputError, ModelRef
from engine.catalog import service as catalog_service
from engine.catalog.presets import ALL, CatalogEntry, architectures, load_catalog, quantizations
from engine.requests import SDNQ_DTYPES  # noqa: F401  (re-exported, as the names below)

from .. import comfy_io
from ..components import CONTROLS, as_int, engine_booted, image_output, seed_input, steps_slider, when_booted
from ..lora_editor import entries_of, specs, stack_editor
from ..memory_mode import swap_field
from ..run_handler import TabRun, threadsafe  # noqa: F401
from .catalog_download import DOWNLOAD_LABELS, DOWNLOAD_LIMIT, DOWNLOADS, byte_progress, cache_of, download_panel  # noqa: F401
from .catalog_quantize import (  # noqa: F401
    COMPONENTS,
    DEFAULT_COMPONENTS,
    QUANTIZE_LABELS,
    build_quantize_request,
    format_quantize_result,
    quantize_panel,
    quantize_sources,
    quantized_names,
    size_change,
    suggest_output_name,
)
from .catalog_text import (  # noqa: F401
    COLUMNS,
    DATATYPES,
    TASK_WORDS,
    bytes_text,
    capacity_text,
    catalog_table,
    entry_details,
    format_result,
    pipeline_text,
    progress_text,
    table_label,
)

SOURCE_ENTRY = "Catalog entry"
SOURCE_FOLDER = "Local folder"
SOURCES = (SOURCE_ENTRY, SOURCE_FOLDER)

LABELS = {  # request field -> widget label, so an error names what the user sees
    "source": "Model source", "entry": "Catalog entry", "model": "Local folder", "prompt": "Prompt",
    "negative_prompt": "Negative prompt", "width": "Width", "height": "Height", "steps": "Steps",
    "guidance_scale": "Guidance", "true_cfg_scale": "True CFG", "seed": "Seed", "swap": "Memory mode",
}

DEMO_NOTE = (
    "**Demo mode**: entries marked *demo ✓* (the Flux text-to-image ones) run on the tiny int8 Flux stand-in, so "
    "their images are noise; the other entries need real weights. **Download** still fetches the real files and "
    "needs the real Hugging Face hub (or a mirror in `HF_ENDPOINT`)."
)


def filter_value(choice: str | None) -> str | None:
    """A dropdown's "All" (or nothing) is no filter."""
    return None if choice in (None, "", ALL) else choice


def entry_defaults(entry: CatalogEntry, demo: bool) -> dict:
    """Width, height, steps and guidance to start from: the entry's, or 64 px / 2 steps on the tiny demo models."""
    if demo:
        return {"width": 64, "height": 64, "steps": 2, "guidance": entry.default_guidance}
    width, height = entry.default_size
    return {"width": width, "height": height, "steps": entry.default_steps, "guidance": entry.default_guidance}


def build_generate_request(
    source: str, entry: str, local_path: str, prompt: str, negative_prompt: str, width, height, steps,
    guidance_scale, seed, use_quantized_matmul: bool = False, use_torch_compile: bool = False, *swap_values,
    loras=None,
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
        **swap_field(swap_values), loras=specs(loras),
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


def table_rows(engine, architecture: str | None, quantization: str | None, fits: bool, text: str) -> list[list]:
    rows = catalog_service.rows(engine, architecture=filter_value(architecture),
                                quantization=filter_value(quantization), fits=bool(fits), text=text or "")
    return catalog_table(rows, engine.demo)


# ---------------------------------------------------------------- widgets
def build(engine) -> comfy_io.Fill:
    catalog = load_catalog()
    by_id = {e.id: e for e in catalog}
    first = next((e for e in catalog if e.task == "text_to_image" and e.supported and (e.demo or not engine.demo)),
                 catalog[0])
    d = entry_defaults(first, engine.demo)
    generator = TabRun(engine, LABELS)

    def refresh_table(architecture, quantization, fits_gpu, text):
        rows = table_rows(engine, architecture, quantization, fits_gpu, text)
        return gr.update(value=rows, label=table_label(len(rows), len(catalog)))

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
        def capacity_info() -> str:
            return capacity_text(*catalog_service.capacity(engine))

        fits = gr.Checkbox(label="Fits my GPU", scale=3, min_width=220, elem_id="catalog-fits",
                           info=capacity_info() if engine_booted(engine) else "reading the device…")
        when_booted(engine, lambda: gr.update(info=capacity_info()), [fits])
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
            download_panel(engine, entry, details, table, filters, refresh_table)

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
            with gr.Accordion("LoRAs", open=False, elem_id="catalog-loras"):
                # hits are counted against a local SDNQ folder when one is given, else against Flux's layout
                stack = stack_editor(engine, "catalog-lora", local_path, lambda p: ModelRef(path=p.strip()) if (
                    p or "").strip() else ModelRef(repo_id="black-forest-labs/FLUX.1-dev"), "LoRA stack")
            memory, run, comfy = generator.controls("text_to_image", "catalog", cancel_api="catalog_cancel")
        with gr.Column(scale=6):
            image = image_output("catalog")
            memory.trace_plot.render()

    def plan_request(source_kind, entry_id, path, w, h, n_steps, *swap_values):
        return build_generate_request(source_kind, entry_id, path, "plan", "", w, h, n_steps, 3.5, 0, False, False,
                                      *swap_values)

    generator.plan(plan_request, [source, entry, local_path, width, height, steps, *memory.inputs], stacks=[stack])

    quantize_pickers, quantize_fields = quantize_panel(engine, local_path, source, SOURCE_FOLDER)

    # ------------------------------------------------------------ handlers: browse
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

    # ------------------------------------------------------------ handlers: generate
    def run_generate(source_kind, entry_id, path, prompt_text, negative_text, w, h, n_steps, cfg, seed_value, qmm,
                     compile_, mode, max_vram, resident, block_mb, prefetch_, streams, trace, loras=None,
                     request: gr.Request = None, progress=gr.Progress()):
        swap_values = (mode, max_vram, resident, block_mb, prefetch_, streams, trace)
        req = build_generate_request(source_kind, entry_id, path, prompt_text, negative_text, w, h, n_steps, cfg,
                                     seed_value, qmm, compile_, *swap_values, loras=loras)
        result = yield from generator.run(req, request, progress)
        yield generator.done(result, image.updates(result, format_result(result)), source_kind, entry_id, path, w,
                             h, n_steps, *swap_values, loras)

    generate_inputs = [source, entry, local_path, prompt, negative, width, height, steps, guidance, seed, use_qmm,
                       use_compile, *memory.inputs, stack]
    comfy.wire(lambda *v: build_generate_request(*v[:-1], loras=v[-1]), generate_inputs)
    generator.click(run, run_generate, generate_inputs, image, api_name="catalog_generate").then(
        refresh_table, filters, table, concurrency_limit=None, concurrency_id=CONTROLS, show_progress="hidden",
        api_visibility="private",  # a run may have downloaded the entry first
    )

    kind = "sdnq_generate"
    return comfy_io.Fill((kind, "sdnq_quantize"), [
        (stack, lambda r: entries_of()(r) if r.kind == kind else comfy_io.KEEP),
        (source, lambda r: (SOURCE_ENTRY if r.entry else SOURCE_FOLDER) if r.kind == kind else comfy_io.KEEP),
        (entry, lambda r: (r.entry or comfy_io.KEEP) if r.kind == kind else comfy_io.KEEP),
        (local_path, lambda r: (r.model.path or r.model.repo_id) if r.kind == kind and not r.entry
         else comfy_io.KEEP),
        *quantize_pickers,
        *comfy_io.attrs((prompt, "prompt"), (negative, "negative_prompt"), (width, "width"), (height, "height"),
                        (steps, "steps"), (guidance, "guidance_scale"), (seed, "seed"),
                        (use_qmm, "use_quantized_matmul"), (use_compile, "use_torch_compile"), kinds=(kind,)),
        *quantize_fields])
