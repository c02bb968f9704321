"""The real transformers' shapes, built on the meta device (no bytes): what the simulated-backend tests and
bench/host_memory.py stream. Configs from the models' ``transformer/config.json`` on the Hub (the fields that
change shapes; the rest are the classes' defaults):

- FLUX.1-dev: black-forest-labs/FLUX.1-dev, 19 double + 38 single blocks, 24 heads x 128.
- Wan 2.2 A14B: Wan-AI/Wan2.2-I2V-A14B-Diffusers transformer/ and transformer_2/ (the two experts, the same shape),
  40 blocks, 40 heads x 128, ffn 13824.
- Qwen-Image: Qwen/Qwen-Image, 60 blocks, 24 heads x 128, joint dim 3584.
"""

from __future__ import annotations

import torch

FLUX_DEV = dict(patch_size=1, in_channels=64, num_layers=19, num_single_layers=38, attention_head_dim=128,
                num_attention_heads=24, joint_attention_dim=4096, pooled_projection_dim=768, guidance_embeds=True,
                axes_dims_rope=(16, 56, 56))
WAN22_A14B = dict(patch_size=(1, 2, 2), num_attention_heads=40, attention_head_dim=128, in_channels=36,
                  out_channels=16, text_dim=4096, freq_dim=256, ffn_dim=13824, num_layers=40, cross_attn_norm=True,
                  qk_norm="rms_norm_across_heads", rope_max_seq_len=1024)
QWEN_IMAGE = dict(patch_size=2, in_channels=64, out_channels=16, num_layers=60, attention_head_dim=128,
                  num_attention_heads=24, joint_attention_dim=3584, guidance_embeds=False, axes_dims_rope=(16, 56, 56))


def meta_transformer(kind: str, dtype: torch.dtype = torch.bfloat16) -> torch.nn.Module:
    """One of "flux", "wan", "qwen" at its real size, every tensor on the meta device."""
    from diffusers import FluxTransformer2DModel, QwenImageTransformer2DModel, WanTransformer3DModel  # noqa: PLC0415

    cls, config = {"flux": (FluxTransformer2DModel, FLUX_DEV), "wan": (WanTransformer3DModel, WAN22_A14B),
                   "qwen": (QwenImageTransformer2DModel, QWEN_IMAGE)}[kind]
    with torch.device("meta"):
        model = cls(**config)
    for module in model.modules():  # a plain cast (``.to`` warns about fp32 modules the real checkpoints keep bf16)
        for table in (module._parameters, module._buffers):
            for name, t in table.items():
                if t is not None and t.is_floating_point():
                    table[name] = torch.nn.Parameter(t.to(dtype), requires_grad=False) \
                        if isinstance(t, torch.nn.Parameter) else t.to(dtype)
    return model.eval()


def run_calls(streamer, calls: int = 1) -> None:
    """What a forward pass does to a streamer's hooks, without computing: the root hook, then every block in
    order (the schedule is all the simulated backend needs; the blocks' kernels are its ``read`` ops)."""
    for _ in range(calls):
        streamer.begin_call()
        for i in range(len(streamer.blocks)):
            streamer.enter_block(i)
            streamer.leave_block(i)
