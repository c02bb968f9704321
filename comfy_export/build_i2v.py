"""Image to video. TurboWan on: seed 003's nodes (freezelion/Comfyui_turbodiffusion_blockswap: two
TurboWanModelLoaders with the block-swap inputs, TurboDiffusionI2VSampler, TurboDiffusionSaveVideo). Off: no pack
runs diffusers' Wan 2.2, so the ComfyUI-core graph (the official Wan 2.2 I2V template's shape: two experts, each a
KSamplerAdvanced over its share of the steps; TI2V 5B: one KSampler)."""

from __future__ import annotations

import math

from . import build_base as base
from . import names
from .build_lora import core_chain
from .graph import Graph

WAN_SHIFT = 5.0  # ModelSamplingSD3 shift of the official Wan 2.2 14B I2V template (diffusers' flow_shift)
TURBO_MODES = {"cpu_only": "cpu_only", "none": "comfy_native", "model_offload": "comfy_native"}  # else block_swap
TURBO_SWAP = {"layerwise": "layerwise", "chunkwise": "chunkwise"}  # else adaptive
NEGATIVE = "negative prompt"
NODE_SIGMA_MAX = 1000.0  # TurboDiffusionI2VSampler's sigma_max range is 1..1000 (the app allows upstream's 1600)


def boundary_step(steps: int, boundary: float, shift: float = WAN_SHIFT) -> int:
    """How many of ``steps`` the high-noise expert takes: the steps whose shifted sigma is at least the boundary
    (the app switches experts at t = boundary * 1000 on the same schedule)."""
    count = 0
    for i in range(steps):
        t = 1.0 - i / steps
        sigma = shift * t / (1.0 + (shift - 1.0) * t)
        count += sigma >= boundary
    return max(1, min(steps - 1, count)) if steps > 1 else 1


def boundary_from_step(steps: int, step: int, shift: float = WAN_SHIFT) -> float:
    """The inverse, to 3 decimals: the sigma half-way between the last high-noise and the first low-noise step."""
    def sigma(i: int) -> float:
        t = 1.0 - i / steps
        return shift * t / (1.0 + (shift - 1.0) * t)

    value = (sigma(step - 1) + sigma(step)) / 2 if 0 < step < steps else 0.9
    return min(0.999, max(0.001, round(value, 3)))


def _video_out(g: Graph, frames, req) -> None:
    prefix = base.PREFIX + req.kind
    if req.output_format == "mp4":
        video = g.add("CreateVideo", base.DECODE, images=frames, fps=float(req.fps))[0]
        g.add("SaveVideo", base.DECODE, "Save video", video=video, filename_prefix=prefix, format="mp4",
              codec="h264")
    elif req.output_format == "webm":
        crf = round(63 - req.quality * 6.3)  # quality 1..10 (TurboDiffusion's) onto VP9's crf 63..0
        g.add("SaveWEBM", base.DECODE, "Save video", images=frames, filename_prefix=prefix, codec="vp9",
              fps=float(req.fps), crf=float(crf))
    else:
        g.add("SaveAnimatedWEBP", base.DECODE, "Save animation", images=frames, filename_prefix=prefix,
              fps=float(req.fps), lossless=False, quality=req.quality * 10, method="default")
        g.notes.append("ComfyUI core writes no gif: the animation is saved as animated WebP.")


def _core(g: Graph, req) -> None:
    ref = req.model
    five_b = names.family(ref.repo_id) == "wan_5b" or "5b" in (ref.repo_id or ref.path).lower()
    fam = "wan_5b" if five_b else "wan_a14b"
    high = g.add("UNETLoader", base.LOAD, "High-noise expert" if not five_b else "Load diffusion model",
                 unet_name=base.piece(ref, fam, "transformer", "diffusion_models"), weight_dtype="default")
    clip = g.add("CLIPLoader", base.LOAD, clip_name=base.piece(ref, fam, "text_encoder", "text_encoders"),
                 type="wan")
    vae = g.add("VAELoader", base.LOAD, vae_name=base.piece(ref, fam, "vae", "vae"))
    image = base.load_image(g, req.image, "Start image")
    pos = g.add("CLIPTextEncode", base.PROMPT, "Prompt", text=req.prompt, clip=clip[0])[0]
    neg = g.add("CLIPTextEncode", base.PROMPT, "Negative prompt", text=req.negative_prompt, clip=clip[0])[0]
    cond = g.add("WanImageToVideo", base.IMAGES, positive=pos, negative=neg, vae=vae[0], width=req.width,
                 height=req.height, length=req.num_frames, batch_size=1, start_image=image)
    # the official template's order: UNETLoader -> LoraLoaderModelOnly chain (one per expert) -> ModelSamplingSD3
    high_model = core_chain(g, high[0], req.loras, "High-noise LoRAs" if not five_b else "LoRAs")
    model_high = g.add("ModelSamplingSD3", base.LOAD, model=high_model, shift=WAN_SHIFT)[0]
    common = {"positive": cond[0], "negative": cond[1], "sampler_name": base.SAMPLER, "scheduler": base.SCHEDULER,
              "steps": req.steps}
    if five_b:
        latent = base.ksampler(g, model_high, cond[0], cond[1], cond[2], req.seed, req.steps, req.guidance_scale)
        g.notes.append("TI2V 5B: core ComfyUI 0.3.64 has no Wan22ImageToVideoLatent; WanImageToVideo stands in.")
    else:
        low = g.add("UNETLoader", base.LOAD, "Low-noise expert",
                    unet_name=base.piece(ref, fam, "transformer_2", "diffusion_models_2"), weight_dtype="default")
        low_model = core_chain(g, low[0], req.loras_2, "Low-noise LoRAs")
        model_low = g.add("ModelSamplingSD3", base.LOAD, model=low_model, shift=WAN_SHIFT)[0]
        switch = boundary_step(req.steps, req.boundary_ratio)
        first = g.add("KSamplerAdvanced", base.SAMPLE, "High-noise expert", model=model_high, add_noise="enable",
                      noise_seed=req.seed, cfg=req.guidance_scale, latent_image=cond[2], start_at_step=0,
                      end_at_step=switch, return_with_leftover_noise="enable", **common)[0]
        latent = g.add("KSamplerAdvanced", base.SAMPLE, "Low-noise expert", model=model_low, add_noise="disable",
                       noise_seed=req.seed, cfg=req.guidance_scale_2, latent_image=first, start_at_step=switch,
                       end_at_step=10000, return_with_leftover_noise="disable", **common)[0]
    frames = g.add("VAEDecode", base.DECODE, samples=latent, vae=vae[0])[0]
    _video_out(g, frames, req)
    g.notes.append("No pack runs diffusers' Wan 2.2 I2V: this is the ComfyUI-core graph for it.")


def _turbo_file(turbo, which: str) -> str:
    path = turbo.high_path if which == "high" else turbo.low_path
    if path:
        return names.comfy_file_name(path)
    return turbo.file_names()[0 if which == "high" else 1]


def _turbo(g: Graph, req) -> None:
    turbo, swap = req.turbo, req.swap
    loader_inputs = {
        "attention_type": turbo.attention_type, "sla_topk": turbo.sla_topk, "offload_mode": TURBO_MODES.get(swap.mode, "block_swap"),
        "max_vram_gb": swap.max_vram_gb or 8.0, "block_size_mb": int(math.ceil(swap.block_size_mb / 10) * 10),
        "swap_mode": TURBO_SWAP.get(swap.mode, "adaptive"),
    }
    high = g.add("TurboWanModelLoader", base.LOAD, "High-noise expert", model_name=_turbo_file(turbo, "high"),
                 **loader_inputs)
    low = g.add("TurboWanModelLoader", base.LOAD, "Low-noise expert", model_name=_turbo_file(turbo, "low"),
                **loader_inputs)
    high_model = core_chain(g, high[0], req.loras, "High-noise LoRAs")  # the loader's output is a MODEL
    low_model = core_chain(g, low[0], req.loras_2, "Low-noise LoRAs")
    wan = "wan_a14b"
    clip = g.add("CLIPLoader", base.LOAD, clip_name=base.piece(req.model, wan, "text_encoder", "text_encoders"),
                 type="wan")
    vae = g.add("TurboWanVAELoader", base.LOAD, vae_name=names.preset_file(
        "TurboDiffusion/TurboWan2.2-I2V-A14B-720P", "vae"))
    image = base.load_image(g, req.image, "Start image")
    text = g.add("CLIPTextEncode", base.PROMPT, "Prompt", text=req.prompt, clip=clip[0])[0]
    resolution, aspect = req.resolution, req.aspect_ratio
    if resolution == "custom":
        from engine.requests import VIDEO_RESOLUTIONS

        resolution = min(VIDEO_RESOLUTIONS, key=lambda r: abs(
            VIDEO_RESOLUTIONS[r][aspect][0] * VIDEO_RESOLUTIONS[r][aspect][1] - req.width * req.height))
        g.notes.append(f"The blockswap fork's sampler has no custom size; {req.width}x{req.height} is written as "
                       f"{resolution} {aspect}.")
    sigma_max = min(turbo.sigma_max, NODE_SIGMA_MAX)
    if sigma_max != turbo.sigma_max:
        g.notes.append(f"The TurboDiffusion sampler node takes sigma_max up to {NODE_SIGMA_MAX:g}; "
                       f"{turbo.sigma_max:g} is written as {sigma_max:g}.")
    frames = g.add("TurboDiffusionI2VSampler", base.SAMPLE, high_noise_model=high_model, low_noise_model=low_model,
                   conditioning=text, vae=vae[0], image=image, num_frames=req.num_frames, num_steps=req.steps,
                   resolution=resolution, aspect_ratio=aspect, boundary=req.boundary_ratio,
                   sigma_max=sigma_max, seed=req.seed, use_ode=turbo.ode)[0]
    fmt = req.output_format
    g.add("TurboDiffusionSaveVideo", base.DECODE, "Save video", frames=frames, filename_prefix=base.PREFIX + req.kind,
          fps=req.fps, format=fmt, quality=req.quality, optimize_gif=True)
    if req.negative_prompt:
        g.notes.append("TurboDiffusion samples without CFG: the negative prompt is not used.")


def build(g: Graph, req) -> None:
    (_turbo if req.turbo.enabled else _core)(g, req)
