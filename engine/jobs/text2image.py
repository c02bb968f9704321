"""Text to image on any diffusers text-to-image pipeline (Flux, Chroma, Qwen-Image, SDXL ...)."""

from __future__ import annotations

import time

from engine.errors import InputError
from engine.jobs import loras
from engine.jobs.common import accepted_kwargs, generator_for, run_denoise
from engine.jobs.qwen_edit import is_edit_pipeline
from engine.models import read_model_index
from engine.requests import TextToImageRequest
from engine.result import Result


def pipeline_kwargs(pipe, req: TextToImageRequest) -> dict:
    """The diffusers call for this request, minus the callback: the engine adds only that."""
    kwargs = {
        "prompt": req.prompt,
        "width": req.width,
        "height": req.height,
        "num_inference_steps": req.steps,
        "guidance_scale": req.guidance_scale,
        # always explicit: Qwen-Image defaults to 4.0 and warns on every call without a negative prompt
        "true_cfg_scale": req.true_cfg_scale,
        "generator": generator_for(req.seed),
        "output_type": "pil",
    }
    if req.negative_prompt.strip():
        kwargs["negative_prompt"] = req.negative_prompt
    kwargs["guidance_schedule"] = None  # Ideogram 4: its default 48-step schedule would clash with guidance_scale
    return accepted_kwargs(pipe, kwargs)


def generate(engine, pipe, req: TextToImageRequest, progress, cancel, timings: dict, metadata: dict,
             label: str = "") -> list:
    """The denoising call with the request's LoRA stack active on the transformer (and only inside it)."""
    t0 = time.perf_counter()
    with loras.applied(engine, pipe, {"transformer": (req.loras, "loras")}, label or req.model.label) as stack:
        timings["lora"] = time.perf_counter() - t0  # resolving, loading what changed, activating
        out = run_denoise(engine, pipe, pipeline_kwargs(pipe, req), req.steps, req.swap, progress, cancel, timings)
    metadata.update(stack.metadata())
    if stack.warnings():
        metadata["warnings"] = [*metadata.get("warnings", []), *stack.warnings()]
    return list(out.images)


def prepare(engine, req: TextToImageRequest, progress, cancel) -> None:
    engine.store.resolve(req.model, progress=engine.download_progress(progress), cancel=cancel)
    loras.fetch_files(req.loras, progress, cancel)


def run(engine, req: TextToImageRequest, progress, cancel) -> Result:
    timings: dict[str, float] = {}
    t0 = time.perf_counter()
    progress(0.0, f"loading {req.model.label}")
    cls = read_model_index(engine.store.resolve(req.model)).get("_class_name", "")
    if is_edit_pipeline(cls):
        raise InputError("model", f"{req.model.label} is an edit model ({cls}): run it on the LoRA stack tab with "
                                  "an input image")
    pipe = engine.store.load_pipeline(req.model, progress=engine.download_progress(progress), cancel=cancel)
    timings["load"] = time.perf_counter() - t0
    metadata = {"pipeline": type(pipe).__name__}
    images = generate(engine, pipe, req, progress, cancel, timings, metadata)
    return Result(request=req, images=images, timings=timings, metadata=metadata)


def plan_extra(engine, req: TextToImageRequest, elem: int):
    """The stack's LoRA layers, inside the transformer's blocks (they stream with them)."""
    return loras.plan_extra({"transformer": req.loras}, elem)
