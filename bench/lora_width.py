"""``bench/lora_recompose.py --job width``: peft's per-layer LoRA cost against the layer width.

A 2-block Wan 2.2 transformer (the tiny demo's config, ``--dims`` wide: heads of 12) with two rank ``--rank``
LoRAs on its 20 block linears, written as diffusers-layout files and loaded through the engine's own converter
and ``LoraComposer``; one forward with the stack on against off, best of N, at each latent side of ``--sides``.
The added work per wrapped layer is a fixed handful of ops per adapter (A, B, scale, add) of rank-wide matrices:
on a layer as narrow as the rank it costs about what the layer does, on a wide one it fades.
"""

from __future__ import annotations

import tempfile
import time
from pathlib import Path

import torch
from safetensors.torch import save_file

LAYERS = ["attn1.to_q", "attn1.to_k", "attn1.to_v", "attn1.to_out.0", "attn2.to_q", "attn2.to_k", "attn2.to_v",
          "attn2.to_out.0", "ffn.net.0.proj", "ffn.net.2"]


def wan(dim: int):
    from diffusers import WanTransformer3DModel

    torch.manual_seed(0)
    return WanTransformer3DModel(patch_size=(1, 2, 2), num_attention_heads=dim // 12, attention_head_dim=12,
                                 in_channels=36, out_channels=16, text_dim=32, freq_dim=256,
                                 ffn_dim=max(32, dim * 4 // 3), num_layers=2, cross_attn_norm=True,
                                 qk_norm="rms_norm_across_heads", eps=1e-6, rope_max_seq_len=32).eval()


def lora_file(transformer, rank: int, seed: int, folder: Path) -> str:
    gen = torch.Generator().manual_seed(seed)
    modules = dict(transformer.named_modules())
    state = {}
    for i in range(len(transformer.blocks)):
        for name in LAYERS:
            layer = modules[f"blocks.{i}.{name}"]
            state[f"transformer.blocks.{i}.{name}.lora_A.weight"] = torch.randn(rank, layer.in_features,
                                                                                generator=gen) * 0.1
            state[f"transformer.blocks.{i}.{name}.lora_B.weight"] = torch.randn(layer.out_features, rank,
                                                                                generator=gen) * 0.1
    path = folder / f"w{transformer.config.num_attention_heads}-r{rank}-{seed}.safetensors"
    save_file(state, str(path))
    return str(path)


def best(fn, n: int) -> float:
    for _ in range(3):
        fn()
    times = []
    for _ in range(n):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return min(times)


def width_table(args) -> None:
    from engine import Engine, LoraSpec
    from engine.adapters.lora_stack import LoraComposer
    from engine.jobs.loras import keep_set, stack_items

    folder = Path(tempfile.mkdtemp(prefix="bench-lora-width-"))
    engine = Engine(device="cpu", models_dir=folder / "models", demo=True, outputs_dir=folder / "out")
    print(f"device cpu ({torch.get_num_threads()} threads), 2-block Wan 2.2 transformer, two rank-{args.rank} "
          f"LoRAs on its 20 block linears, one forward, best of N")
    print(f"{'width':>6}{'tokens':>8}{'off ms':>10}{'on ms':>10}{'on/off':>8}")
    for dim in (int(d) for d in args.dims.split(",")):
        transformer = wan(dim)
        engine.store.register_module(f"width-{dim}", transformer, "transformer")
        composer = LoraComposer.on(engine.store, transformer, f"width-{dim}")
        specs = tuple(LoraSpec(path=lora_file(transformer, args.rank, seed, folder), weight=w)
                      for seed, w in ((1, 0.8), (2, 0.5)))
        items = stack_items(composer, specs, "loras")
        composer.sync(keep_set(composer, items))
        for side in (int(v) for v in args.sides.split(",")):
            x = torch.randn(1, 36, 2, side, side)
            text = torch.randn(1, 16, 32)
            t = torch.tensor([900.0])

            def forward(net=transformer, x=x, t=t, text=text):
                with torch.inference_mode():
                    net(hidden_states=x, timestep=t, encoder_hidden_states=text, return_dict=False)

            n = max(5, min(200, int(2e6 / (dim * side * side))))
            on = off = float("inf")
            for _ in range(3):  # alternate, so a busy moment of the machine hits both
                composer.activate(items)
                on = min(on, best(forward, n))
                composer.deactivate()
                off = min(off, best(forward, n))
            print(f"{dim:>6}{2 * side * side // 4:>8}{off * 1e3:>10.3f}{on * 1e3:>10.3f}{on / off:>8.3f}", flush=True)
        composer.unload_all()
        engine.store.unregister_module(transformer)
