"""From a graph back to request fields, per job: which job a graph does, and the settings it holds. Values come
out in "graph form" (file names, not paths); ``importer`` resolves names and merges with an embedded request."""

from __future__ import annotations

from typing import Any

from . import build_i2v, build_perception, names
from .build_base import FAMILY_REPO
from .errors import WorkflowError
from .read_graph import ReadGraph

SAMPLERS = ("KSampler", "KSamplerAdvanced", "SamplerCustomAdvanced", "SamplerCustom")
MODEL_PATCHES = {  # node -> the input its MODEL comes through
    "ModelSamplingAuraFlow": "model", "ModelSamplingSD3": "model", "ModelSamplingFlux": "model", "CFGNorm": "model",
    "LoraLoaderModelOnly": "model", "LoraLoader": "model", "ApplyIPAdapterFlux": "model",
    "ApplyIPAdapterFluxAdvanced": "model", "ApplyIPAdapterFluxChroma": "model",
    "ApplyIPAdapterFluxChromaAdvanced": "model", "NunchakuQwenImageLoraLoader": "model",
    "NunchakuQwenImageLoraStackV1": "model", "NunchakuQwenImageLoraStackV2": "model",
    "NunchakuQwenImageLoraStackV3": "model",
}
COND_PASS = {"FluxGuidance": "conditioning", "ReferenceLatent": "conditioning"}
CLIP_PASS = {"T5TokenizerOptions": "clip", "CLIPSetLastLayer": "clip", "LoraLoader": "clip"}
LATENT_PASS = {"LatentUpscaleBy": "samples", "LatentUpscale": "samples"}
IMAGE_PASS = {"ImageScaleToTotalPixels": "image", "ImageScale": "image", "ImageScaleBy": "image",
              "FluxKontextImageScale": "image"}
LOADERS = {"UNETLoader": "unet_name", "CheckpointLoaderSimple": "ckpt_name", "NunchakuQwenImageDiTLoader": "model_name"}
UNDERSTOOD = set(SAMPLERS) | set(MODEL_PATCHES) | set(COND_PASS) | set(CLIP_PASS) | set(LATENT_PASS) | set(
    IMAGE_PASS) | set(LOADERS) | {
    "DualCLIPLoader", "CLIPLoader", "VAELoader", "CLIPTextEncode", "CLIPTextEncodeFlux", "ConditioningZeroOut",
    "TextEncodeQwenImageEdit", "TextEncodeQwenImageEditPlus", "EmptySD3LatentImage", "EmptyLatentImage",
    "VAEDecode", "VAEEncode", "SaveImage", "PreviewImage", "LoadImage", "KSamplerSelect", "BasicScheduler",
    "RandomNoise", "CFGGuider", "BasicGuider", "IPAdapterFluxLoader", "IPAdapterFluxLoaderAdvanced",
    "IPAdapterFluxChromaLoader", "IPAdapterFluxChromaLoaderAdvanced", "SDNQSampler", "SDNQModelQuantizer",
    "OmniX_PanoPerception_Depth", "OmniX_PanoPerception_Normal", "OmniX_PanoPerception_PBR",
    "OmniX_PanoPerception_Semantic", "WanImageToVideo", "CreateVideo", "SaveVideo", "SaveWEBM", "SaveAnimatedWEBP",
    "TurboWanModelLoader", "TurboWanVAELoader", "TurboDiffusionI2VSampler", "TurboDiffusionSaveVideo",
    "PrimitiveInt", "PrimitiveFloat", "PrimitiveBoolean", "PrimitiveString", "PrimitiveStringMultiline",
    "ComfySwitchNode", "ComfyMathExpression",
}


def check_understood(g: ReadGraph) -> None:
    for nid in g.reachable:
        if g.type(nid) not in UNDERSTOOD:
            raise WorkflowError(f"node {nid} ({g.type(nid)}) has no counterpart in the app's jobs; remove or bypass "
                                "it to import the rest")


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
    loader, _ = model_chain(g, sampler_settings(g, s)["model"])
    ref, fam, _ = model_ref(g, loader)
    fields = image_fields(g, s, fam)
    fields.pop("input_image", None)
    return {"model": ref, **fields}


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
    loader, _ = model_chain(g, first["model"])
    ref, _, _ = model_ref(g, loader)
    fields.update(model=ref, steps=int(first["steps"]), seed=int(first["seed"]), guidance_scale=float(first["cfg"]))
    if len(samplers) > 1:
        second = sampler_settings(g, samplers[1])
        low, _ = model_chain(g, second["model"])
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
    high, low = g.node(s, "high_noise_model"), g.node(s, "low_noise_model")
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
            **out}


EXTRACT = {"text_to_image": text_to_image, "lora_stack": lora_stack, "ipadapter": ipadapter,
           "perception": perception, "sdnq_generate": catalog, "sdnq_quantize": quantize, "i2v": i2v}
