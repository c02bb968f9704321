"""Every memory mode on a Flux-shaped and a Wan-shaped transformer (real block widths, few blocks), on the CPU.

Per mode: peak bytes on the compute device (the ledger), bytes moved per step, and step time relative to
`none`. With `--offload cpu` (default) the compute device and the host are the same RAM, so nothing is copied
and the ratio is the hooks' own overhead (goal <= 1.05x for block_swap); `--offload disk` streams for real from
safetensors files (real residency, disk-bound times).

    python bench/swap_modes.py [--steps 3] [--offload cpu|disk] [--tokens 256]
"""

from __future__ import annotations

import argparse
import tempfile

import torch
from swap_harness import FLUX_FULL, WAN_FULL, build, gib, inputs, run_mode, scaled

from engine.requests import SwapSettings

MODES = ("none", "model_offload", "block_swap", "adaptive", "chunkwise", "layerwise")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--steps", type=int, default=3)
    ap.add_argument("--offload", choices=("cpu", "disk"), default="cpu")
    ap.add_argument("--side", type=int, default=256, help="image side in pixels (Flux) / frame side (Wan)")
    args = ap.parse_args()
    torch.manual_seed(0)
    shapes = {
        # Flux widths (inner 3072, joint 4096), 1 double + 2 single blocks; Wan widths (inner 5120, ffn 13824), 2 blocks
        "flux": (scaled(FLUX_FULL, num_layers=1, num_single_layers=2), {"width": args.side, "height": args.side,
                                                                         "text_tokens": 64}),
        "wan": (scaled(WAN_FULL, num_layers=2), {"width": args.side, "height": args.side, "frames": 5,
                                                  "text_tokens": 64}),
    }
    print(f"{'model':6} {'mode':14} {'layout':22} {'peak GiB':>9} {'moved/step GiB':>15} {'s/step':>8} {'vs none':>8}")
    for kind, (config, dims) in shapes.items():
        model = build(kind, config, torch.bfloat16)
        feed = inputs(kind, config, "cpu", torch.bfloat16, **dims)
        total = sum(p.numel() * p.element_size() for p in model.parameters())
        base = None
        for mode in MODES:
            settings = SwapSettings(mode=mode, blocks_resident=1, block_size_mb=2048, prefetch=1,
                                    max_vram_gb=round(total * 0.9 / 2**30, 3) if mode == "adaptive" else 0.0)
            with tempfile.TemporaryDirectory() as disk:
                r = run_mode(model, feed, settings, "cpu", args.offload, args.steps, disk_dir=disk)
            base = base or r.median
            print(f"{kind:6} {mode:14} {r.layout or '-':22} {gib(r.peak_ledger):>9} {gib(r.moved_per_step):>15} "
                  f"{r.median:8.2f} {r.median / base:7.3f}x")
        del model


if __name__ == "__main__":
    main()
