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
                   key layout (torch.save of a state dict; ``-quant``: int8 128x128-block weights + scales)
qwen-image         QwenImagePipeline folder (Qwen2.5-VL text encoder)
qwen-image-edit    Qwen/Qwen-Image-Edit layout (QwenImageEditPipeline, processor/; ``-2509``: EditPlus), demo_qwen_edit
loras/             ``qwen-style-a.safetensors``, ``qwen-style-b.safetensors`` (diffusers LoRA format), and
                   ``QWEN_LORA_LAYOUT_FILES``: the same kind of LoRA in ComfyUI (``diffusion_model.*``), kohya
                   (``lora_unet_*`` + ``alpha``) and seed 004's alias names (fused ``to_qkv`` ...)
flux-ip-adapter    InstantX layout: ``ip-adapter.bin`` (torch.save of {"image_proj", "ip_adapter"}, as published)
                   + the same weights flattened in ``ip-adapter.safetensors`` + config
siglip             SiglipVisionModel folder + ``preprocessor_config.json``
omnix              ``<task>/<adapter>/pytorch_lora_weights.safetensors`` for the flux-dev transformer
flux-dev-sdnq-int8 flux-dev with an SDNQ int8 transformer (quantization_config in its config.json)
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
import string
import tempfile
import time
import uuid
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from engine.panorama.tasks import TASKS as _OMNIX
from engine.panorama.tasks import WEIGHT_NAME as _OMNIX_WEIGHT_NAME

DEMO_VERSION = "6"  # 2: IP-Adapter .bin; 3: Qwen LoRAs in ComfyUI, kohya, seed-004 layouts; 4: TI2V 5B, TurboWan .pth;
# 5: OmniX adapters in upstream's training layout (attention + image FF, no metadata); 6: Qwen-Image-Edit (+2509)
MARKER_NAME = ".built-v1"
DEMO_DIRNAME = "demo"

FLUX_DEV = "flux-dev"
CHROMA = "chroma"
WAN22_I2V = "wan22-i2v"
WAN22_TI2V = "wan22-ti2v-5b"
TURBOWAN = "turbowan22-i2v"
QWEN_IMAGE = "qwen-image"
QWEN_IMAGE_EDIT, QWEN_IMAGE_EDIT_2509 = "qwen-image-edit", "qwen-image-edit-2509"
FLUX_IP_ADAPTER = "flux-ip-adapter"
SIGLIP = "siglip"
OMNIX = "omnix"
FLUX_DEV_SDNQ_INT8 = "flux-dev-sdnq-int8"
LORAS = "loras"

#: Every demo model name (the ``demo`` fields of presets/models.json).
DEMO_NAMES: tuple[str, ...] = (
    FLUX_DEV,
    CHROMA,
    WAN22_I2V,
    WAN22_TI2V,
    TURBOWAN,
    QWEN_IMAGE,
    QWEN_IMAGE_EDIT,
    QWEN_IMAGE_EDIT_2509,
    FLUX_IP_ADAPTER,
    SIGLIP,
    OMNIX,
    FLUX_DEV_SDNQ_INT8,
)

#: LoRA files for the Qwen-Image demo, relative to ``<models_dir>/demo``.
QWEN_LORA_FILES: tuple[str, ...] = ("loras/qwen-style-a.safetensors", "loras/qwen-style-b.safetensors")

#: LoRA files in the other key layouts real Qwen-Image LoRAs come in, relative to ``<models_dir>/demo``.
QWEN_LORA_LAYOUT_FILES: dict[str, str] = {
    "comfyui": "loras/qwen-comfy.safetensors",
    "kohya": "loras/qwen-kohya.safetensors",
    "seed004": "loras/qwen-seed004-names.safetensors",
}

#: OmniX task folder -> adapter names (condition first, target last), as in upstream HKU-MMLab/OmniX.
OMNIX_TASKS: dict[str, tuple[str, ...]] = {t.folder: t.adapters for t in _OMNIX.values()}
OMNIX_WEIGHT_NAME = _OMNIX_WEIGHT_NAME

IP_ADAPTER_WEIGHT_NAME = "ip-adapter.safetensors"
IP_ADAPTER_BIN_NAME = "ip-adapter.bin"  # the file InstantX/FLUX.1-dev-IP-Adapter publishes
IP_ADAPTER_NUM_TOKENS = 4

# Shapes shared between components that must fit together.
FLUX_HEADS, FLUX_HEAD_DIM = 2, 64  # inner_dim 128: SDNQ's default size filters quantize its Linears
FLUX_INNER_DIM = FLUX_HEADS * FLUX_HEAD_DIM
FLUX_JOINT_DIM = 32  # T5 d_model
FLUX_POOLED_DIM = 32  # CLIP hidden size
FLUX_NUM_LAYERS, FLUX_NUM_SINGLE_LAYERS = 2, 2
SIGLIP_DIM = 32
WAN_BOUNDARY_RATIO = 0.875

QWEN_SPECIAL_TOKENS = (
    "<|im_start|>",
    "<|im_end|>",
    "<|vision_start|>",
    "<|vision_end|>",
    "<|image_pad|>",
    "<|video_pad|>",
)

# What upstream OmniX trains (HKU-MMLab/OmniX src/utils/lora.py): peft suffix matching puts these on the double
# blocks' q/k/v/out and image feed-forward (not add_*_proj, not ff_context) and on the single blocks' q/k/v only.
OMNIX_LORA_TARGETS = ["attn.to_k", "attn.to_q", "attn.to_v", "attn.to_out.0", "ff.net.0.proj", "ff.net.2"]
OMNIX_LORA_RANK = 4  # upstream: 64, with lora_alpha = rank (scale 1)
_QWEN_LORA_TARGETS = ["to_q", "to_k", "to_v", "to_out.0", "add_q_proj", "add_k_proj", "add_v_proj", "to_add_out"]


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
    with _file_lock(models_dir / ".demo.lock"):
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
def _file_lock(path: Path) -> Iterator[None]:
    try:
        from filelock import FileLock
    except ImportError:  # pragma: no cover - filelock ships with huggingface_hub and torch
        yield
        return
    with FileLock(str(path)):
        yield


@contextmanager
def _seeded(seed: int) -> Iterator[None]:
    """Fixed-seed random init that leaves the caller's global RNG state untouched."""
    import torch

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
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

    with _quiet(), torch.no_grad():
        with timed(FLUX_DEV):
            flux = _build_flux(root / FLUX_DEV)
        with timed(CHROMA):
            _build_chroma(root / CHROMA)
        with timed(WAN22_I2V):
            wan = _build_wan(root / WAN22_I2V)
        with timed(WAN22_TI2V):
            _build_wan_ti2v(root / WAN22_TI2V)
        with timed(TURBOWAN):
            _build_turbowan(root / TURBOWAN, wan)
        with timed(QWEN_IMAGE):
            _build_qwen(root / QWEN_IMAGE, root)
        with timed(QWEN_IMAGE_EDIT):
            from engine.demo.qwen_edit import EDIT_PLUS_PIPELINE, build_qwen_edit

            build_qwen_edit(root / QWEN_IMAGE_EDIT, root / QWEN_IMAGE)
            build_qwen_edit(root / QWEN_IMAGE_EDIT_2509, root / QWEN_IMAGE, EDIT_PLUS_PIPELINE, seed=4311)
        with timed(SIGLIP):
            _build_siglip(root / SIGLIP)
        with timed(FLUX_IP_ADAPTER):
            _build_ip_adapter(root / FLUX_IP_ADAPTER, flux.transformer)
        with timed(OMNIX):
            _build_omnix(root / OMNIX, flux.transformer)
        with timed(FLUX_DEV_SDNQ_INT8):
            _build_flux_sdnq(root / FLUX_DEV_SDNQ_INT8, root / FLUX_DEV, flux)
    return timings


@contextmanager
def _quiet() -> Iterator[None]:
    """No progress bars, info logs or deprecation warnings from diffusers/transformers during the build."""
    from diffusers.utils import logging as dlog
    from transformers.utils import logging as tlog

    saved = [(mod, mod.get_verbosity(), mod.is_progress_bar_enabled()) for mod in (dlog, tlog)]
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", FutureWarning)
            for mod, _, _ in saved:
                mod.set_verbosity_error()
                mod.disable_progress_bar()
            yield
    finally:
        for mod, verbosity, bars in saved:
            mod.set_verbosity(verbosity)
            if bars:
                mod.enable_progress_bar()


# ----------------------------------------------------------------------------------------------------------------
# tokenizers (from vocabularies, no hub)


def _byte_alphabet() -> list[str]:
    from tokenizers import pre_tokenizers

    return sorted(pre_tokenizers.ByteLevel.alphabet())


def _clip_tokenizer():
    from transformers import CLIPTokenizer

    alphabet = _byte_alphabet()
    tokens = ["<|startoftext|>", "<|endoftext|>"] + alphabet + [c + "</w>" for c in alphabet]
    return CLIPTokenizer(vocab={t: i for i, t in enumerate(tokens)}, merges=[], model_max_length=77)  # 514 ids


def _t5_tokenizer():
    from transformers import T5Tokenizer

    chars = string.ascii_letters + string.digits + string.punctuation
    vocab = [("<pad>", 0.0), ("</s>", 0.0), ("<unk>", 0.0), ("\u2581", -2.0)]
    vocab += [(c, -3.0) for c in chars] + [("\u2581" + c, -2.5) for c in chars]
    return T5Tokenizer(vocab=vocab, extra_ids=0, model_max_length=512)  # 192 ids


def _qwen_tokenizer():
    from transformers import Qwen2Tokenizer

    tok = Qwen2Tokenizer(
        vocab={c: i for i, c in enumerate(_byte_alphabet())}, merges=[], model_max_length=131072
    )  # adds <|endoftext|> as id 256
    tok.add_tokens(list(QWEN_SPECIAL_TOKENS), special_tokens=True)
    return tok


# ----------------------------------------------------------------------------------------------------------------
# Flux family


def _clip_text_encoder():
    from transformers import CLIPTextConfig, CLIPTextModel

    config = CLIPTextConfig(
        vocab_size=1000,
        hidden_size=FLUX_POOLED_DIM,
        projection_dim=FLUX_POOLED_DIM,
        intermediate_size=37,
        num_hidden_layers=2,
        num_attention_heads=4,
        max_position_embeddings=77,
        bos_token_id=0,
        eos_token_id=1,
        pad_token_id=1,
    )
    return CLIPTextModel(config).eval()


def _t5_encoder(umt5: bool = False):
    from transformers import T5Config, T5EncoderModel, UMT5Config, UMT5EncoderModel

    kwargs = dict(
        vocab_size=256,
        d_model=FLUX_JOINT_DIM,
        d_ff=37,
        d_kv=8,
        num_heads=4,
        num_layers=2,
        relative_attention_num_buckets=8,
        decoder_start_token_id=0,
        pad_token_id=0,
        eos_token_id=1,
    )
    if umt5:
        return UMT5EncoderModel(UMT5Config(**kwargs)).eval()
    return T5EncoderModel(T5Config(**kwargs)).eval()


def _flux_vae():
    from diffusers import AutoencoderKL

    return AutoencoderKL(
        in_channels=3,
        out_channels=3,
        latent_channels=4,
        block_out_channels=(8, 8),
        norm_num_groups=4,
        layers_per_block=1,
        down_block_types=("DownEncoderBlock2D",) * 2,
        up_block_types=("UpDecoderBlock2D",) * 2,
        use_quant_conv=False,
        use_post_quant_conv=False,
        shift_factor=0.0609,
        scaling_factor=1.5035,
    ).eval()


def _flux_transformer():
    from diffusers import FluxTransformer2DModel

    return FluxTransformer2DModel(
        patch_size=1,
        in_channels=16,
        num_layers=FLUX_NUM_LAYERS,
        num_single_layers=FLUX_NUM_SINGLE_LAYERS,
        attention_head_dim=FLUX_HEAD_DIM,
        num_attention_heads=FLUX_HEADS,
        joint_attention_dim=FLUX_JOINT_DIM,
        pooled_projection_dim=FLUX_POOLED_DIM,
        guidance_embeds=True,
        axes_dims_rope=(16, 24, 24),
    ).eval()


def _flow_match_scheduler():
    from diffusers import FlowMatchEulerDiscreteScheduler

    # the FLUX.1-dev scheduler config (dynamic shifting on)
    return FlowMatchEulerDiscreteScheduler(
        num_train_timesteps=1000,
        shift=3.0,
        use_dynamic_shifting=True,
        base_shift=0.5,
        max_shift=1.15,
        base_image_seq_len=256,
        max_image_seq_len=4096,
    )


def _build_flux(out: Path):
    from diffusers import FluxPipeline

    with _seeded(1001):
        text_encoder = _clip_text_encoder()
    with _seeded(1002):
        text_encoder_2 = _t5_encoder()
    with _seeded(1003):
        vae = _flux_vae()
    with _seeded(1004):
        transformer = _flux_transformer()
    pipe = FluxPipeline(
        scheduler=_flow_match_scheduler(),
        vae=vae,
        text_encoder=text_encoder,
        tokenizer=_clip_tokenizer(),
        text_encoder_2=text_encoder_2,
        tokenizer_2=_t5_tokenizer(),
        transformer=transformer,
    )
    pipe.save_pretrained(out, safe_serialization=True)
    return pipe


def _build_chroma(out: Path) -> None:
    from diffusers import ChromaPipeline, ChromaTransformer2DModel

    with _seeded(2001):
        text_encoder = _t5_encoder()
    with _seeded(2002):
        vae = _flux_vae()
    with _seeded(2003):
        # same inner/joint dims and block counts as flux-dev, so the demo IP-Adapter fits both (as the real
        # InstantX adapter fits both FLUX.1-dev and Chroma: 19 double + 38 single blocks, 3072 / 4096)
        transformer = ChromaTransformer2DModel(
            patch_size=1,
            in_channels=16,
            num_layers=FLUX_NUM_LAYERS,
            num_single_layers=FLUX_NUM_SINGLE_LAYERS,
            attention_head_dim=FLUX_HEAD_DIM,
            num_attention_heads=FLUX_HEADS,
            joint_attention_dim=FLUX_JOINT_DIM,
            axes_dims_rope=(16, 24, 24),
            approximator_num_channels=16,
            approximator_hidden_dim=32,
            approximator_layers=1,
        ).eval()
    pipe = ChromaPipeline(
        scheduler=_flow_match_scheduler(),
        vae=vae,
        text_encoder=text_encoder,
        tokenizer=_t5_tokenizer(),
        transformer=transformer,
    )
    pipe.save_pretrained(out, safe_serialization=True)


def _build_flux_sdnq(out: Path, flux_dir: Path, flux) -> None:
    """flux-dev with its transformer quantized to SDNQ int8 through diffusers' native ``quant_method="sdnq"``.

    The other components are the flux-dev ones. Set ``SDNQ_USE_TORCH_COMPILE=0`` before sdnq is first imported
    to skip its import-time torch.compile probe on CPU (about 3 s); the quantization itself runs eagerly here.
    """
    import diffusers
    import sdnq  # noqa: F401 - imported (and its compile decision taken) outside the dynamo patch below
    import torch
    from diffusers import FluxPipeline, FluxTransformer2DModel

    quantization_config = diffusers.SDNQConfig(weights_dtype="int8")
    # One-shot quantization: compiling it costs seconds. Patching dynamo only around the call keeps sdnq's
    # process-wide compile decision (taken at its import) untouched for whoever runs models later.
    with torch._dynamo.config.patch(disable=True):
        transformer = FluxTransformer2DModel.from_pretrained(
            flux_dir, subfolder="transformer", quantization_config=quantization_config
        )
    components = {k: v for k, v in flux.components.items() if k != "transformer"}
    FluxPipeline(**components, transformer=transformer).save_pretrained(out, safe_serialization=True)
    # from_pretrained recorded the temporary build path, and sdnq keeps its skip list in a set: drop the one and
    # sort the other so that the config does not depend on where or in which process it was built
    config_path = out / "transformer" / "config.json"
    config = json.loads(config_path.read_text(encoding="utf-8"))
    config.pop("_name_or_path", None)
    qconfig = config.get("quantization_config") or {}
    for key in ("modules_to_not_convert", "modules_to_not_use_matmul"):
        if isinstance(qconfig.get(key), list):
            qconfig[key] = sorted(qconfig[key])
    config_path.write_text(json.dumps(config, indent=2, sort_keys=True) + "\n", encoding="utf-8")


# ----------------------------------------------------------------------------------------------------------------
# Wan 2.2 I2V (two experts)


def _wan_transformer():
    from diffusers import WanTransformer3DModel

    return WanTransformer3DModel(
        patch_size=(1, 2, 2),
        num_attention_heads=2,
        attention_head_dim=12,
        in_channels=36,
        out_channels=16,
        text_dim=FLUX_JOINT_DIM,
        freq_dim=256,
        ffn_dim=32,
        num_layers=2,
        cross_attn_norm=True,
        qk_norm="rms_norm_across_heads",
        rope_max_seq_len=32,
    ).eval()


def _build_wan(out: Path):
    from diffusers import AutoencoderKLWan, UniPCMultistepScheduler, WanImageToVideoPipeline

    with _seeded(3001):
        text_encoder = _t5_encoder(umt5=True)
    with _seeded(3002):
        vae = AutoencoderKLWan(
            base_dim=3,
            z_dim=16,
            dim_mult=[1, 1, 1, 1],
            num_res_blocks=1,
            temperal_downsample=[False, True, True],
        ).eval()
    with _seeded(3003):
        transformer = _wan_transformer()  # high-noise expert
    with _seeded(3004):
        transformer_2 = _wan_transformer()  # low-noise expert
    scheduler = UniPCMultistepScheduler(prediction_type="flow_prediction", use_flow_sigmas=True, flow_shift=3.0)
    pipe = WanImageToVideoPipeline(
        tokenizer=_t5_tokenizer(),
        text_encoder=text_encoder,
        vae=vae,
        scheduler=scheduler,
        image_processor=None,
        image_encoder=None,
        transformer=transformer,
        transformer_2=transformer_2,
        boundary_ratio=WAN_BOUNDARY_RATIO,
    )
    pipe.save_pretrained(out, safe_serialization=True)
    return pipe


def _build_wan_ti2v(out: Path) -> None:
    """Wan2.2-TI2V-5B-Diffusers: a WanPipeline with ``expand_timesteps`` (the start image is latent frame 0, with
    timestep 0 there), one 48-in/48-out transformer and the Wan 2.2 VAE (48 channels, patchified, 16x spatial)."""
    from diffusers import AutoencoderKLWan, UniPCMultistepScheduler, WanPipeline, WanTransformer3DModel

    with _seeded(3101):
        text_encoder = _t5_encoder(umt5=True)
    with _seeded(3102):
        vae = AutoencoderKLWan(base_dim=8, decoder_base_dim=8, z_dim=48, dim_mult=[1, 1, 1, 1], num_res_blocks=1,
                               temperal_downsample=[False, True, True], is_residual=True, in_channels=12,
                               out_channels=12, patch_size=2, scale_factor_spatial=16, scale_factor_temporal=4,
                               latents_mean=[0.0] * 48, latents_std=[1.0] * 48).eval()
    with _seeded(3103):
        transformer = WanTransformer3DModel(
            patch_size=(1, 2, 2), num_attention_heads=2, attention_head_dim=12, in_channels=48, out_channels=48,
            text_dim=FLUX_JOINT_DIM, freq_dim=256, ffn_dim=32, num_layers=2, cross_attn_norm=True,
            qk_norm="rms_norm_across_heads", rope_max_seq_len=32,
        ).eval()
    scheduler = UniPCMultistepScheduler(prediction_type="flow_prediction", use_flow_sigmas=True, flow_shift=5.0)
    WanPipeline(tokenizer=_t5_tokenizer(), text_encoder=text_encoder, vae=vae, scheduler=scheduler,
                transformer=transformer, transformer_2=None, boundary_ratio=None,
                expand_timesteps=True).save_pretrained(out, safe_serialization=True)


def _build_turbowan(out: Path, wan) -> None:
    """The wan22-i2v experts written as TurboDiffusion writes its checkpoints (``torch.save(net.state_dict())``
    in upstream's Wan key layout), plain and ``-quant``, so the conversion path loads real-layout files."""
    import torch

    from engine.video.encode.turbowan import to_upstream

    out.mkdir(parents=True, exist_ok=True)
    for expert, module in (("high", wan.transformer), ("low", wan.transformer_2)):
        state = {k: v.detach().clone() for k, v in module.state_dict().items()}
        for suffix, quantized in (("", False), ("-quant", True)):
            torch.save(to_upstream(state, quantized), out / f"TurboWan2.2-I2V-A14B-{expert}-720P{suffix}.pth")


# ----------------------------------------------------------------------------------------------------------------
# Qwen-Image (+ two LoRAs)


def _build_qwen(out: Path, root: Path) -> None:
    from diffusers import AutoencoderKLQwenImage, QwenImagePipeline, QwenImageTransformer2DModel
    from transformers import Qwen2_5_VLConfig, Qwen2_5_VLForConditionalGeneration

    tokenizer = _qwen_tokenizer()
    ids = {t: tokenizer.convert_tokens_to_ids(t) for t in QWEN_SPECIAL_TOKENS}
    config = Qwen2_5_VLConfig(
        text_config=dict(
            hidden_size=16,
            intermediate_size=16,
            num_hidden_layers=2,
            num_attention_heads=2,
            num_key_value_heads=2,
            vocab_size=512,
            rope_scaling={"mrope_section": [1, 1, 2], "rope_type": "default"},
            bos_token_id=None,
            eos_token_id=tokenizer.eos_token_id,
            pad_token_id=tokenizer.pad_token_id,
        ),
        vision_config=dict(depth=2, hidden_size=16, intermediate_size=16, num_heads=2, out_hidden_size=16),
        vocab_size=512,
        image_token_id=ids["<|image_pad|>"],
        video_token_id=ids["<|video_pad|>"],
        vision_start_token_id=ids["<|vision_start|>"],
        vision_end_token_id=ids["<|vision_end|>"],
    )
    with _seeded(4001):
        text_encoder = Qwen2_5_VLForConditionalGeneration(config).eval()
    with _seeded(4002):
        vae = AutoencoderKLQwenImage(
            base_dim=8,
            z_dim=4,
            dim_mult=[1, 2, 4],
            num_res_blocks=1,
            temperal_downsample=[False, True],
            latents_mean=[0.0] * 4,
            latents_std=[1.0] * 4,
        ).eval()
    with _seeded(4003):
        transformer = QwenImageTransformer2DModel(
            patch_size=2,
            in_channels=16,
            out_channels=4,
            num_layers=2,
            attention_head_dim=16,
            num_attention_heads=3,
            joint_attention_dim=16,
            axes_dims_rope=(8, 4, 4),
        ).eval()
    pipe = QwenImagePipeline(
        scheduler=_flow_match_scheduler(),
        vae=vae,
        text_encoder=text_encoder,
        tokenizer=tokenizer,
        transformer=transformer,
    )
    pipe.save_pretrained(out, safe_serialization=True)
    for i, rel in enumerate(QWEN_LORA_FILES):
        _save_lora(QwenImagePipeline, transformer, _QWEN_LORA_TARGETS, seed=4100 + i, out=root / rel)
    _save_qwen_layout_loras(transformer, root)


def _lora_tensors(transformer, targets: list[str], seed: int, rank: int = 4) -> dict:
    """``<module>.lora_A.weight`` / ``.lora_B.weight`` of a random (non-zero) peft adapter."""
    from peft import LoraConfig
    from peft.utils import get_peft_model_state_dict

    name = f"demo_{seed}"
    with _seeded(seed):
        transformer.add_adapter(LoraConfig(r=rank, lora_alpha=rank, target_modules=targets, init_lora_weights=False),
                                adapter_name=name)
    try:
        state = get_peft_model_state_dict(transformer, adapter_name=name)
        return {k: v.detach().clone().contiguous() for k, v in sorted(state.items())}
    finally:
        transformer.delete_adapters(name)


def _save_qwen_layout_loras(transformer, root: Path) -> None:
    """Qwen-Image LoRAs as ComfyUI, kohya (musubi-tuner / ai-toolkit exports) and seed 004's aliases name them."""
    import torch
    from safetensors.torch import save_file

    mlp = ["img_mlp.net.0.proj", "img_mlp.net.2", "txt_mlp.net.0.proj", "txt_mlp.net.2"]
    comfy = _lora_tensors(transformer, ["to_q", "to_k", "to_v", *mlp], seed=4201)
    save_file({f"diffusion_model.{k}": v for k, v in comfy.items()}, str(root / QWEN_LORA_LAYOUT_FILES["comfyui"]))

    kohya = {}
    for key, value in _lora_tensors(transformer, ["to_out.0", "to_add_out", "img_mod.1", "txt_mod.1"], 4202).items():
        module, part = key.rsplit(".lora_", 1)
        stem = "lora_unet_" + module.replace(".", "_")
        kohya[f"{stem}.lora_{'down' if part.startswith('A') else 'up'}.weight"] = value
        kohya[f"{stem}.alpha"] = torch.tensor(2.0)  # rank 4, alpha 2: the delta is scaled by 0.5
    save_file(kohya, str(root / QWEN_LORA_LAYOUT_FILES["kohya"]))

    # seed 004's aliases: fused q/k/v (one A, B stacked), attn.to_out without .0, out_proj_context, dotted tags
    seed004 = {}
    base = _lora_tensors(transformer, ["to_q", "to_out.0", "to_add_out"], 4203)
    with _seeded(4204):
        for block in range(len(transformer.transformer_blocks)):
            prefix = f"transformer_blocks.{block}"
            a = base[f"{prefix}.attn.to_q.lora_A.weight"]
            b = torch.cat([base[f"{prefix}.attn.to_q.lora_B.weight"], torch.randn_like(
                base[f"{prefix}.attn.to_q.lora_B.weight"].repeat(2, 1)) * 0.1])
            seed004[f"{prefix}.attn.to_qkv.lora.down.weight"] = a
            seed004[f"{prefix}.attn.to_qkv.lora.up.weight"] = b.contiguous()
            seed004[f"{prefix}.attn.to_out.lora.down.weight"] = base[f"{prefix}.attn.to_out.0.lora_A.weight"]
            seed004[f"{prefix}.attn.to_out.lora.up.weight"] = base[f"{prefix}.attn.to_out.0.lora_B.weight"]
            seed004[f"{prefix}.out_proj_context.lora_A.weight"] = base[f"{prefix}.attn.to_add_out.lora_A.weight"]
            seed004[f"{prefix}.out_proj_context.lora_B.weight"] = base[f"{prefix}.attn.to_add_out.lora_B.weight"]
    save_file(seed004, str(root / QWEN_LORA_LAYOUT_FILES["seed004"]))


def _save_lora(pipeline_cls, transformer, targets: list[str], seed: int, out: Path, rank: int = 4,
               with_metadata: bool = True) -> None:
    """A random (non-zero) LoRA for ``transformer`` saved in diffusers format with ``pipeline_cls``.

    ``with_metadata=False`` writes no peft config into the file, as diffusers before 0.34 saved LoRAs (the OmniX
    release): the loader then infers rank from the shapes and alpha = rank, the same path the real files take."""
    from peft import LoraConfig
    from peft.utils import get_peft_model_state_dict

    name = f"demo_{seed}"
    config = LoraConfig(r=rank, lora_alpha=rank, target_modules=targets, init_lora_weights=False)
    with _seeded(seed):
        transformer.add_adapter(config, adapter_name=name)
    try:
        state = get_peft_model_state_dict(transformer, adapter_name=name)
        state = {k: v.detach().clone().contiguous() for k, v in state.items()}
        extra = {}
        if with_metadata:
            metadata = transformer.peft_config[name].to_dict()
            metadata["target_modules"] = sorted(metadata["target_modules"])  # a set: keep files byte-reproducible
            extra["transformer_lora_adapter_metadata"] = metadata
        out.parent.mkdir(parents=True, exist_ok=True)
        pipeline_cls.save_lora_weights(out.parent, transformer_lora_layers=state, weight_name=out.name, **extra)
    finally:
        transformer.delete_adapters(name)


# ----------------------------------------------------------------------------------------------------------------
# SigLIP image encoder, InstantX IP-Adapter, OmniX LoRAs


def _build_siglip(out: Path) -> None:
    from transformers import SiglipImageProcessor, SiglipVisionConfig, SiglipVisionModel

    config = SiglipVisionConfig(
        hidden_size=SIGLIP_DIM,
        intermediate_size=37,
        num_hidden_layers=2,
        num_attention_heads=4,
        image_size=32,
        patch_size=8,
    )
    with _seeded(5001):
        model = SiglipVisionModel(config).eval()
    model.save_pretrained(out, safe_serialization=True)
    SiglipImageProcessor(size={"height": 32, "width": 32}).save_pretrained(out)


def _build_ip_adapter(out: Path, transformer) -> None:
    """InstantX/FLUX.1-dev-IP-Adapter layout, sized for the demo flux-dev transformer.

    ``image_proj``: MLPProjModel ``proj.0`` Linear(siglip, 2*siglip) -> GELU -> ``proj.2`` Linear(2*siglip,
    joint*num_tokens) -> reshape -> ``norm`` LayerNorm(joint). ``ip_adapter.<i>.to_{k,v}_ip``: Linear(joint, inner,
    bias=False) for every attention processor of the transformer (double blocks, then single blocks).
    """
    import torch
    from safetensors.torch import save_file
    from torch import nn

    joint = transformer.config.joint_attention_dim
    inner = transformer.config.num_attention_heads * transformer.config.attention_head_dim
    processors = list(transformer.attn_processors)
    with _seeded(6001):
        proj = nn.Sequential(
            nn.Linear(SIGLIP_DIM, 2 * SIGLIP_DIM),
            nn.GELU(),
            nn.Linear(2 * SIGLIP_DIM, joint * IP_ADAPTER_NUM_TOKENS),
        )
        norm = nn.LayerNorm(joint)
        nn.init.normal_(norm.weight, 1.0, 0.02)
        nn.init.normal_(norm.bias, 0.0, 0.02)
        state: dict[str, torch.Tensor] = {}
        for key, value in proj.state_dict().items():
            state[f"image_proj.proj.{key}"] = value
        for key, value in norm.state_dict().items():
            state[f"image_proj.norm.{key}"] = value
        for i in range(len(processors)):
            for kind in ("to_k_ip", "to_v_ip"):
                state[f"ip_adapter.{i}.{kind}.weight"] = nn.Linear(joint, inner, bias=False).weight
    state = {k: v.detach().to(torch.float32).contiguous() for k, v in state.items()}
    out.mkdir(parents=True, exist_ok=True)
    save_file(state, out / IP_ADAPTER_WEIGHT_NAME, metadata={"format": "pt"})
    # the published file: torch.save({"image_proj": sd, "ip_adapter": sd}) with the prefixes stripped per part
    nested = {part: {k[len(part) + 1:]: v for k, v in state.items() if k.startswith(part + ".")}
              for part in ("image_proj", "ip_adapter")}
    torch.save(nested, out / IP_ADAPTER_BIN_NAME)
    config = {
        "format": "instantx",
        "weight_name": IP_ADAPTER_WEIGHT_NAME,
        "base_model": FLUX_DEV,
        "image_encoder": SIGLIP,
        "num_tokens": IP_ADAPTER_NUM_TOKENS,
        "image_embed_dim": SIGLIP_DIM,
        "cross_attention_dim": joint,
        "hidden_size": inner,
        "num_attention_heads": transformer.config.num_attention_heads,
        "attention_head_dim": transformer.config.attention_head_dim,
        "num_double_blocks": transformer.config.num_layers,
        "num_single_blocks": transformer.config.num_single_layers,
        "processors": processors,
    }
    (out / "config.json").write_text(json.dumps(config, indent=2), encoding="utf-8")


def _build_omnix(out: Path, transformer) -> None:
    """``KevinHuang/OmniX`` layout: ``<task>/<adapter>/pytorch_lora_weights.safetensors`` (upstream's
    ``load_task_specific_adapters`` path), keys ``transformer.<module>.lora_{A,B}.weight``, no adapter metadata."""
    from diffusers import FluxPipeline

    seed = 7000
    for task, adapters in OMNIX_TASKS.items():
        for adapter in adapters:
            seed += 1
            _save_lora(FluxPipeline, transformer, OMNIX_LORA_TARGETS, seed, out / task / adapter / OMNIX_WEIGHT_NAME,
                       rank=OMNIX_LORA_RANK, with_metadata=False)


def folder_size(path: str | os.PathLike) -> int:
    """Total bytes of the files under ``path``."""
    return sum(p.stat().st_size for p in Path(path).rglob("*") if p.is_file())


if __name__ == "__main__":  # python -m engine.demo [models_dir] [--force]
    import sys

    args = [a for a in sys.argv[1:] if a != "--force"]
    target = Path(args[0] if args else "models")
    t0 = time.perf_counter()
    root = build_demo_models(target, force="--force" in sys.argv)
    print(f"demo models in {root} ({time.perf_counter() - t0:.2f} s)")
    for name in (*DEMO_NAMES, LORAS):
        print(f"  {name:20s} {folder_size(root / name) / 1e6:7.2f} MB")
