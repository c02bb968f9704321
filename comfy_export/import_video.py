"""Image-to-video graphs back to ``I2VRequest`` fields: the core Wan 2.2 graph (two KSamplerAdvanced, one per
expert, each with its own LoraLoaderModelOnly chain) and seed 003's TurboDiffusion nodes."""

from __future__ import annotations

from typing import Any

from . import build_i2v, import_kinds
from .import_kinds import (
    IMAGE_PASS,
    LOADERS,
    SAMPLERS,
    image_name,
    lora_entries,
    model_chain,
    model_ref,
    prompt_of,
    sampler_settings,
)
from .read_graph import ReadGraph


def i2v(g: ReadGraph) -> dict[str, Any]:
    from engine.requests import VIDEO_RESOLUTIONS

    def size_fields(width: int, height: int) -> dict[str, Any]:
        for res, table in VIDEO_RESOLUTIONS.items():
            for aspect, wh in table.items():
                if wh == (width, height):
                    return {"resolution": res, "aspect_ratio": aspect, "width": width, "height": height}
        return {"resolution": "custom", "width": width, "height": height}

    turbo = g.of_type("TurboDiffusionI2VSampler")
    if turbo:
        return _turbo(g, turbo[0], size_fields)
    w2v = g.of_type("WanImageToVideo")[0]
    pos, _, _ = prompt_of(g, (w2v, "positive"))
    neg, _, _ = prompt_of(g, (w2v, "negative"))
    start = g.up(w2v, "start_image", IMAGE_PASS)[0]
    fields: dict[str, Any] = {"prompt": pos, "negative_prompt": neg, "image": image_name(g, start),
                              "num_frames": int(g.value(w2v, "length", 81)),
                              **size_fields(int(g.value(w2v, "width", 832)), int(g.value(w2v, "height", 480)))}
    samplers = [s for s in g.of_type(*SAMPLERS)]
    samplers.sort(key=lambda s: g.value(s, "start_at_step", 0) or 0)
    first = sampler_settings(g, samplers[0])
    loader, patches = model_chain(g, first["model"])
    ref, _, _ = model_ref(g, loader)
    fields.update(model=ref, steps=int(first["steps"]), seed=int(first["seed"]), guidance_scale=float(first["cfg"]),
                  loras=lora_entries(g, patches))  # the high-noise expert's stack (TI2V 5B: the only one)
    if len(samplers) > 1:
        second = sampler_settings(g, samplers[1])
        low, low_patches = model_chain(g, second["model"])
        fields["loras_2"] = lora_entries(g, low_patches)  # the low-noise expert's own stack
        if low is not None and low != loader and g.type(low) in LOADERS:  # the low-noise expert's own file
            ref["files"]["transformer_2"] = str(g.value(low, LOADERS[g.type(low)], ""))
        switch = int(g.value(samplers[0], "end_at_step", first["steps"]))
        fields.update(guidance_scale_2=float(second["cfg"]),
                      boundary_ratio=build_i2v.boundary_from_step(int(first["steps"]), switch))
    fields.update(_video_out(g))
    return fields


def _video_out(g: ReadGraph) -> dict[str, Any]:
    for nid in g.reachable:
        kind = g.type(nid)
        if kind == "SaveVideo":
            create = g.node(nid, "video")
            fps = g.value(create, "fps", 16) if create else 16
            return {"output_format": "mp4", "fps": int(round(fps))}
        if kind == "SaveWEBM":
            return {"output_format": "webm", "fps": int(round(g.value(nid, "fps", 16))),
                    "quality": max(1, min(10, round((63 - float(g.value(nid, "crf", 32))) / 6.3)))}
        if kind == "SaveAnimatedWEBP":
            return {"output_format": "gif", "fps": int(round(g.value(nid, "fps", 16))),
                    "quality": max(1, min(10, round(int(g.value(nid, "quality", 80)) / 10)))}
    return {}


def _turbo(g: ReadGraph, s: str, size_fields) -> dict[str, Any]:
    from engine.requests import VIDEO_RESOLUTIONS

    res, aspect = g.value(s, "resolution", "480p"), g.value(s, "aspect_ratio", "16:9")
    width, height = VIDEO_RESOLUTIONS.get(res, VIDEO_RESOLUTIONS["480p"]).get(aspect, (832, 480))
    (high, high_patches), (low, low_patches) = (model_chain(g, (s, f"{e}_noise_model")) for e in ("high", "low"))
    high_name, low_name = (str(g.value(n, "model_name", "")) if n else "" for n in (high, low))
    turbo: dict[str, Any] = {"enabled": True, "sigma_max": float(g.value(s, "sigma_max", 200.0)),
                             "ode": bool(g.value(s, "use_ode", False))}
    quant = high_name.endswith("-quant.pth")
    if (high_name, low_name) == tuple(f"TurboWan2.2-I2V-A14B-{e}-720P{'-quant' if quant else ''}.pth"
                                      for e in ("high", "low")):
        turbo["quantized"] = quant
    else:
        turbo.update(high_path=high_name, low_path=low_name)
    swap: dict[str, Any] = {}
    if high:
        offload = g.value(high, "offload_mode", "comfy_native")
        mode = {"comfy_native": "none", "cpu_only": "cpu_only", "layerwise_gpu": "layerwise"}.get(
            offload, g.value(high, "swap_mode", "adaptive"))
        swap = {"mode": mode, "max_vram_gb": float(g.value(high, "max_vram_gb", 8.0)),
                "block_size_mb": int(g.value(high, "block_size_mb", 100))}
    text, _, _ = prompt_of(g, (s, "conditioning"))
    save = g.of_type("TurboDiffusionSaveVideo")
    out = {"fps": int(g.value(save[0], "fps", 16)), "output_format": g.value(save[0], "format", "mp4"),
           "quality": int(g.value(save[0], "quality", 8))} if save else {}
    return {"prompt": text, "image": image_name(g, g.up(s, "image", IMAGE_PASS)[0]),
            "num_frames": int(g.value(s, "num_frames", 81)), "steps": int(g.value(s, "num_steps", 4)),
            "boundary_ratio": float(g.value(s, "boundary", 0.9)), "seed": int(g.value(s, "seed", 0)),
            **size_fields(width, height), "resolution": res, "aspect_ratio": aspect, "turbo": turbo, "swap": swap,
            "loras": lora_entries(g, high_patches), "loras_2": lora_entries(g, low_patches), **out}




EXTRACT = {**import_kinds.EXTRACT, "i2v": i2v}  # every job's extractor: the importer reads this one
