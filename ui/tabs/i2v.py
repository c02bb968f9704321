"""Image to video: Wan 2.2 I2V A14B (two experts) or TI2V 5B, optionally the TurboWan few-step experts (rCM),
with the memory-mode widget, a live preview while it denoises, and the video, its last frame and its request out."""

from __future__ import annotations

from pathlib import Path

import gradio as gr

from engine import I2VRequest, ModelRef, Result
from engine.requests import (
    ASPECT_RATIOS,
    FIT_MODES,
    RESOLUTIONS,
    STEP_CACHES,
    TURBOWAN_REPO,
    VIDEO_FORMATS,
    TurboWanSettings,
)
from engine.requests.video import TURBO_ATTENTION

from .. import comfy_io, comfy_panel
from ..components import as_int, download_update, file_of, seed_input
from ..lora_editor import entries_of, specs, stack_editor
from ..memory_mode import swap_field, swap_settings
from ..run_handler import TabRun

MODELS = {
    "Wan-AI/Wan2.2-I2V-A14B-Diffusers": "Wan 2.2 I2V A14B (two experts)",
    "Wan-AI/Wan2.2-TI2V-5B-Diffusers": "Wan 2.2 TI2V 5B (one transformer, for 8-12 GB cards)",
}
LABELS = {
    "model": "Model", "image": "Start image", "prompt": "Prompt", "negative_prompt": "Negative prompt",
    "resolution": "Resolution", "aspect_ratio": "Aspect ratio", "width": "Width", "height": "Height",
    "fit": "Fit the start image", "num_frames": "Frames", "steps": "Steps", "guidance_scale": "Guidance (high noise)",
    "guidance_scale_2": "Guidance (low noise)", "boundary_ratio": "Expert boundary", "fps": "FPS", "seed": "Seed",
    "output_format": "Format", "quality": "Quality", "loop": "Loop (gif)", "step_cache": "Step cache",
    "cache_threshold": "Cache threshold", "preview_every": "Preview every", "turbo": "TurboWan",
    "turbo.high_path": "High-noise .pth", "turbo.low_path": "Low-noise .pth", "turbo.sigma_max": "sigma max",
    "turbo.attention_type": "Attention", "turbo.sla_topk": "SLA top-k",
    "swap": "Memory mode",
}
SLA_NOTE = ("Attention: **sla** (the default) runs the Sparse-Linear Attention the TurboWan experts were fine-tuned "
            "for, with their proj_l weights; **original** runs full attention without them (a warning says it changes "
            "the result). SageSLA needs the SpargeAttn CUDA package and is not offered.")


def defaults(demo: bool) -> dict:
    if demo:  # the tiny demo model: small and quick on a CPU
        return {"resolution": "custom", "width": 64, "height": 64, "frames": 9, "steps": 4, "max_side": 512}
    return {"resolution": "480p", "width": 832, "height": 480, "frames": 81, "steps": 40, "max_side": 2048}


def build_request(model, image, prompt, negative, resolution, aspect, width, height, fit, frames, steps, guidance,
                  guidance_2, boundary, fps, seed, fmt, quality, loop, cache, threshold, preview_every, turbo_on,
                  turbo_quant, high_path, low_path, sigma_max, ode, attention_type, sla_topk, *swap_values,
                  pieces=(), loras=None, loras_2=None, both=False) -> I2VRequest:
    """``loras`` on the high-noise expert (TI2V 5B: its one transformer), ``loras_2`` on the low-noise one;
    ``both``: the first stack on both experts (as one stack per expert with the same entries)."""
    turbo = TurboWanSettings(enabled=bool(turbo_on), checkpoints=ModelRef(repo_id=TURBOWAN_REPO),
                             quantized=bool(turbo_quant), high_path=(high_path or "").strip(),
                             low_path=(low_path or "").strip(), sigma_max=sigma_max, ode=bool(ode),
                             attention_type=attention_type or "sla", sla_topk=sla_topk)
    request = I2VRequest(
        model=comfy_panel.model_ref(model, pieces), image=image or "", prompt=prompt or "",
        negative_prompt=negative or "",
        resolution=resolution, aspect_ratio=aspect, width=as_int(width), height=as_int(height), fit=fit,
        num_frames=as_int(frames), steps=as_int(steps), guidance_scale=guidance, guidance_scale_2=guidance_2,
        boundary_ratio=boundary, fps=as_int(fps), seed=as_int(seed), output_format=fmt, quality=as_int(quality),
        loop=bool(loop), step_cache=cache, cache_threshold=threshold, preview_every=as_int(preview_every),
        turbo=turbo, **swap_field(swap_values),
        loras=specs(loras), loras_2=specs(loras if both else loras_2, "loras_2"),
    )
    request.validate()
    return request


def plan_request(model, width, height, frames, *swap_values):
    """The plan needs the model, the size and the frames; the rest is a stand-in (no image yet is fine)."""
    req = I2VRequest(model=comfy_panel.model_ref(model), resolution="custom", width=as_int(width),
                     height=as_int(height), num_frames=as_int(frames), swap=swap_settings(*swap_values))
    for check in (req.model.validate, lambda: req.swap.validate("swap")):
        check()
    return req


def preset_size(resolution, aspect, width, height):
    if resolution == "custom":
        return gr.update(interactive=True), gr.update(interactive=True)
    w, h = I2VRequest.size_for(resolution, aspect)
    return gr.update(value=w, interactive=False), gr.update(value=h, interactive=False)


def format_result(result: Result) -> str:
    t = result.timings
    parts = [f"{label} {t[key]:.2f} s" for key, label in (("load", "load"), ("denoise_decode", "denoise + decode"),
                                                          ("encode_video", "video file")) if key in t]
    m = result.metadata
    folder = Path(result.files[0]).parent if result.files else ""
    return (f"**{t.get('total', 0.0):.2f} s** ({' · '.join(parts)}) · {m.get('frames')} frames "
            f"{m.get('size', ['?', '?'])[0]}x{m.get('size', ['?', '?'])[1]} · {m.get('experts', '')} · "
            f"saved {', '.join(f'`{Path(f).name}`' for f in result.files)} in `{folder}`")


def build(engine) -> comfy_io.Fill:
    d = defaults(engine.demo)
    runner = TabRun(engine, LABELS)
    with gr.Row():
        with gr.Column(scale=5):
            model = comfy_panel.model_dropdown(engine, "i2v", MODELS,
                                               info="ComfyUI high/low noise files run as one A14B pair")
            image = gr.Image(type="filepath", label="Start image", elem_id="i2v-image", height=220)
            prompt = gr.Textbox(label="Prompt", lines=2, placeholder="the waves roll in, the camera pans slowly left",
                                elem_id="i2v-prompt")
            with gr.Accordion("Negative prompt", open=False):
                negative = gr.Textbox(label="Negative prompt", lines=1, placeholder="what to avoid (CFG only)")
            with gr.Row():
                resolution = gr.Dropdown(list(RESOLUTIONS), value=d["resolution"], label="Resolution",
                                         elem_id="i2v-resolution")
                aspect = gr.Dropdown(list(ASPECT_RATIOS), value="16:9", label="Aspect ratio")
                fit = gr.Radio(list(FIT_MODES), value="crop", label="Fit the start image",
                               info="crop: cover and cut the edges · pad: fit with black bars · stretch")
            with gr.Row():
                custom = d["resolution"] == "custom"
                width = gr.Slider(16, d["max_side"], value=d["width"], step=16, precision=0, label="Width",
                                  interactive=custom)
                height = gr.Slider(16, d["max_side"], value=d["height"], step=16, precision=0, label="Height",
                                   interactive=custom)
            with gr.Row():
                frames = gr.Slider(1, 241, value=d["frames"], step=4, precision=0, label="Frames",
                                   info="4k+1 (the Wan VAE packs 4 frames after the first)")
                steps = gr.Slider(1, 100, value=d["steps"], step=1, precision=0, label="Steps")
                fps = gr.Slider(1, 60, value=16, step=1, precision=0, label="FPS")
            with gr.Row():
                guidance = gr.Slider(0, 30, value=3.5, step=0.5, label="Guidance (high noise)")
                guidance_2 = gr.Slider(0, 30, value=3.5, step=0.5, label="Guidance (low noise)")
                boundary = gr.Slider(0.01, 0.99, value=0.9, step=0.01, label="Expert boundary",
                                     info="the high-noise expert runs while t >= boundary x 1000")
            seed = seed_input(0, elem_id="i2v-seed")
            with gr.Accordion("TurboWan few-step (rCM, 1-4 steps)", open=False):
                turbo_on = gr.Checkbox(False, label="Use the TurboWan experts", elem_id="i2v-turbo")
                turbo_quant = gr.Checkbox(True, label="int8 '-quant' files (dequantised on load)")
                with gr.Row():
                    high_path = gr.Textbox(label="High-noise .pth", placeholder=f"default: {TURBOWAN_REPO}")
                    low_path = gr.Textbox(label="Low-noise .pth", placeholder="give both or neither")
                with gr.Row():
                    sigma_max = gr.Number(200.0, label="sigma max", minimum=1, maximum=1600,
                                          info="upstream: 200; up to 1600 (less diversity, maybe more quality)")
                    ode = gr.Checkbox(False, label="ODE sampling (sharper, less robust; SDE by default)")
                with gr.Row():
                    attention_type = gr.Radio(list(TURBO_ATTENTION), value="sla", label="Attention",
                                              elem_id="i2v-attention-type")
                    sla_topk = gr.Slider(0.01, 1.0, value=0.1, step=0.01, label="SLA top-k",
                                         info="share of key blocks each query block attends to (0.15: upstream's "
                                              "quality pick)")
                gr.Markdown(SLA_NOTE)
            with gr.Accordion("Speed and output", open=False):
                with gr.Row():
                    cache = gr.Dropdown(list(STEP_CACHES), value="none", label="Step cache",
                                        info="on both experts; reset before every run. mag_cache: the first run "
                                             "of a model and step count calibrates (skips nothing)")
                    threshold = gr.Number(0.05, label="Cache threshold", minimum=0,
                                          info="skip while the change stays below it (first block: relative "
                                               "change; MagCache: accumulated error, 0.06 typical)")
                    preview_every = gr.Slider(0, 20, value=2, step=1, precision=0, label="Preview every",
                                              info="steps between live previews; 0 = off")
                with gr.Row():
                    fmt = gr.Radio(list(VIDEO_FORMATS), value="mp4", label="Format")
                    quality = gr.Slider(1, 10, value=8, step=1, precision=0, label="Quality")
                    loop = gr.Checkbox(True, label="Loop (gif)")
            pieces = comfy_panel.tab_picker(engine, "i2v", "i2v")["pieces"]
            with gr.Accordion("LoRAs (one stack per expert)", open=False, elem_id="i2v-loras"):
                ref_of = lambda m: comfy_panel.model_ref(m, ())  # noqa: E731
                stack = stack_editor(engine, "i2v-lora", model, ref_of, "High-noise expert (TI2V 5B: the model)")
                both = gr.Checkbox(False, label="Apply to both experts", elem_id="i2v-lora-both",
                                   info="the high-noise stack on the low-noise expert too (ignores the stack below)")
                stack_2 = stack_editor(engine, "i2v-lora2", model, ref_of, "Low-noise expert")
            memory, run, export_panel = runner.controls("i2v", "i2v", cancel_api="i2v_cancel")
        with gr.Column(scale=6):
            video = gr.Video(label="Video", elem_id="i2v-video", height=380, autoplay=True, loop=True)
            preview = gr.Image(label="Live preview (latent projection)", type="pil", elem_id="i2v-preview",
                               height=140, interactive=False)
            info = gr.Markdown("", elem_id="i2v-info")
            with gr.Row():
                last_frame = gr.DownloadButton("Last frame (PNG)", visible=False, elem_id="i2v-last-frame")
                save_json = gr.DownloadButton("Save request JSON", visible=False, elem_id="i2v-save-json")
            memory.trace_plot.render()

    for trigger in (resolution, aspect):
        trigger.change(preset_size, [resolution, aspect, width, height], [width, height], queue=False,
                       api_visibility="private")
    turbo_on.change(lambda on, s: 4 if on and s > 4 else s, [turbo_on, steps], steps, queue=False,
                    api_visibility="private")
    runner.plan(plan_request, [model, width, height, frames, *memory.inputs], stacks=[stack, stack_2, both],
                stack_fields=lambda high, low, on_both: {"loras": specs(high),
                                                         "loras_2": specs(high if on_both else low, "loras_2")})
    inputs = [model, image, prompt, negative, resolution, aspect, width, height, fit, frames, steps, guidance,
              guidance_2, boundary, fps, seed, fmt, quality, loop, cache, threshold, preview_every, turbo_on,
              turbo_quant, high_path, low_path, sigma_max, ode, attention_type, sla_topk, *memory.inputs, pieces,
              stack, stack_2, both]

    export_panel.wire(lambda *v: build_request(*v[:-4], pieces=v[-4] or (), loras=v[-3], loras_2=v[-2], both=v[-1]),
                      inputs)

    def run_i2v(model_, image_, prompt_, negative_, resolution_, aspect_, width_, height_, fit_, frames_, steps_,
                guidance_, guidance_2_, boundary_, fps_, seed_, fmt_, quality_, loop_, cache_, threshold_, every_,
                turbo_on_, turbo_quant_, high_, low_, sigma_max_, ode_, attention_, topk_, mode, max_vram, resident,
                block_mb, prefetch, streams, trace, pieces=None, loras=None, loras_2=None, both=False,
                request: gr.Request = None, progress=gr.Progress()):
        # explicit parameters: Gradio reads the signature to pass gr.Request and gr.Progress
        swap_values = (mode, max_vram, resident, block_mb, prefetch, streams, trace)
        req = build_request(model_, image_, prompt_, negative_, resolution_, aspect_, width_, height_, fit_, frames_,
                            steps_, guidance_, guidance_2_, boundary_, fps_, seed_, fmt_, quality_, loop_, cache_,
                            threshold_, every_, turbo_on_, turbo_quant_, high_, low_, sigma_max_, ode_, attention_,
                            topk_, *swap_values,
                            pieces=pieces or (), loras=loras, loras_2=loras_2, both=bool(both))
        result = yield from runner.run(req, request, progress, start={preview: None}, preview=preview)
        yield runner.done(result, {
            video: result.video_path, info: format_result(result),
            last_frame: download_update(file_of(result, ".png")), save_json: download_update(file_of(result, ".json")),
        }, model_, width_, height_, frames_, *swap_values, loras, loras_2, both)

    runner.click(run, run_i2v, inputs, [video, preview, info, last_frame, save_json], api_name="i2v")

    def turbo(name):
        return lambda r: getattr(r.turbo, name)

    return comfy_io.Fill(("i2v",), [
        (stack, entries_of("loras")), (stack_2, entries_of("loras_2")), (both, lambda r: False),
        (turbo_on, turbo("enabled")), (turbo_quant, turbo("quantized")), (high_path, turbo("high_path")),
        (low_path, turbo("low_path")), (sigma_max, turbo("sigma_max")), (ode, turbo("ode")),
        (attention_type, turbo("attention_type")), (sla_topk, turbo("sla_topk")),
        (model, lambda r: r.model.repo_id or comfy_io.KEEP),
        *comfy_io.attrs((image, "image"), (prompt, "prompt"), (negative, "negative_prompt"),
                        (resolution, "resolution"), (aspect, "aspect_ratio"), (width, "width"), (height, "height"),
                        (fit, "fit"), (frames, "num_frames"), (steps, "steps"), (guidance, "guidance_scale"),
                        (guidance_2, "guidance_scale_2"), (boundary, "boundary_ratio"), (fps, "fps"), (seed, "seed"),
                        (fmt, "output_format"), (quality, "quality"), (loop, "loop"), (cache, "step_cache"),
                        (threshold, "cache_threshold"), (preview_every, "preview_every"))])
