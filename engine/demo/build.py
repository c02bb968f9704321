"""Tiny random-weight demo models in the exact on-disk layout of the real repositories.

``build_demo_models(models_dir)`` writes, once, into ``<models_dir>/demo/<name>/``:

================== ==========================================================================
name               layout (what the real repository looks like)
================== ==========================================================================
flux-dev           FluxPipeline diffusers folder (CLIP + T5 text encoders, VAE, transformer)
chroma             ChromaPipeline diffusers folder (T5 only); transformer shaped like flux-dev
wan22-i2v          WanImageToVideoPipeline folder with two experts and ``boundary_ratio``
wan22-ti2v-5b      Wan2.2-TI2V-5B-Diffusers layout: WanPipeline, one transformer, ``expand_timesteps``, 48-ch VAE
turbowan22-i2v     ``TurboWan2.2-I2V-A14B-{high,low}-720P[-quant].pth``: the wan22-i2v experts in TurboDiffusion's
                   key layout (torch.save of a state dict; ``-quant``: int8 128x128-block weights + scales), with
                   SLA's per-block ``self_attn.attn_op.local_attn.proj_l`` as the released files carry it
qwen-image         QwenImagePipeline folder (Qwen2.5-VL text encoder)
qwen-image-edit    Qwen/Qwen-Image-Edit layout (QwenImageEditPipeline, processor/; ``-2509``: EditPlus), demo/qwen_edit.py
loras/             ``qwen-style-a.safetensors``, ``qwen-style-b.safetensors`` (diffusers LoRA format), and
                   ``QWEN_LORA_LAYOUT_FILES``: the same kind of LoRA in ComfyUI (``diffusion_model.*``), kohya
                   (``lora_unet_*`` + ``alpha``) and seed 004's alias names (fused ``to_qkv`` ...);
                   Flux / Chroma / Wan 2.2 LoRAs in every layout (demo/loras.py: ``FLUX_LORA_FILES``,
                   ``CHROMA_LORA_FILES``, ``WAN_LORA_FILES``, the lightx2v pair under the template's names)
flux-ip-adapter    InstantX layout: ``ip-adapter.bin`` (torch.save of {"image_proj", "ip_adapter"}, as published)
                   + the same weights flattened in ``ip-adapter.safetensors`` + config
siglip             SiglipVisionModel folder + ``preprocessor_config.json``
omnix              ``<task>/<adapter>/pytorch_lora_weights.safetensors`` for the flux-dev transformer
flux-dev-sdnq-int8 flux-dev with an SDNQ int8 transformer (quantization_config in its config.json)
ideogram-4-sdnq    Ideogram4Pipeline folder (head-less Qwen3-VL text encoder, two SDNQ int8 transformers, Flux.2
                   VAE), demo/ideogram.py
================== ==========================================================================

Everything is float32 safetensors built from fixed seeds; tokenizers are built from vocabularies, so no hub
access is ever needed. The build goes to a temporary sibling folder which is renamed into place only when it
is complete, with the marker ``<models_dir>/demo/.built-v1`` (content: ``DEMO_VERSION``) written last.
From ``from_pretrained`` on, every code path that loads these folders is the real one.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from engine.demo import adapters, flux, qwen, wan
from engine.demo.common import quiet
from engine.demo.names import (
    CHROMA,
    DEMO_DIRNAME,
    DEMO_NAMES,
    DEMO_VERSION,
    FLUX_DEV,
    FLUX_DEV_SDNQ_INT8,
    FLUX_IP_ADAPTER,
    IDEOGRAM4_SDNQ,
    LORAS,
    MARKER_NAME,
    OMNIX,
    QWEN_IMAGE,
    QWEN_IMAGE_EDIT,
    QWEN_IMAGE_EDIT_2509,
    SIGLIP,
    TURBOWAN,
    WAN22_I2V,
    WAN22_TI2V,
)


def demo_root(models_dir: str | os.PathLike) -> Path:
    """``<models_dir>/demo``."""
    return Path(models_dir) / DEMO_DIRNAME


def demo_path(models_dir: str | os.PathLike, name: str) -> Path:
    """``<models_dir>/demo/<name>``; ``name`` is one of ``DEMO_NAMES`` (or ``loras``)."""
    if name not in DEMO_NAMES and name != LORAS:
        raise KeyError(f"unknown demo model {name!r}; known: {', '.join(DEMO_NAMES)}")
    return demo_root(models_dir) / name


def is_built(models_dir: str | os.PathLike) -> bool:
    """True when ``<models_dir>/demo`` holds a complete build of the current ``DEMO_VERSION``."""
    marker = demo_root(models_dir) / MARKER_NAME
    try:
        return marker.read_text(encoding="utf-8").strip() == DEMO_VERSION
    except OSError:
        return False


def build_demo_models(models_dir: str | os.PathLike, force: bool = False) -> Path:
    """Build every demo model into ``<models_dir>/demo`` unless a complete current build is there.

    Safe against concurrent builders (a file lock) and killed builds (temp folder + rename, marker last).
    Returns ``<models_dir>/demo``.
    """
    models_dir = Path(models_dir)
    root = demo_root(models_dir)
    if not force and is_built(models_dir):
        return root
    models_dir.mkdir(parents=True, exist_ok=True)
    with file_lock(models_dir / ".demo.lock"):
        if not force and is_built(models_dir):  # another process finished while we waited
            return root
        for pattern in (".demo.tmp-*", ".demo.old-*"):  # left behind by a killed build
            for stale in models_dir.glob(pattern):
                shutil.rmtree(stale, ignore_errors=True)
        tmp = Path(tempfile.mkdtemp(prefix=".demo.tmp-", dir=models_dir))
        os.chmod(tmp, 0o755)  # mkdtemp makes it private; the finished folder should not be
        try:
            timings = _build_all(tmp)
            (tmp / "build_info.json").write_text(
                json.dumps({"version": DEMO_VERSION, "names": list(DEMO_NAMES), "timings_s": timings}, indent=2),
                encoding="utf-8",
            )
            (tmp / MARKER_NAME).write_text(DEMO_VERSION, encoding="utf-8")
            old = None
            if root.exists():
                old = models_dir / f".demo.old-{uuid.uuid4().hex[:8]}"
                os.replace(root, old)
            os.replace(tmp, root)
            if old is not None:
                shutil.rmtree(old, ignore_errors=True)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
    return root


@contextmanager
def file_lock(path: Path) -> Iterator[None]:
    try:
        from filelock import FileLock
    except ImportError:  # pragma: no cover - filelock ships with huggingface_hub and torch
        yield
        return
    with FileLock(str(path)):
        yield


def _build_all(root: Path) -> dict[str, float]:
    """Build everything into ``root``; returns the seconds each part took."""
    import torch

    timings: dict[str, float] = {}

    @contextmanager
    def timed(name: str) -> Iterator[None]:
        t0 = time.perf_counter()
        yield
        timings[name] = round(time.perf_counter() - t0, 3)

    with quiet(), torch.no_grad():
        with timed(FLUX_DEV):
            flux_pipe = flux.build_flux(root / FLUX_DEV)
        with timed(CHROMA):
            flux.build_chroma(root / CHROMA)
        with timed(WAN22_I2V):
            wan_pipe = wan.build_wan(root / WAN22_I2V)
        with timed(WAN22_TI2V):
            wan.build_wan_ti2v(root / WAN22_TI2V)
        with timed(TURBOWAN):
            wan.build_turbowan(root / TURBOWAN, wan_pipe)
        with timed(QWEN_IMAGE):
            qwen.build_qwen(root / QWEN_IMAGE, root)
        with timed(QWEN_IMAGE_EDIT):
            from engine.demo.qwen_edit import EDIT_PLUS_PIPELINE, build_qwen_edit

            build_qwen_edit(root / QWEN_IMAGE_EDIT, root / QWEN_IMAGE)
            build_qwen_edit(root / QWEN_IMAGE_EDIT_2509, root / QWEN_IMAGE, EDIT_PLUS_PIPELINE, seed=4311)
        with timed(SIGLIP):
            adapters.build_siglip(root / SIGLIP)
        with timed(FLUX_IP_ADAPTER):
            adapters.build_ip_adapter(root / FLUX_IP_ADAPTER, flux_pipe.transformer)
        with timed(OMNIX):
            adapters.build_omnix(root / OMNIX, flux_pipe.transformer)
        with timed(FLUX_DEV_SDNQ_INT8):
            flux.build_flux_sdnq(root / FLUX_DEV_SDNQ_INT8, root / FLUX_DEV, flux_pipe)
        with timed(IDEOGRAM4_SDNQ):
            from engine.demo.ideogram import build_ideogram

            build_ideogram(root / IDEOGRAM4_SDNQ)
        with timed("loras-flux-chroma-wan"):
            from engine.demo.loras import build_loras

            build_loras(root)
    return timings


def folder_size(path: str | os.PathLike) -> int:
    """Total bytes of the files under ``path``."""
    return sum(p.stat().st_size for p in Path(path).rglob("*") if p.is_file())
