"""The memory panel: per-device bars and the ledger of loaded modules, polled once a second.

The formatting functions are pure (snapshot dict in, HTML/rows out) so that tests check them
without a browser; ``build`` only wires them to a ``gr.Timer``.
"""

from __future__ import annotations

import html
import time

import gradio as gr

from engine import EngineError

from .components import CONTROLS, engine_booted

MIB = 2**20
GIB = 2**30
COLUMNS = ["module", "role", "size MiB", "dtype", "device", "on compute MiB"]
NO_MODULES = "No models loaded yet: they load on the first run."


def human_bytes(n: int | float | None) -> str:
    if n is None:
        return "–"
    if abs(n) >= GIB:
        return f"{n / GIB:.1f} GiB"
    return f"{n / MIB:.0f} MiB" if abs(n) >= 10 * MIB else f"{n / MIB:.1f} MiB"


def _percent(part: float, whole: float) -> float:
    return max(0.0, min(100.0, 100.0 * part / whole)) if whole else 0.0


def _process_bytes(dev: dict) -> int:
    """This process' share: the CUDA allocator's reservation, or the resident set for system RAM."""
    return int(dev.get("reserved") or dev.get("allocated") or 0)


PALETTE = ("#ea580c", "#2563eb", "#16a34a", "#9333ea", "#db2777", "#0891b2", "#ca8a04", "#4b5563")


def _module_segments(snapshot: dict, device: str) -> list[tuple[str, int, str]]:
    """(name, bytes on this device, colour) per registered module that holds weights here, biggest first."""
    if device != snapshot.get("compute_device"):
        return []
    held = [(m.get("name", "?") + (f": {m['blocks']}" if m.get("blocks") else ""),  # "transformer: 6 of 57 blocks"
             int(m.get("bytes_on_compute") or 0)) for m in snapshot.get("modules", [])
            if not m.get("part_of")]  # a LoRA's layers are inside its transformer's segment already
    held = sorted((h for h in held if h[1] > 0), key=lambda h: -h[1])
    return [(name, n, PALETTE[i % len(PALETTE)]) for i, (name, n) in enumerate(held)]


def _segment(width: float, colour: str, title: str) -> str:
    return f"<div title='{html.escape(title, quote=True)}' style='width:{width:.2f}%;background:{colour}'></div>"


def format_devices(snapshot: dict) -> str:
    """One bar per device. On the compute device every registered module is its own coloured segment
    (hover for its name), then the rest of this process, then other processes; a legend names them.
    With Ray Serve replicas (``snapshot["replicas"]``), one such section per replica, under its name."""
    if "replicas" in snapshot:
        return _per_replica(snapshot, format_devices, "No replica has reported yet.")
    rows = []
    compute = snapshot.get("compute_device")
    for dev in snapshot.get("devices", []):
        total, used = int(dev.get("total") or 0), int(dev.get("used") or 0)
        mine = min(_process_bytes(dev), used) if used else _process_bytes(dev)
        other = max(used - mine, 0)
        modules = _module_segments(snapshot, dev.get("device"))
        in_modules = sum(n for _, n, _ in modules)
        name = html.escape(f"{dev.get('device', '?')} · {dev.get('name', '')}".strip(" ·"))
        tag = " <span class='vram-tag'>compute</span>" if dev.get("device") == compute else ""
        peak = f" · peak {human_bytes(dev['peak'])}" if dev.get("peak") else ""
        bar = "".join(_segment(_percent(n, total), c, f"{m}: {human_bytes(n)}") for m, n, c in modules)
        bar += _segment(_percent(max(mine - in_modules, 0), total), "#fdba74", "this process, outside the models")
        bar += _segment(_percent(other, total), "#d6d3d1", "other processes")
        legend = "".join(
            f"<span style='margin-right:12px;white-space:nowrap'><span style='color:{c}'>■</span> "
            f"{html.escape(m)} {human_bytes(n)}</span>"
            for m, n, c in modules
        )
        rows.append(
            "<div class='vram-device' style='margin:2px 0 8px 0'>"
            f"<div style='display:flex;justify-content:space-between;gap:12px;font-size:0.9em'>"
            f"<span><b>{name}</b>{tag}</span>"
            f"<span>{human_bytes(used)} / {human_bytes(total)} used · this process {human_bytes(mine)}{peak}</span>"
            "</div>"
            "<div class='vram-bar' style='display:flex;height:12px;border-radius:6px;overflow:hidden;"
            f"background:rgba(127,127,127,0.18);margin-top:3px'>{bar}</div>"
            + (f"<div class='vram-legend' style='font-size:0.8em;margin-top:3px'>{legend}</div>" if legend else "")
            + "</div>"
        )
    if not rows:
        return ("<div class='vram-panel'>Reading the devices…</div>" if snapshot.get("booting")
                else "<div class='vram-panel'>No device readout available.</div>")
    return "<div class='vram-panel'>" + "".join(rows) + "</div>"


def _per_replica(snapshot: dict, render, empty: str) -> str:
    sections = [f"<div class='vram-replica'><div class='vram-replica-name' style='font-weight:600;margin-top:6px'>"
                f"{html.escape(r['label'])}</div>{render(r['snapshot'])}</div>" for r in snapshot["replicas"]]
    return "".join(sections) or f"<div class='vram-panel'>{empty}</div>"


def module_rows(snapshot: dict) -> list[list]:
    """The ledger as table rows: name, role, size MiB, dtype, device, MiB on the compute device
    (names prefixed ``r1/``, ``r2/``... per Ray Serve replica)."""
    if "replicas" in snapshot:
        return [[f"r{i + 1}/{row[0]}", *row[1:]] for i, r in enumerate(snapshot["replicas"])
                for row in module_rows(r["snapshot"])]
    return [
        [
            m.get("name", ""),
            m.get("role", "") + (f" · in {m['part_of']}" if m.get("part_of") else ""),
            round((m.get("bytes") or 0) / MIB, 1),
            m.get("dtype", ""),
            m.get("device", "") + (f" · {m['blocks']}" if m.get("blocks") else ""),  # "6 of 57 blocks"
            round((m.get("bytes_on_compute") or 0) / MIB, 1),
        ]
        for m in snapshot.get("modules", [])
    ]


def format_summary(snapshot: dict) -> str:
    if "replicas" in snapshot:
        return "  \n".join(f"**r{i + 1}**: {format_summary(r['snapshot'])}" for i, r in enumerate(snapshot["replicas"])) \
            or "No replica has reported yet."
    modules = snapshot.get("modules", [])
    if not modules:
        return NO_MODULES
    budget = snapshot.get("budget")
    budget_text = f"budget {human_bytes(budget)}" if budget else "no budget limit"
    in_use = sum(1 for m in modules if m.get("in_use"))
    busy = f" · {in_use} in use" if in_use else ""
    return (
        f"{len(modules)} module(s) registered · {human_bytes(snapshot.get('resident', 0))} resident on "
        f"`{snapshot.get('compute_device', '?')}` · {budget_text}{busy}"
    )


def format_updated(now: float | None = None) -> str:
    return "updated " + time.strftime("%H:%M:%S", time.localtime(now))


def readout(engine) -> tuple:
    """The panel's outputs for the current snapshot (what the timer returns)."""
    snap = engine.memory.snapshot()
    rows = module_rows(snap)
    return (
        format_devices(snap),
        format_summary(snap),
        rows,
        format_updated(),
    )


def build(engine, interval: float = 1.0) -> gr.Timer:
    # the page is built before the engine has loaded torch: the first tick (a second later) fills in the devices
    snap = engine.memory.snapshot() if engine_booted(engine) else {"devices": [], "modules": [], "booting": True}
    rows = module_rows(snap)
    with gr.Accordion("Memory", open=True, elem_id="vram-panel"):
        devices = gr.HTML(format_devices(snap), elem_id="vram-devices")
        with gr.Row(equal_height=True):
            summary = gr.Markdown(format_summary(snap), elem_id="vram-summary")
            updated = gr.Markdown(format_updated(), elem_id="vram-updated", elem_classes=["vram-updated"])
        with gr.Accordion("Loaded modules", open=False, elem_id="vram-modules-accordion"):
            table = gr.Dataframe(
                value=rows, headers=COLUMNS, type="array", interactive=False,
                datatype=["str", "str", "number", "str", "str", "number"], elem_id="vram-modules", max_height=260,
                show_label=False,
            )
            unload = gr.Button("Unload all models", size="sm", variant="secondary", elem_id="vram-unload")
    timer = gr.Timer(interval)
    outputs = [devices, summary, table, updated]

    def unload_all():
        try:
            count = engine.unload_all()
        except EngineError as exc:  # a run holds the device
            gr.Warning(str(exc))
        else:
            gr.Info(f"Unloaded {count} module(s); they load again on the next run.")
        return readout(engine)

    unload.click(unload_all, None, outputs, concurrency_limit=None, concurrency_id=CONTROLS,
                 show_progress="hidden", api_name="unload_all")
    # Readouts never queue behind a run: no concurrency limit and a group of their own.
    timer.tick(
        lambda: readout(engine), None, outputs,
        concurrency_limit=None, concurrency_id=CONTROLS, show_progress="hidden", api_name="vram",
    )
    return timer
