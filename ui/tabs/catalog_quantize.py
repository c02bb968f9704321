"""Quantize your own model (the SDNQ catalog tab's last part): a ``QuantizeRequest`` on a local diffusers folder,
run on the engine in the GPU pool; the new folder is then offered as the local folder to generate with."""

from __future__ import annotations

import re
from collections.abc import Iterable
from pathlib import Path

import gradio as gr

from engine import InputError, ModelRef, QuantizeRequest, Result
from engine.requests import SDNQ_DTYPES

from .. import comfy_io
from ..components import as_int
from ..run_handler import TabRun
from .catalog_text import bytes_text

KIND = "sdnq_quantize"
COMPONENTS = ("transformer", "text_encoder", "text_encoder_2", "vae")
DEFAULT_COMPONENTS = ("transformer",)
QUANTIZE_LABELS = {
    "source": "Source folder", "output_name": "Output name", "weights_dtype": "Weights dtype",
    "group_size": "Group size", "use_svd": "SVD", "svd_rank": "SVD rank", "components": "Components",
    "keep_sensitive_layers": "Keep sensitive layers at 16 bit",
}


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


def quantize_panel(engine, local_path: gr.Textbox, source: gr.Radio, source_folder: str) -> tuple[list, list]:
    """The accordion (widgets and wiring, in the caller's layout). A finished run fills the generate part's
    ``local_path`` and sets its ``source`` to ``source_folder``. Returns its ComfyUI import fill entries: those
    of the pickers, then those of the settings (the tab lists them in that order among its own)."""
    quantizer = TabRun(engine, QUANTIZE_LABELS)
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

    def run_quantize(src, name, dtype, group, svd, rank, comps, keep, request: gr.Request, progress=gr.Progress()):
        req = build_quantize_request(src, name, dtype, group, svd, rank, comps, keep)
        working = f"Quantizing {', '.join(req.components)} to {req.weights_dtype}…"
        result = yield from quantizer.run(req, request, progress, start={quantizer.status: working, q_result: ""})
        output = result.metadata.get("output") or (result.files[0] if result.files else "")
        gr.Info(f"Saved {Path(output).name}: it is now the local folder under Generate.")
        yield quantizer.done(result, {
            q_result: format_quantize_result(result),
            local_path: output,
            source: source_folder,
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
    return [
        (q_source, lambda r: r.source.path if r.kind == KIND else comfy_io.KEEP),
        (q_components, lambda r: list(r.components) if r.kind == KIND else comfy_io.KEEP),
    ], [
        *comfy_io.attrs((q_name, "output_name"), (q_dtype, "weights_dtype"), (q_group, "group_size"),
                        (q_svd, "use_svd"), (q_rank, "svd_rank"), (q_keep, "keep_sensitive_layers"), kinds=(KIND,))]
