"""One script for a CUDA machine (never run by CI or the tests): every memory mode on full-size random-weight
models, through the engine's own strategies.

- FLUX.1-dev transformer (12B, bf16) at 1024x1024: transfer-bound over PCIe. Goal: a streamed step within 1.1x
  of max(all-resident compute time, streamed bytes / measured host-to-device bandwidth).
- The IP-Adapter's full-size pieces (SigLIP so400m, projector, 57 IP layers): ledger bytes, what offloading the
  encoder and projector frees, encode vs cached tokens, and the IP attention's cost per step (bench/ipadapter.py).
- Panorama perception (OmniX) at 720 x 1440: FLUX.1-dev with rank-64 adapter pairs; seam error with and without
  blending, each task alone vs all five in one run (bench/perception_full.py).
- The Wan 2.2 I2V expert pair (2 x 14B): model_offload, block_swap, adaptive, none, the switch included.
- One Wan 2.2 A14B expert (14B, bf16) at 480p x 81 frames (or fewer with --frames): compute-bound. Goal:
  block_swap with <= 25% of its blocks resident at <= 1.05x the all-resident step time, >= 90% of copy time
  hidden behind compute (from the per-block trace: CUDA events on both streams).

Writes JSON (--out) and prints one table. Budget: under 8 minutes on one large GPU (--quick halves it).

    python bench/gpu_check.py --out gpu_check.json [--frames 81] [--steps 2] [--quick]
    python bench/gpu_check.py --tiny      # the same code path on small shapes (CPU or GPU), to check the script
"""

from __future__ import annotations

import argparse
import json
import time

import torch
from swap_harness import FLUX_FULL, WAN_FULL, build, gib, h2d_bandwidth, inputs, run_mode, run_pair, scaled

from engine.requests import SwapSettings


def modes_for(n_blocks: int, total_bytes: int, budget_gb: float) -> list[SwapSettings]:
    quarter = max(1, n_blocks // 4)
    return [
        SwapSettings(mode="none"),
        SwapSettings(mode="block_swap", blocks_resident=quarter, prefetch=1, trace=True),
        SwapSettings(mode="block_swap", blocks_resident=quarter, prefetch=2, trace=True),
        SwapSettings(mode="adaptive", max_vram_gb=budget_gb, prefetch=1, trace=True),
        SwapSettings(mode="chunkwise", blocks_resident=0, block_size_mb=1024, prefetch=1, trace=True),
        SwapSettings(mode="layerwise"),
    ]


def check(kind: str, config: dict, dims: dict, steps: int, device: str, budget_gb: float, skip_layerwise: bool,
          bandwidth: float | None) -> list[dict]:
    t0 = time.perf_counter()
    model = build(kind, config, torch.bfloat16)
    n_blocks = config["num_layers"] + config.get("num_single_layers", 0)
    total = sum(p.numel() * p.element_size() for p in model.parameters())
    print(f"[{kind}] built {gib(total)} GiB of random weights, {n_blocks} blocks, in {time.perf_counter() - t0:.0f} s",
          flush=True)
    feed = inputs(kind, config, device, torch.bfloat16, **dims)
    rows, base = [], None
    for settings in modes_for(n_blocks, total, budget_gb):
        if settings.mode == "layerwise" and skip_layerwise:
            continue
        t1 = time.perf_counter()
        try:
            r = run_mode(model, feed, settings, device, "cpu", steps)
        except torch.OutOfMemoryError as exc:
            rows.append({"model": kind, "mode": settings.mode, "error": f"OOM: {str(exc).splitlines()[0]}"})
            torch.cuda.empty_cache()
            continue
        base = base or r.median
        streamed = r.moved_per_step
        bound = max(base, streamed / bandwidth) if bandwidth else None
        row = {
            "model": kind, "mode": settings.mode, "layout": r.layout, "prefetch": settings.prefetch,
            "step_s": r.median, "vs_resident": r.median / base, "peak_allocated_gib": r.peak_allocated / 2**30,
            "peak_weights_gib": r.peak_ledger / 2**30, "moved_per_step_gib": streamed / 2**30,
            "transfer_bound_s": bound, "vs_bound": (r.median / bound) if bound else None,
            "hidden_fraction": r.trace.get("hidden_fraction"), "trace": r.trace, "notes": r.notes,
            "wall_s": time.perf_counter() - t1,
        }
        rows.append(row)
        print(f"[{kind}] {settings.mode:11} {r.layout:24} {r.median:7.2f} s/step {row['vs_resident']:5.2f}x "
              f"peak {row['peak_allocated_gib']:6.1f} GiB hidden {row['hidden_fraction'] or 0:.0%}", flush=True)
    del model, feed
    if device.startswith("cuda"):
        torch.cuda.empty_cache()
    return rows


def check_wan_pair(config: dict, dims: dict, steps: int, device: str, budget_gb: float) -> list[dict]:
    """Wan 2.2 I2V's two full-size experts per mode: the high-noise one for the first steps, then the low-noise
    one (boundary 0.9 of the schedule: the first ~1/3 of 40 steps; here the first half of ``steps``), CFG on.
    Peak allocator bytes and seconds per step, the expert switch included."""
    t0 = time.perf_counter()
    experts = [build("wan", config, torch.bfloat16), build("wan", config, torch.bfloat16)]
    print(f"[wan pair] built 2 experts in {time.perf_counter() - t0:.0f} s", flush=True)
    feed = inputs("wan", config, device, torch.bfloat16, **dims)
    quarter = max(1, config["num_layers"] // 4)
    rows = []
    for settings in (SwapSettings(mode="model_offload"),
                     SwapSettings(mode="block_swap", blocks_resident=quarter, prefetch=1),
                     SwapSettings(mode="adaptive", max_vram_gb=budget_gb, prefetch=1),
                     SwapSettings(mode="none")):
        try:
            r = run_pair(experts, feed, settings, device, "cpu", steps, switch_at=max(1, steps // 2))
        except torch.OutOfMemoryError as exc:
            rows.append({"model": "wan-pair", "mode": settings.mode, "error": f"OOM: {str(exc).splitlines()[0]}"})
            torch.cuda.empty_cache()
            continue
        rows.append({"model": "wan-pair", "mode": settings.mode, "layout": r.layout, "step_s": r.median,
                     "steps_s": r.step_s, "peak_allocated_gib": r.peak_allocated / 2**30,
                     "peak_weights_gib": r.peak_ledger / 2**30, "moved_per_step_gib": r.moved_per_step / 2**30,
                     "notes": r.notes})
        print(f"[wan pair] {settings.mode:13} {r.layout:24} {r.median:7.2f} s/step (switch included: "
              f"{max(r.step_s):.2f} s) peak {r.peak_allocated / 2**30:6.1f} GiB", flush=True)
    del experts, feed
    if device.startswith("cuda"):
        torch.cuda.empty_cache()
    return rows


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", default="gpu_check.json")
    ap.add_argument("--steps", type=int, default=2)
    ap.add_argument("--frames", type=int, default=81)
    ap.add_argument("--quick", action="store_true", help="fewer frames, no layerwise (about half the time)")
    ap.add_argument("--tiny", action="store_true", help="small shapes: checks the script, not the GPU")
    ap.add_argument("--no-pair", action="store_true", help="skip the Wan 2.2 two-expert run")
    ap.add_argument("--no-perception", action="store_true", help="skip the OmniX perception check")
    args = ap.parse_args()
    cuda = torch.cuda.is_available()
    device = "cuda" if cuda else "cpu"
    if not cuda and not args.tiny:
        raise SystemExit("gpu_check needs a CUDA GPU (use --tiny to check the script on the CPU)")
    report = {"device": torch.cuda.get_device_name(0) if cuda else "cpu", "torch": torch.__version__}
    bandwidth = h2d_bandwidth(device) if cuda else None
    report["h2d_gib_per_s"] = bandwidth / 2**30 if bandwidth else None
    if bandwidth:
        print(f"host-to-device (pinned): {bandwidth / 2**30:.1f} GiB/s", flush=True)
    if args.tiny:
        flux = scaled(FLUX_FULL, num_layers=2, num_single_layers=2, attention_head_dim=16, num_attention_heads=2,
                      joint_attention_dim=32, pooled_projection_dim=32, axes_dims_rope=(4, 4, 8))
        wan = scaled(WAN_FULL, num_layers=2, num_attention_heads=2, attention_head_dim=16, text_dim=32, ffn_dim=32)
        flux_dims = {"width": 64, "height": 64, "text_tokens": 8}
        wan_dims = {"width": 64, "height": 64, "frames": 5, "text_tokens": 8}
    else:
        flux, wan = FLUX_FULL, WAN_FULL
        flux_dims = {"width": 1024, "height": 1024, "text_tokens": 512}
        frames = 33 if args.quick else args.frames
        wan_dims = {"width": 832, "height": 480, "frames": frames, "text_tokens": 512}
    t0 = time.perf_counter()
    rows = check("flux", flux, flux_dims, args.steps, device, 12.0, args.quick, bandwidth)
    rows += check("wan", wan, wan_dims, args.steps, device, 12.0, args.quick, bandwidth)
    pair = [] if args.no_pair else check_wan_pair(wan, wan_dims, max(2, args.steps), device, 12.0)
    report["rows"] = rows
    report["wan_pair"] = pair
    from ipadapter import full_size_check, print_full_size  # bench/ipadapter.py: the IP-Adapter's full-size pieces

    report["ipadapter"] = full_size_check(device, tiny=args.tiny)
    if not args.no_perception:
        from perception_full import full_size_check as perception_check  # bench/perception_full.py

        report["perception"] = perception_check(device, tiny=args.tiny, steps=args.steps)
    import gpu_multi  # bench/gpu_multi.py: one Wan job over 2+ GPUs (context parallelism), skipped on one

    report["context_parallel"] = gpu_multi.check(tiny=args.tiny, steps=args.steps, frames=wan_dims["frames"])
    report["wall_s"] = time.perf_counter() - t0
    goals = {}
    wan_bs = [r for r in rows if r["model"] == "wan" and r["mode"] == "block_swap" and "error" not in r]
    if wan_bs:
        best = min(wan_bs, key=lambda r: r["vs_resident"])
        goals["wan_block_swap_vs_resident<=1.05"] = best["vs_resident"] <= 1.05
        goals["wan_block_swap_hidden>=0.90"] = (best["hidden_fraction"] or 0) >= 0.90
    flux_stream = [r for r in rows if r["model"] == "flux" and r["mode"] in ("block_swap", "chunkwise")
                   and r.get("vs_bound")]
    if flux_stream:
        goals["flux_streamed_vs_bound<=1.1"] = min(r["vs_bound"] for r in flux_stream) <= 1.1
    report["goals"] = goals
    with open(args.out, "w") as f:
        json.dump(report, f, indent=1)
    print(f"\n{'model':5} {'mode':11} {'layout':24} {'s/step':>7} {'vs res':>6} {'vs bound':>8} {'peak GiB':>8} "
          f"{'moved GiB':>9} {'hidden':>6}")
    for r in rows:
        if "error" in r:
            print(f"{r['model']:5} {r['mode']:11} {r['error']}")
            continue
        bound = f"{r['vs_bound']:.2f}x" if r.get("vs_bound") else "-"
        print(f"{r['model']:5} {r['mode']:11} {r['layout'] or '-':24} {r['step_s']:7.2f} {r['vs_resident']:5.2f}x "
              f"{bound:>8} {r['peak_allocated_gib']:8.1f} {r['moved_per_step_gib']:9.2f} "
              f"{(r['hidden_fraction'] or 0):6.0%}")
    print_full_size(report["ipadapter"])
    if "perception" in report:
        from perception_full import print_full_size as print_perception

        print_perception(report["perception"])
    for r in pair:
        if "error" in r:
            print(f"wan2  {r['mode']:11} {r['error']}")
            continue
        print(f"wan2  {r['mode']:11} {r['layout'] or '-':24} {r['step_s']:7.2f}      -        - "
              f"{r['peak_allocated_gib']:8.1f} {r['moved_per_step_gib']:9.2f}      -")
    gpu_multi.print_report(report["context_parallel"])
    print("goals:", json.dumps(goals), f"· total {report['wall_s']:.0f} s · written to {args.out}")


if __name__ == "__main__":
    main()
