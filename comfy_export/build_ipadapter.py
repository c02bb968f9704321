"""IP-Adapter requests: the Flux/Chroma text-to-image graph with seed 000's adapter nodes on the model path — the
loader, then one Apply node per reference chained on MODEL (upstream's multi-adapter example), the Advanced pair
when the weight ramp is on; on Chroma the FluxChroma fork's renamed nodes with ``offload_preprocessing``."""

from __future__ import annotations

from . import build_base as base
from . import names
from .graph import Graph

NODES = {  # Shakker-Labs/ComfyUI-IPAdapter-Flux on Flux, the FluxChroma fork (seed 000) on Chroma
    "flux": {"loader": "IPAdapterFluxLoader", "apply": "ApplyIPAdapterFlux",
             "loader_advanced": "IPAdapterFluxLoaderAdvanced", "apply_advanced": "ApplyIPAdapterFluxAdvanced"},
    "chroma": {"loader": "IPAdapterFluxChromaLoader", "apply": "ApplyIPAdapterFluxChroma",
               "loader_advanced": "IPAdapterFluxChromaLoaderAdvanced",
               "apply_advanced": "ApplyIPAdapterFluxChromaAdvanced"},
}
ADAPTER = "IP-Adapter"


def adapter_file(req) -> str:
    """The adapter's name in ``models/ipadapter-flux``: a local file by its path there, else the repo's file."""
    ref = req.ip_adapter
    if ref.path and ref.path.lower().endswith((".bin", ".safetensors", ".pt", ".pth")):
        return names.comfy_file_name(ref.path)
    return req.ip_adapter_file or names.preset_file(ref.repo_id, "ipadapter-flux") or "ip-adapter.bin"


def encoder_name(req) -> str:
    """The loader lists only upstream's SigLIP id; a local SigLIP folder keeps that id (the pack loads it from
    ``models/clip_vision/siglip-so400m-patch14-384`` or the HF cache)."""
    return names.preset_file("google/siglip-so400m-patch14-384", "clip_vision")


def build(g: Graph, req) -> None:
    fam = base.image_family(req.model)
    arch = "chroma" if fam == "chroma" else "flux"
    if fam.startswith("qwen"):
        g.notes.append("The IP-Adapter is for Flux; the model is exported as Flux.")
        fam = "flux"
    loaded = base.load_family(g, req.model, fam)
    names_ = NODES[arch]
    suffix = "_advanced" if req.ramp else ""
    loader = g.add(names_["loader" + suffix], ADAPTER, ipadapter=adapter_file(req), clip_vision=encoder_name(req),
                   provider="cuda")
    from .build_lora import LORAS, core_chain

    model = core_chain(g, loaded.model, req.loras, LORAS)  # LoRAs on the model, then the adapter (ComfyUI's order)
    for i, ref in enumerate(req.references):
        image = base.load_image(g, ref.path, f"Reference {i + 1}")
        if req.ramp:
            weights = {"weight_start": req.weight_start * ref.weight, "weight_end": req.weight_end * ref.weight,
                       "steps": req.ramp_steps}
        else:
            weights = {"weight": req.weight * ref.weight}
        if arch == "chroma":
            weights["offload_preprocessing"] = req.offload_preprocessing
        model = g.add(names_["apply" + suffix], ADAPTER, f"Apply IP-Adapter {i + 1}", model=model,
                      ipadapter_flux=loader[0], image=image, start_percent=req.start_percent,
                      end_percent=req.end_percent, **weights)[0]
    pos, neg, cfg = base.encode(g, loaded, req)
    latent = base.empty_latent(g, req.width, req.height)
    out = base.ksampler(g, model, pos, neg, latent, req.seed, req.steps, cfg)
    base.save_images(g, loaded.vae, out, req.kind)
    if req.ip_norm != "kv":
        g.notes.append("The app normed IP keys only (InstantX's reference); the ComfyUI pack norms keys and values.")
