"""Graph pieces the request kinds share: the model loaders of a family (Flux, Chroma, Qwen-Image), the prompt
encoders, the sampler and the image output, with the ComfyUI settings that match the app's pipelines."""

from __future__ import annotations

from dataclasses import dataclass

from . import names
from .graph import Graph, Out

LOAD, PROMPT, IMAGES, SAMPLE, DECODE = "Load models", "Prompt", "Input images", "Sample", "Decode and save"
FAMILY_REPO = {  # where a family's shared pieces (text encoders, VAE) are named when the model is not a preset
    "flux": "black-forest-labs/FLUX.1-dev", "chroma": "lodestones/Chroma1-HD", "qwen_image": "Qwen/Qwen-Image",
    "qwen_image_edit": "Qwen/Qwen-Image-Edit", "wan_a14b": "Wan-AI/Wan2.2-I2V-A14B-Diffusers",
    "wan_5b": "Wan-AI/Wan2.2-TI2V-5B-Diffusers",
}
QWEN_SHIFT = 3.1  # ModelSamplingAuraFlow shift of the official Qwen-Image graphs
SAMPLER, SCHEDULER = "euler", "simple"  # diffusers' FlowMatchEulerDiscreteScheduler
PREFIX = "DiffusionStudio/"


def image_family(ref, edit: bool = False) -> str:
    """flux, chroma, qwen_image or qwen_image_edit, from the preset, else from the model's name."""
    found = names.family(ref.repo_id) if ref.repo_id else ""
    if found in ("flux", "chroma", "qwen_image", "qwen_image_edit"):
        return "qwen_image_edit" if edit and found == "qwen_image" else found
    label = (ref.repo_id or ref.path or ref.files.transformer).lower()
    if "chroma" in label:
        return "chroma"
    if "qwen" in label:
        return "qwen_image_edit" if edit or "edit" in label else "qwen_image"
    return "flux"


def piece(ref, fam: str, part: str, key: str, index: int = 0) -> str:
    shared = names.preset_file(FAMILY_REPO.get(fam, ""), key, index) if key != "diffusion_models" else ""
    return names.model_file(ref, part, key, index, fallback="" if names.entry(ref.repo_id) else shared)


@dataclass
class Loaded:
    model: Out
    clip: Out
    vae: Out
    family: str


def load_family(g: Graph, ref, fam: str, nunchaku_file: str = "") -> Loaded:
    """Diffusion model, text encoder(s) and VAE of a family; ``nunchaku_file``: seed 004's SVDQuant Qwen-Image
    transformer (NunchakuQwenImageDiTLoader) instead of the plain one."""
    if nunchaku_file:
        unet = g.add("NunchakuQwenImageDiTLoader", LOAD, model_name=nunchaku_file, cpu_offload="auto",
                     num_blocks_on_gpu=1, use_pin_memory="disable")
    else:
        unet = g.add("UNETLoader", LOAD, "Load diffusion model",
                     unet_name=piece(ref, fam, "transformer", "diffusion_models"), weight_dtype="default")
    if fam == "flux":
        clip = g.add("DualCLIPLoader", LOAD, clip_name1=piece(ref, fam, "text_encoder", "text_encoders", 0),
                     clip_name2=piece(ref, fam, "text_encoder_2", "text_encoders", 1), type="flux")
    else:
        clip = g.add("CLIPLoader", LOAD, clip_name=piece(ref, fam, "text_encoder", "text_encoders"),
                     type="chroma" if fam == "chroma" else "qwen_image")
    vae = g.add("VAELoader", LOAD, vae_name=piece(ref, fam, "vae", "vae"))
    model = unet[0]
    if fam.startswith("qwen"):
        model = g.add("ModelSamplingAuraFlow", LOAD, model=model, shift=QWEN_SHIFT)[0]
    return Loaded(model, clip[0], vae[0], fam)


def load_image(g: Graph, path: str, title: str = "Load image") -> Out:
    return g.add("LoadImage", IMAGES, title, image=names.comfy_file_name(path) or "image.png")[0]


def encode(g: Graph, loaded: Loaded, req, image: Out | None = None) -> tuple[Out, Out, float]:
    """Positive and negative conditioning and the sampler's CFG for a text-to-image request. Flux: distilled
    guidance on the prompt (FluxGuidance), real CFG = ``true_cfg_scale`` with the negative prompt (zeroed out when
    there is none). Chroma: real CFG = ``guidance_scale``. Qwen-Image: real CFG = ``true_cfg_scale``; the Edit model
    reads the input image in its text encoder."""
    clip = loaded.clip
    if loaded.family == "qwen_image_edit" and image is not None:
        pos = g.add("TextEncodeQwenImageEdit", PROMPT, "Prompt", clip=clip, prompt=req.prompt, vae=loaded.vae,
                    image=image)[0]
        neg = g.add("TextEncodeQwenImageEdit", PROMPT, "Negative prompt", clip=clip, prompt=req.negative_prompt,
                    vae=loaded.vae, image=image)[0]
        return pos, neg, req.true_cfg_scale
    text = g.add("CLIPTextEncode", PROMPT, "Prompt", text=req.prompt, clip=clip)[0]
    if loaded.family == "flux":
        pos = g.add("FluxGuidance", PROMPT, conditioning=text, guidance=req.guidance_scale)[0]
        if req.negative_prompt:
            neg = g.add("CLIPTextEncode", PROMPT, "Negative prompt", text=req.negative_prompt, clip=clip)[0]
        else:
            neg = g.add("ConditioningZeroOut", PROMPT, conditioning=text)[0]
        return pos, neg, req.true_cfg_scale
    neg = g.add("CLIPTextEncode", PROMPT, "Negative prompt", text=req.negative_prompt, clip=clip)[0]
    return text, neg, req.guidance_scale if loaded.family == "chroma" else req.true_cfg_scale


def empty_latent(g: Graph, width: int, height: int) -> Out:
    return g.add("EmptySD3LatentImage", SAMPLE, width=width, height=height, batch_size=1)[0]


def ksampler(g: Graph, model: Out, pos: Out, neg: Out, latent: Out, seed: int, steps: int, cfg: float,
             denoise: float = 1.0, title: str = "KSampler") -> Out:
    return g.add("KSampler", SAMPLE, title, model=model, seed=seed, steps=steps, cfg=cfg, sampler_name=SAMPLER,
                 scheduler=SCHEDULER, positive=pos, negative=neg, latent_image=latent, denoise=denoise)[0]


def save_images(g: Graph, vae: Out, latent: Out, prefix: str, title: str = "Save image") -> None:
    image = g.add("VAEDecode", DECODE, samples=latent, vae=vae)[0]
    g.add("SaveImage", DECODE, title, images=image, filename_prefix=PREFIX + prefix)
