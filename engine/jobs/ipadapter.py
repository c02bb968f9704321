"""IP-Adapter runs: Flux or Chroma guided by reference images through the InstantX Flux IP-Adapter.

Order of work: the base pipeline (shared with the other Flux tabs), the three adapter pieces (kept between runs),
the LoRA stack, image tokens per reference (cached by image and stack fingerprint; encoder and projector leave the
compute device right after when ``offload_preprocessing`` is on), then the processors go in, the pipeline runs
through ``run_denoise``, and the original processors come back in ``finally``.
"""

from __future__ import annotations

import json
import time

from engine.adapters import ipadapter_flux, ipadapter_pieces
from engine.errors import ModelLoadError
from engine.jobs import loras
from engine.jobs.common import run_denoise
from engine.jobs.text2image import pipeline_kwargs
from engine.models import read_model_index
from engine.requests import IPAdapterRequest
from engine.result import Result

#: pipeline class -> architecture (the adapter's layout fits both: Chroma keeps Flux's 19 + 38 blocks)
ARCHITECTURES = {"FluxPipeline": "flux", "ChromaPipeline": "chroma"}
TRANSFORMERS = {"FluxTransformer2DModel": "flux", "ChromaTransformer2DModel": "chroma"}
ADAPTER_PATTERNS = ["*.json"]
ENCODER_PATTERNS = ["*.json", "*.safetensors", "*.txt", "*.model"]


def _adapter_patterns(req: IPAdapterRequest) -> list[str]:
    # the published repo holds only ip-adapter.bin (5.3 GB); fetch just the weight file that will be read
    return ADAPTER_PATTERNS + [req.ip_adapter_file or "ip-adapter.bin"]


def prepare(engine, req: IPAdapterRequest, progress, cancel) -> None:
    bytes_progress = engine.download_progress(progress)
    engine.store.resolve(req.model, progress=bytes_progress, cancel=cancel)
    engine.store.resolve(req.ip_adapter, bytes_progress, cancel, allow_patterns=_adapter_patterns(req))
    engine.store.resolve(req.image_encoder, bytes_progress, cancel, allow_patterns=ENCODER_PATTERNS)
    loras.fetch_files(req.loras, progress, cancel)


def architecture_of(engine, req: IPAdapterRequest) -> str:
    """``flux`` or ``chroma`` from the model folder's pipeline class, before anything is loaded."""
    cls = read_model_index(engine.store.resolve(req.model)).get("_class_name")
    if cls not in ARCHITECTURES:
        raise ModelLoadError(
            f"the IP-Adapter works on Flux and Chroma models; {req.model.label} is a {cls}, which is neither"
        )
    return ARCHITECTURES[cls]


def run(engine, req: IPAdapterRequest, progress, cancel) -> Result:
    timings: dict[str, float] = {}
    t0 = time.perf_counter()
    architecture = architecture_of(engine, req)
    progress(0.0, f"loading {req.model.label}")
    pipe = engine.store.load_pipeline(req.model, progress=engine.download_progress(progress), cancel=cancel)
    transformer = pipe.transformer
    if type(transformer).__name__ not in TRANSFORMERS:
        raise ModelLoadError(
            f"the IP-Adapter needs a Flux or Chroma transformer; this pipeline has {type(transformer).__name__}"
        )
    store = engine.store
    progress(0.0, f"loading {req.ip_adapter.label} and {req.image_encoder.label}")
    pieces = ipadapter_pieces.pieces_for(
        store,
        store.resolve(req.ip_adapter, allow_patterns=_adapter_patterns(req)),
        req.ip_adapter_file,
        store.resolve(req.image_encoder, allow_patterns=ENCODER_PATTERNS),
        transformer,
        transformer.dtype,
        (req.ip_adapter.label, req.image_encoder.label),
        req.image_encoder.files.image_encoder,
    )
    timings["load"] = time.perf_counter() - t0

    # where the denoising computes: the compute device, or the CPU under the cpu_only memory mode
    device = "cpu" if engine.run_device(req.swap) == "cpu" else engine.memory.compute_device
    # the LoRAs change the transformer's own layers; the IP processors sit beside them on the attention. The stack
    # is resolved first: its fingerprint is part of the token cache's key, as of every cache of a LoRA run
    t_lora = time.perf_counter()
    with loras.applied(engine, pipe, {"transformer": (req.loras, "loras")}, req.model.label) as stack:
        timings["lora"] = time.perf_counter() - t_lora
        t1 = time.perf_counter()
        references, cache_hits = [], 0
        for i, ref in enumerate(req.references):
            progress(0.0, f"encoding reference {i + 1}/{len(req.references)}")
            tokens, hit = pieces.encode(engine.memory, ref.path, transformer.dtype, device, stack.fingerprint())
            references.append((tokens, ref.weight))
            cache_hits += hit
        if req.offload_preprocessing:  # the seed's offload_preprocessing: only the IP layers stay for denoising
            engine.memory.offload([pieces.names["image_encoder"], pieces.names["projector"]])
            progress(0.0, "image tokens ready; image encoder and projector offloaded")
        else:
            progress(0.0, "image tokens ready")
        timings["encode"] = time.perf_counter() - t1

        schedule = _schedule(pipe, req, references, device)
        remove = ipadapter_flux.install(transformer, pieces.layers, schedule)
        try:
            with ipadapter_pieces.placed(engine.memory, [pieces.names["adapter"]], device):
                out = run_denoise(engine, pipe, pipeline_kwargs(pipe, req), req.steps, req.swap, progress, cancel,
                                  timings)
        finally:
            remove()
    metadata = {
        "pipeline": type(pipe).__name__,
        "architecture": architecture,
        "adapter_file": pieces.adapter_path.name,
        "token_cache_hits": cache_hits,
        "sigma_window": [schedule.sigma_low, schedule.sigma_high],
        "ip_steps": list(schedule.history),
        **stack.metadata(),
    }
    if stack.warnings():
        metadata["warnings"] = stack.warnings()
    return Result(request=req, images=list(out.images), timings=timings, metadata=metadata)


def _schedule(pipe, req: IPAdapterRequest, references, device) -> ipadapter_flux.IPSchedule:
    """The sigma window from the scheduler this pipeline will use at this size (ComfyUI's percent_to_sigma)."""
    patch = pipe.vae_scale_factor * 2  # latents are packed 2x2
    seq_len = (req.height // patch) * (req.width // patch)
    shift = ipadapter_flux.shift_function(pipe.scheduler.config, seq_len)
    return ipadapter_flux.IPSchedule(
        references=[(tokens.to(device), weight) for tokens, weight in references],
        sigma_high=ipadapter_flux.percent_to_sigma(req.start_percent, shift),
        sigma_low=ipadapter_flux.percent_to_sigma(req.end_percent, shift),
        weight=req.weight,
        ramp=(req.weight_start, req.weight_end, req.ramp_steps) if req.ramp else None,
        norm_values=req.ip_norm == "kv",
    )


def plan_extra(engine, req: IPAdapterRequest, elem: int):
    """The plan's additions: the IP layers (one K/V pair per attention processor, resident beside the transformer
    while it denoises), and the image encoder and projector (in for encoding, then offloaded)."""
    from engine.adapters.ipadapter_loader import adapter_file
    from engine.plan import ComponentSize, component_size, file_bytes

    extra = loras.plan_extra({"transformer": req.loras}, elem)  # the stack's layers, inside the blocks
    folder = engine.store.resolve_local(req.model)
    try:
        config = json.loads((folder / "transformer" / "config.json").read_text()) if folder else {}
    except (OSError, ValueError):
        config = {}
    if config:  # to_k_ip / to_v_ip: Linear(joint, inner, bias=False) per processor (double + single blocks)
        processors = int(config.get("num_layers", 0)) + int(config.get("num_single_layers", 0))
        inner = int(config.get("num_attention_heads", 0)) * int(config.get("attention_head_dim", 0))
        extra.beside = processors * 2 * int(config.get("joint_attention_dim", 0)) * inner * elem
    adapter_dir = engine.store.resolve_local(req.ip_adapter)
    try:
        path = adapter_file(adapter_dir, req.ip_adapter_file) if adapter_dir else None
    except ModelLoadError:
        path = None
    if path is not None:  # the rest of the adapter file is the projector (a .bin is read as fp16 on disk)
        total = file_bytes(path, elem) if path.suffix == ".safetensors" else path.stat().st_size * elem // 2
        extra.components.append(ComponentSize("projector", "projector", max(0, total - extra.beside)))
    else:
        extra.notes.append("the IP-Adapter file is not here yet: its projector is not in the plan")
    encoder = engine.store.resolve_local(req.image_encoder)
    size = component_size("image_encoder", encoder, elem) if encoder else None
    if size is not None:
        extra.components.append(size)
    return extra
