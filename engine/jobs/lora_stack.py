"""LoRA stack on Qwen-Image: one or two stages, each with its own stack, composed only when it changed.

Stage 1 is text to image (``QwenImagePipeline``; ``QwenImageEditPipeline`` when an input image is given);
stage 2, optional, refines stage 1's image (optionally upscaled) with ``QwenImageImg2ImgPipeline``. Every
pipeline is built from the same shared components, so both stages and the Text-to-image tab use one transformer
and one ``LoraComposer``. Each stage gets a fresh step cache, and the adapters are switched off in ``finally``.
"""

from __future__ import annotations

import hashlib
import json
import os
import time

from engine.adapters import nunchaku
from engine.adapters.lora_files import content_hash, inspect_file, target_table_from_folder
from engine.adapters.lora_stack import LoraComposer, StackItem, fingerprint
from engine.errors import InputError
from engine.jobs import qwen_edit
from engine.jobs.common import accepted_kwargs, generator_for, run_denoise, step_cache
from engine.jobs.loras import (  # noqa: F401  (lora_file, stack_items: this module's names before jobs/loras.py)
    keep_set,
    lora_file,
    plan_bytes,
    stack_items,
    unknown_key_warnings,
    weights_in_memory,
)
from engine.jobs.text2image import pipeline_kwargs
from engine.models import read_model_index, torch_dtype
from engine.requests import LoraSpec, LoraStackRequest, ModelRef
from engine.result import Result

REFINE_PIPELINE = "QwenImageImg2ImgPipeline"


# ---------------------------------------------------------------- inspection (the editor's rows)
def inspect(engine, model: ModelRef, spec: LoraSpec) -> dict:
    """Rank, targets, size and hits of one LoRA for this model, read without loading the model (headers)."""
    spec.validate("lora")
    path = lora_file(spec)
    folder = engine.store.resolve_local(model)  # never a download: the editor must not start one
    table = None
    if folder is not None and (folder / "transformer").is_dir():
        table = target_table_from_folder(folder / "transformer")
    family = _family_of_folder(folder)
    return inspect_file(path, table, "lora", spec.label, family).summary()


def _family_of_folder(folder) -> str:
    """The LoRA family of a model folder from its transformer's class name (config.json), before loading it."""
    import json

    from engine.adapters.lora_families import model_family

    try:
        name = json.loads((folder / "transformer" / "config.json").read_text())["_class_name"]
    except (OSError, ValueError, KeyError, TypeError):
        return ""
    return model_family(type(name, (), {}))


# ---------------------------------------------------------------- the run
def prepare(engine, req: LoraStackRequest, progress, cancel) -> None:
    engine.store.resolve(req.model, progress=engine.download_progress(progress), cancel=cancel)
    for spec in (*req.loras, *(req.stage2_loras if req.stage2 else ())):
        lora_file(spec, progress, cancel)


def _pipeline(engine, req: LoraStackRequest, pipeline_class: str | None, progress, cancel):
    kwargs = {}
    if req.backend == "nunchaku":
        kwargs["transformer"] = _nunchaku_transformer(engine, req)
    if pipeline_class and qwen_edit.is_edit_pipeline(pipeline_class):
        kwargs.update(qwen_edit.pipeline_kwargs(engine.store, engine.store.resolve(req.model)))
    return engine.store.load_pipeline(req.model, pipeline_class, progress=engine.download_progress(progress),
                                      cancel=cancel, **kwargs)


def _nunchaku_transformer(engine, req: LoraStackRequest):
    cache = engine.__dict__.setdefault("_nunchaku_transformers", {})
    path = os.path.realpath(req.nunchaku_transformer)
    if path not in cache:
        module = nunchaku.load_transformer(path, torch_dtype(req.model.dtype, engine.device), engine.device)
        engine.store.register_module(f"nunchaku/{os.path.basename(path)}", module, "transformer")
        cache[path] = module
    return cache[path]


def stage1_kwargs(pipe, req: LoraStackRequest) -> dict:
    # An edit keeps the request's width and height; upstream, given none, sizes the output like the input image
    # at about 1 MP. The input image itself is always resized to about 1 MP by the pipeline (VAE side) and, for the
    # vision tower, to the processor's pixel range (EditPlus: 384x384 first), as upstream does. EditPlus takes a
    # list of up to three images upstream; this tab gives it one.
    kwargs = pipeline_kwargs(pipe, req)
    if req.input_image:
        from PIL import Image

        with Image.open(req.input_image) as im:
            kwargs["image"] = im.convert("RGB")
    return accepted_kwargs(pipe, kwargs)


def stage2_kwargs(pipe, req: LoraStackRequest, image) -> dict:
    width, height = round(req.width * req.stage2_upscale), round(req.height * req.stage2_upscale)
    if image.size != (width, height):
        image = image.resize((width, height), resample=3)  # bicubic
    kwargs = {
        "prompt": req.prompt, "image": image, "strength": req.stage2_strength, "width": width, "height": height,
        "num_inference_steps": req.stage2_steps or req.steps, "true_cfg_scale": req.true_cfg_scale,
        "guidance_scale": req.guidance_scale, "generator": generator_for(req.seed), "output_type": "pil",
    }
    if req.negative_prompt.strip():
        kwargs["negative_prompt"] = req.negative_prompt
    return accepted_kwargs(pipe, kwargs)


def cache_key(req: LoraStackRequest, fp: str, stage: int) -> str:
    """What a step-cache entry depends on; the cache is also rebuilt per stage, so nothing outlives it."""
    data = [req.model.to_dict(), fp, req.step_cache, req.width, req.height, req.steps, stage, req.true_cfg_scale,
            bool(req.negative_prompt.strip()), content_hash(req.input_image) if req.input_image else ""]
    return hashlib.sha256(json.dumps(data, sort_keys=True).encode()).hexdigest()[:16]


def stage1_class(engine, req: LoraStackRequest) -> str:
    """The model's own pipeline class; an input image needs a Qwen-Image-Edit model and an Edit model one."""
    cls = read_model_index(engine.store.resolve(req.model))["_class_name"]
    edit = qwen_edit.is_edit_pipeline(cls)
    if req.input_image and not edit:
        raise InputError("input_image", f"{req.model.label} is a {cls}, not an edit model; editing an input image "
                                        "needs Qwen-Image-Edit or Qwen-Image-Edit-2509 (or remove the input image)")
    if not req.input_image and edit:
        raise InputError("input_image", f"{req.model.label} is an edit model ({cls}): give it an input image, or "
                                        "pick Qwen-Image to generate from the prompt alone")
    return cls


def _check_edit_size(pipe, req: LoraStackRequest) -> None:
    """Upstream's Edit pipelines round the output size down to their latent grid without a word; say so instead
    (16 px on the real models, 32 on the tiny demo one)."""
    multiple = pipe.vae_scale_factor * 2
    for side in ("width", "height"):
        if getattr(req, side) % multiple:
            raise InputError(side, f"{getattr(req, side)} px: {req.model.label} needs a multiple of {multiple}")


def run(engine, req: LoraStackRequest, progress, cancel) -> Result:
    timings: dict[str, float] = {}
    t0 = time.perf_counter()
    progress(0.0, f"loading {req.model.label}")
    pipe = _pipeline(engine, req, stage1_class(engine, req), progress, cancel)
    timings["load"] = time.perf_counter() - t0
    if req.input_image:
        _check_edit_size(pipe, req)
    if req.backend == "nunchaku":
        return _run_nunchaku(engine, req, pipe, progress, cancel, timings)
    composer = LoraComposer.of(engine.store, pipe, req.model.label)

    before = composer.counters.as_dict()
    t1 = time.perf_counter()
    stage1 = stack_items(composer, req.loras, "loras")
    stage2 = stack_items(composer, req.stage2_loras, "stage2_loras") if req.stage2 else []
    keep = keep_set(composer, stage1 + [i for i in stage2 if i.adapter not in {s.adapter for s in stage1}])
    if composer.pending(keep):  # this tab owns its stack: an emptied stack frees its files
        weights_in_memory(engine, pipe)
        composer.sync(keep)
    timings["lora"] = time.perf_counter() - t1
    stage1_image = None
    try:
        images = _stage(engine, composer, pipe, req, stage1, stage1_kwargs(pipe, req), req.steps, progress,
                        cancel, timings, "stage1")
        if req.stage2:
            stage1_image = images[0]
            refine = _pipeline(engine, req, REFINE_PIPELINE, progress, cancel)
            images = _stage(engine, composer, refine, req, stage2, stage2_kwargs(refine, req, stage1_image),
                            req.stage2_steps or req.steps, progress, cancel, timings, "stage2")
    finally:
        composer.deactivate()
    after = composer.counters.as_dict()
    metadata = {
        "pipeline": type(pipe).__name__,
        "fingerprint": fingerprint(stage1),
        "step_cache_key": cache_key(req, fingerprint(stage1), 1),
        "lora_work": {k: after[k] - before[k] for k in after},
        "loras": [dict(i.info.summary(), weight=i.weight, enabled=i.enabled) for i in stage1],
        "warnings": unknown_key_warnings(stage1 + stage2),
    }
    if req.stage2:
        metadata.update(stage2_fingerprint=fingerprint(stage2),
                        stage2_loras=[dict(i.info.summary(), weight=i.weight, enabled=i.enabled) for i in stage2])
    return Result(request=req, images=images + ([stage1_image] if stage1_image is not None else []),
                  timings=timings, metadata=metadata)


def _stage(engine, composer, pipe, req, items, kwargs, steps, progress, cancel, timings, tag) -> list:
    t = time.perf_counter()
    composer.activate(items)
    timings["lora"] = timings.get("lora", 0.0) + time.perf_counter() - t
    stage_timings: dict[str, float] = {}
    # the LoRA tensors live inside the transformer: its memory mode places (or streams) them with it
    with step_cache(pipe, req.step_cache):
        out = run_denoise(engine, pipe, kwargs, steps, req.swap, progress, cancel, stage_timings)
    for key, value in stage_timings.items():
        timings[f"{tag}_{key}" if req.stage2 else key] = value
    return list(out.images)


def _run_nunchaku(engine, req, pipe, progress, cancel, timings) -> Result:  # pragma: no cover - needs CUDA
    composer = engine.__dict__.setdefault("_nunchaku_composers", {}).setdefault(
        id(pipe.transformer), nunchaku.NunchakuComposer(pipe.transformer))
    table = None  # nunchaku fuses q/k/v: the diffusers names are checked by the file's own rules only
    items = [StackItem(inspect_file(lora_file(s), table, f"loras[{i}]", s.label), float(s.weight), s.enabled,
                       s.label) for i, s in enumerate(req.loras)]
    # this transformer serves LoRA-stack runs only (Text to image loads the diffusers one): the composed LoRAs
    # may stay until the stack changes
    composed = composer.apply(items)  # only when the stack changed; the step cache opens after it (never stale)
    with step_cache(pipe, req.step_cache):
        out = run_denoise(engine, pipe, stage1_kwargs(pipe, req), req.steps, req.swap, progress, cancel, timings)
    warnings = [f"{len(composer.skipped)} layer(s) without an SVDQuant low-rank branch left out (e.g. "
                f"{composer.skipped[0]}), as seed 004 does"] if composer.skipped else []
    return Result(request=req, images=list(out.images), timings=timings,
                  metadata={"pipeline": type(pipe).__name__, "backend": "nunchaku", "fingerprint": fingerprint(items),
                            "lora_work": {"composes": int(composed)}, "warnings": warnings})


def plan_extra(engine, req: LoraStackRequest, elem: int):
    """The LoRA layers of both stages' enabled entries live inside the transformer's blocks (peft wraps the
    targeted linears), so they move with the blocks in every streaming mode."""
    from engine.plan import PlanExtra

    extra = PlanExtra()
    seen: set = set()  # both stages share one transformer, so a file in both stacks is loaded once
    extra.in_blocks_of["transformer"] = sum(plan_bytes(stack, elem, extra.notes, seen) for stack in (
        req.loras, req.stage2_loras if req.stage2 else ()))
    folder = engine.store.resolve_local(req.model)
    if folder is not None and qwen_edit.is_edit_pipeline(read_model_index(folder).get("_class_name", "")):
        extra.notes.append("an edit also runs the input image's latents (about 1 MP, 4096 tokens on the real "
                           "model) through the transformer: activations are above this estimate")
    return extra
