"""LoRA files for the Flux, Chroma and Wan 2.2 demo models, in every key layout real files come in.

Written from the built transformers' shapes (random, non-zero, fixed seeds), so a file in any layout is a LoRA
that really changes the tiny model's output:

- Flux: diffusers/peft (``save_lora_weights``), kohya (``lora_unet_double_blocks_N_img_attn_qkv`` fused qkv,
  ``single_blocks_N_linear1``/``linear2``, ``alpha``, plus ``lora_te1_*`` CLIP keys), ComfyUI/BFL original names
  (``diffusion_model.double_blocks.N.img_attn.proj.lora_A``), XLabs (``double_blocks.N.processor.qkv_lora1``);
- Chroma: kohya names without the modulation layers Chroma lacks;
- Wan 2.2: the lightx2v 4-step pair as ComfyUI's official template names them (``diffusion_model.blocks.N.*``,
  ``lora_down/lora_up`` + ``alpha`` + ``.diff_b`` biases + all-zero norm ``.diff`` keys + ``head.head.diff``),
  diffusers (``transformer.blocks.N.attn1.to_q.lora_A``), kohya/musubi (``lora_unet_blocks_N_self_attn_q``), and
  one for the TI2V 5B transformer.
"""

from __future__ import annotations

from pathlib import Path

import torch
from safetensors.torch import save_file

from engine.demo.common import save_lora, seeded
from engine.demo.names import CHROMA_LORA_FILES, FLUX_LORA_FILES, FLUX_LORA_TARGETS, WAN_LORA_FILES

RANK = 4


def _pair(in_f: int, out_f: int, rank: int = RANK, scale: float = 0.3) -> tuple[torch.Tensor, torch.Tensor]:
    return torch.randn(rank, in_f) * scale, torch.randn(out_f, rank) * scale


def _shape(transformer, name: str) -> tuple[int, int]:
    module = transformer.get_submodule(name)
    return module.in_features, module.out_features


def flux_bfl_tensors(transformer, seed: int, with_modulation: bool = True) -> dict[str, tuple]:
    """BFL module name -> (A, B) for the double and single blocks (fused qkv, linear1/linear2)."""
    out = {}
    with seeded(seed):
        for i in range(len(transformer.transformer_blocks)):
            inner, _ = _shape(transformer, f"transformer_blocks.{i}.attn.to_q")
            out[f"double_blocks.{i}.img_attn.qkv"] = _pair(inner, 3 * inner)
            out[f"double_blocks.{i}.txt_attn.qkv"] = _pair(inner, 3 * inner)
            out[f"double_blocks.{i}.img_attn.proj"] = _pair(inner, inner)
            out[f"double_blocks.{i}.img_mlp.0"] = _pair(*_shape(transformer, f"transformer_blocks.{i}.ff.net.0.proj"))
            if with_modulation:
                out[f"double_blocks.{i}.img_mod.lin"] = _pair(*_shape(transformer, f"transformer_blocks.{i}.norm1.linear"))
        for i in range(len(transformer.single_transformer_blocks)):
            # no ``linear1``: diffusers' converter splits it at the real model's sizes (3 x 3072 + 12288) only
            out[f"single_blocks.{i}.linear2"] = _pair(*_shape(transformer, f"single_transformer_blocks.{i}.proj_out"))
    return out


def save_flux_layouts(transformer, root: Path) -> None:
    from diffusers import FluxPipeline

    for i, rel in enumerate(FLUX_LORA_FILES["diffusers"]):
        save_lora(FluxPipeline, transformer, FLUX_LORA_TARGETS, seed=5100 + i, out=root / rel)
    bfl = flux_bfl_tensors(transformer, 5201)
    kohya = {}
    for name, (a, b) in bfl.items():
        stem = "lora_unet_" + name.replace(".", "_")
        kohya[f"{stem}.lora_down.weight"], kohya[f"{stem}.lora_up.weight"] = a, b
        kohya[f"{stem}.alpha"] = torch.tensor(float(RANK) / 2)
    with seeded(5202):  # a CLIP-L part (text encoder): reported as ignored
        kohya["lora_te1_text_model_encoder_layers_0_mlp_fc1.lora_down.weight"] = torch.randn(RANK, 32)
        kohya["lora_te1_text_model_encoder_layers_0_mlp_fc1.lora_up.weight"] = torch.randn(37, RANK)
    save_file(kohya, str(root / FLUX_LORA_FILES["kohya"]))
    comfy = {}
    for name, (a, b) in flux_bfl_tensors(transformer, 5203).items():
        comfy[f"diffusion_model.{name}.lora_A.weight"], comfy[f"diffusion_model.{name}.lora_B.weight"] = a, b
    save_file(comfy, str(root / FLUX_LORA_FILES["comfyui"]))
    xlabs = {}
    with seeded(5204):
        inner, _ = _shape(transformer, "transformer_blocks.0.attn.to_q")
        for i in range(len(transformer.transformer_blocks)):
            for lora in ("qkv_lora1", "qkv_lora2", "proj_lora1", "proj_lora2"):
                a, b = _pair(inner, 3 * inner if lora.startswith("qkv") else inner)
                xlabs[f"double_blocks.{i}.processor.{lora}.down.weight"] = a
                xlabs[f"double_blocks.{i}.processor.{lora}.up.weight"] = b
    save_file(xlabs, str(root / FLUX_LORA_FILES["xlabs"]))


def save_chroma_layouts(transformer, root: Path) -> None:
    kohya = {}
    for name, (a, b) in flux_bfl_tensors(transformer, 5301, with_modulation=False).items():
        stem = "lora_unet_" + name.replace(".", "_")
        kohya[f"{stem}.lora_down.weight"], kohya[f"{stem}.lora_up.weight"] = a, b
    save_file(kohya, str(root / CHROMA_LORA_FILES["kohya"]))


def wan_tensors(transformer, seed: int) -> dict[str, tuple]:
    """diffusers module name -> (A, B) on attention (self, cross, image k/v when there) and the FFN of every block."""
    names = ["attn1.to_q", "attn1.to_k", "attn1.to_v", "attn1.to_out.0", "attn2.to_q", "attn2.to_k", "attn2.to_v",
             "attn2.to_out.0", "ffn.net.0.proj", "ffn.net.2"]
    out = {}
    with seeded(seed):
        for i in range(len(transformer.blocks)):
            for name in names:
                out[f"blocks.{i}.{name}"] = _pair(*_shape(transformer, f"blocks.{i}.{name}"))
    return out


def save_lightx2v_style(transformer, out: Path, seed: int) -> None:
    """The lightx2v distill LoRA layout (ComfyUI names, down/up + alpha, diff_b, zero norm diffs, head diff)."""
    from engine.adapters.lora_layouts_wan import original_name

    state = {}
    pairs = wan_tensors(transformer, seed)
    with seeded(seed + 2):  # the biases too: a rebuild must give the same bytes
        for name, (a, b) in pairs.items():
            stem = f"diffusion_model.{original_name(name)}"
            state[f"{stem}.lora_down.weight"], state[f"{stem}.lora_up.weight"] = a, b
            state[f"{stem}.alpha"] = torch.tensor(float(RANK))
            state[f"{stem}.diff_b"] = torch.randn(b.shape[0]) * 0.05
    with seeded(seed + 1):
        for i in range(len(transformer.blocks)):
            dim = transformer.blocks[i].norm2.normalized_shape[0]
            state[f"diffusion_model.blocks.{i}.norm3.diff"] = torch.zeros(dim)
            state[f"diffusion_model.blocks.{i}.norm3.diff_b"] = torch.zeros(dim)
        in_f, out_f = _shape(transformer, "proj_out")
        state["diffusion_model.head.head.diff"] = torch.randn(out_f, in_f) * 0.02
        state["diffusion_model.head.head.diff_b"] = torch.randn(out_f) * 0.02
    save_file(state, str(out))


def save_wan_layouts(transformer, transformer_2, ti2v, root: Path) -> None:
    save_lightx2v_style(transformer, root / WAN_LORA_FILES["lightx2v_high"], 5401)
    save_lightx2v_style(transformer_2, root / WAN_LORA_FILES["lightx2v_low"], 5402)
    diffusers_layout = {}
    for name, (a, b) in wan_tensors(transformer, 5403).items():
        diffusers_layout[f"transformer.{name}.lora_A.weight"] = a
        diffusers_layout[f"transformer.{name}.lora_B.weight"] = b
    save_file(diffusers_layout, str(root / WAN_LORA_FILES["diffusers"]))
    from engine.adapters.lora_layouts_wan import original_name

    kohya = {}
    for name, (a, b) in wan_tensors(transformer, 5404).items():
        stem = "lora_unet_" + original_name(name).replace(".", "_")
        kohya[f"{stem}.lora_down.weight"], kohya[f"{stem}.lora_up.weight"] = a, b
        kohya[f"{stem}.alpha"] = torch.tensor(float(RANK) * 2)
    save_file(kohya, str(root / WAN_LORA_FILES["kohya"]))
    ti2v_state = {}
    for name, (a, b) in wan_tensors(ti2v, 5405).items():
        stem = f"diffusion_model.{original_name(name)}"
        ti2v_state[f"{stem}.lora_A.weight"], ti2v_state[f"{stem}.lora_B.weight"] = a, b
    save_file(ti2v_state, str(root / WAN_LORA_FILES["ti2v"]))


def build_loras(root: Path) -> None:
    """Every Flux, Chroma and Wan LoRA file into ``root`` (the demo folder; files under ``loras/``), from the
    transformers as saved (fresh copies: the builders' own modules may carry adapter wrappers by now)."""
    from diffusers import ChromaTransformer2DModel, FluxTransformer2DModel, WanTransformer3DModel

    from engine.demo.names import CHROMA, FLUX_DEV, WAN22_I2V, WAN22_TI2V

    (root / "loras").mkdir(parents=True, exist_ok=True)
    save_flux_layouts(FluxTransformer2DModel.from_pretrained(root / FLUX_DEV, subfolder="transformer"), root)
    save_chroma_layouts(ChromaTransformer2DModel.from_pretrained(root / CHROMA, subfolder="transformer"), root)
    high = WanTransformer3DModel.from_pretrained(root / WAN22_I2V, subfolder="transformer")
    low = WanTransformer3DModel.from_pretrained(root / WAN22_I2V, subfolder="transformer_2")
    ti2v = WanTransformer3DModel.from_pretrained(root / WAN22_TI2V, subfolder="transformer")
    save_wan_layouts(high, low, ti2v, root)
