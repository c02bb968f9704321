"""TurboWan checkpoints (thu-ml/TurboDiffusion) into diffusers' ``WanTransformer3DModel``.

Upstream saves ``net.state_dict()`` of its own Wan 2.2 network (``rcm/networks/wan2pt2.py``) with
``torch.save``: Wan's original key names, ``patch_embedding`` as an ``nn.Linear`` over ``(c kt kh kw)`` (the
Conv3d kernel flattened in the same order, so a reshape recovers it), the head's output in ``(kt kh kw c)``
order (what diffusers' ``proj_out`` unpatchifies too), and, in the ``-quant`` files, every ``nn.Linear`` inside
``blocks`` replaced by upstream's ``Int8Linear``: ``int8_weight`` (out, in) int8 plus ``scale`` (ceil(out/128),
ceil(in/128)) float32, one scale per 128x128 block with ``weight = int8_weight * scale`` (``ops/quant``:
``scale = amax / 128``). SLA-finetuned files also hold ``...self_attn.attn_op.local_attn.proj_l.*``, the linear
branch of Sparse-Linear Attention. Norm replacements (FastRMSNorm/FastLayerNorm) keep the names ``weight``/``bias``.

Ours differs: we dequantise the int8 blocks on load (upstream keeps them int8 for its CUDA W8A8 GEMM, which no
maintained package provides). The SLA branch is kept: ``proj_l`` loads into ``attn1.proj_l`` and the
self-attentions run ``engine/video/sla.py`` (``attention_type`` "sla", the default, as seed 003's loader);
"original" drops it with a warning saying what that changes. Files are read with ``torch.load(weights_only=True)``
only: a file that needs any other unpickling is refused.
"""

from __future__ import annotations

import pickle
import re
from pathlib import Path

import torch

from engine.errors import ModelLoadError

QUANT_BLOCK = 128
SLA_KEY = re.compile(r"\.self_attn\.attn_op\.local_attn\.")
SLA_PARAM = re.compile(r"^blocks\.(\d+)\.self_attn\.attn_op\.local_attn\.proj_l\.(weight|bias)$")
_PREFIXES = ("net.", "model.", "_orig_mod.", "module.")  # training / compile wrappers upstream strips too

# upstream (Wan original) name -> diffusers name; block-level names follow "blocks.<i>."
_TOP = {
    "patch_embedding": "patch_embedding",
    "text_embedding.0": "condition_embedder.text_embedder.linear_1",
    "text_embedding.2": "condition_embedder.text_embedder.linear_2",
    "time_embedding.0": "condition_embedder.time_embedder.linear_1",
    "time_embedding.2": "condition_embedder.time_embedder.linear_2",
    "time_projection.1": "condition_embedder.time_proj",
    "head.head": "proj_out",
}
_BLOCK = {
    "self_attn.q": "attn1.to_q", "self_attn.k": "attn1.to_k", "self_attn.v": "attn1.to_v",
    "self_attn.o": "attn1.to_out.0", "self_attn.norm_q": "attn1.norm_q", "self_attn.norm_k": "attn1.norm_k",
    "cross_attn.q": "attn2.to_q", "cross_attn.k": "attn2.to_k", "cross_attn.v": "attn2.to_v",
    "cross_attn.o": "attn2.to_out.0", "cross_attn.norm_q": "attn2.norm_q", "cross_attn.norm_k": "attn2.norm_k",
    "norm3": "norm2",  # Wan's affine cross-attention norm is norm3 upstream, norm2 in diffusers
    "ffn.0": "ffn.net.0.proj", "ffn.2": "ffn.net.2",
}
_PARAM = re.compile(r"^(?:blocks\.(\d+)\.)?(.+)\.(weight|bias|int8_weight|scale)$")


def read_checkpoint(path: str | Path) -> dict[str, torch.Tensor]:
    """The tensors of a TurboWan file; pickles only through ``torch.load(weights_only=True)``."""
    path = Path(path)
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        return load_file(str(path))
    try:
        data = torch.load(str(path), map_location="cpu", weights_only=True, mmap=True)
    except pickle.UnpicklingError as exc:
        raise ModelLoadError(f"{path.name} needs unsafe unpickling (it holds more than tensors), so it is refused: "
                             f"{str(exc).splitlines()[0][:200]}") from None
    except (RuntimeError, OSError, EOFError) as exc:
        raise ModelLoadError(f"cannot read {path.name} as a PyTorch checkpoint: {str(exc).splitlines()[0]}") from None
    if isinstance(data, dict) and isinstance(data.get("state_dict"), dict):  # an upstream training checkpoint
        data = data["state_dict"]
    if not isinstance(data, dict) or not all(isinstance(v, torch.Tensor) for v in data.values()):
        raise ModelLoadError(f"{path.name} is not a state dict of tensors")
    return data


def dequantize(q: torch.Tensor, scale: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """Upstream's block-wise int8 (one float scale per 128x128 block) back to a float weight."""
    out, inp = q.shape
    full = scale.float().repeat_interleave(QUANT_BLOCK, 0)[:out].repeat_interleave(QUANT_BLOCK, 1)[:, :inp]
    return (q.float() * full).to(dtype)


def quantize(w: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The inverse, as upstream's ``int8_quant`` computes it (``scale = amax / 128``); used to build test files."""
    out, inp = w.shape
    rb, cb = -(-out // QUANT_BLOCK), -(-inp // QUANT_BLOCK)
    scale = torch.empty(rb, cb, dtype=torch.float32)
    q = torch.empty(out, inp, dtype=torch.int8)
    for i in range(rb):
        for j in range(cb):
            block = w[i * QUANT_BLOCK:(i + 1) * QUANT_BLOCK, j * QUANT_BLOCK:(j + 1) * QUANT_BLOCK].float()
            s = max(block.abs().max().item(), 1e-8) / 128.0
            scale[i, j] = s
            q[i * QUANT_BLOCK:(i + 1) * QUANT_BLOCK, j * QUANT_BLOCK:(j + 1) * QUANT_BLOCK] = (
                (block / s).round().clamp(-128, 127).to(torch.int8))
    return q, scale


def _diffusers_name(module: str, block: str | None) -> str | None:
    if block is None:
        if module in _TOP:
            return _TOP[module]
        return None
    target = _BLOCK.get(module)
    return None if target is None else f"blocks.{block}.{target}"


def convert(state: dict[str, torch.Tensor], dtype: torch.dtype, attention_type: str = "sla"
            ) -> tuple[dict[str, torch.Tensor], list[str]]:
    """Upstream keys to diffusers keys (dequantising int8 blocks); ``proj_l`` to ``blocks.<i>.attn1.proj_l`` for
    "sla", dropped for "original". Returns (state dict, notes)."""
    out: dict[str, torch.Tensor] = {}
    unknown: list[str] = []
    dropped_sla = 0
    quantized = 0
    scales: dict[str, torch.Tensor] = {k[: -len(".scale")]: v for k, v in state.items() if k.endswith(".scale")}
    for raw, value in state.items():
        key = next((raw[len(p):] for p in _PREFIXES if raw.startswith(p)), raw)
        if SLA_KEY.search(key):
            m = SLA_PARAM.match(key)
            if m is None:
                unknown.append(raw)
            elif attention_type == "sla":
                out[f"blocks.{m.group(1)}.attn1.proj_l.{m.group(2)}"] = value.to(dtype)
            else:
                dropped_sla += 1
            continue
        if key == "head.modulation":
            out["scale_shift_table"] = value.to(dtype)
            continue
        m = re.match(r"^blocks\.(\d+)\.modulation$", key)
        if m:
            out[f"blocks.{m.group(1)}.scale_shift_table"] = value.to(dtype)
            continue
        m = _PARAM.match(key)
        target = _diffusers_name(m.group(2), m.group(1)) if m else None
        if target is None:
            unknown.append(raw)
            continue
        kind = m.group(3)
        if kind == "scale":
            continue  # consumed with its int8_weight
        if kind == "int8_weight":
            scale = scales.get(raw[: -len(".int8_weight")])
            if scale is None:
                unknown.append(raw)
                continue
            out[f"{target}.weight"] = dequantize(value, scale, dtype)
            quantized += 1
            continue
        out[f"{target}.{kind}"] = value.to(dtype)
    if unknown:
        shown = ", ".join(sorted(unknown)[:5])
        raise ModelLoadError(f"the checkpoint's keys match no known TurboWan/Wan layout: {len(unknown)} unexpected "
                             f"key(s), e.g. {shown}")
    notes = []
    if quantized:
        notes.append(f"{quantized} int8 block-quantised layers dequantised on load")
    if dropped_sla:
        from engine.video.sla import ORIGINAL_ON_SLA

        notes.append(ORIGINAL_ON_SLA)
    return out, notes


def load_expert(path: str | Path, config: dict, dtype: torch.dtype, attention_type: str = "sla",
                sla_topk: float = 0.1, field: str = "turbo.attention_type"):
    """A diffusers ``WanTransformer3DModel`` (``config`` from the base model's ``transformer/config.json``) with
    the TurboWan file's weights, its self-attentions on SLA for ``attention_type`` "sla". Returns (model, notes)."""
    from accelerate import init_empty_weights
    from diffusers import WanTransformer3DModel

    from engine.errors import InputError
    from engine.video import sla

    state, notes = convert(read_checkpoint(path), dtype, attention_type)
    has_sla = any(".attn1.proj_l." in k for k in state)
    if attention_type == "sla" and not has_sla:
        # upstream's strict load fails here too (its SLA modules' proj_l has nothing to load)
        raise InputError(field, f"{Path(path).name} has no SLA weights (blocks.<i>.self_attn.attn_op.local_attn."
                                "proj_l): it was not fine-tuned for Sparse-Linear Attention; pick \"original\"")
    config = {k: v for k, v in config.items() if not k.startswith("_")}
    with init_empty_weights():
        model = WanTransformer3DModel.from_config(config)
        if has_sla:
            sla.add_proj_l(model, dtype)
    expected = model.state_dict()
    if "patch_embedding.weight" in state:  # a Linear over (c kt kh kw) upstream, the same kernel as a Conv3d
        state["patch_embedding.weight"] = state["patch_embedding.weight"].reshape(expected["patch_embedding.weight"].shape)
    missing = sorted(set(expected) - set(state))
    extra = sorted(set(state) - set(expected))
    if missing or extra:
        parts = []
        if missing:
            parts.append(f"missing {len(missing)} (e.g. {', '.join(missing[:4])})")
        if extra:
            parts.append(f"unexpected {len(extra)} (e.g. {', '.join(extra[:4])})")
        raise ModelLoadError(f"{Path(path).name} does not fit the Wan 2.2 I2V transformer of the base model: "
                             + "; ".join(parts))
    bad = [k for k, v in expected.items() if tuple(v.shape) != tuple(state[k].shape)]
    if bad:
        k = bad[0]
        raise ModelLoadError(f"{Path(path).name}: {k} has shape {tuple(state[k].shape)}, the base model's "
                             f"transformer expects {tuple(expected[k].shape)} (a checkpoint of another model size?)")
    model.load_state_dict(state, assign=True, strict=True)
    if has_sla:
        sla.use_sla(model, sla_topk)
    return model.eval(), notes


def to_upstream(state: dict[str, torch.Tensor], quantized: bool) -> dict[str, torch.Tensor]:
    """diffusers keys back to upstream's layout (what ``torch.save(net.state_dict())`` writes); the demo builder
    uses it to write tiny TurboWan files, so the conversion above is tested against the real layout."""
    top = {v: k for k, v in _TOP.items()}
    block = {v: k for k, v in _BLOCK.items()}
    out: dict[str, torch.Tensor] = {}
    for key, value in state.items():
        if key == "scale_shift_table":
            out["head.modulation"] = value
            continue
        sla = re.match(r"^blocks\.(\d+)\.attn1\.proj_l\.(weight|bias)$", key)
        if sla:  # SLA's linear branch: kept float (upstream's replace_linear_norm skips "proj_l")
            out[f"blocks.{sla.group(1)}.self_attn.attn_op.local_attn.proj_l.{sla.group(2)}"] = value.contiguous()
            continue
        m = re.match(r"^blocks\.(\d+)\.(.+)\.(weight|bias)$", key)
        if key.startswith("blocks.") and key.endswith(".scale_shift_table"):
            out[key.replace("scale_shift_table", "modulation")] = value
            continue
        if m:
            name, kind = f"blocks.{m.group(1)}.{block[m.group(2)]}", m.group(3)
            if quantized and kind == "weight" and value.dim() == 2:  # Int8Linear replaces every block Linear
                out[f"{name}.int8_weight"], out[f"{name}.scale"] = quantize(value)
                continue
        else:
            module, kind = key.rsplit(".", 1)
            name = top[module]
        if name == "patch_embedding" and kind == "weight":
            value = value.reshape(value.shape[0], -1)
        out[f"{name}.{kind}"] = value.contiguous()
    return out


# ---------------------------------------------------------------- loading through the engine's store
# The base repo lends text encoder, VAE, tokenizer and configs to a TurboWan pair: its own two experts (2 x 28 GB
# for A14B) are never loaded, so they are never downloaded either.
BASE_PATTERNS = ("model_index.json", "*/*.json", "*/*.txt", "*/*.model", "text_encoder/*.safetensors",
                 "vae/*.safetensors", "image_encoder/*.safetensors")


def turbo_files(engine, turbo, progress=None, cancel=None) -> tuple[Path, Path]:
    """The two expert files of ``turbo`` (a ``TurboWanSettings``): given paths, a local/demo folder, or the two
    files of the hub repo (only those are downloaded)."""
    if turbo.high_path:
        return Path(turbo.high_path), Path(turbo.low_path)
    names = turbo.file_names()
    ref = turbo.checkpoints
    local = engine.store.resolve_local(ref) if (ref.path or engine.store.demo) else None
    if local is None and ref.repo_id:
        folder = engine.models_dir / ref.repo_id.split("/")[-1]
        if not all((folder / n).is_file() for n in names):
            from engine.hub import download as hub

            report = engine.download_progress(progress) if progress else None
            folder = hub.download(ref.repo_id, revision=ref.revision or None, allow_patterns=list(names),
                                  progress=report, cancel=cancel)
        local = folder
    if local is None:
        raise ModelLoadError(f"no TurboWan checkpoints found for {ref.label}")
    files = tuple(Path(local) / n for n in names)
    missing = [f.name for f in files if not f.is_file()]
    if missing:
        raise ModelLoadError(f"{ref.label} has no {', '.join(missing)}")
    return files  # type: ignore[return-value]


def turbo_pipeline(engine, req, base, progress=None, cancel=None):
    """The rCM pipeline over ``base``'s encoder/VAE with the TurboWan pair, cached in the store while the files and
    dtype stay the same (a new pair replaces the old one, so two 14B pairs never sit in RAM together)."""
    import json

    from engine.video.rcm import TurboWanI2VPipeline

    store = engine.store
    high, low = turbo_files(engine, req.turbo, progress, cancel)
    folder = store.resolve(req.model, allow_patterns=list(BASE_PATTERNS))
    dtype = base.text_encoder.dtype if base.text_encoder is not None else torch.float32
    stamp = tuple((str(p.resolve()), p.stat().st_mtime_ns, p.stat().st_size) for p in (high, low))
    turbo = req.turbo
    key = ("turbowan", str(folder.resolve()), stamp, str(dtype), turbo.attention_type, float(turbo.sla_topk))
    with store._lock:
        if key in store._pipelines:  # the load notes again: "original" on SLA experts warns on every run
            pipe = store._pipelines[key]
            return pipe, list(getattr(pipe, "_turbo_notes", []))
        for old in [k for k in store._pipelines if k and k[0] == "turbowan"]:
            pipe = store._pipelines.pop(old)
            for module in (pipe.transformer, pipe.transformer_2):
                composer = getattr(module, "_studio_lora_composer", None)
                if composer is not None:  # its LoRA rows go from the ledger with it
                    composer.unload_all()
                name = store._names.pop(id(module), None)
                if name:
                    store.memory.unregister(name)
        config = json.loads((folder / "transformer" / "config.json").read_text())
        notes: list[str] = []
        experts = []
        for path in (high, low):
            if progress:
                progress(0.0, f"converting {path.name}")
            model, expert_notes = load_expert(path, config, dtype, turbo.attention_type, turbo.sla_topk)
            notes += expert_notes
            store.register_module(f"TurboWan/{path.stem}", model, "transformer")
            experts.append(model)
        pipe = TurboWanI2VPipeline(tokenizer=base.tokenizer, text_encoder=base.text_encoder, vae=base.vae,
                                   scheduler=base.scheduler, transformer=experts[0], transformer_2=experts[1],
                                   boundary_ratio=req.boundary_ratio)
        pipe.set_progress_bar_config(disable=True)
        pipe._turbo_notes = list(dict.fromkeys(notes))
        store._pipelines[key] = pipe
        return pipe, list(pipe._turbo_notes)
