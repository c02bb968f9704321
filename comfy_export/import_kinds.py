"""From a graph back to request fields, per job: which job a graph does, and the settings it holds. Values come
out in "graph form" (file names, not paths); ``importer`` resolves names and merges with an embedded request."""

from __future__ import annotations

from typing import Any

from . import build_perception, names
from .build_base import FAMILY_REPO
from .errors import WorkflowError
from .import_nodes import (  # noqa: F401  (the node tables lived here; importers of this module use them)
    CLIP_PASS,
    COND_PASS,
    IMAGE_PASS,
    LATENT_PASS,
    LOADERS,
    MODEL_PATCHES,
    SAMPLERS,
    UNDERSTOOD,
)
from .read_graph import ReadGraph


def check_understood(g: ReadGraph) -> None:
    """Nodes with no counterpart are not an error any more: ``import_report`` names each one in the warnings
    and the rest imports; a graph whose sampler, loader or prompt cannot be found still fails with words."""


def final_sampler(g: ReadGraph) -> str | None:
    """The sampler whose latent reaches the saved image (a later stage wins)."""
    samplers = g.of_type(*SAMPLERS)
    fed = {g.node(s, n) for s in samplers for n in ("latent_image",)}
    last = [s for s in samplers if s not in fed and not any(
        g.up(o, "latent_image", LATENT_PASS)[0] == s for o in samplers)]
    return (last or samplers or [None])[0]


def sampler_settings(g: ReadGraph, s: str) -> dict[str, Any]:
    """seed, steps, cfg, denoise and the model / positive / negative / latent sources of one sampler."""
    kind = g.type(s)
    if kind == "SamplerCustomAdvanced":
        guider = g.node(s, "guider")
        noise = g.node(s, "noise")
        sigmas = g.node(s, "sigmas")
        gt = g.type(guider) if guider else ""
        return {"seed": g.value(noise, "noise_seed", 0) if noise else 0,
                "steps": g.value(sigmas, "steps", 20) if sigmas else 20,
                "denoise": g.value(sigmas, "denoise", 1.0) if sigmas else 1.0,
                "cfg": g.value(guider, "cfg", 1.0) if gt == "CFGGuider" else 1.0,
                "model": (guider, "model"), "positive": (guider, "positive" if gt == "CFGGuider" else "conditioning"),
                "negative": (guider, "negative") if gt == "CFGGuider" else None, "latent": (s, "latent_image")}
    seed_key = "seed" if kind == "KSampler" else "noise_seed"
    return {"seed": g.value(s, seed_key, 0), "steps": g.value(s, "steps", 20), "cfg": g.value(s, "cfg", 1.0),
            "denoise": g.value(s, "denoise", 1.0), "model": (s, "model"), "positive": (s, "positive"),
            "negative": (s, "negative"), "latent": (s, "latent_image")}


def prompt_of(g: ReadGraph, where: tuple[str, str] | None) -> tuple[str, float | None, str | None]:
    """Text, Flux guidance (if a FluxGuidance / CLIPTextEncodeFlux says so) and the text node's image input."""
    if where is None or where[0] is None:
        return "", None, None
    node, passed = g.up(where[0], where[1], COND_PASS)
    guidance = next((g.value(p, "guidance") for p in passed if g.type(p) == "FluxGuidance"), None)
    if node is None:
        return "", guidance, None
    kind = g.type(node)
    if kind == "CLIPTextEncode":
        return g.value(node, "text", ""), guidance, None
    if kind == "CLIPTextEncodeFlux":
        return g.value(node, "t5xxl", "") or g.value(node, "clip_l", ""), g.value(node, "guidance", guidance), None
    if kind in ("TextEncodeQwenImageEdit", "TextEncodeQwenImageEditPlus"):
        image = g.node(node, "image") or g.node(node, "image1")
        image = g.up(node, "image" if g.raw(node, "image") is not None else "image1", IMAGE_PASS)[0] if image else None
        return g.value(node, "prompt", ""), guidance, image
    return "", guidance, None  # ConditioningZeroOut: no negative prompt


def image_name(g: ReadGraph, nid: str | None) -> str:
    return str(g.value(nid, "image", "")) if nid and g.type(nid) == "LoadImage" else ""


def model_chain(g: ReadGraph, where: tuple[str, str]) -> tuple[str | None, list[str]]:
    """The loader behind a sampler's model and the patch nodes passed, nearest the loader first."""
    loader, passed = g.up(where[0], where[1], MODEL_PATCHES)
    return loader, list(reversed(passed))


def family_of(g: ReadGraph, loader: str | None, repo: str) -> str:
    if repo and names.family(repo):
        return names.family(repo)
    for nid in g.reachable:
        kind = g.type(nid)
        if kind == "DualCLIPLoader":
            return "flux"
        if kind == "CLIPLoader":
            return {"chroma": "chroma", "qwen_image": "qwen_image", "wan": "wan_a14b"}.get(g.value(nid, "type"), "flux")
    return "flux"


def model_ref(g: ReadGraph, loader: str | None) -> tuple[dict[str, Any], str, str]:
    """(ModelRef fields, family, file name) for a loader node."""
    if loader is None or g.type(loader) not in LOADERS:
        raise WorkflowError("no diffusion model loader (UNETLoader, CheckpointLoaderSimple …) feeds the sampler")
    name = str(g.value(loader, LOADERS[g.type(loader)], ""))
    repo = names.repo_for(name)
    fam = family_of(g, loader, repo)
    if g.type(loader) == "NunchakuQwenImageDiTLoader":
        return {"repo_id": "Qwen/Qwen-Image"}, "qwen_image", name
    # every file the graph names; the importer keeps those found in the app's (or the ComfyUI) folders, and a
    # preset file that is not here gives way to its hub repo
    files = {"transformer": name, **piece_files(g)}
    return {"repo_id": repo or FAMILY_REPO.get(fam, FAMILY_REPO["flux"]), "files": files}, fam, name


def piece_files(g: ReadGraph) -> dict[str, str]:
    """The VAE and text-encoder files of the graph's loaders, as ``SingleFiles`` parts (Flux's DualCLIPLoader:
    the T5 file is ``text_encoder_2``, whichever slot holds it)."""
    out: dict[str, str] = {}
    for nid in g.reachable:
        kind = g.type(nid)
        if kind == "VAELoader" and "vae" not in out:
            out["vae"] = str(g.value(nid, "vae_name", ""))
        elif kind == "DualCLIPLoader" and "text_encoder" not in out:
            for slot in ("clip_name1", "clip_name2"):
                value = str(g.value(nid, slot, ""))
                out["text_encoder_2" if "t5" in value.lower() else "text_encoder"] = value
        elif kind == "CLIPLoader" and "text_encoder" not in out:
            out["text_encoder"] = str(g.value(nid, "clip_name", ""))
    return {k: v for k, v in out.items() if v}


def lora_entries(g: ReadGraph, patches: list[str]) -> list[dict[str, Any]]:
    """The LoRA loaders among a model path's patches, nearest the loader first, as stack entries."""
    out: list[dict[str, Any]] = []
    for p in patches:
        kind = g.type(p)
        if kind in ("LoraLoaderModelOnly", "LoraLoader"):
            out.append({"path": g.value(p, "lora_name", ""), "weight": float(g.value(p, "strength_model", 1.0))})
        elif kind == "NunchakuQwenImageLoraLoader":
            out.append({"path": g.value(p, "lora_name", ""), "weight": float(g.value(p, "lora_strength", 1.0))})
        elif kind in ("NunchakuQwenImageLoraStackV2", "NunchakuQwenImageLoraStackV3"):
            for i in range(1, int(g.value(p, "lora_count", 0)) + 1):
                name = g.value(p, f"lora_name_{i}", "None")
                if name and name != "None":
                    entry = {"path": name, "weight": float(g.value(p, f"lora_strength_{i}", 1.0))}
                    if kind.endswith("V3"):
                        entry["enabled"] = bool(g.value(p, f"enabled_{i}", True)) and bool(g.value(p, "toggle_all",
                                                                                                   True))
                    out.append(entry)
    return out


def image_fields(g: ReadGraph, s: str, fam: str) -> dict[str, Any]:
    """prompt, negative, size, steps, seed and the guidance fields of a text-to-image sampler."""
    st = sampler_settings(g, s)
    prompt, guidance, edit_image = prompt_of(g, st["positive"])
    negative, _, _ = prompt_of(g, st["negative"])
    fields: dict[str, Any] = {"prompt": prompt, "negative_prompt": negative, "steps": int(st["steps"]),
                              "seed": int(st["seed"])}
    latent, _ = g.up(*st["latent"], LATENT_PASS)
    if latent and g.type(latent) in ("EmptySD3LatentImage", "EmptyLatentImage"):
        fields.update(width=int(g.value(latent, "width")), height=int(g.value(latent, "height")))
    cfg = float(st["cfg"])
    if fam == "flux":
        fields.update(guidance_scale=float(guidance if guidance is not None else 3.5), true_cfg_scale=max(1.0, cfg))
    elif fam == "chroma":
        fields["guidance_scale"] = cfg
    else:
        fields["true_cfg_scale"] = max(1.0, cfg)
    if edit_image:
        fields["input_image"] = image_name(g, edit_image)
    return fields


def detect(g: ReadGraph) -> str:
    present = {g.type(n) for n in g.reachable}
    if present & {"TurboDiffusionI2VSampler", "WanImageToVideo"}:
        return "i2v"
    if "SDNQSampler" in present:
        return "sdnq_generate"
    if "SDNQModelQuantizer" in present:
        return "sdnq_quantize"
    if any(t.startswith("OmniX_") for t in present) or any(
            "omnix" in str(g.value(n, "lora_name", "")).lower() for n in g.of_type("LoraLoaderModelOnly")):
        return "perception"
    if any(t.startswith("ApplyIPAdapterFlux") for t in present):
        return "ipadapter"
    s = final_sampler(g)
    if s is None:
        raise WorkflowError("this workflow does none of the app's jobs: no sampler, SDNQ, OmniX or video node "
                            "feeds an output")
    loader, patches = model_chain(g, sampler_settings(g, s)["model"])
    _, fam, _ = model_ref(g, loader)
    if fam.startswith("qwen") and (lora_entries(g, patches) or "NunchakuQwenImageDiTLoader" in present
                                   or "TextEncodeQwenImageEdit" in present or len(g.of_type(*SAMPLERS)) > 1):
        return "lora_stack"
    return "text_to_image"


def text_to_image(g: ReadGraph) -> dict[str, Any]:
    s = final_sampler(g)
    loader, patches = model_chain(g, sampler_settings(g, s)["model"])
    ref, fam, _ = model_ref(g, loader)
    fields = image_fields(g, s, fam)
    fields.pop("input_image", None)
    return {"model": ref, **fields, "loras": lora_entries(g, patches)}


def lora_stack(g: ReadGraph) -> dict[str, Any]:
    samplers = g.of_type(*SAMPLERS)
    final = final_sampler(g)
    first = final
    prev, _ = g.up(final, "latent_image", LATENT_PASS)
    stage2 = prev is not None and g.type(prev) in SAMPLERS
    if stage2:
        first = prev
    loader, patches = model_chain(g, sampler_settings(g, first)["model"])
    ref, fam, name = model_ref(g, loader)
    fields = {"model": ref, **image_fields(g, first, fam), "loras": lora_entries(g, patches)}
    if loader and g.type(loader) == "NunchakuQwenImageDiTLoader":
        fields.update(backend="nunchaku", nunchaku_transformer=name)
    if stage2:
        st2 = sampler_settings(g, final)
        _, patches2 = model_chain(g, st2["model"])
        upscale = next((g.value(n, "scale_by", 1.0) for n in g.up(*st2["latent"], LATENT_PASS)[1]
                        if g.type(n) == "LatentUpscaleBy"), 1.0)
        steps2 = int(st2["steps"])
        fields.update(stage2=True, stage2_loras=lora_entries(g, patches2), stage2_strength=float(st2["denoise"]),
                      stage2_steps=0 if steps2 == fields["steps"] else steps2, stage2_upscale=float(upscale))
    del samplers
    return fields


def ipadapter(g: ReadGraph) -> dict[str, Any]:
    s = final_sampler(g)
    loader, patches = model_chain(g, sampler_settings(g, s)["model"])
    ref, fam, _ = model_ref(g, loader)
    fields = {"model": ref, **image_fields(g, s, "chroma" if fam == "chroma" else "flux")}
    applies = [p for p in patches if g.type(p).startswith("ApplyIPAdapterFlux")]
    ramp = g.type(applies[0]).endswith("Advanced")
    adapter = g.node(applies[0], "ipadapter_flux")
    fields.update(ramp=ramp, start_percent=float(g.value(applies[0], "start_percent", 0.0)),
                  end_percent=float(g.value(applies[0], "end_percent", 1.0)))
    if adapter:
        fields["ip_adapter_file"] = str(g.value(adapter, "ipadapter", ""))
    refs = []
    if ramp:
        ws, we = float(g.value(applies[0], "weight_start", 0.0)), float(g.value(applies[0], "weight_end", 1.0))
        fields.update(weight_start=ws, weight_end=we, ramp_steps=int(g.value(applies[0], "steps", 10)))
        for a in applies:
            end = float(g.value(a, "weight_end", 1.0))
            refs.append({"path": image_name(g, g.node(a, "image")), "weight": end / we if we else 1.0})
    else:
        fields["weight"] = 1.0
        refs = [{"path": image_name(g, g.node(a, "image")), "weight": float(g.value(a, "weight", 1.0))}
                for a in applies]
    if g.type(applies[0]).startswith("ApplyIPAdapterFluxChroma"):
        fields["offload_preprocessing"] = bool(g.value(applies[0], "offload_preprocessing", True))
    fields["references"] = refs
    fields["loras"] = lora_entries(g, patches)
    return fields


def perception(g: ReadGraph) -> dict[str, Any]:
    samplers = g.of_type(*SAMPLERS)
    if not samplers:
        raise WorkflowError("an OmniX workflow needs a sampler over the panorama's latent")
    tasks, fields = [], {}
    for s in sorted(samplers, key=lambda n: int(n) if n.isdigit() else 0):
        st = sampler_settings(g, s)
        loader, patches = model_chain(g, st["model"])
        for p in patches:
            lora = str(g.value(p, "lora_name", "")).lower()
            task = next((t for t in ("depth", "normal", "albedo", "pbr", "semantic") if f"_{t}" in lora), None)
            if task and task not in tasks:
                tasks.append(task)
        if not fields:
            ref, _, _ = model_ref(g, loader)
            prompt, guidance, _ = prompt_of(g, st["positive"])
            text = prompt[len(build_perception.PREFIX_TEXT):] if prompt.startswith(build_perception.PREFIX_TEXT) \
                else prompt
            encode, _ = g.up(*st["latent"], {})
            pano = g.up(encode, "pixels", IMAGE_PASS)[0] if encode and g.type(encode) == "VAEEncode" else None
            fields = {"model": ref, "prompt": text.strip(), "steps": int(st["steps"]), "seed": int(st["seed"]),
                      "guidance_scale": float(guidance if guidance is not None else 3.5),
                      "panorama": image_name(g, pano)}
    return {**fields, "tasks": tasks or ["depth"]}


def catalog(g: ReadGraph) -> dict[str, Any]:
    s = g.of_type("SDNQSampler")[0]
    v = lambda name, default=None: g.value(s, name, default)  # noqa: E731
    selection = v("model_selection", "")
    fields: dict[str, Any] = {"prompt": v("prompt", ""), "negative_prompt": v("negative_prompt", ""),
                              "steps": int(v("steps", 25)), "guidance_scale": float(v("cfg", 7.0)),
                              "width": int(v("width", 1024)), "height": int(v("height", 1024)),
                              "seed": int(v("seed", 0)), "use_quantized_matmul": bool(v("use_quantized_matmul", True))}
    if selection and selection != "[Custom Path]":
        fields["entry"] = selection
    else:
        path = str(v("custom_model_path", ""))
        fields["model"] = {"repo_id": path} if path.count("/") == 1 and not path.startswith(("/", ".")) else {
            "path": path}
    return fields


def quantize(g: ReadGraph) -> dict[str, Any]:
    q = g.of_type("SDNQModelQuantizer")[0]
    loader = g.node(q, "model")
    name = str(g.value(loader, LOADERS.get(g.type(loader), "unet_name"), "")) if loader else ""
    return {"source": {"path": name}, "weights_dtype": g.value(q, "quant_type", "int8"),
            "output_name": g.value(q, "output_name", "my-quantized-model"), "use_svd": bool(g.value(q, "use_svd")),
            "svd_rank": int(g.value(q, "svd_rank", 32)), "group_size": int(g.value(q, "group_size", 0))}


EXTRACT = {"text_to_image": text_to_image, "lora_stack": lora_stack, "ipadapter": ipadapter,
           "perception": perception, "sdnq_generate": catalog, "sdnq_quantize": quantize}  # + i2v: import_video
