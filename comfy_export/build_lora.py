"""LoRA stacks on Qwen-Image. Nunchaku backend: seed 004's nodes (NunchakuQwenImageDiTLoader, then
NunchakuQwenImageLoraStackV3 with per-slot enable, ten slots a node, chained for longer stacks). Diffusers backend:
a core LoraLoaderModelOnly chain, a disabled LoRA kept as a bypassed node. Stage 2 (refine, optional upscale): a
second chain from the base model, LatentUpscaleBy and a KSampler at ``denoise = stage2_strength``."""

from __future__ import annotations

from . import build_base as base
from . import names
from .graph import Graph, Out

STACK_SLOTS = 10  # NunchakuQwenImageLoraStackV3 has lora_name_1..10
LORAS = "LoRAs"


def lora_name(lora) -> str:
    return names.comfy_file_name(lora.path) if lora.path else lora.filename


def core_chain(g: Graph, model: Out, loras, group: str) -> Out:
    for i, lora in enumerate(loras):
        node = g.add("LoraLoaderModelOnly", group, lora.label or f"LoRA {i + 1}", mode=0 if lora.enabled else 4,
                     model=model, lora_name=lora_name(lora), strength_model=lora.weight)
        model = node[0]
    return model


def nunchaku_chain(g: Graph, model: Out, loras, group: str) -> Out:
    for start in range(0, len(loras), STACK_SLOTS):
        chunk = loras[start:start + STACK_SLOTS]
        slots = {}
        for i, lora in enumerate(chunk, 1):
            slots.update({f"enabled_{i}": lora.enabled, f"lora_name_{i}": lora_name(lora),
                          f"lora_strength_{i}": lora.weight})
        model = g.add("NunchakuQwenImageLoraStackV3", group, "Nunchaku LoRA stack", model=model,
                      lora_count=len(chunk), cpu_offload="disable", toggle_all=True, **slots)[0]
    return model


def build(g: Graph, req) -> None:
    fam = base.image_family(req.model, edit=bool(req.input_image))
    if not fam.startswith("qwen"):
        fam = "qwen_image_edit" if req.input_image else "qwen_image"
    nunchaku = req.backend == "nunchaku"
    dit = (names.comfy_file_name(req.nunchaku_transformer)
           or names.preset_file("nunchaku-tech/nunchaku-qwen-image", "diffusion_models")) if nunchaku else ""
    loaded = base.load_family(g, req.model, fam, nunchaku_file=dit)
    chain = nunchaku_chain if nunchaku else core_chain
    model = chain(g, loaded.model, req.loras, LORAS)
    image = base.load_image(g, req.input_image, "Input image") if req.input_image else None
    pos, neg, cfg = base.encode(g, loaded, req, image)
    latent = base.empty_latent(g, req.width, req.height)
    out = base.ksampler(g, model, pos, neg, latent, req.seed, req.steps, cfg, title="Stage 1")
    if req.stage2:
        model2 = chain(g, loaded.model, req.stage2_loras, "Stage 2 LoRAs")
        if req.stage2_upscale != 1.0:
            out = g.add("LatentUpscaleBy", "Stage 2", samples=out, upscale_method="bislerp",
                        scale_by=req.stage2_upscale)[0]
        out = base.ksampler(g, model2, pos, neg, out, req.seed, req.stage2_steps or req.steps, cfg,
                            req.stage2_strength, title="Stage 2")
    base.save_images(g, loaded.vae, out, req.kind)
    if req.step_cache:
        g.notes.append(f"First Block Cache (threshold {req.step_cache:g}) has no node for Qwen-Image here.")

