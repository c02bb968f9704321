"""Panorama perception (OmniX): maps from a 360° panorama with task adapters over the shared Flux pipeline."""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import torch

from engine.adapters.omnix import OmniXSession, check_adapter_folder
from engine.adapters.omnix_pipeline import OmniXPerceptionPipeline, perception_prompt
from engine.errors import EngineError
from engine.files.atomic import OutputSet, check_free
from engine.jobs.common import run_denoise
from engine.outputs import png_info, request_json, run_stem
from engine.panorama import input as panorama_input
from engine.panorama import maps as perception_maps
from engine.panorama.seam import seam_error
from engine.panorama.tasks import allow_patterns
from engine.requests import PerceptionRequest
from engine.result import Result


def adapters_root(engine, req: PerceptionRequest, progress=None, cancel=None) -> Path:
    """The local adapter folder: a path, the demo stand-in, a models-dir copy, or only the chosen tasks' files
    from the hub (the repo also holds generation adapters)."""
    ref = req.adapters
    if ref.path or engine.demo or (engine.models_dir / ref.label.split("/")[-1]).exists():
        return engine.store.resolve(ref, progress, cancel)
    from engine.hub import download as hub

    folder = hub.download(ref.repo_id, revision=ref.revision or None, allow_patterns=allow_patterns(req.tasks),
                          progress=progress, cancel=cancel)
    return folder / ref.subfolder if ref.subfolder else folder


def prepare(engine, req: PerceptionRequest, progress, cancel) -> None:
    downloads = engine.download_progress(progress)
    engine.store.resolve(req.model, progress=downloads, cancel=cancel)
    adapters_root(engine, req, downloads, cancel)


def omnix_pipeline(flux) -> OmniXPerceptionPipeline:
    """The perception pipeline over the Flux pipeline's own components (the same objects, one ledger copy)."""
    from diffusers import FluxPipeline

    if not isinstance(flux, FluxPipeline):
        raise EngineError(f"OmniX adapters are made for FLUX.1-dev; this model loads as {type(flux).__name__}")
    pipe = OmniXPerceptionPipeline(**flux.components)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def image_tensor(image) -> torch.Tensor:
    """[1, 3, H, W] in [-1, 1], upstream's ``x / 127.5 - 1``."""
    data = torch.from_numpy(np.asarray(image, dtype=np.float32) / 127.5 - 1.0)
    return data.permute(2, 0, 1).unsqueeze(0).contiguous()


def run(engine, req: PerceptionRequest, progress, cancel) -> Result:
    timings: dict[str, float] = {}
    t0 = time.perf_counter()
    progress(0.0, f"loading {req.model.label}")
    flux = engine.store.load_pipeline(req.model, progress=engine.download_progress(progress), cancel=cancel)
    pipe = omnix_pipeline(flux)
    root = adapters_root(engine, req)
    check_adapter_folder(root, req.tasks, pipe.transformer, req.model.label)
    panorama, info = panorama_input.prepare(panorama_input.check_panorama(req.panorama))
    timings["load"] = time.perf_counter() - t0

    kwargs = {
        "image": image_tensor(panorama), "tasks": list(req.tasks), "prompt": perception_prompt(req.prompt),
        "num_inference_steps": req.steps, "guidance_scale": req.guidance_scale, "seed": req.seed,
        "seam_blending": req.seam_blending,
    }
    with OmniXSession(pipe, root, engine.memory, req.tasks, label=req.adapters.label) as session:
        kwargs["session"] = session
        out = run_denoise(engine, pipe, kwargs, len(req.tasks) * req.steps, req.swap, progress, cancel, timings)

    t1 = time.perf_counter()
    result = write_outputs(engine.outputs_dir, req, out.maps, panorama, text=engine.output_text_for(req))
    timings["write"] = time.perf_counter() - t1
    result.timings = timings
    result.metadata.update(info, pipeline=type(pipe).__name__, peak_ledger_bytes=session.peak_ledger_bytes,
                           seam_error={task: seam_error(m) for task, m in out.maps.items()})
    return result


def write_outputs(out_dir: Path, req: PerceptionRequest, maps: dict, panorama,
                  text: dict[str, str] | None = None) -> Result:
    """Every map's files, the resized input, the sphere ``.glb`` (with depth) and the request JSON, appearing
    together (``OutputSet``): a crash or a full disk leaves the whole set or nothing."""
    out_dir = Path(out_dir)
    stem = run_stem(req.kind, req.seed)
    result = Result(request=req)
    width, height = panorama.size
    check_free(out_dir, perception_maps.expected_bytes(maps, width, height) + 3 * width * height)
    info = png_info(req, text)  # every PNG of the run opens its ComfyUI graph (the app's text chunks)
    with OutputSet(out_dir) as run:
        result.files.append(str(run.save_image(f"{stem}-input.png", panorama, pnginfo=info)))
        depth = None
        for task, image in maps.items():
            encoded = perception_maps.encode(task, image, run, stem, pnginfo=info)
            result.files.extend(str(p) for p in encoded.files)
            for path, caption in encoded.previews:
                result.maps[caption] = str(path)
            depth = encoded.arrays.get("depth", depth)
        if depth is not None and req.sphere_mesh:
            from engine.panorama.mesh import glb_bytes

            glb = run.write_bytes(f"{stem}-sphere.glb", glb_bytes(depth, panorama))
            result.files.append(str(glb))
            result.metadata["mesh"] = str(glb)
        result.files.append(str(run.write_json(f"{stem}.json", request_json(req))))
        run.commit(last=f"{stem}.json")
    return result


def plan_extra(engine, req: PerceptionRequest, elem: int):
    """Every chosen task's adapter pair sits in the transformer's blocks for the run, and each task denoises a
    batch of one item per adapter (condition + target)."""
    from engine.panorama.tasks import TASKS, lora_files
    from engine.plan import PlanExtra, file_bytes

    extra = PlanExtra(batch=max(len(TASKS[t].adapters) for t in req.tasks))
    root = engine.store.resolve_local(req.adapters)  # a path, the demo, a models-dir copy or the HF cache
    files = [root / f for f in lora_files(req.tasks)] if root else []
    if files and all(f.is_file() for f in files):
        extra.in_blocks = sum(file_bytes(f, elem) for f in files)
    else:
        extra.notes.append("the OmniX adapters are not all here yet: their bytes are not in the plan")
    return extra
