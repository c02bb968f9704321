"""One script for a CUDA machine (never run by CI; its --tiny form is a test): every memory mode on full-size
random-weight models, through the engine's own strategies, with the plan's prediction beside what was measured.

Sections, in order (each one's results are written to --out as soon as it ends, so a crash or a kill keeps them):

- ``flux``: FLUX.1-dev transformer (12B, bf16) at 1024x1024: transfer-bound over PCIe. Goal: a streamed step
  within 1.1x of max(all-resident compute time, streamed bytes / measured host-to-device bandwidth).
- ``qwen``: the Qwen-Image transformer (20B, bf16, 60 blocks) at 1024x1024: the largest single transformer the app
  streams, the third layout of the plan's README table (skipped with --quick: 38 GiB through every mode).
- ``wan``: one Wan 2.2 A14B expert (14B, bf16) at 480p x 81 frames (33 with --quick): compute-bound. Goal:
  block_swap with <= 25% of its blocks resident at <= 1.05x the all-resident step, >= 90% of copy time hidden.
- ``wan_pair``: the I2V expert pair (2 x 14B), the expert switch included; the ``wan`` section's model is expert 1,
  so only one more is built (two fresh experts beside a cached one would not fit a 128 GiB host).
- ``ipadapter``, ``perception``, ``context_parallel``: bench/ipadapter.py, bench/perception_full.py and
  bench/gpu_multi.py (perception and context parallelism are skipped with --quick). Context parallelism needs two
  GPUs: on one it is recorded as skipped, with the reason; --tiny splits the Wan expert over two CPU processes
  and records the engine path (torchrun over CUDA) as skipped, with the reason.

Per mode: ``predicted_peak_bytes`` (the plan's device figure: ``plan_swap``, the arithmetic ``Engine.plan`` runs,
on the sizes measured from the model, plus its activation estimate), ``reserved_peak_bytes``
(``torch.cuda.max_memory_reserved``: what the process really held), ``allocated_peak_bytes``,
``mem_get_info_low_bytes`` (free device memory's low-water mark, sampled), ``host_rss_bytes``, ``pinned_bytes``,
``s_per_step``, ``bound_s`` = max(all-resident step, streamed bytes / bandwidth) and ``hidden_fraction`` (copy
time hidden behind compute, from the per-block trace). Without CUDA (--tiny on the CPU) the device figures are
the ledger's (weights on the compute device) and the low-water mark is available RAM; ``measured_by`` says which.

Between sections the models are freed, the allocator's cache emptied and PyTorch's pinned host cache released.

    python bench/gpu_check.py --quick --out gpu_check.json      # one H200, 128 GiB host: under 8 minutes
    python bench/gpu_check.py --out gpu_check.json [--frames 81] [--steps 2]
    python bench/gpu_check.py --tiny --out tiny.json             # the same sections on small shapes (CPU)
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import time
import traceback
from pathlib import Path

import torch
from swap_harness import (
    FLUX_FULL,
    QWEN_FULL,
    WAN_FULL,
    build,
    gib,
    h2d_bandwidth,
    inputs,
    release_host_caches,
    run_mode,
    run_pair,
    scaled,
)

from engine.memory.planner import ComponentSize, GiB, plan_swap
from engine.plan import activation_estimate
from engine.requests import SwapSettings

ENTRY_KEYS = ("section", "model", "mode", "predicted_peak_bytes", "reserved_peak_bytes", "allocated_peak_bytes",
              "mem_get_info_low_bytes", "host_rss_bytes", "pinned_bytes", "s_per_step", "bound_s",
              "hidden_fraction")


SECTIONS = ("flux", "qwen", "wan", "wan_pair", "ipadapter", "perception", "context_parallel")
NOT_QUICK = ("qwen", "perception", "context_parallel")


def skip_reason(name: str, args) -> str:
    """Why these flags leave a section out ("" when it runs)."""
    only = {s for s in args.only.split(",") if s}
    if only and name not in only:
        return "not in --only"
    if args.quick and name in NOT_QUICK:
        return "--quick"
    if name == "wan_pair" and args.no_pair:
        return "--no-pair"
    if name == "perception" and args.no_perception:
        return "--no-perception"
    return ""


def write_report(path: str, report: dict) -> None:
    """Atomic: a temporary file beside ``path``, flushed, then renamed over it (a kill mid-write leaves the last
    complete report)."""
    tmp = f"{path}.tmp"
    with open(tmp, "w") as f:
        json.dump(report, f, indent=1)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def measured_size(name: str, model: torch.nn.Module) -> ComponentSize:
    """The transformer's bytes per block in execution order, its rest and largest layer, read from its tensors
    (the streaming modes' own measure, plus the largest layer the planner needs for layerwise)."""
    from engine.memory.strategies.streaming import module_size

    size = module_size(name, "transformer", model)
    leaf = max((sum(p.numel() * p.element_size() for p in m.parameters(recurse=False)) for m in model.modules()),
               default=0)
    return dataclasses.replace(size, largest_leaf=leaf)


def predicted(sizes: list[ComponentSize], settings: SwapSettings, device: str, config: dict, dims: dict,
              elem: int):
    """The plan for this mode: the same ``plan_swap`` as ``Engine.plan``, its activation estimate for the
    transformer alone (no VAE in this harness), the budget as the plan takes it."""
    from engine.memory.devices import planning_budget

    act = activation_estimate(config, {"block_out_channels": [0]}, dims["width"], dims["height"],
                              dims.get("frames", 1), elem)
    if settings.max_vram_gb:
        budget = int(settings.max_vram_gb * GiB)
    else:
        found = planning_budget(device)
        budget = found[0] if found else None
    return plan_swap(sizes, settings, device, budget, act, "cpu")


def entry(section: str, model: str, settings: SwapSettings, plan, r, cuda: bool, base: float | None,
          bandwidth: float | None) -> dict:
    bound = max(base, r.moved_per_step / bandwidth) if base and bandwidth else None
    return {
        "section": section, "model": model, "mode": settings.mode, "layout": r.layout, "prefetch": settings.prefetch,
        "predicted_peak_bytes": plan.predicted_peak, "predicted_weights_bytes": plan.weights_peak,
        "predicted_host_bytes": plan.host_bytes, "predicted_pinned_bytes": plan.pinned_bytes,
        "reserved_peak_bytes": r.peak_reserved if cuda else r.peak_ledger,
        "allocated_peak_bytes": r.peak_allocated if cuda else r.peak_ledger,
        "ledger_peak_bytes": r.peak_ledger,
        "mem_get_info_low_bytes": r.low_free, "host_rss_bytes": r.peak_rss, "pinned_bytes": r.pinned,
        "measured_by": "cuda allocator" if cuda else "ledger (no CUDA: weights on the compute device)",
        "s_per_step": r.median, "steps_s": r.step_s, "vs_resident": (r.median / base) if base else None,
        "moved_per_step_bytes": r.moved_per_step, "bound_s": bound,
        "vs_bound": (r.median / bound) if bound else None,
        "hidden_fraction": r.trace.get("hidden_fraction"), "plan": plan.explanation, "notes": r.notes,
    }


def modes_for(n_blocks: int, budget_gb: float, quick: bool) -> list[SwapSettings]:
    quarter = max(1, n_blocks // 4)
    modes = [
        SwapSettings(mode="none"),
        SwapSettings(mode="block_swap", blocks_resident=quarter, prefetch=1, trace=True),
        SwapSettings(mode="block_swap", blocks_resident=quarter, prefetch=2, trace=True),
        SwapSettings(mode="adaptive", max_vram_gb=budget_gb, prefetch=1, trace=True),
        SwapSettings(mode="chunkwise", blocks_resident=0, block_size_mb=1024, prefetch=1, trace=True),
        SwapSettings(mode="layerwise"),
    ]
    return [m for m in modes if not quick or (m.mode != "layerwise" and m.prefetch != 2)]


def print_entry(e: dict) -> None:
    if "error" in e:
        print(f"[{e['section']}] {e['mode']:11} {e['error']}", flush=True)
        return
    print(f"[{e['section']}] {e['mode']:11} {e['layout'] or '-':24} {e['s_per_step']:7.2f} s/step "
          f"plan {gib(e['predicted_peak_bytes']):>6} GiB reserved {gib(e['reserved_peak_bytes']):>6} GiB "
          f"hidden {e['hidden_fraction'] or 0:.0%}", flush=True)


class Check:
    """The sections and the report they fill; ``save()`` after each one."""

    def __init__(self, args):
        self.args = args
        self.cuda = torch.cuda.is_available()
        self.device = "cuda" if self.cuda else "cpu"
        self.dtype = torch.bfloat16 if self.cuda else torch.float32
        self.elem = torch.empty(0, dtype=self.dtype).element_size()
        self.report = {"device": torch.cuda.get_device_name(0) if self.cuda else "cpu", "torch": torch.__version__,
                       "args": vars(args), "sections": {}, "entries": []}
        self.bandwidth = None
        self.wan = None  # kept from the wan section: expert 1 of the pair
        if args.tiny:
            self.flux = scaled(FLUX_FULL, num_layers=2, num_single_layers=2, attention_head_dim=16,
                               num_attention_heads=2, joint_attention_dim=32, pooled_projection_dim=32,
                               axes_dims_rope=(4, 4, 8))
            self.wan_cfg = scaled(WAN_FULL, num_layers=2, num_attention_heads=2, attention_head_dim=16, text_dim=32,
                                  ffn_dim=32)
            self.qwen = scaled(QWEN_FULL, num_layers=4, attention_head_dim=16, num_attention_heads=2,
                               joint_attention_dim=32, axes_dims_rope=(4, 4, 8))
            self.flux_dims = {"width": 64, "height": 64, "text_tokens": 8}
            self.wan_dims = {"width": 64, "height": 64, "frames": 5, "text_tokens": 8}
            self.budget_gb = 0.001
        else:
            self.flux, self.qwen, self.wan_cfg = FLUX_FULL, QWEN_FULL, WAN_FULL
            self.flux_dims = {"width": 1024, "height": 1024, "text_tokens": 512}
            self.wan_dims = {"width": 832, "height": 480, "frames": 33 if args.quick else args.frames,
                             "text_tokens": 512}
            self.budget_gb = 12.0

    def save(self) -> None:
        write_report(self.args.out, self.report)

    def section(self, name: str, run) -> None:
        t0 = time.perf_counter()
        status = {"status": "running"}
        self.report["sections"][name] = status
        self.save()
        try:
            result = run()
            status.update(status="done", result=result)
            if isinstance(result, dict) and "skipped" in result:  # e.g. context parallelism on one GPU
                status.update(status="skipped", reason=result["skipped"])
        except Exception as exc:  # one section's failure must not lose the others
            traceback.print_exc()
            status.update(status="error", error=f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}")
        finally:
            status["wall_s"] = time.perf_counter() - t0
            release_host_caches()
            status["after"] = self.memory_now()
            self.save()
        print(f"[{name}] {status['status']} in {status['wall_s']:.0f} s", flush=True)

    def memory_now(self) -> dict:
        import psutil

        out = {"host_rss_bytes": psutil.Process().memory_info().rss}
        if self.cuda:
            out.update(reserved_bytes=torch.cuda.memory_reserved(), free_bytes=torch.cuda.mem_get_info()[0])
        return out

    def build(self, kind: str, config: dict, seed: int = 0) -> torch.nn.Module:
        t0 = time.perf_counter()
        model = build(kind, config, self.dtype, generate_on=self.device, seed=seed)
        total = sum(p.numel() * p.element_size() for p in model.parameters())
        print(f"[{kind}] {gib(total)} GiB of random weights drawn on {self.device} in {time.perf_counter() - t0:.0f} s",
              flush=True)
        return model

    def modes(self, section: str, kind: str, model, config: dict, dims: dict) -> dict:
        feed = inputs(kind, config, self.device, self.dtype, **dims)
        size = measured_size("transformer", model)
        base = None
        for settings in modes_for(len(size.blocks), self.budget_gb, self.args.quick):
            plan = predicted([size], settings, self.device, config, dims, self.elem)
            try:
                r = run_mode(model, feed, settings, self.device, "cpu", self.args.steps)
            except torch.OutOfMemoryError as exc:
                e = {"section": section, "model": kind, "mode": settings.mode, "error": f"OOM: {str(exc).splitlines()[0]}",
                     "predicted_peak_bytes": plan.predicted_peak}
                release_host_caches()
            else:
                base = base or r.median
                e = entry(section, kind, settings, plan, r, self.cuda, base, self.bandwidth)
            self.report["entries"].append(e)
            print_entry(e)
            self.save()
        del feed
        return {"blocks": len(size.blocks), "weights_bytes": size.total}

    def run_flux(self) -> dict:
        model = self.build("flux", self.flux)
        try:
            return self.modes("flux", "flux", model, self.flux, self.flux_dims)
        finally:
            del model

    def run_qwen(self) -> dict:
        model = self.build("qwen", self.qwen)
        try:
            return self.modes("qwen", "qwen", model, self.qwen, self.flux_dims)
        finally:
            del model

    def run_wan(self) -> dict:
        self.wan = self.build("wan", self.wan_cfg)
        return self.modes("wan", "wan", self.wan, self.wan_cfg, self.wan_dims)

    def run_pair(self) -> dict:
        experts = [self.wan if self.wan is not None else self.build("wan", self.wan_cfg),
                   self.build("wan", self.wan_cfg, seed=1)]
        self.wan = None
        feed = inputs("wan", self.wan_cfg, self.device, self.dtype, **self.wan_dims)
        sizes = [measured_size("transformer", experts[0]), measured_size("transformer_2", experts[1])]
        steps = max(2, self.args.steps)
        quarter = max(1, self.wan_cfg["num_layers"] // 4)
        base = None
        try:
            for settings in (SwapSettings(mode="none"), SwapSettings(mode="model_offload"),
                             SwapSettings(mode="block_swap", blocks_resident=quarter, prefetch=1),
                             SwapSettings(mode="adaptive", max_vram_gb=self.budget_gb, prefetch=1)):
                plan = predicted(sizes, settings, self.device, self.wan_cfg, self.wan_dims, self.elem)
                try:
                    r = run_pair(experts, feed, settings, self.device, "cpu", steps, switch_at=max(1, steps // 2))
                except torch.OutOfMemoryError as exc:
                    e = {"section": "wan_pair", "model": "wan-pair", "mode": settings.mode,
                         "error": f"OOM: {str(exc).splitlines()[0]}", "predicted_peak_bytes": plan.predicted_peak}
                    release_host_caches()
                else:
                    base = base or r.median
                    e = entry("wan_pair", "wan-pair", settings, plan, r, self.cuda, base, self.bandwidth)
                self.report["entries"].append(e)
                print_entry(e)
                self.save()
        finally:
            del experts, feed
        return {"experts": 2, "steps": steps}

    def run_ipadapter(self) -> dict:
        from ipadapter import full_size_check  # bench/ipadapter.py

        return full_size_check(self.device, tiny=self.args.tiny)

    def run_perception(self) -> dict:
        from perception_full import full_size_check  # bench/perception_full.py

        return full_size_check(self.device, tiny=self.args.tiny, steps=self.args.steps)

    def run_context_parallel(self) -> dict:
        import gpu_multi  # bench/gpu_multi.py: one Wan job over 2+ GPUs, skipped on one

        return gpu_multi.check(tiny=self.args.tiny, steps=self.args.steps, frames=self.wan_dims["frames"])

    def goals(self) -> dict:
        entries = [e for e in self.report["entries"] if "error" not in e]
        goals = {}
        wan_bs = [e for e in entries if e["section"] == "wan" and e["mode"] == "block_swap"]
        if wan_bs:
            best = min(wan_bs, key=lambda e: e["vs_resident"] or 99)
            goals["wan_block_swap_vs_resident<=1.05"] = (best["vs_resident"] or 99) <= 1.05
            goals["wan_block_swap_hidden>=0.90"] = (best["hidden_fraction"] or 0) >= 0.90
        flux = [e for e in entries if e["section"] == "flux" and e["mode"] in ("block_swap", "chunkwise")
                and e.get("vs_bound")]
        if flux:
            goals["flux_streamed_vs_bound<=1.1"] = min(e["vs_bound"] for e in flux) <= 1.1
        if self.cuda:  # the plan against the allocator, per mode (goal: within 10%)
            close = [abs(e["reserved_peak_bytes"] - e["predicted_peak_bytes"]) <= 0.1 * e["predicted_peak_bytes"]
                     for e in entries if e["predicted_peak_bytes"]]
            goals["reserved_within_10pct_of_plan"] = f"{sum(close)} of {len(close)}"
        return goals


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", default="gpu_check.json")
    ap.add_argument("--steps", type=int, default=2)
    ap.add_argument("--frames", type=int, default=81)
    ap.add_argument("--quick", action="store_true",
                    help="33 frames, no layerwise / prefetch 2, no Qwen-Image, perception or context parallelism")
    ap.add_argument("--tiny", action="store_true", help="small shapes: checks the script, not the GPU")
    ap.add_argument("--no-pair", action="store_true", help="skip the Wan 2.2 two-expert run")
    ap.add_argument("--no-perception", action="store_true", help="skip the OmniX perception check")
    ap.add_argument("--only", default="", help="comma-separated sections to run (default: all)")
    args = ap.parse_args()
    if not torch.cuda.is_available() and not args.tiny:
        raise SystemExit("gpu_check needs a CUDA GPU (use --tiny to check the script on the CPU)")
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    check = Check(args)
    t0 = time.perf_counter()
    check.bandwidth = h2d_bandwidth(check.device, 2**30 if check.cuda else 2**24)
    check.report["h2d_bytes_per_s"] = check.bandwidth
    print(f"host-to-device: {check.bandwidth / 2**30:.1f} GiB/s", flush=True)
    runs = {"flux": check.run_flux, "qwen": check.run_qwen, "wan": check.run_wan, "wan_pair": check.run_pair,
            "ipadapter": check.run_ipadapter, "perception": check.run_perception,
            "context_parallel": check.run_context_parallel}
    for name in SECTIONS:
        reason = skip_reason(name, args)
        if reason:  # the report says what did not run, and why
            check.report["sections"][name] = {"status": "skipped", "reason": reason}
            check.save()
            continue
        check.section(name, runs[name])
        if name == "wan" and skip_reason("wan_pair", args):
            check.wan = None  # no pair to reuse it for
    check.report["wall_s"] = time.perf_counter() - t0
    check.report["goals"] = check.goals()
    check.save()
    print("goals:", json.dumps(check.report["goals"]), f"· total {check.report['wall_s']:.0f} s · written to "
          f"{args.out}")


if __name__ == "__main__":
    main()
