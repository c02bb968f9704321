"""Image to video on Wan 2.2: A14B (two experts switched at ``boundary_ratio``) or TI2V 5B (one transformer)
through diffusers' ``WanImageToVideoPipeline``, or the TurboWan experts with the rCM sampler (``engine.video.rcm``).
Every call goes through ``run_denoise``, so the memory mode decides where each expert, encoder and the VAE are."""

from __future__ import annotations

import dataclasses
import time

from engine.errors import InputError
from engine.jobs import loras
from engine.jobs.common import generator_for, run_denoise
from engine.outputs import keep_input
from engine.requests import I2VRequest
from engine.result import Result
from engine.speed.step_cache import apply_step_cache
from engine.video.encode import save_video_result
from engine.video.start_image import load_start_image

PIPELINE = "WanImageToVideoPipeline"


def base_patterns(req: I2VRequest):
    """What to fetch of the base repo: everything, or with TurboWan everything but its two experts."""
    if not req.turbo.enabled:
        return None
    from engine.video.turbowan import BASE_PATTERNS

    return list(BASE_PATTERNS)


def prepare(engine, req: I2VRequest, progress, cancel) -> None:
    engine.store.resolve(req.model, progress=engine.download_progress(progress), cancel=cancel,
                         allow_patterns=base_patterns(req))
    if req.turbo.enabled:
        from engine.video.turbowan import turbo_files

        turbo_files(engine, req.turbo, progress, cancel)
    loras.fetch_files((*req.loras, *req.loras_2), progress, cancel)


def load(engine, req: I2VRequest, progress, cancel):
    """The pipeline this request runs (and notes on how it was loaded)."""
    report = engine.download_progress(progress)
    if not req.turbo.enabled:
        return engine.store.load_pipeline(req.model, PIPELINE, progress=report, cancel=cancel), []
    from engine.video.turbowan import turbo_pipeline

    # the base model lends text encoder, VAE, tokenizer and configs; its own experts are never loaded
    base = engine.store.load_pipeline(req.model, PIPELINE, progress=report, cancel=cancel, transformer=None,
                                      transformer_2=None, allow_patterns=base_patterns(req))
    return turbo_pipeline(engine, req, base, progress, cancel)


def check_size(pipe, req: I2VRequest) -> None:
    """Width and height must fit the VAE's compression times the patch size (16 on A14B, 32 on TI2V 5B)."""
    transformer = pipe.transformer if pipe.transformer is not None else pipe.transformer_2
    multiple = pipe.vae_scale_factor_spatial * transformer.config.patch_size[1]
    for name in ("width", "height"):
        value = getattr(req, name)
        if value % multiple:
            lower = value - value % multiple
            raise InputError(name, f"this model needs a multiple of {multiple} (try {lower or multiple} or "
                                   f"{lower + multiple}), got {value}")


def call_kwargs(pipe, req: I2VRequest, image) -> dict:
    kwargs = {"image": image, "prompt": req.prompt, "height": req.height, "width": req.width,
              "num_frames": req.num_frames, "num_inference_steps": req.steps, "generator": generator_for(req.seed),
              "output_type": "np"}
    if req.turbo.enabled:  # rCM: no classifier-free guidance, upstream's switch on t
        return {**kwargs, "sigma_max": req.turbo.sigma_max, "boundary": req.boundary_ratio, "ode": req.turbo.ode}
    kwargs["guidance_scale"] = req.guidance_scale
    if req.negative_prompt.strip():
        kwargs["negative_prompt"] = req.negative_prompt
    if pipe.transformer_2 is not None:
        kwargs["guidance_scale_2"] = req.guidance_scale_2
    return kwargs


def experts_note(pipe, req: I2VRequest) -> str:
    if pipe.transformer_2 is None:
        return "one transformer (TI2V 5B layout)"
    return f"two experts, switch at t = {req.boundary_ratio:g} x 1000"


def step_cache_for(engine, pipe, req: I2VRequest, lora_key: str = ""):
    """Put the request's step cache on both experts: ``(names that carry it, Calibration or None)``; a MagCache
    run without saved ratios for this model and step count records them instead (remove, then save, after it)."""
    mag, calibration = None, None
    if req.step_cache == "mag_cache":
        from engine.speed import mag_cache

        boundary = req.boundary_ratio if pipe.transformer_2 is not None else None
        mag, calibration = mag_cache.prepare(pipe, engine.models_dir, calibration_key(req, lora_key), req.steps,
                                             boundary)
    return apply_step_cache(pipe, req.step_cache, req.cache_threshold, req.steps, mag, lora_key), calibration


def calibration_key(req: I2VRequest, lora_key: str) -> dict:
    """What MagCache's saved ratios belong to: the model, and the LoRA stacks when there are any (a 4-step
    distill LoRA changes every step's magnitude)."""
    if not (req.loras or req.loras_2):
        return req.model.to_dict()
    return {**req.model.to_dict(), "loras": lora_key}


def lora_stacks(pipe, req: I2VRequest) -> dict:
    """One stack per expert: ``loras`` on the high-noise expert (TI2V 5B's one transformer), ``loras_2`` on the
    low-noise one."""
    if pipe.transformer_2 is None and req.loras_2:
        raise InputError("loras_2", "this model (TI2V 5B layout) has one transformer: put its LoRAs in the first "
                                    "stack")
    return {"transformer": (req.loras, "loras"), "transformer_2": (req.loras_2, "loras_2")}


def keep_start_image(engine, req: I2VRequest) -> I2VRequest:
    """The request with its start image copied into ``<outputs>/start-images/`` (content-named, verified), so the
    saved request JSON replays after Gradio has cleaned its upload cache."""
    kept = keep_input(engine.outputs_dir, req.image, "start-images")
    return req if kept == req.image else dataclasses.replace(req, image=kept)


def run(engine, req: I2VRequest, progress, cancel) -> Result:
    timings: dict[str, float] = {}
    t0 = time.perf_counter()
    req = keep_start_image(engine, req)
    progress(0.0, f"loading {req.model.label}")
    pipe, notes = load(engine, req, progress, cancel)
    timings["load"] = time.perf_counter() - t0
    check_size(pipe, req)
    context_parallel = getattr(engine, "context_parallel", None)  # set by ``python -m engine run --context-parallel``
    if context_parallel is not None:
        from engine.video.context_parallel import enable

        notes = [*notes, *enable(pipe, req, context_parallel.degree)]
    if pipe.transformer_2 is not None and not req.turbo.enabled:
        pipe.register_to_config(boundary_ratio=req.boundary_ratio)  # diffusers reads it from the config per call
    image, image_notes = load_start_image(req.image, req.width, req.height, req.fit)
    notes += image_notes
    t_lora = time.perf_counter()
    # TurboWan's experts are diffusers Wan transformers once converted (SLA only swaps the self-attention's
    # processor; q/k/v/o stay the Linear layers a LoRA wraps): the same stacks, one per expert
    label = "TurboWan" if req.turbo.enabled else req.model.label
    with loras.applied(engine, pipe, lora_stacks(pipe, req), label) as stack:
        timings["lora"] = time.perf_counter() - t_lora
        cached, calibration = step_cache_for(engine, pipe, req, stack.key())
        sink = getattr(progress, "preview", None)
        preview = None
        if sink is not None and req.preview_every:
            from engine.video.preview import LatentPreview

            preview = LatentPreview(pipe, image, req.preview_every, sink)
        try:
            out = run_denoise(engine, pipe, call_kwargs(pipe, req, image), req.steps, req.swap, progress, cancel,
                              timings)
        finally:
            if preview is not None:
                preview.close()
            if calibration is not None:
                calibration.remove()
    notes += stack.warnings()
    if calibration is not None and calibration.save(calibration_key(req, stack.key())):
        notes.append("MagCache: this run calibrated the model's magnitude ratios (nothing skipped); the next run "
                     "with these steps skips steps")
    frames = out.frames[0]
    t1 = time.perf_counter()
    files = save_video_result(frames, engine.outputs_dir, req, text=engine.output_text_for(req))
    timings["encode_video"] = time.perf_counter() - t1
    metadata = {"pipeline": type(pipe).__name__, "experts": experts_note(pipe, req), "frames": int(len(frames)),
                "size": [int(frames.shape[2]), int(frames.shape[1])], "step_cache": cached, **stack.metadata()}
    if notes:
        metadata["warnings"] = list(dict.fromkeys(notes))
    return Result(request=req, video_path=files[0], files=files, timings=timings, metadata=metadata)


def plan_ref(engine, req: I2VRequest):
    return req.model  # TurboWan experts have the base experts' shapes: the base folder's headers size them


def plan_extra(engine, req: I2VRequest, elem: int):
    """Each expert's LoRA layers on that expert (``loras`` on the high-noise one, ``loras_2`` on the low-noise one):
    they load into its blocks and stream with them."""
    return loras.plan_extra({"transformer": req.loras, "transformer_2": req.loras_2}, elem)
