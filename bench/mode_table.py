"""The README's memory-modes table: host RAM and VRAM each mode needs for FLUX.1-dev, Wan 2.2 A14B (the expert
pair) and Qwen-Image at their usual sizes in bf16, and the Wan pair from ComfyUI's official fp8_scaled files, from
the plan (``engine.memory.planner.plan_swap``, what
``Engine.plan`` runs), on models built from the real configs on the meta device (no weights, no download).

Predicted, not measured: ``bench/gpu_check.py`` measures them on a GPU.

    python bench/mode_table.py [--json PATH] [--card-gb 24]
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

import torch  # noqa: E402
from accelerate import init_empty_weights  # noqa: E402

from engine.memory.planner import ComponentSize, GiB, plan_swap  # noqa: E402
from engine.plan import _FP8_NOT_KEPT, activation_estimate, encoder_activations  # noqa: E402
from engine.requests import SwapSettings  # noqa: E402

BF16 = 2
# google/t5-v1_1-xxl (FLUX's text_encoder_2) and google/umt5-xxl (Wan's text encoder): the encoder halves
T5_XXL = dict(d_model=4096, d_ff=10240, d_kv=64, num_heads=64, num_layers=24, vocab_size=32128,
              feed_forward_proj="gated-gelu", is_encoder_decoder=False)
# openai/clip-vit-large-patch14, text tower (FLUX's text_encoder)
CLIP_L = dict(hidden_size=768, intermediate_size=3072, num_hidden_layers=12, num_attention_heads=12, vocab_size=49408,
              max_position_embeddings=77, projection_dim=768)
# Qwen/Qwen2.5-VL-7B-Instruct (Qwen-Image's text_encoder)
QWEN25_VL_TEXT = dict(hidden_size=3584, intermediate_size=18944, num_hidden_layers=28, num_attention_heads=28,
                      num_key_value_heads=4, vocab_size=152064, max_position_embeddings=128000)
QWEN25_VL_VISION = dict(depth=32, hidden_size=1280, intermediate_size=3420, num_heads=16, out_hidden_size=3584,
                        patch_size=14, spatial_merge_size=2, temporal_patch_size=2, window_size=112,
                        fullatt_block_indexes=[7, 15, 23, 31])
MODES = ("none", "model_offload", "block_swap", "adaptive", "chunkwise", "layerwise")


def on_meta(make) -> torch.nn.Module:
    with init_empty_weights(include_buffers=False):
        return make()


def nbytes(module: torch.nn.Module, elem: int = BF16) -> int:
    return sum(p.numel() for p in module.parameters()) * elem


def largest_leaf(module: torch.nn.Module, elem: int = BF16) -> int:
    return max(sum(p.numel() for p in m.parameters(recurse=False)) for m in module.modules()) * elem


def component(name: str, role: str, module: torch.nn.Module) -> ComponentSize:
    if role != "transformer":
        act = encoder_activations(module.config.to_dict(), BF16) if role == "text_encoder" else 0
        return ComponentSize(name, role, nbytes(module), (), largest_leaf(module), activations=act)
    from gpu_check import measured_size  # blocks in execution order, as the run finds them

    size = measured_size(name, module)
    scale = BF16 / next(module.parameters()).element_size()  # meta tensors are fp32 here: count bf16
    return ComponentSize(name, role, int(size.total * scale), tuple(int(b * scale) for b in size.blocks),
                         int(size.largest_leaf * scale))


def flux() -> tuple[list[ComponentSize], int]:
    from diffusers import AutoencoderKL, FluxTransformer2DModel
    from perception_full import FLUX_VAE_FULL
    from swap_harness import FLUX_FULL
    from transformers import CLIPTextConfig, CLIPTextModel, T5Config, T5EncoderModel

    parts = [
        component("transformer", "transformer", on_meta(lambda: FluxTransformer2DModel(**FLUX_FULL))),
        component("text_encoder", "text_encoder", on_meta(lambda: CLIPTextModel(CLIPTextConfig(**CLIP_L)))),
        component("text_encoder_2", "text_encoder", on_meta(lambda: T5EncoderModel(T5Config(**T5_XXL)))),
        component("vae", "vae", on_meta(lambda: AutoencoderKL(**FLUX_VAE_FULL))),
    ]
    tcfg = {"num_attention_heads": 24, "attention_head_dim": 128}
    return parts, activation_estimate(tcfg, {"block_out_channels": [512]}, 1024, 1024, 1, BF16)


def wan_pair() -> tuple[list[ComponentSize], int]:
    from diffusers import AutoencoderKLWan, WanTransformer3DModel
    from swap_harness import WAN_FULL
    from transformers import UMT5Config, UMT5EncoderModel

    expert = component("transformer", "transformer", on_meta(lambda: WanTransformer3DModel(**WAN_FULL)))
    parts = [
        expert, ComponentSize("transformer_2", "transformer", expert.total, expert.blocks, expert.largest_leaf),
        component("text_encoder", "text_encoder",
                  on_meta(lambda: UMT5EncoderModel(UMT5Config(**{**T5_XXL, "vocab_size": 256384})))),
        component("vae", "vae", on_meta(lambda: AutoencoderKLWan())),
    ]
    tcfg = {"num_attention_heads": 40, "attention_head_dim": 128}
    return parts, activation_estimate(tcfg, {"base_dim": 96}, 832, 480, 81, BF16)


def _fp8_component(name: str, role: str, module: torch.nn.Module, cast: tuple[str, ...] = ()) -> ComponentSize:
    """A component as a ComfyUI fp8 file loads (``fp8_storage``): weights of two or more dimensions (Linear, Conv,
    Embedding) at a byte each, biases and norms at bf16 as those files keep them, the layers named in ``cast``
    (their dtype is read by the model's code) cast from fp8 to bf16 on load (``load_copy``)."""
    def size(pname: str, p) -> int:
        return p.numel() * (1 if p.ndim >= 2 and not pname.startswith(cast) else BF16)
    blocks = tuple(sum(size(f"blocks.{i}.{n}", p) for n, p in block.named_parameters())
                   for i, block in enumerate(getattr(module, "blocks", ()))) if role == "transformer" else ()
    total = sum(size(n, p) for n, p in module.named_parameters())
    copied = sum(p.numel() * BF16 for n, p in module.named_parameters() if p.ndim >= 2 and n.startswith(cast))
    largest = max(sum(size(f"{prefix}.{n}", p) for n, p in m.named_parameters(recurse=False))
                  for prefix, m in module.named_modules())
    # the largest layer kept in fp8 computes from a bf16 copy of itself (umT5's token embedding: 2 GB)
    compute_copy = max(p.numel() * BF16 for n, p in module.named_parameters() if p.ndim >= 2 and not n.startswith(cast))
    act = encoder_activations(module.config.to_dict(), BF16) if role == "text_encoder" else 0
    return ComponentSize(name, role, total, blocks, largest, copied, compute_copy, act)


def comfy_wan_pair() -> tuple[list[ComponentSize], int]:
    """ComfyUI's official Wan 2.2 image-to-video files: ``wan2.2_i2v_{high,low}_noise_14B_fp8_scaled`` (kept fp8,
    their patch and condition embedders cast: ``plan._FP8_NOT_KEPT``), ``umt5_xxl_fp8_e4m3fn_scaled`` (kept fp8) and
    the Wan 2.1 VAE in bf16."""
    from diffusers import AutoencoderKLWan, WanTransformer3DModel
    from swap_harness import WAN_FULL
    from transformers import UMT5Config, UMT5EncoderModel

    expert = _fp8_component("transformer", "transformer", on_meta(lambda: WanTransformer3DModel(**WAN_FULL)),
                            cast=_FP8_NOT_KEPT)
    parts = [
        expert, ComponentSize("transformer_2", "transformer", expert.total, expert.blocks, expert.largest_leaf,
                              expert.load_copy),
        _fp8_component("text_encoder", "text_encoder",
                       on_meta(lambda: UMT5EncoderModel(UMT5Config(**{**T5_XXL, "vocab_size": 256384})))),
        component("vae", "vae", on_meta(lambda: AutoencoderKLWan())),
    ]
    tcfg = {"num_attention_heads": 40, "attention_head_dim": 128}
    # a layer kept in fp8 computes from a bf16 copy of itself: the largest one beside the activations
    return parts, activation_estimate(tcfg, {"base_dim": 96}, 832, 480, 81, BF16) + expert.compute_copy


def qwen_image() -> tuple[list[ComponentSize], int]:
    from diffusers import AutoencoderKLQwenImage, QwenImageTransformer2DModel
    from transformers import Qwen2_5_VLConfig, Qwen2_5_VLForConditionalGeneration

    config = Qwen2_5_VLConfig(text_config=QWEN25_VL_TEXT, vision_config=QWEN25_VL_VISION, tie_word_embeddings=False)
    parts = [
        component("transformer", "transformer", on_meta(lambda: QwenImageTransformer2DModel())),
        component("text_encoder", "text_encoder", on_meta(lambda: Qwen2_5_VLForConditionalGeneration(config))),
        component("vae", "vae", on_meta(lambda: AutoencoderKLQwenImage())),
    ]
    tcfg = {"num_attention_heads": 24, "attention_head_dim": 128}
    return parts, activation_estimate(tcfg, {"base_dim": 96}, 1328, 1328, 1, BF16)


def rows(card_gb: float) -> list[dict]:
    out = []
    for label, build in (("FLUX.1-dev 1024x1024", flux), ("Wan 2.2 A14B pair 832x480x81", wan_pair),
                         ("Qwen-Image 1328x1328", qwen_image),
                         ("Wan 2.2 A14B pair, ComfyUI fp8_scaled files, 832x480x81", comfy_wan_pair)):
        parts, act = build()
        weights = sum(c.total for c in parts)
        for mode in MODES:
            for offload in ("cpu", "disk") if mode in ("block_swap", "layerwise") else ("cpu",):
                settings = SwapSettings(mode=mode, max_vram_gb=card_gb if mode == "adaptive" else 0.0)
                plan = plan_swap(parts, settings, "cuda", int(card_gb * GiB) if mode == "adaptive" else None, act,
                                 offload)
                out.append({"model": label, "mode": mode + (" (disk)" if offload == "disk" else ""),
                            "weights_bytes": weights, "device_bytes": plan.predicted_peak,
                            "device_weights_bytes": plan.weights_peak, "host_bytes": plan.host_bytes,
                            "pinned_bytes": plan.pinned_bytes, "layout": plan.explanation.split(";")[0]})
    return out


def markdown(table: list[dict], card_gb: float) -> str:
    lines = ["| model | mode | VRAM (weights + activations) | host RAM | of it pinned |", "|---|---|---|---|---|"]
    for r in table:
        g = lambda n: f"{n / GiB:.1f} GiB"  # noqa: E731
        lines.append(f"| {r['model']} | {r['mode']} | {g(r['device_bytes'])} ({g(r['device_weights_bytes'])} + "
                     f"{g(r['device_bytes'] - r['device_weights_bytes'])}) | {g(r['host_bytes'])} | "
                     f"{g(r['pinned_bytes'])} |")
    lines.append(f"\nDefaults: block_swap and chunkwise with 0 resident blocks, prefetch 1, chunkwise groups up to "
                 f"100 MB; adaptive sized to a {card_gb:g} GiB card. Predicted, not yet measured on a GPU.")
    return "\n".join(lines)


def pivot(table: list[dict], card_gb: float) -> str:
    """One row per mode, one column per model: "VRAM / host RAM (pinned)" in GiB."""
    models = list(dict.fromkeys(r["model"] for r in table))
    modes = list(dict.fromkeys(r["mode"] for r in table))
    cell = {(r["model"], r["mode"]): r for r in table}
    lines = ["| mode | " + " | ".join(models) + " |", "|---" * (len(models) + 1) + "|"]
    for mode in modes:
        parts = []
        for model in models:
            r = cell[(model, mode)]
            parts.append(f"{r['device_bytes'] / GiB:.1f} / {r['host_bytes'] / GiB:.1f} ({r['pinned_bytes'] / GiB:.1f})")
        lines.append(f"| `{mode}` | " + " | ".join(parts) + " |")
    weights = " · ".join(f"{m}: {cell[(m, 'none')]['weights_bytes'] / GiB:.1f} GiB of weights" for m in models)
    lines.append(f"\nGiB: VRAM (weights + activations) / host RAM (of it pinned). {weights}. block_swap and "
                 "chunkwise with 0 resident blocks and prefetch 1 (chunkwise groups up to 100 MB), adaptive sized "
                 f"to a {card_gb:g} GiB card; (disk): `offload_device=\"disk\"`. **Predicted, not yet measured on a "
                 "GPU.**")
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--json", default="")
    ap.add_argument("--card-gb", type=float, default=24.0)
    ap.add_argument("--long", action="store_true", help="one row per model and mode, weights and activations apart")
    args = ap.parse_args()
    table = rows(args.card_gb)
    print(pivot(table, args.card_gb) if not args.long else markdown(table, args.card_gb))
    if args.json:
        Path(args.json).write_text(json.dumps(table, indent=1))


if __name__ == "__main__":
    main()
