"""Panorama perception (OmniX): a 2:1 panorama in; depth, normal, albedo, PBR and semantic maps and a 3D view out."""

from __future__ import annotations

from pathlib import Path

import gradio as gr

from engine import PerceptionRequest, Result
from engine.panorama import input as pano
from engine.requests import PERCEPTION_TASKS

from .. import comfy_io
from ..components import as_int, seed_input, steps_slider
from ..memory_mode import memory_mode_widget, swap_field, swap_settings
from ..run_handler import TabRun

TASK_LABELS = {"depth": "Depth (distance)", "normal": "Normal", "albedo": "Albedo",
               "pbr": "PBR (roughness, metallic)", "semantic": "Semantic"}
LABELS = {  # request field -> widget label, so an error names what the user sees
    "panorama": "Panorama", "tasks": "Maps", "prompt": "Extra prompt", "steps": "Steps",
    "guidance_scale": "Guidance", "seed": "Seed", "model": "Base model", "adapters": "OmniX adapters",
    "swap": "Memory mode",
}


def defaults(demo: bool) -> dict:
    return {"steps": 2} if demo else {"steps": 28}  # upstream: 28 steps


def build_request(panorama, tasks, prompt, steps, guidance_scale, seed, seam_blending=True, sphere_mesh=True,
                  *swap_values) -> PerceptionRequest:
    """The request these widget values describe, validated (raises ``InputError`` naming the field).
    ``swap_values`` are the memory-mode widget's (none: the default mode)."""
    request = PerceptionRequest(
        panorama=panorama or "", tasks=tuple(tasks or ()), prompt=prompt or "", steps=as_int(steps),
        guidance_scale=guidance_scale, seed=as_int(seed), seam_blending=bool(seam_blending),
        sphere_mesh=bool(sphere_mesh), **swap_field(swap_values),
    )
    request.validate()
    return request


def plan_request(*swap_values) -> PerceptionRequest:
    """What the plan line needs: the base model and the memory settings (the panorama does not change it)."""
    return PerceptionRequest(swap=swap_settings(*swap_values))


def aspect_note(path) -> tuple[str, bool]:
    """(message, whether the pad/crop buttons apply) for an uploaded file; ("", False) when it is fine."""
    if not path:
        return "", False
    try:
        image = pano.open_image(path)
    except Exception as exc:  # InputError with the reason; shown, never raised, while the user is choosing
        return f"⚠️ {getattr(exc, 'message', exc)}", False
    problem = pano.aspect_problem(*image.size)
    if problem is None:
        w, h = pano.perception_size(*image.size)
        resized = "" if (w, h) == image.size else f"; it runs at {w}×{h}"
        return f"{image.size[0]}×{image.size[1]} panorama{resized}.", False
    return f"⚠️ The image {problem}.", image.size[0] <= pano.MAX_INPUT_WIDTH


def format_result(result: Result) -> str:
    t, m = result.timings, result.metadata
    size = "×".join(str(v) for v in m.get("perception_size", []))
    seams = ", ".join(f"{k} {v:.3f}" for k, v in m.get("seam_error", {}).items())
    folder = Path(result.files[0]).parent if result.files else ""
    return (f"**{t.get('total', 0.0):.2f} s** (denoise + decode {t.get('denoise_decode', 0.0):.2f} s) at {size} · "
            f"seam error {seams} · {len(result.files)} files in `{folder}`")


def build(engine) -> comfy_io.Fill:
    d = defaults(engine.demo)
    runner = TabRun(engine, LABELS)
    fixed_dir = Path(engine.outputs_dir) / "inputs"

    with gr.Row():
        with gr.Column(scale=5):
            panorama = gr.Image(type="filepath", label="Panorama (equirectangular, 2:1)", elem_id="pano-input",
                                sources=["upload", "clipboard"], height=260)
            note = gr.Markdown("", elem_id="pano-note")
            with gr.Row(visible=False) as fix_row:
                pad = gr.Button("Pad to 2:1", size="sm", elem_id="pano-pad")
                crop = gr.Button("Crop to 2:1", size="sm", elem_id="pano-crop")
            tasks = gr.CheckboxGroup([(TASK_LABELS[t], t) for t in PERCEPTION_TASKS], value=["depth", "normal", "albedo"],
                                     label="Maps", elem_id="pano-tasks",
                                     info="several maps in one run share the prompt and input encoding")
            prompt = gr.Textbox(label="Extra prompt", lines=1, placeholder="optional, after [EQUIRECTANGULAR]")
            with gr.Row():
                steps = steps_slider(d["steps"])
                guidance = gr.Slider(0, 30, value=3.5, step=0.5, label="Guidance")
            seed = seed_input(0, elem_id="pano-seed")
            with gr.Row():
                seam_blending = gr.Checkbox(True, label="Seam blending", info="left and right edges of every map agree")
                sphere = gr.Checkbox(True, label="3D sphere (.glb)", info="with depth")
            memory = memory_mode_widget(engine, "text_to_image", "pano")  # Flux, as on Text to image
            run = runner.run_row("pano", cancel_api="perception_cancel")
            comfy = comfy_io.ExportPanel(engine, "pano")
        with gr.Column(scale=6):
            gallery = gr.Gallery(label="Maps", columns=2, height=420, object_fit="contain", elem_id="pano-maps",
                                 buttons=["download", "fullscreen"])
            viewer = gr.Model3D(label="3D view: the panorama on its depth", elem_id="pano-3d", height=320,
                                clear_color=(0.1, 0.1, 0.1, 1.0))
            info = gr.Markdown("", elem_id="pano-info")
            files = gr.File(label="All files (maps, 16-bit depth, .npy data, .glb, request JSON)", file_count="multiple",
                            elem_id="pano-files")
            memory.trace_plot.render()

    runner.plan(memory, plan_request, memory.inputs)

    def check(path):
        text, fixable = aspect_note(path)
        return text, gr.update(visible=fixable)

    panorama.change(check, panorama, [note, fix_row], queue=False, api_visibility="private")

    def fix(how):
        def handler(path):
            if not path:
                raise gr.Error("Upload a panorama first.")
            try:
                out = pano.fix_aspect(path, how, fixed_dir)
            except Exception as exc:
                raise gr.Error(str(getattr(exc, "message", exc)), print_exception=False) from None
            return str(out)

        return handler

    pad.click(fix("pad"), panorama, panorama, api_name="perception_pad")
    crop.click(fix("crop"), panorama, panorama, api_name="perception_crop")

    def run_perception(panorama, tasks, prompt, steps, guidance, seed, seam_blending, sphere, mode, max_vram,
                       resident, block_mb, prefetch, streams, trace, request: gr.Request, progress=gr.Progress()):
        swap_values = (mode, max_vram, resident, block_mb, prefetch, streams, trace)
        req = build_request(panorama, tasks, prompt, steps, guidance, seed, seam_blending, sphere, *swap_values)
        result = yield from runner.run(req, request, progress)
        yield runner.done(result, {
            gallery: [(path, caption) for caption, path in result.maps.items()],
            viewer: result.metadata.get("mesh"),
            files: list(result.files),
            info: format_result(result),
        }, *swap_values)

    inputs = [panorama, tasks, prompt, steps, guidance, seed, seam_blending, sphere, *memory.inputs]
    comfy.wire(build_request, inputs)
    runner.click(run, run_perception, inputs, [gallery, viewer, files, info], api_name="perception")
    return comfy_io.Fill(("perception",), [
        (tasks, lambda r: list(r.tasks)),
        *comfy_io.attrs((panorama, "panorama"), (prompt, "prompt"), (steps, "steps"), (guidance, "guidance_scale"),
                        (seed, "seed"), (seam_blending, "seam_blending"), (sphere, "sphere_mesh"))])
