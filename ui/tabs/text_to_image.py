"""Text to image: the working vertical slice (widgets -> TextToImageRequest -> engine.run -> gallery)."""

from __future__ import annotations

from pathlib import Path

import gradio as gr

from engine import Result, TextToImageRequest

from .. import comfy_io, comfy_panel
from ..components import as_int, image_output, image_settings
from ..lora_editor import entries_of, specs, stack_editor
from ..memory_mode import swap_field
from ..run_handler import TabRun

MODELS = {  # real repo ids; demo mode maps each to a tiny random-weight stand-in
    "black-forest-labs/FLUX.1-dev": "FLUX.1-dev",
    "lodestones/Chroma1-HD": "Chroma1-HD",
    "Qwen/Qwen-Image": "Qwen-Image",
}
LABELS = {  # request field -> widget label, so an error names what the user sees
    "model": "Model", "prompt": "Prompt", "negative_prompt": "Negative prompt", "width": "Width",
    "height": "Height", "steps": "Steps", "guidance_scale": "Guidance", "true_cfg_scale": "True CFG",
    "seed": "Seed", "swap": "Memory mode",
}


def defaults(demo: bool) -> dict:
    # the tiny demo models get slow fast above 512 px on a CPU (attention grows with the square of the tokens)
    return {"size": 64, "max_size": 512, "steps": 2} if demo else {"size": 1024, "max_size": 2048, "steps": 28}


def build_request(
    model: str, prompt: str, negative_prompt: str, width, height, steps, guidance_scale, true_cfg_scale, seed,
    *swap_values, pieces=(), loras=None,
) -> TextToImageRequest:
    """The request these widget values describe, validated (raises ``InputError`` naming the field).
    ``swap_values`` are the memory-mode widget's (none: the default mode); ``model`` is a repo id or a ComfyUI
    folder choice, ``pieces`` the VAE / text encoder files picked from that folder."""
    request = TextToImageRequest(model=comfy_panel.model_ref(model, pieces), **image_fields(
        prompt, negative_prompt, width, height, steps, guidance_scale, true_cfg_scale, seed, swap_values),
        loras=specs(loras))
    request.validate()
    return request


def image_fields(prompt, negative_prompt, width, height, steps, guidance_scale, true_cfg_scale, seed,
                 swap_values: tuple = ()) -> dict:
    """The request fields every image tab shares, from its widgets' values (numbers arrive as floats)."""
    return dict(prompt=prompt or "", negative_prompt=negative_prompt or "", width=as_int(width),
                height=as_int(height), steps=as_int(steps), guidance_scale=guidance_scale,
                true_cfg_scale=true_cfg_scale, seed=as_int(seed), **swap_field(swap_values))


def plan_request(model, width, height, steps, *swap_values) -> TextToImageRequest:
    """What the plan line needs (no prompt yet is fine: the plan does not depend on it)."""
    return build_request(model, "plan", "", width, height, steps, 3.5, 1.0, 0, *swap_values)


def format_result(result: Result) -> str:
    t = result.timings
    parts = [f"{label} {t[key]:.2f} s" for key, label in
             (("load", "load"), ("to_device", "to device"), ("denoise_decode", "denoise + decode")) if key in t]
    files = ", ".join(f"`{Path(f).name}`" for f in result.files)
    folder = Path(result.files[0]).parent if result.files else None
    where = f" in `{folder}`" if folder else ""
    return f"**{t.get('total', 0.0):.2f} s** ({' · '.join(parts)}) · saved {files}{where}"


def build(engine) -> comfy_io.Fill:
    d = defaults(engine.demo)
    runner = TabRun(engine, LABELS)

    with gr.Row():
        with gr.Column(scale=5):
            model = comfy_panel.model_dropdown(engine, "text_to_image", MODELS, elem_id="t2i-model")
            prompt = gr.Textbox(label="Prompt", lines=3, placeholder="a lighthouse on a cliff at dusk, oil painting",
                                elem_id="t2i-prompt")
            width, height, steps, guidance, seed, negative, true_cfg = image_settings(
                "t2i", d, negative_placeholder="what to avoid",
                true_cfg_info="real classifier-free guidance with the negative prompt; 1 = off")
            pieces = comfy_panel.tab_picker(engine, "text_to_image", "t2i")["pieces"]
            with gr.Accordion("LoRAs", open=False, elem_id="t2i-loras"):
                stack = stack_editor(engine, "t2i-lora", model, lambda m: comfy_panel.model_ref(m, ()), "LoRA stack")
            memory, run, export_panel = runner.controls("text_to_image", "t2i", cancel_api="text_to_image_cancel")
        with gr.Column(scale=6):
            image = image_output("t2i")
            memory.trace_plot.render()

    runner.plan(plan_request, [model, width, height, steps, *memory.inputs], stacks=[stack])

    def run_text_to_image(model, prompt, negative, width, height, steps, guidance, true_cfg, seed, mode, max_vram,
                          resident, block_mb, prefetch, streams, trace, pieces=None, loras=None,
                          request: gr.Request = None, progress=gr.Progress()):
        swap_values = (mode, max_vram, resident, block_mb, prefetch, streams, trace)
        req = build_request(model, prompt, negative, width, height, steps, guidance, true_cfg, seed, *swap_values,
                            pieces=pieces or (), loras=loras)
        result = yield from runner.run(req, request, progress)
        yield runner.done(result, image.updates(result, format_result(result)), model, width, height, steps,
                          *swap_values, loras)

    inputs = [model, prompt, negative, width, height, steps, guidance, true_cfg, seed, *memory.inputs, pieces, stack]
    export_panel.wire(lambda *v: build_request(*v[:-2], pieces=v[-2] or (), loras=v[-1]), inputs)
    runner.click(run, run_text_to_image, inputs, image, api_name="text_to_image")
    return comfy_io.Fill(("text_to_image",), [
        (model, lambda r: r.model.repo_id if r.model.repo_id in MODELS else comfy_io.KEEP), (stack, entries_of()),
        *comfy_io.attrs((prompt, "prompt"), (negative, "negative_prompt"), (width, "width"), (height, "height"),
                        (steps, "steps"), (guidance, "guidance_scale"), (true_cfg, "true_cfg_scale"), (seed, "seed"))])
