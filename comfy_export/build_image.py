"""Text to image (ComfyUI core graph per family), the SDNQ catalog's generate (seed 001's SDNQSampler) and quantize
(SDNQModelQuantizer) requests as graphs."""

from __future__ import annotations

from . import build_base as base
from . import names
from .graph import Graph

SDNQ_QUANT_TYPES = {  # the quantizer node offers four; the app's others map to the nearest it has
    "int8": "int8", "int7": "int8", "int6": "int6", "int5": "int6", "uint4": "uint4", "int4": "uint4",
    "uint3": "uint4", "uint2": "uint4", "float8_e4m3fn": "float8_e4m3fn", "float8_e5m2": "float8_e4m3fn",
}
SDNQ_MEMORY = {"none": "gpu", "model_offload": "balanced"}  # the rest stream weights: the node's lowvram
SDNQ_DTYPES = {"auto": "bfloat16", "bfloat16": "bfloat16", "float16": "float16", "float32": "float32"}
CUSTOM = "[Custom Path]"


def text_to_image(g: Graph, req) -> None:
    edit_image = getattr(req, "input_image", "")
    loaded = base.load_family(g, req.model, base.image_family(req.model, edit=bool(edit_image)))
    image = base.load_image(g, edit_image, "Input image") if edit_image else None
    pos, neg, cfg = base.encode(g, loaded, req, image)
    latent = base.empty_latent(g, req.width, req.height)
    from .build_lora import LORAS, core_chain

    model = core_chain(g, loaded.model, getattr(req, "loras", ()), LORAS)
    out = base.ksampler(g, model, pos, neg, latent, req.seed, req.steps, cfg)
    base.save_images(g, loaded.vae, out, req.kind)
    if loaded.family == "chroma" and req.true_cfg_scale != 1.0:
        g.notes.append("Chroma runs real CFG at the guidance value; true CFG has no ComfyUI counterpart here.")


def sdnq_generate(g: Graph, req) -> None:
    """One SDNQSampler node (the pack's only node at its HEAD): it loads the diffusers SDNQ folder itself."""
    if req.entry:
        selection, custom = req.entry, ""
    else:
        selection, custom = CUSTOM, req.model.repo_id or req.model.path
    sampler = g.add(
        "SDNQSampler", base.SAMPLE, model_selection=selection, custom_model_path=custom, prompt=req.prompt,
        negative_prompt=req.negative_prompt, steps=req.steps, cfg=req.guidance_scale, width=req.width,
        height=req.height, seed=req.seed, scheduler="FlowMatchEulerDiscreteScheduler",
        dtype=SDNQ_DTYPES[req.model.dtype], memory_mode=SDNQ_MEMORY.get(req.swap.mode, "lowvram"),
        auto_download=True, use_quantized_matmul=req.use_quantized_matmul)
    g.add("SaveImage", base.DECODE, "Save image", images=sampler[0], filename_prefix=base.PREFIX + req.kind)
    if req.use_torch_compile:
        g.notes.append("torch.compile was on in the app; the SDNQ node has no such switch.")
    if req.loras:  # SDNQSampler loads and samples in one node: no MODEL output to put a LoRA loader on
        g.notes.append(f"SDNQSampler takes no LoRA; the stack ({', '.join(lora.label for lora in req.loras)}) is not "
                       "in this graph.")


def sdnq_quantize(g: Graph, req) -> None:
    """Load the source transformer, quantize it with SDNQModelQuantizer (an output node: it saves the folder)."""
    unet = g.add("UNETLoader", base.LOAD, "Load diffusion model",
                 unet_name=names.model_file(req.source, "transformer", "diffusion_models"), weight_dtype="default")
    quant_type = SDNQ_QUANT_TYPES[req.weights_dtype]
    if quant_type != req.weights_dtype:
        g.notes.append(f"SDNQModelQuantizer offers int8, int6, uint4 and float8_e4m3fn; {req.weights_dtype} is "
                       f"written as {quant_type}.")
    if tuple(req.components) != ("transformer",):
        g.notes.append(f"The node quantizes the diffusion model only; the app also quantized "
                       f"{', '.join(c for c in req.components if c != 'transformer')}.")
    g.add("SDNQModelQuantizer", base.DECODE, model=unet[0], quant_type=quant_type, output_name=req.output_name,
          use_svd=req.use_svd, svd_rank=req.svd_rank, group_size=req.group_size)
