"""LoRA stack on Qwen-Image: edit the stack (and an optional stage-2 stack), run, see what the LoRAs cost.

Widgets -> ``LoraStackRequest`` -> ``engine.run`` -> gallery. The engine recomposes only what changed; the
status line says how much LoRA work the run did (loads / ``set_adapters`` calls), so "unchanged stack, no work"
is visible, not just promised.
"""

from __future__ import annotations

import os
from pathlib import Path

import gradio as gr

from engine import LoraStackRequest, ModelRef, Result, SwapSettings
from engine.adapters import nunchaku

from .. import comfy_io, comfy_panel
from ..components import as_int, image_output, image_settings
from ..lora_editor import specs, stack_editor
from ..memory_mode import swap_settings
from ..run_handler import TabRun, done_text
from . import text_to_image as t2i

MODELS = {  # real repo ids; demo mode maps Qwen-Image and the two Edit models to tiny stand-ins
    "Qwen/Qwen-Image": "Qwen-Image (bf16)",
    "Disty0/Qwen-Image-SDNQ-uint4-svd-r32": "Qwen-Image SDNQ uint4 (catalog)",
    "Disty0/Qwen-Image-Lightning-SDNQ-uint4-svd-r32": "Qwen-Image-Lightning SDNQ uint4 (catalog)",
    "Qwen/Qwen-Image-Edit": "Qwen-Image-Edit (needs an input image)",
    "Qwen/Qwen-Image-Edit-2509": "Qwen-Image-Edit-2509 (needs an input image)",
}
DEMO_MODELS = ("Qwen/Qwen-Image", "Qwen/Qwen-Image-Edit", "Qwen/Qwen-Image-Edit-2509")
LABELS = {
    "model": "Model", "prompt": "Prompt", "negative_prompt": "Negative prompt", "width": "Width", "height": "Height",
    "steps": "Steps", "guidance_scale": "Guidance", "true_cfg_scale": "True CFG", "seed": "Seed",
    "loras": "LoRA stack", "stage2_loras": "Stage 2 stack", "step_cache": "Step cache", "backend": "Backend",
    "nunchaku_transformer": "Nunchaku file", "stage2_strength": "Refine strength", "stage2_steps": "Stage 2 steps",
    "stage2_upscale": "Upscale", "input_image": "Input image", "swap": "Memory mode",
}
BACKENDS = [("diffusers + peft", "diffusers"), ("Nunchaku (SVDQuant)", "nunchaku")]


def model_ref(value: str | None) -> ModelRef:
    """A dropdown value: a repo id, a Qwen-Image file of the ComfyUI folder, or a local folder typed in (an SDNQ
    model quantized on the catalog tab)."""
    value = (value or "").strip()
    if value and os.path.isdir(value):
        return ModelRef(path=value)
    return comfy_panel.model_ref(value)


def is_edit_model(value: str | None) -> bool:
    """A Qwen-Image-Edit repo id (the engine checks the folder's pipeline class; this only opens the image box)."""
    return "qwen-image-edit" in (value or "").casefold()


def build_request(model, stack, prompt, negative, width, height, steps, guidance, true_cfg, seed, step_cache,
                  backend, nunchaku_file, input_image, stage2, stage2_stack, stage2_strength, stage2_steps,
                  stage2_upscale, swap: SwapSettings | None = None) -> LoraStackRequest:
    request = LoraStackRequest(
        model=model_ref(model), loras=specs(stack),
        **t2i.image_fields(prompt, negative, width, height, steps, guidance, true_cfg, seed),
        step_cache=float(step_cache or 0.0),
        backend=backend or "diffusers", nunchaku_transformer=nunchaku_file or "", input_image=input_image or "",
        stage2=bool(stage2), stage2_loras=specs(stage2_stack, "stage2_loras") if stage2 else (),
        stage2_strength=stage2_strength, stage2_steps=as_int(stage2_steps), stage2_upscale=stage2_upscale,
        swap=swap or SwapSettings(),  # the memory-mode widget's value
    )
    request.validate()
    return request


def plan_request(model, width, height, steps, *swap_values) -> LoraStackRequest:
    """The request the memory plan is made for (sizes only: the prompt does not matter; the tab adds the stacks)."""
    return build_request(model, [], "plan", "", width, height, steps, 1.0, 1.0, 0, 0.0, "diffusers", "", None,
                         False, [], 0.5, 0, 1.0, swap_settings(*swap_values) if swap_values else None)


def lora_work_text(work: dict) -> str:
    if not any(work.values()):
        return "LoRA work: none (stack unchanged)"
    return (f"LoRA work: {work.get('loads', 0)} load(s), {work.get('set_adapters', 0)} set_adapters, "
            f"{work.get('deletes', 0)} removed")


def format_result(result: Result) -> str:
    t, meta = result.timings, result.metadata
    parts = [f"{label} {t[key]:.2f} s" for key, label in (("load", "load"), ("lora", "LoRA"),
             ("denoise_decode", "denoise + decode"), ("stage1_denoise_decode", "stage 1"),
             ("stage2_denoise_decode", "stage 2")) if key in t]
    files = ", ".join(f"`{Path(f).name}`" for f in result.files if f.endswith(".png"))
    lines = [f"**{t.get('total', 0.0):.2f} s** ({' · '.join(parts)}) · saved {files}"]
    if "lora_work" in meta:
        lines.append(f"{lora_work_text(meta['lora_work'])} · stack `{meta.get('fingerprint', '')}`")
    lines += [f"⚠️ {w}" for w in meta.get("warnings", [])]
    return "  \n".join(lines)


def build(engine) -> comfy_io.Fill:
    runner = TabRun(engine, LABELS)
    demo = engine.demo
    d = {"size": 64, "max_size": 512, "steps": 2} if demo else {"size": 1328, "max_size": 2048, "steps": 30}
    state = nunchaku.status()
    with gr.Row():
        with gr.Column(scale=5):
            model = comfy_panel.model_dropdown(
                engine, "lora_stack", MODELS, DEMO_MODELS if demo else None, allow_custom_value=True,
                info="or type the folder of an SDNQ model you quantized on the catalog tab")
            prompt = gr.Textbox(label="Prompt", lines=2, elem_id="lora-prompt",
                                placeholder="a watercolor fox reading a map, soft light")
            stack = stack_editor(engine, "lora", model, model_ref, "LoRA stack")
            width, height, steps, guidance, seed, negative, true_cfg = image_settings("lora", d, guidance=1.0)
            with gr.Accordion("Stage 2: refine (image to image, optionally upscaled)", open=False):
                stage2 = gr.Checkbox(False, label="Run a second stage", elem_id="lora-stage2")
                with gr.Row():
                    stage2_strength = gr.Slider(0.05, 1.0, value=0.5, step=0.05, label="Refine strength")
                    stage2_upscale = gr.Slider(1.0, 2.0, value=1.0, step=0.25, label="Upscale")
                    stage2_steps = gr.Slider(0, 100, value=0, step=1, precision=0, label="Stage 2 steps",
                                             info="0 = as stage 1")
                stage2_stack = stack_editor(engine, "lora2", model, model_ref, "Stage 2 stack")
            with gr.Accordion("Speed and backend", open=False):
                step_cache = gr.Slider(0, 1, value=0.0, step=0.01, label="Step cache (First Block Cache)",
                                       info="skip blocks when the first block barely changed; 0 = off. Reset "
                                            "every run and every stage")
                backend = gr.Radio(BACKENDS if state.available else BACKENDS[:1], value="diffusers",
                                   label="Backend")
                gr.Markdown(("✅ " if state.available else "Nunchaku unavailable: ") + state.reason,
                            elem_id="lora-nunchaku")
                nunchaku_file = gr.Textbox(label="Nunchaku transformer (svdq-*.safetensors)",
                                           visible=state.available)
            with gr.Accordion("Edit an image (Qwen-Image-Edit)", open=False) as edit_box:
                gr.Markdown("Pick a Qwen-Image-Edit model above: it changes this image as the prompt says, with "
                            "the same LoRA stack. Leave it empty for Qwen-Image.")
                input_image = gr.Image(type="filepath", label="Input image", sources=["upload"],
                                       elem_id="lora-input-image")
            comfy_panel.tab_picker(engine, "lora_stack", "lora", pieces=False)
            memory, run, export_panel = runner.controls("text_to_image", "lora", cancel_api="lora_stack_cancel")
        with gr.Column(scale=6):
            image = image_output("lora")
            memory.trace_plot.render()

    runner.plan(plan_request, [model, width, height, steps, *memory.inputs], stacks=[stack, stage2, stage2_stack],
                stack_fields=lambda first, second_on, second: {
                    "loras": specs(first), "stage2": bool(second_on),
                    "stage2_loras": specs(second, "stage2_loras") if second_on else ()})
    model.change(lambda value: gr.Accordion(open=is_edit_model(value)), model, edit_box, show_progress="hidden")

    inputs = [model, stack, prompt, negative, width, height, steps, guidance, true_cfg, seed, step_cache, backend,
              nunchaku_file, input_image, stage2, stage2_stack, stage2_strength, stage2_steps, stage2_upscale,
              *memory.inputs]

    export_panel.wire(lambda *v: build_request(*v[:19], swap_settings(*v[19:])), inputs)

    def run_lora_stack(model, stack, prompt, negative, width, height, steps, guidance, true_cfg, seed, step_cache,
                       backend, nunchaku_file, input_image, stage2, stage2_stack, stage2_strength, stage2_steps,
                       stage2_upscale, mode, max_vram, resident, block_mb, prefetch, streams, trace,
                       request: gr.Request, progress=gr.Progress()):
        swap_values = (mode, max_vram, resident, block_mb, prefetch, streams, trace)
        req = build_request(model, stack, prompt, negative, width, height, steps, guidance, true_cfg, seed,
                            step_cache, backend, nunchaku_file, input_image, stage2, stage2_stack, stage2_strength,
                            stage2_steps, stage2_upscale, swap_settings(*swap_values))
        result = yield from runner.run(req, request, progress)
        done = f"{done_text(result)} {lora_work_text(result.metadata.get('lora_work', {}))}."
        yield runner.done(result, image.updates(result, format_result(result)), model, width, height, steps,
                          *swap_values, stack, stage2, stage2_stack, status=done)

    runner.click(run, run_lora_stack, inputs, image, api_name="lora_stack")

    def entries(field):
        return lambda r: [lora.to_dict() for lora in getattr(r, field)]

    return comfy_io.Fill(("lora_stack",), [
        (model, lambda r: r.model.repo_id or r.model.path), (stack, entries("loras")),
        (stage2_stack, entries("stage2_loras")), (input_image, lambda r: r.input_image or None),
        *comfy_io.attrs((prompt, "prompt"), (negative, "negative_prompt"), (width, "width"), (height, "height"),
                        (steps, "steps"), (guidance, "guidance_scale"), (true_cfg, "true_cfg_scale"), (seed, "seed"),
                        (step_cache, "step_cache"), (backend, "backend"), (nunchaku_file, "nunchaku_transformer"),
                        (stage2, "stage2"), (stage2_strength, "stage2_strength"), (stage2_steps, "stage2_steps"),
                        (stage2_upscale, "stage2_upscale"))])
