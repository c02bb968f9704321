"""IP-Adapter: Flux or Chroma images guided by reference images (InstantX Flux IP-Adapter, ComfyUI pack math)."""

from __future__ import annotations

import gradio as gr

from engine import IPAdapterRequest, ModelRef, ReferenceImage, Result
from engine.outputs import keep_input
from engine.requests import SingleFiles

from .. import comfy_io, comfy_panel
from ..components import as_int, image_output, image_settings
from ..lora_editor import entries_of, specs, stack_editor
from ..run_handler import TabRun
from . import text_to_image as t2i

MODELS = {  # real repo ids; demo mode maps each to a tiny random-weight stand-in
    "black-forest-labs/FLUX.1-dev": "FLUX.1-dev",
    "lodestones/Chroma1-HD": "Chroma1-HD",
}
MAX_REFERENCES = 3
LABELS = {
    **t2i.LABELS, "references": "Reference image", "weight": "Weight", "start_percent": "Start",
    "end_percent": "End", "weight_start": "Ramp: weight at start", "weight_end": "Ramp: weight at end",
    "ramp_steps": "Ramp: steps", "ip_adapter": "IP-Adapter", "image_encoder": "Image encoder",
    "ip_norm": "IP normalisation", "ip_adapter_file": "IP-Adapter file",
}
SIGLIP_REPO = "google/siglip-so400m-patch14-384"  # the encoder InstantX trained with: configs for a clip_vision file
NORMS = [("keys and values (ComfyUI pack)", "kv"), ("keys only (InstantX diffusers reference)", "k")]


def build_request(model, prompt, negative_prompt, width, height, steps, guidance_scale, true_cfg_scale, seed,
                  references, weight, start_percent, end_percent, ramp, weight_start, weight_end, ramp_steps,
                  offload_preprocessing, ip_norm, *swap_values, adapter_file="", encoder_file="",
                  loras=None) -> IPAdapterRequest:
    """The request these widget values describe, validated. ``references`` is a list of (path or None, weight);
    ``swap_values`` are the memory-mode widget's (none: the default mode); ``adapter_file`` / ``encoder_file``:
    an IP-Adapter and a SigLIP file from the ComfyUI folder ("" = the default repos)."""
    extra = {}
    if adapter_file:
        extra["ip_adapter"] = ModelRef(path=adapter_file)
    if encoder_file:
        extra["image_encoder"] = ModelRef(repo_id=SIGLIP_REPO, files=SingleFiles(image_encoder=encoder_file))
    request = IPAdapterRequest(
        model=comfy_panel.model_ref(model),
        **extra,
        **t2i.image_fields(prompt, negative_prompt, width, height, steps, guidance_scale, true_cfg_scale, seed,
                           swap_values),
        references=tuple(ReferenceImage(path, w) for path, w in references if path),
        weight=weight,
        start_percent=start_percent,
        end_percent=end_percent,
        ramp=bool(ramp),
        weight_start=weight_start,
        weight_end=weight_end,
        ramp_steps=as_int(ramp_steps),
        offload_preprocessing=bool(offload_preprocessing),
        ip_norm=ip_norm,
        loras=specs(loras),
    )
    request.validate()
    return request


def keep_reference(outputs_dir, path: str | None) -> str | None:
    """A copy of an uploaded reference under ``<outputs>/references/`` (named by its content), so that a saved
    request still finds its images after Gradio has cleaned its upload cache."""
    # verified before reuse (size and hash): a copy a full disk cut short is written again, never trusted
    return keep_input(outputs_dir, path, "references")


def format_result(result: Result) -> str:
    meta, t = result.metadata, result.timings
    hits = meta.get("token_cache_hits", 0)
    refs = len(result.request.references)
    steps = [row for row in meta.get("ip_steps", []) if row["active"]]
    cache = f"image tokens: {hits}/{refs} from cache" if hits else "image tokens: encoded"
    encode = f" in {t['encode']:.2f} s" if "encode" in t and not hits else ""
    return (f"{t2i.format_result(result)}  \nIP-Adapter ({meta.get('architecture', '')}) acted on "
            f"{len(steps)}/{result.request.steps} steps · {cache}{encode}")


def build(engine) -> comfy_io.Fill:
    d = t2i.defaults(engine.demo)
    runner = TabRun(engine, LABELS)

    with gr.Row():
        with gr.Column(scale=5):
            model = comfy_panel.model_dropdown(engine, "ipadapter", MODELS)
            images, weights = [], []
            with gr.Row():
                for i in range(MAX_REFERENCES):
                    with gr.Column(min_width=160):
                        # image_mode=None: the engine converts every mode itself, the same way for the API
                        images.append(gr.Image(type="filepath", image_mode=None, label=f"Reference {i + 1}",
                                               sources=["upload", "clipboard"], height=180, elem_id=f"ip-ref-{i}"))
                        weights.append(gr.Slider(-1, 5, value=1.0, step=0.05, label=f"Weight of reference {i + 1}"))
            prompt = gr.Textbox(label="Prompt", lines=2, placeholder="a portrait in the style of the reference",
                                elem_id="ip-prompt")
            with gr.Row():
                weight = gr.Slider(-1, 5, value=1.0, step=0.05, label="Weight",
                                   info="how strongly the references steer; 0 = the plain model")
                start = gr.Slider(0, 1, value=0.0, step=0.01, label="Start", info="share of the schedule")
                end = gr.Slider(0, 1, value=1.0, step=0.01, label="End", info="share of the schedule")
            with gr.Accordion("Weight ramp (ComfyUI's Advanced node)", open=False):
                ramp = gr.Checkbox(False, label="Ramp the weight instead of a constant weight")
                with gr.Row():
                    weight_start = gr.Slider(-1, 5, value=0.0, step=0.05, label="Weight at start")
                    weight_end = gr.Slider(-1, 5, value=1.0, step=0.05, label="Weight at end")
                    ramp_steps = gr.Slider(1, 100, value=10, step=1, precision=0, label="Ramp steps",
                                           info="in-window steps to go from start to end")
            width, height, steps, guidance, seed, negative, true_cfg = image_settings(
                "ip", d, guidance_info="distilled guidance on Flux; real CFG on Chroma",
                negative_placeholder="what to avoid",
                true_cfg_info="Flux: real classifier-free guidance with the negative prompt; 1 = off")
            with gr.Accordion("Adapter options", open=False):
                offload = gr.Checkbox(True, label="Offload preprocessing",
                                      info="move the image encoder and projector off the GPU once the tokens exist")
                norm = gr.Radio(NORMS, value="kv", label="IP normalisation")
            comfy = comfy_panel.tab_picker(engine, "ipadapter", "ip", pieces=False, files={
                "ip_adapter": "IP-Adapter file", "image_encoder": "Image encoder (clip_vision, SigLIP)"})
            with gr.Accordion("LoRAs", open=False, elem_id="ip-loras"):
                stack = stack_editor(engine, "ip-lora", model, lambda m: comfy_panel.model_ref(m), "LoRA stack")
            memory, run, export_panel = runner.controls("text_to_image", "ip", cancel_api="ipadapter_cancel")
        with gr.Column(scale=6):
            image = image_output("ip")
            memory.trace_plot.render()

    # the plan reads the base model's folder; the adapter's pieces are not in it (they stay resident, one row each)
    runner.plan(t2i.plan_request, [model, width, height, steps, *memory.inputs], stacks=[stack])

    def run_ipadapter(model, prompt, negative, width, height, steps, guidance, true_cfg, seed, weight, start, end,
                      ramp, weight_start, weight_end, ramp_steps, offload, norm, ref1, ref2, ref3, w1, w2, w3,
                      mode, max_vram, resident, block_mb, prefetch, streams, trace, adapter_file=None,
                      encoder_file=None, loras=None, request: gr.Request = None, progress=gr.Progress()):
        swap_values = (mode, max_vram, resident, block_mb, prefetch, streams, trace)
        # explicit arguments: Gradio reads this signature
        pairs = [(keep_reference(engine.outputs_dir, ref), w) for ref, w in ((ref1, w1), (ref2, w2), (ref3, w3))]
        req = build_request(model, prompt, negative, width, height, steps, guidance, true_cfg, seed, pairs, weight,
                            start, end, ramp, weight_start, weight_end, ramp_steps, offload, norm, *swap_values,
                            adapter_file=adapter_file or "", encoder_file=encoder_file or "", loras=loras)
        result = yield from runner.run(req, request, progress)
        yield runner.done(result, image.updates(result, format_result(result)), model, width, height, steps,
                          *swap_values, loras)

    inputs = [model, prompt, negative, width, height, steps, guidance, true_cfg, seed, weight, start, end, ramp,
              weight_start, weight_end, ramp_steps, offload, norm, *images, *weights, *memory.inputs,
              comfy["ip_adapter"], comfy["image_encoder"], stack]

    def export_request(*values):
        head, refs, ws, swap, files = values[:18], values[18:21], values[21:24], values[24:-3], values[-3:-1]
        return build_request(*head[:9], list(zip(refs, ws)), *head[9:], *swap, adapter_file=files[0] or "",
                             encoder_file=files[1] or "", loras=values[-1])

    export_panel.wire(export_request, inputs)
    runner.click(run, run_ipadapter, inputs, image, api_name="ipadapter")

    def ref(i, part):
        return lambda r: (getattr(r.references[i], part) if i < len(r.references) else
                          (None if part == "path" else 1.0))

    return comfy_io.Fill(("ipadapter",), [
        (model, lambda r: r.model.repo_id if r.model.repo_id in MODELS else comfy_io.KEEP), (stack, entries_of()),
        *[(images[i], ref(i, "path")) for i in range(MAX_REFERENCES)],
        *[(weights[i], ref(i, "weight")) for i in range(MAX_REFERENCES)],
        *comfy_io.attrs((prompt, "prompt"), (negative, "negative_prompt"), (width, "width"), (height, "height"),
                        (steps, "steps"), (guidance, "guidance_scale"), (true_cfg, "true_cfg_scale"), (seed, "seed"),
                        (weight, "weight"), (start, "start_percent"), (end, "end_percent"), (ramp, "ramp"),
                        (weight_start, "weight_start"), (weight_end, "weight_end"), (ramp_steps, "ramp_steps"),
                        (offload, "offload_preprocessing"), (norm, "ip_norm"))])
