"""``Engine.plan``: what a run will do with the compute device, worked out before anything loads.

Sizes come from the safetensors headers of the model folder (names, shapes, dtypes: a few KB read per file,
no weights) and the activation estimate from the configs, so the plan can be shown as the user moves a
slider. The layout arithmetic is ``engine.memory.planner``'s, the same the run then uses.
"""

from __future__ import annotations

import json
import re
import struct
from dataclasses import dataclass, field, replace
from pathlib import Path

from engine.errors import InputError, OutOfBudgetError
from engine.memory.planner import ENCODER_ROLES, STREAMING_MODES, ComponentSize, GiB, Plan, gib, human, plan_swap
from engine.models import role_of

# bytes per element of the safetensors dtypes
_DTYPE_BYTES = {"F64": 8, "F32": 4, "F16": 2, "BF16": 2, "I64": 8, "I32": 4, "I16": 2, "I8": 1, "U8": 1,
                "BOOL": 1, "F8_E4M3": 1, "F8_E5M2": 1, "U16": 2, "U32": 4, "U64": 8, "F8_E8M0": 1, "F4": 1}
_FLOATS = {"F64", "F32", "F16", "BF16"}
_FP8 = {"F8_E4M3", "F8_E5M2"}
# ComfyUI's scaled fp8: per-layer scales that are multiplied into the weights on load, then dropped
_SCALE_KEYS = ("scaled_fp8",)
_SCALE_SUFFIXES = (".scale_weight", ".weight_scale", ".scale_input")  # ComfyUI's old and new spellings
# Block lists in the order the models run them (a safetensors header is sorted by name, so order is not in it)
_LIST_ORDER = ("transformer_blocks", "single_transformer_blocks", "blocks", "layers")
_BLOCK_KEY = re.compile(r"^([A-Za-z_]\w*)\.(\d+)\.")
HEADER_LIMIT = 100 * 2**20


def read_header(path: Path) -> dict[str, dict]:
    """The tensor table of a safetensors file (name -> dtype, shape), without reading any weights."""
    with path.open("rb") as f:
        raw = f.read(8)
        if len(raw) < 8:
            raise ValueError(f"{path.name} is not a safetensors file (too short)")
        (n,) = struct.unpack("<Q", raw)
        if n > HEADER_LIMIT:
            raise ValueError(f"{path.name}: header of {n} bytes is not plausible")
        header = json.loads(f.read(n))
    header.pop("__metadata__", None)
    return header


# the layers whose fp8 a single file cannot keep (``fp8_storage``: the model's code reads their dtype): Wan's
# patch and condition embedders, in the original layout's names and in diffusers'
_FP8_NOT_KEPT = ("patch_embedding.", "time_embedding.", "time_projection.", "text_embedding.", "img_emb.",
                 "condition_embedder.")


def _copied_at_load(info: dict, load_dtype: str, fp8_kept: bool) -> bool:
    """Whether loading this tensor makes a new one (anonymous RAM) instead of using the memory-mapped file: a float
    stored in another dtype than it loads in is cast, and fp8 is turned into the compute dtype (scaled fp8
    multiplied out, transformers' encoders and diffusers' folder loads cast it) except where a single file's
    plain fp8 stays as stored (``fp8_kept``: ``comfy_models.fp8_storage``)."""
    dtype = info["dtype"]
    if dtype in _FP8:
        return not fp8_kept
    return dtype in _FLOATS and bool(load_dtype) and dtype != load_dtype


def load_dtype_tag(dtype: str, device: str) -> str:
    """The safetensors dtype a request's weights load in (``ModelRef.dtype``; "auto": bf16 on CUDA, fp32 on the CPU)."""
    if dtype == "auto":
        return "BF16" if device.startswith("cuda") else "F32"
    return {"float32": "F32", "bfloat16": "BF16", "float16": "F16"}.get(dtype, "BF16")


def numel_of(info: dict) -> int:
    numel = 1
    for d in info["shape"]:
        numel *= d
    return numel


def _nbytes(info: dict, load_bytes: int, fp8_loads_as: int = 0) -> int:
    """Bytes of one tensor as loaded: floats at the load dtype; fp8 at 1 byte where it stays fp8
    (``comfy_models.fp8_storage``), at ``fp8_loads_as`` where the loader turns it into the compute dtype."""
    numel = numel_of(info)
    dtype = info["dtype"]
    if dtype in _FLOATS and load_bytes:
        per = load_bytes
    elif dtype in _FP8 and fp8_loads_as:
        per = fp8_loads_as
    else:
        per = _DTYPE_BYTES.get(dtype, 1)
    return numel * per


def is_scaled_fp8(header: dict) -> bool:
    return any(k in header for k in _SCALE_KEYS) or any(k.endswith(_SCALE_SUFFIXES[:2]) for k in header)


def fp8_load_bytes(role: str, header: dict, load_bytes: int, class_name: str = "") -> int:
    """What a single file's fp8 weights become in memory (0: they stay 1 byte a weight, as stored, see
    ``comfy_models.fp8_storage``): plain fp8 in a diffusers model stays, and so does a scaled fp8 transformer whose
    scales follow its weights through the conversion (``scaled_fp8.scales_follow_weights``); other scaled fp8 is
    multiplied out to the compute dtype; T5, umT5 and Qwen2.5-VL encoders keep theirs
    (``single_file.FP8_KEPT_ENCODERS``; in fp16 T5's ``wo`` layers load as fp32, as transformers loads them, which the
    plan does not count), other encoders are cast whole by transformers' loader."""
    from engine.comfy_models.scaled_fp8 import scales_follow_weights
    from engine.comfy_models.single_file import FP8_KEPT_ENCODERS

    if role not in ("transformer", "vae"):
        return 0 if class_name in FP8_KEPT_ENCODERS else load_bytes or 2
    if is_scaled_fp8(header) and not (role == "transformer" and scales_follow_weights(header)):
        return load_bytes or 2
    return 0


def _is_norm_weight(key: str, info: dict) -> bool:
    """A 1-D weight belongs to a norm (Linear, Conv and Embedding weights have two dimensions or more, biases are
    named so): ``fp8_storage`` keeps fp8 only in those layers, so a norm's fp8 weight is cast as it loads."""
    return key.endswith(".weight") and len(info["shape"]) == 1


def encoder_fp8_cast(class_name: str, key: str) -> bool:
    """Whether a kept-fp8 encoder's loader casts this fp8 tensor to the compute dtype (``KeptFp8.skip``)."""
    from engine.comfy_models.single_file import FP8_KEPT_ENCODERS

    layer = key.rsplit(".", 1)[0]
    return any(re.search(p, layer) for p in FP8_KEPT_ENCODERS[class_name].skip)


def component_size(name: str, folder: Path, load_bytes: int, single_file: str = "",
                   load_dtype: str = "", class_name: str = "") -> ComponentSize | None:
    """Sizes of one component folder (or of the single file that replaces it): total, blocks in execution order,
    largest layer, and what the load copies (``load_dtype``: the safetensors dtype it loads in; "" = the file's own,
    nothing cast)."""
    files = [Path(single_file)] if single_file else sorted(folder.glob("*.safetensors"))
    if not files or not files[0].suffix == ".safetensors":
        return None
    blocks: dict[tuple[str, int], int] = {}
    leaves: dict[str, int] = {}
    fp8_leaves: dict[str, int] = {}  # layer -> its weights kept in fp8, in compute-dtype bytes
    total = copied = 0
    for file in files:
        header = read_header(file)
        if single_file and role_of(name) == "transformer":  # a ComfyUI file: its transformer keys, unprefixed
            from engine.comfy_models.detect import strip_transformer_prefix

            header = {new: header[old] for new, old in strip_transformer_prefix(header).items()}
        fp8_as = fp8_load_bytes(role_of(name), header, load_bytes, class_name) if single_file else 0
        encoder_kept = bool(single_file) and not fp8_as and role_of(name) not in ("transformer", "vae")
        if is_scaled_fp8(header):  # the scales are consumed by the load (or a scalar per layer): nothing counts
            header = {k: v for k, v in header.items() if k not in _SCALE_KEYS and not k.endswith(_SCALE_SUFFIXES)}
        for key, info in header.items():
            cast_up = bool(single_file) and not fp8_as and (  # fp8 the loader cannot keep: a 1-D weight is a norm's
                _is_norm_weight(key, info) or (encoder_fp8_cast(class_name, key) if encoder_kept else
                                               key.startswith(_FP8_NOT_KEPT)))
            fp8_bytes = (load_bytes or 2) if cast_up else fp8_as
            kept = bool(single_file) and not fp8_bytes
            n = _nbytes(info, load_bytes, fp8_bytes)
            total += n
            if _copied_at_load(info, load_dtype, kept):
                copied += numel_of(info) * (load_bytes or 2)  # made in the compute dtype, whatever it keeps after
            leaf = key.rsplit(".", 1)[0]
            leaves[leaf] = leaves.get(leaf, 0) + n
            if kept and info["dtype"] in _FP8:
                fp8_leaves[leaf] = fp8_leaves.get(leaf, 0) + numel_of(info) * (load_bytes or 2)
            m = _BLOCK_KEY.match(key)
            if m and role_of(name) == "transformer":
                blocks[(m.group(1), int(m.group(2)))] = blocks.get((m.group(1), int(m.group(2))), 0) + n

    def order(item):
        (list_name, index), _ = item
        rank = _LIST_ORDER.index(list_name) if list_name in _LIST_ORDER else len(_LIST_ORDER)
        return rank, list_name, index

    ordered = tuple(n for _, n in sorted(blocks.items(), key=order))
    return ComponentSize(name, role_of(name), total, ordered, max(leaves.values(), default=0), copied,
                         max(fp8_leaves.values(), default=0))


def folder_sizes(folder: Path, load_bytes: int, files: dict[str, str] | None = None,
                 load_dtype: str = "") -> list[ComponentSize]:
    """Every component's sizes; ``files``: components given as single files (``ModelRef.files``)."""
    index = json.loads((folder / "model_index.json").read_text())
    files = files or {}
    out = []
    for name, spec in index.items():
        if name.startswith("_") or not isinstance(spec, list) or spec[0] is None or not (
                (folder / name).is_dir() or name in files):
            continue
        size = component_size(name, folder / name, load_bytes, files.get(name, ""), load_dtype, spec[1])
        if size is not None and size.role in ENCODER_ROLES:
            size = replace(size, activations=encoder_activations(_config(folder, name), load_bytes or 2))
        if size is not None:
            out.append(size)
    return out


def _config(folder: Path, name: str) -> dict:
    try:
        return json.loads((folder / name / "config.json").read_text())
    except (OSError, json.JSONDecodeError):
        return {}


ENCODER_TOKENS = 512  # the longest prompt the pipelines encode (T5 and umT5 at 512; CLIP stops at 77)


def encoder_activations(cfg: dict, elem: int) -> int:
    """Rough activation bytes while a text or image encoder computes: a dozen hidden-sized tensors per token and
    the attention scores in fp32 (transformers' eager attention), for ``ENCODER_TOKENS`` tokens."""
    if "d_model" not in cfg and "hidden_size" not in cfg:  # a multimodal config: its text tower's
        cfg = cfg.get("text_config") or {}
    hidden = int(cfg.get("d_model") or cfg.get("hidden_size") or 1024)
    heads = int(cfg.get("num_heads") or cfg.get("num_attention_heads") or 16)
    return 12 * ENCODER_TOKENS * hidden * elem + heads * ENCODER_TOKENS * ENCODER_TOKENS * 4


def activation_estimate(tcfg: dict, vcfg: dict, width: int, height: int, frames: int, elem: int,
                        batch: int = 1) -> int:
    """Rough activation bytes at the busiest moment of a run (a transformer block, or the VAE decode).

    Tokens: the VAE divides each side by 8 and the transformer patches 2x2 (Flux, Chroma, Qwen-Image, Wan);
    Wan also folds 4 frames into one latent frame. A block holds about a dozen hidden-sized tensors at once
    (residual, q/k/v, attention output, the MLP's wide hidden) with flash/memory-efficient attention; the VAE
    decoder's widest stage is full resolution at its widest channel count, a few tensors at a time."""
    inner = int(tcfg.get("num_attention_heads", 24)) * int(tcfg.get("attention_head_dim", 128))
    latent_frames = (frames - 1) // 4 + 1 if frames > 1 else 1
    tokens = (width // 16) * (height // 16) * latent_frames + 512
    denoise = 12 * tokens * inner * elem * batch
    channels = max(vcfg.get("block_out_channels") or [vcfg.get("base_dim", 96) * 4])
    decode = 4 * width * height * int(channels) * elem * (4 if frames > 1 else 1)
    return max(denoise, decode)


def activation_bytes(pipe, kwargs: dict) -> int:
    """The estimate for a loaded pipeline and the call about to be made."""
    transformer = getattr(pipe, "transformer", None)
    vae = getattr(pipe, "vae", None)
    if transformer is None:
        return 0
    # activations are in the compute dtype: diffusers' ``dtype`` is it also for a model stored in fp8 (it reads the
    # layerwise casting hooks ``fp8_storage`` registers), where the first parameter's would be a byte
    dtype = getattr(transformer, "dtype", None)
    elem = dtype.itemsize if getattr(dtype, "is_floating_point", False) else 2
    return activation_estimate(dict(transformer.config), dict(getattr(vae, "config", {}) or {}),
                               int(kwargs.get("width") or 1024), int(kwargs.get("height") or 1024),
                               int(kwargs.get("num_frames") or 1), elem) + fp8_compute_copy(pipe)


def fp8_compute_copy(pipe) -> int:
    """Bytes of the largest fp8-stored layer's weights in its compute dtype (``ComponentSize.compute_copy``), over
    the pipeline's transformers: the per-forward copy ``fp8_storage``'s hook makes."""
    import torch

    largest = 0
    for attr in ("transformer", "transformer_2"):
        model = getattr(pipe, attr, None)
        for module in model.modules() if model is not None else ():
            compute = getattr(module, "compute_dtype", None)
            if isinstance(compute, torch.dtype):
                largest = max(largest, sum(p.numel() * compute.itemsize for p in module.parameters(recurse=False)
                                           if p.element_size() == 1 and p.is_floating_point()))
    return largest


@dataclass
class PlanExtra:
    """What a runner adds to the base model's sizes (``runner.plan_extra``): weights that live inside the
    transformer's blocks (adapter layers: ``in_blocks`` on every transformer, ``in_blocks_of`` on the one named,
    e.g. a Wan expert's LoRA stack; spread over the blocks by their size), weights resident beside it while it
    computes (IP-Adapter layers: ``beside``), other components that come in one at a time (an image encoder), and
    the batch the transformer runs (OmniX: one item per adapter)."""

    in_blocks: int = 0
    in_blocks_of: dict[str, int] = field(default_factory=dict)  # component name -> bytes inside its blocks
    beside: int = 0
    components: list[ComponentSize] = field(default_factory=list)
    batch: int = 1
    notes: list[str] = field(default_factory=list)


def file_bytes(path: Path, elem: int) -> int:
    """A weights file's bytes as loaded: from a safetensors header, else the file's size (pickles)."""
    if path.suffix == ".safetensors":
        return sum(_nbytes(info, elem) for info in read_header(path).values())
    return path.stat().st_size


def with_extra(sizes: list[ComponentSize], extra: PlanExtra) -> list[ComponentSize]:
    out = []
    for comp in sizes:
        inside = (extra.in_blocks if comp.streams else 0) + extra.in_blocks_of.get(comp.name, 0)
        if comp.streams and (inside or extra.beside):
            total_blocks, before, blocks = sum(comp.blocks) or 1, 0, []
            for b in comp.blocks:  # cumulative shares: the spread adds up to ``inside`` exactly
                share = inside * (before + b) // total_blocks - inside * before // total_blocks
                blocks.append(b + share)
                before += b
            blocks = tuple(blocks)
            comp = replace(comp, blocks=blocks, total=comp.rest + extra.beside + sum(blocks))
        elif inside:  # a transformer with no block lists: its adapter layers are resident with it
            comp = replace(comp, total=comp.total + inside)
        out.append(comp)
    return out + list(extra.components)


def load_elem_bytes(dtype: str, device: str) -> int:
    if dtype == "auto":
        return 2 if device.startswith("cuda") else 4
    return {"float32": 4, "bfloat16": 2, "float16": 2}.get(dtype, 2)


# Modes in the order a leaner one is looked for: fastest first
LEANER_ORDER = ("none", "adaptive", "block_swap", "chunkwise", "model_offload", "layerwise", "cpu_only")


def device_budget(engine, settings) -> tuple[int | None, str]:
    """The run's device budget and where it comes from: ``max_vram_gb``, the engine's own budget, or on CUDA the
    free memory now (plus what the app holds) minus a stated reserve (``devices.planning_budget``)."""
    from engine.memory import devices

    if settings.max_vram_gb:
        return int(settings.max_vram_gb * GiB), f"budget {settings.max_vram_gb:g} GB (max_vram_gb)"
    memory = engine.memory
    own = memory.session_budget if memory.session_budget is not None else memory.budget_bytes
    if own is not None:
        return own, f"budget {own / GiB:.1f} GiB (the engine's)"
    found = devices.planning_budget(memory.compute_device)
    return found if found is not None else (None, "")


def host_ram_for_run(engine) -> int:
    """RAM a run may use: what the system has available now plus what the app's ledger already holds in RAM
    (loaded models the run reuses or the store can drop)."""
    from engine.memory import devices

    memory = engine.memory
    held = 0
    for name in memory.names():
        entry = memory.entry(name)
        if entry.device == "cpu" and not entry.part_of:
            held += entry.bytes
    return devices.host_available() + held


def plan_request(engine, request) -> Plan:
    """The plan for ``request`` on ``engine`` (requests without a memory mode plan as ``none``)."""
    from engine import jobs
    from engine.requests import SwapSettings

    settings = getattr(request, "swap", None) or SwapSettings()
    runner = jobs.runner_for(request)
    ref = runner.plan_ref(engine, request) if hasattr(runner, "plan_ref") else request.model
    device = engine.memory.compute_device
    budget, budget_note = device_budget(engine, settings)
    folder = engine.store.resolve_local(ref)
    if folder is None or not (folder / "model_index.json").is_file():
        return Plan(mode=settings.mode, device=device, budget=budget, weights_peak=0, activations=0, fits=True,
                    explanation=f"{settings.mode}: {ref.label} is not downloaded yet, so its sizes are unknown; "
                                "the plan appears once it is here")
    elem = load_elem_bytes(ref.dtype, device)
    extra = runner.plan_extra(engine, request, elem) if hasattr(runner, "plan_extra") else PlanExtra()
    loaded = engine.store.loaded_parts(folder, ref)  # what is loaded already copies nothing more
    sizes = [c if c.name not in loaded else replace(c, load_copy=0)
             for c in folder_sizes(folder, elem, ref.files.given(), load_dtype_tag(ref.dtype, device))]
    sizes = with_extra(sizes, extra)
    act = activation_estimate(_config(folder, "transformer"), _config(folder, "vae"),
                              int(getattr(request, "width", 1024)), int(getattr(request, "height", 1024)),
                              int(getattr(request, "num_frames", 1)), elem, batch=extra.batch)
    # an fp8-kept layer computes from a copy of itself (an encoder's is counted with the encoder's moment)
    act += max((c.compute_copy for c in sizes if c.role not in ENCODER_ROLES), default=0)
    offload = engine.memory.offload_device
    plan = plan_swap(sizes, settings, device, budget, act, offload)
    plan.budget_note = budget_note
    plan.components = {c.name: c.total for c in sizes}
    plan.host_available = host_ram_for_run(engine)
    for mode in LEANER_ORDER:  # what the other modes would need: the refusal names the leaner one that fits
        for place in dict.fromkeys((offload, "disk")):
            other = plan if (mode, place) == (settings.mode, offload) else plan_swap(
                sizes, replace(settings, mode=mode), device, budget, act, place)
            plan.alternatives[mode if place == offload else f"{mode}+disk"] = {
                "host_bytes": other.host_bytes, "pinned_bytes": other.pinned_bytes,
                "device_bytes": other.predicted_peak, "fits": other.fits and other.host_bytes <= plan.host_available}
    plan.notes.extend(extra.notes)
    if budget_note:
        plan.notes.append(budget_note)
    return plan


def leaner_mode(plan: Plan) -> str:
    """The fastest other mode that fits both the device and the host RAM, said with its figures."""
    for key, alt in plan.alternatives.items():
        if key == plan.mode or not alt["fits"] or alt["host_bytes"] >= plan.host_bytes:
            continue
        mode, _, disk = key.partition("+")
        where = " with disk offload (offload_device=\"disk\")" if disk else ""
        return (f"{mode}{where} fits: {gib(alt['host_bytes'])} GiB of host RAM ({gib(alt['pinned_bytes'])} "
                f"pinned), {gib(alt['device_bytes'])} GiB on the device")
    return "no mode fits this machine's RAM: pick a quantized catalog entry, a smaller size, or free some RAM"


def check_budget(request, plan: Plan) -> None:
    """Refuse, before anything loads, a run the plan says cannot work: more host RAM than the machine has for it
    (the message names the figure and the leaner mode that fits), a ``max_vram_gb`` below what even the leanest
    mode needs (the message names the minimum) or below a streaming layout's resident blocks plus slabs, or a
    streaming mode with no layout that fits."""
    settings = getattr(request, "swap", None)
    if settings is None or not plan.weights_peak and not plan.host_bytes:
        return
    if not plan.host_fits:
        loading = f" {plan.host_how}" if plan.host_how.startswith("while loading") else ""
        raise InputError("swap.mode", f"{plan.host_line}{loading}: more than the {gib(plan.host_available)} GiB of "
                                      f"RAM this machine has for it (available now plus what the app holds); "
                                      f"{leaner_mode(plan)}")
    if settings.mode == "cpu_only" or plan.fits:
        return
    if settings.max_vram_gb and plan.suggestion.startswith("nothing fits"):
        raise InputError("swap.max_vram_gb", f"{settings.max_vram_gb:g} GB is below what this run needs in any "
                                             f"mode: {plan.suggestion}")
    if settings.max_vram_gb and settings.mode in ("block_swap", "chunkwise") and plan.layouts:
        need = plan.predicted_peak
        weights = f"{human(plan.resident_weights)} resident + {human(plan.slab_bytes)} slabs"
        if plan.weights_peak > plan.resident_weights + plan.slab_bytes:  # the worst moment is an encoder's or the VAE's
            weights = f"{human(plan.weights_peak)} while an encoder or the VAE computes beside the resident blocks"
        raise InputError("swap.max_vram_gb", f"{settings.max_vram_gb:g} GB is below what {settings.mode} needs with "
                                             f"{settings.blocks_resident} resident blocks and prefetch "
                                             f"{settings.prefetch}: {weights} + {human(plan.activations)} "
                                             f"activations, minimum {need / GiB:.3f} GB; raise it, keep fewer "
                                             "blocks resident, lower the prefetch, or pick adaptive")
    if settings.mode in STREAMING_MODES and not plan.layouts:
        raise OutOfBudgetError(f"{plan.explanation}; {plan.suggestion}")
