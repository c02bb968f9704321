"""Host and device memory of the streaming modes at real size, counted by the simulated CUDA backend.

Per model (FLUX.1-dev, one Wan 2.2 A14B expert, the expert pair, Qwen-Image; real configs on the meta device, no
bytes) and streaming mode, with the mode's default settings: the weights, the page-locked and pageable host bytes
at the busiest moment, and the device bytes (resident slab + ring). "before" is what the previous code would have
locked: every tensor of every streamed model pinned one by one at apply time, each rounded up to a power of two
by PyTorch's pinned allocator (both Wan experts at once); its device bytes are not bounded (allocate-at-issue +
record_stream grows with the host's run-ahead), shown as 0.

    python bench/host_memory.py [--json PATH]
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from engine.memory import MemoryManager  # noqa: E402
from engine.memory.backend.simulated import SimBackend  # noqa: E402
from engine.memory.block_stream import BlockStreamer  # noqa: E402
from engine.memory.component_offload import bring  # noqa: E402
from engine.memory.host_pool import pow2  # noqa: E402
from engine.memory.planner import layout_for  # noqa: E402
from engine.memory.real_layouts import meta_transformer, run_calls  # noqa: E402
from engine.memory.strategies.base import Component  # noqa: E402
from engine.memory.strategies.streaming import measured_size  # noqa: E402
from engine.memory.transfer import TensorStore, collect_slots  # noqa: E402
from engine.requests import SwapSettings  # noqa: E402

GiB = 2**30
MODES = ("block_swap", "chunkwise", "adaptive")
BUDGET = 24 * GiB  # adaptive's budget: a 24 GB card


def weights(modules) -> int:
    return sum(s.nbytes for m in modules for s in collect_slots(m).values())


def before(modules) -> int:
    """The old per-tensor pinning: every tensor of every model, each a power of two."""
    return sum(pow2(s.nbytes) for m in modules for s in collect_slots(m).values())


def host_now(streamers) -> tuple[int, int]:
    """(pinned, pageable) host bytes now: pinned slabs as allocated, pageable host copies not in a pinned slab."""
    pinned = sum(st.pinned_bytes for st in streamers)
    pageable = 0
    for st in streamers:
        in_pool = {id(s) for s in (st.pool.slots if st.pool is not None else [])}
        pageable += sum(s.nbytes for s in st.store.slots.values() if s.host is not None and id(s) not in in_pool)
    return pinned, pageable


def measure(label: str, modules: list, mode: str) -> dict:
    sim = SimBackend(run_ahead=8)
    ledger = MemoryManager("cuda:0", offload_device="cpu", budget_bytes=BUDGET, backend=sim)
    settings = SwapSettings(mode=mode)
    streamers = []
    for i, module in enumerate(modules):
        name = f"t{i}"
        ledger.register(name, module, "transformer")
        layout = layout_for(mode, measured_size(Component(name, "transformer", module, "transformer")), settings,
                            BUDGET, 2 * GiB)
        if layout is None:
            raise SystemExit(f"{label}: {mode} does not fit {BUDGET / GiB:.0f} GiB")

        def make(m, place, disk_file, name=name, layout=layout):
            store = TensorStore(m, ledger.compute_device, place, disk_file, backend=sim)
            return BlockStreamer(name, m, store, layout, ledger.residency_changed)

        streamers.append(ledger.attach_residency(name, make))
    peak_pinned = peak_pageable = 0
    for st in streamers:
        bring(ledger, st.name, [o.name for o in streamers if o is not st])  # the expert switch
        run_calls(st, calls=2)
        pinned, pageable = host_now(streamers)  # while this model computes: the busiest moment for the host
        peak_pinned, peak_pageable = max(peak_pinned, pinned), max(peak_pageable, pageable)
        st.evict_streamed()
    row = {"model": label, "mode": mode, "weights_bytes": weights(modules), "pinned_bytes": sim.peak_pinned,
           "host_bytes": peak_pinned + peak_pageable, "device_bytes": sim.peak_reserved,
           "before_pinned_bytes": before(modules)}
    for name in list(ledger.names()):
        ledger.unregister(name)
    assert sim.pinned_reserved == 0, "pinned memory left behind"
    return row


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--json", type=Path, help="write the rows here")
    args = ap.parse_args()
    wan_high = meta_transformer("wan")
    models = {"FLUX.1-dev": [meta_transformer("flux")], "Wan 2.2 A14B expert": [wan_high],
              "Wan 2.2 A14B pair": [wan_high, meta_transformer("wan")], "Qwen-Image": [meta_transformer("qwen")]}
    rows = [measure(label, modules, mode) for label, modules in models.items() for mode in MODES]
    head = f"{'model':22} {'mode':11} {'weights':>8} {'host':>8} {'pinned':>8} {'device':>8}   before: pinned (x)"
    print(head)
    for r in rows:
        w = r["weights_bytes"]
        print(f"{r['model']:22} {r['mode']:11} {w / GiB:7.1f}G {r['host_bytes'] / GiB:7.1f}G "
              f"{r['pinned_bytes'] / GiB:7.1f}G {r['device_bytes'] / GiB:7.1f}G   "
              f"{r['before_pinned_bytes'] / GiB:6.1f}G ({r['before_pinned_bytes'] / w:.2f}x)  "
              f"now host {r['host_bytes'] / w:.2f}x, pinned {r['pinned_bytes'] / w:.2f}x")
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(rows, indent=1))


if __name__ == "__main__":
    main()
