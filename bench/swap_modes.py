"""Every memory mode on a Flux-shaped and a Wan-shaped transformer (real block widths, few blocks), on the CPU.

Per mode: peak bytes on the compute device (the ledger), bytes moved per step, and step time relative to
`none`. With `--offload cpu` (default) the compute device and the host are the same RAM, so nothing is copied
and the ratio is the hooks' own overhead (goal <= 1.05x for block_swap); `--offload disk` streams for real from
safetensors files (real residency, disk-bound times).

    python bench/swap_modes.py [--rounds 5] [--offload cpu|disk] [--side 256]

Modes run interleaved, one step each per round, and the ratio is of the best step per mode: on a shared
machine the neighbours' load then falls on every mode alike.
"""

from __future__ import annotations

import argparse
import tempfile

import torch
from swap_harness import FLUX_FULL, WAN_FULL, build, gib, inputs, run_mode, scaled

from engine.memory.block_stream import find_blocks
from engine.requests import SwapSettings

MODES = ("none", "model_offload", "block_swap", "adaptive", "chunkwise", "layerwise")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rounds", type=int, default=5)
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
    print(f"{'model':6} {'mode':14} {'layout':22} {'peak GiB':>9} {'moved/step GiB':>15} {'best s':>7} "
          f"{'median s':>8} {'vs none':>8}")
    for kind, (config, dims) in shapes.items():
        model = build(kind, config, torch.bfloat16)
        feed = inputs(kind, config, "cpu", torch.bfloat16, **dims)
        total = sum(p.numel() * p.element_size() for p in model.parameters())
        blocks = sorted((sum(t.numel() * t.element_size() for t in b.parameters()) for _, b in find_blocks(model)),
                        reverse=True)
        # adaptive's budget: what streaming every block needs (prefetch 1: two blocks at once), plus half a block,
        # so that it must choose how many to keep
        budget = total - sum(blocks) + blocks[0] + blocks[1] + blocks[-1] // 2
        settings = {mode: SwapSettings(mode=mode, blocks_resident=1, block_size_mb=2048, prefetch=1,
                                       max_vram_gb=round(budget / 2**30, 4) if mode == "adaptive" else 0.0)
                    for mode in MODES}
        results = {mode: [] for mode in MODES}
        with tempfile.TemporaryDirectory() as disk:
            for _ in range(args.rounds):
                for mode in MODES:
                    results[mode].append(run_mode(model, feed, settings[mode], "cpu", args.offload, 1, disk_dir=disk))
        best = {mode: min(r.median for r in rs) for mode, rs in results.items()}
        for mode, rs in results.items():
            r = rs[-1]
            median = sorted(x.median for x in rs)[len(rs) // 2]
            print(f"{kind:6} {mode:14} {r.layout or '-':22} {gib(r.peak_ledger):>9} {gib(r.moved_per_step):>15} "
                  f"{best[mode]:7.3f} {median:8.3f} {best[mode] / best['none']:7.3f}x")
        del model


if __name__ == "__main__":
    main()
