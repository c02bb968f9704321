"""Text to image: the working vertical slice (widgets -> TextToImageRequest -> engine.run -> gallery)."""

from __future__ import annotations

from pathlib import Path

import gradio as gr

from engine import Result, TextToImageRequest

from .. import comfy_io, comfy_panel
from ..components import as_int, image_output, seed_input, size_sliders, steps_slider
from ..memory_mode import memory_mode_widget, swap_field
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
    *swap_values, pieces=(),
) -> TextToImageRequest:
    """The request these widget values describe, validated (raises ``InputError`` naming the field).
    ``swap_values`` are the memory-mode widget's (none: the default mode); ``model`` is a repo id or a ComfyUI
    folder choice, ``pieces`` the VAE / text encoder files picked from that folder."""
    request = TextToImageRequest(
        model=comfy_panel.model_ref(model, pieces),
        prompt=prompt or "",
        negative_prompt=negative_prompt or "",
        width=as_int(width),
        height=as_int(height),
        steps=as_int(steps),
        guidance_scale=guidance_scale,
        true_cfg_scale=true_cfg_scale,
        seed=as_int(seed),
        **swap_field(swap_values),
    )
    request.validate()
    return request


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
            choices = [(f"{label}{' (tiny demo stand-in)' if engine.demo else ''}", repo) for repo, label in
                       MODELS.items()]
            model = gr.Dropdown(comfy_panel.model_choices(engine, "text_to_image", choices), value=next(iter(MODELS)),
                                label="Model", elem_id="t2i-model")
            comfy_panel.register_dropdown(model, lambda: engine.comfy.model_choices("text_to_image"), choices)
            prompt = gr.Textbox(label="Prompt", lines=3, placeholder="a lighthouse on a cliff at dusk, oil painting",
                                elem_id="t2i-prompt")
            width, height = size_sliders(d["size"], d["max_size"])
            with gr.Row():
                steps = steps_slider(d["steps"])
                guidance = gr.Slider(0, 30, value=3.5, step=0.5, label="Guidance")
            seed = seed_input(0, elem_id="t2i-seed")
            with gr.Accordion("Negative prompt", open=False):
                negative = gr.Textbox(label="Negative prompt", lines=1, placeholder="what to avoid")
                true_cfg = gr.Slider(1, 30, value=1.0, step=0.5, label="True CFG",
                                     info="real classifier-free guidance with the negative prompt; 1 = off")
            pieces = comfy_panel.tab_picker(engine, "text_to_image", "t2i")["pieces"]
            memory = memory_mode_widget(engine, "text_to_image", "t2i")
            run = runner.run_row("t2i", cancel_api="text_to_image_cancel")
            export_panel = comfy_io.ExportPanel(engine, "t2i")
        with gr.Column(scale=6):
            image = image_output("t2i")
            memory.trace_plot.render()

    runner.plan(memory, plan_request, [model, width, height, steps, *memory.inputs])

    def run_text_to_image(model, prompt, negative, width, height, steps, guidance, true_cfg, seed, mode, max_vram,
                          resident, block_mb, prefetch, streams, trace, pieces=None, request: gr.Request = None,
                          progress=gr.Progress()):
        swap_values = (mode, max_vram, resident, block_mb, prefetch, streams, trace)
        req = build_request(model, prompt, negative, width, height, steps, guidance, true_cfg, seed, *swap_values,
                            pieces=pieces or ())
        result = yield from runner.run(req, request, progress)
        yield runner.done(result, image.updates(result, format_result(result)), model, width, height, steps,
                          *swap_values)

    inputs = [model, prompt, negative, width, height, steps, guidance, true_cfg, seed, *memory.inputs, pieces]
    export_panel.wire(lambda *v: build_request(*v[:-1], pieces=v[-1] or ()), inputs)
    runner.click(run, run_text_to_image, inputs, image, api_name="text_to_image")
    return comfy_io.Fill(("text_to_image",), [
        (model, lambda r: r.model.repo_id if r.model.repo_id in MODELS else comfy_io.KEEP),
        *comfy_io.attrs((prompt, "prompt"), (negative, "negative_prompt"), (width, "width"), (height, "height"),
                        (steps, "steps"), (guidance, "guidance_scale"), (true_cfg, "true_cfg_scale"), (seed, "seed"))])
