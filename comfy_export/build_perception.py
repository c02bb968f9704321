"""Panorama perception: cedarconnor/ComfyUI-OmniX at its HEAD (seed 002) has post-processing nodes only, to sit
after the flow its README describes: Flux.1-dev + the converted per-task OmniX LoRA + VAEEncode(panorama) +
KSampler, then ``OmniX_PanoPerception_<task>``. That flow samples image-to-image from the panorama's latent; it is
not upstream's two-branch cross-LoRA method the app runs, and the notes say so."""

from __future__ import annotations

from . import build_base as base
from .graph import Graph

PREFIX_TEXT = "[EQUIRECTANGULAR]"  # upstream's prompt; the request's words follow it
LORA = "OmniX_rgb_to_{task}_comfyui.safetensors"
DENOISE = 1.0
TASK_NODE = {"depth": ("OmniX_PanoPerception_Depth", {"normalize": True, "colorize": False, "colormap": "inferno"}),
             "normal": ("OmniX_PanoPerception_Normal", {"normalize_vectors": True, "output_format": "rgb"}),
             "pbr": ("OmniX_PanoPerception_PBR", {"normalize_maps": True}),
             "semantic": ("OmniX_PanoPerception_Semantic", {"palette": "custom", "num_classes": 16})}
NOTE = ("ComfyUI-OmniX has no cross-LoRA sampler: this is the pack's flow (KSampler from the panorama's latent with "
        "the converted task LoRA, then the OmniX node). The app runs upstream OmniX (condition + target adapters, "
        "joint attention, seam blending), so results differ.")


def prompt_text(prompt: str) -> str:
    return f"{PREFIX_TEXT} {prompt}".strip()


def build(g: Graph, req) -> None:
    loaded = base.load_family(g, req.model, "flux")
    pano = base.load_image(g, req.panorama, "Panorama")
    latent = g.add("VAEEncode", base.IMAGES, pixels=pano, vae=loaded.vae)[0]
    text = g.add("CLIPTextEncode", base.PROMPT, "Prompt", text=prompt_text(req.prompt), clip=loaded.clip)[0]
    pos = g.add("FluxGuidance", base.PROMPT, conditioning=text, guidance=req.guidance_scale)[0]
    neg = g.add("ConditioningZeroOut", base.PROMPT, conditioning=text)[0]
    for task in req.tasks:
        lora = g.add("LoraLoaderModelOnly", "OmniX adapters", f"OmniX {task} LoRA", model=loaded.model,
                     lora_name=LORA.format(task=task), strength_model=1.0)[0]
        out = base.ksampler(g, lora, pos, neg, latent, req.seed, req.steps, 1.0, DENOISE, f"Sample {task}")
        if task == "albedo":  # the albedo LoRA's output is the picture itself
            image = g.add("VAEDecode", "OmniX maps", "Decode albedo", samples=out, vae=loaded.vae)[0]
            g.add("SaveImage", base.DECODE, "Save albedo", images=image, filename_prefix=base.PREFIX + "omnix_albedo")
            continue
        class_type, options = TASK_NODE[task]
        node = g.add(class_type, "OmniX maps", vae=loaded.vae, samples=out, **options)
        for slot, name in enumerate(node.definition.output_names):
            g.add("SaveImage", base.DECODE, f"Save {name}", images=node[slot],
                  filename_prefix=base.PREFIX + f"omnix_{name}")
    g.notes.append(NOTE)
