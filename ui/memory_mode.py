"""The memory-mode widget every tab that runs a diffusion model carries: mode, max VRAM, resident blocks, block
size, prefetch, streams and the per-block trace, with the engine's plan in one line under it (updated as the
settings change) and, after a run, what was measured, plus the trace plot when the trace was on."""

from __future__ import annotations

import csv
import logging
from collections.abc import Callable
from dataclasses import dataclass

import gradio as gr

from engine import EngineError, InputError, SwapSettings
from engine.requests import SWAP_MODES

from .components import engine_booted, when_booted

log = logging.getLogger(__name__)
GiB = 2**30

MODE_LABELS = {
    "none": "none: everything resident (fastest)",
    "model_offload": "model offload: one component on the GPU at a time",
    "block_swap": "block swap: first N blocks resident, the rest stream",
    "adaptive": "adaptive: block swap sized to the budget",
    "chunkwise": "chunkwise: stream groups of blocks up to a size",
    "layerwise": "layerwise: stream every layer (least memory, slowest)",
    "cpu_only": "CPU only: keep the GPU free",
}


@dataclass
class MemoryModeWidget:
    mode: gr.Dropdown
    max_vram_gb: gr.Number
    blocks_resident: gr.Number
    block_size_mb: gr.Number
    prefetch: gr.Slider
    use_streams: gr.Checkbox
    trace: gr.Checkbox
    plan: gr.Markdown
    trace_plot: gr.LinePlot

    @property
    def inputs(self) -> list:
        return [self.mode, self.max_vram_gb, self.blocks_resident, self.block_size_mb, self.prefetch,
                self.use_streams, self.trace]


def swap_settings(mode, max_vram_gb, blocks_resident, block_size_mb, prefetch, use_streams, trace) -> SwapSettings:
    """The ``SwapSettings`` the widget's values describe (numbers arrive as floats from the page)."""

    def whole(v):
        return int(v) if isinstance(v, float) and v.is_integer() else v

    return SwapSettings(mode=mode, max_vram_gb=max_vram_gb,
                        blocks_resident=whole(blocks_resident), block_size_mb=whole(block_size_mb),
                        prefetch=whole(prefetch), use_streams=use_streams, trace=trace)


def swap_field(swap_values: tuple) -> dict:
    """``{"swap": SwapSettings}`` for a request built from the widget's values; ``{}`` without them (the
    request's default mode)."""
    return {"swap": swap_settings(*swap_values)} if swap_values else {}


def device_line(default: SwapSettings, why: str) -> str:
    return f"{why} · default **{default.mode}**"


def memory_mode_widget(engine, job: str, prefix: str) -> MemoryModeWidget:
    """Build the widget (inside the caller's layout). ``job`` picks the VRAM profile's advice ("text_to_image",
    "i2v"); the default comes from ``presets/vram_profiles.json`` for the detected GPU. The page is built before
    the engine has looked at the device (torch is not imported yet): then the page's load event sets the default."""
    default, why = engine.default_swap(job) if engine_booted(engine) else (SwapSettings(), "Reading the device…")
    with gr.Accordion("Memory mode", open=False, elem_id=f"{prefix}-memory"):
        device = gr.Markdown(device_line(default, why), elem_classes=["memory-device"])
        mode = gr.Dropdown([(MODE_LABELS[m], m) for m in SWAP_MODES], value=default.mode, label="Memory mode",
                           elem_id=f"{prefix}-swap-mode")
        with gr.Row():
            max_vram = gr.Number(default.max_vram_gb, label="Max VRAM (GB)", minimum=0, step=0.5,
                                 info="0 = what the device has")
            resident = gr.Number(default.blocks_resident, label="Resident blocks", precision=0, minimum=0,
                                 info="block swap / chunkwise")
            block_mb = gr.Number(default.block_size_mb, label="Block size (MB)", precision=0, minimum=1,
                                 info="chunkwise group size")
        with gr.Row():
            prefetch = gr.Slider(0, 8, value=default.prefetch, step=1, precision=0, label="Prefetch (groups ahead)")
            streams = gr.Checkbox(default.use_streams, label="Copy on a side CUDA stream")
            trace = gr.Checkbox(False, label="Per-block trace (CSV + plot)")
    plan = gr.Markdown("", elem_id=f"{prefix}-plan", elem_classes=["memory-plan"])
    plot = gr.LinePlot(x="block", y="ms", color="kind", title="Per-block times (mean over steps)", visible=False,
                       elem_id=f"{prefix}-trace-plot", render=False)  # the tab renders it by its output
    widget = MemoryModeWidget(mode, max_vram, resident, block_mb, prefetch, streams, trace, plan, plot)

    def detected():
        found, reason = engine.default_swap(job)
        return (device_line(found, reason), found.mode, found.max_vram_gb, found.blocks_resident,
                found.block_size_mb, found.prefetch, found.use_streams)

    when_booted(engine, detected, [device, *widget.inputs[:-1]])
    return widget


def plan_text(engine, build: Callable[..., object], *values) -> str:
    """The plan line for the tab's current values; a value that is not valid yet shows what is wrong instead."""
    try:
        plan = engine.plan(build(*values))
    except InputError as exc:
        return f"Plan: waiting for valid settings ({exc.field}: {exc.message})"
    except EngineError as exc:
        return f"Plan unavailable: {exc}"
    except Exception as exc:  # a plan must never break the page
        log.exception("plan failed")
        return f"Plan unavailable ({type(exc).__name__})"
    text = f"**Plan** · {plan.explanation}"
    text += f"  \n{host_text(plan)}"
    if not plan.fits and plan.suggestion:
        text += f"  \n⚠️ does not fit: {plan.suggestion}"
    for note in plan.notes:
        text += f"  \n{note}"
    return text


def host_text(plan) -> str:
    """The host RAM line: what the mode needs (pinned part included) against what this machine has for it."""
    host, pinned = getattr(plan, "host_bytes", 0), getattr(plan, "pinned_bytes", 0)
    available = getattr(plan, "host_available", None)
    text = f"**Host RAM** · {plan.mode}: {_gib(host)} GiB ({_gib(pinned)} pinned)"
    if available is not None:
        text += f" of {_gib(available)} GiB available"
        if host > available:
            text += " ⚠️ does not fit this machine's RAM"
    return text


def wire_plan(engine, widget: MemoryModeWidget, build: Callable[..., object], inputs: list) -> None:
    """Show the plan when the page loads and as soon as any of ``inputs`` (the tab's request fields, the widget's
    included) changes. ``build(*values)`` returns the tab's request. Not at build time: a plan imports its job's
    runner (diffusers, peft), which the server's start must not wait for."""

    def update(*values):
        return plan_text(engine, build, *values)

    gr.on(triggers=None, fn=update, inputs=inputs, outputs=widget.plan, show_progress="hidden",
          api_visibility="private", queue=False)  # triggers=None: on page load and on every change of the inputs


def measured_text(result) -> str:
    """After a run: the measured peak and the bytes moved, next to what the plan predicted."""
    memory = result.metadata.get("memory") or {}
    if not memory:
        return ""
    # the allocator's reserved peak is what the process held (allocated drops at free time, before pending stream
    # work is done); older results carry the allocated one only
    cuda_peak = memory.get("cuda_peak_reserved") or memory.get("cuda_peak_allocated")
    peak = cuda_peak or memory.get("peak_compute_bytes", 0)
    source = ("reserved peak" if memory.get("cuda_peak_reserved") else "allocator peak") if cuda_peak \
        else "weights peak (ledger)"
    plan = memory.get("plan") or {}
    predicted = plan.get("predicted_peak") if cuda_peak else plan.get("weights_peak")
    text = (f"**Measured** · {memory.get('mode')}: {source} {_gib(peak)} GiB"
            + (f" (plan {_gib(predicted)} GiB)" if predicted else "")
            + f", {_gib(memory.get('bytes_moved', 0))} GiB moved")
    summary = next((s.get("trace_summary") for s in memory.get("sessions", []) if s.get("trace_summary")), None)
    if summary:
        text += (f" · trace: copy {summary['copy_ms']:.0f} ms, compute {summary['compute_ms']:.0f} ms, "
                 f"waited {summary['wait_ms']:.0f} ms ({summary['hidden_fraction']:.0%} of copy time hidden)")
    for warning in dict.fromkeys(w for s in memory.get("sessions", []) for w in s.get("notes", [])):
        text += f"  \n⚠️ {warning}"
    return text


def _gib(n) -> str:
    n = n or 0
    return f"{n / GiB:.2f}" if n >= GiB / 100 else f"{n / GiB:.4f}"


def trace_plot_update(result):
    """The trace plot (mean copy / compute / wait per block over the steps), or hidden without a trace."""
    path = next((f for f in result.files if f.endswith(".csv")), None)
    if path is None:
        return gr.update(visible=False)
    sums: dict[tuple[int, str], list[float]] = {}
    with open(path, newline="") as f:
        for row in csv.DictReader(f):
            block = int(row["block"])
            for kind in ("copy", "compute", "wait"):
                sums.setdefault((block, kind), []).append(float(row[f"{kind}_ms"]))
    import pandas as pd  # gradio's own dependency; only needed once a trace exists

    frame = pd.DataFrame([{"block": b, "kind": k, "ms": sum(v) / len(v)} for (b, k), v in sorted(sums.items())])
    return gr.update(value=frame, visible=True)


def after_run(engine, widget: MemoryModeWidget, result, plan_line: str) -> dict:
    """The widget's updates after a run: the plan line with what was measured, and the trace plot."""
    return {widget.plan: f"{plan_line}  \n{measured_text(result)}", widget.trace_plot: trace_plot_update(result)}
