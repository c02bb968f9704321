"""``bench/gpu_check.py --tiny`` on the CPU: the same sections as on a GPU, its JSON written after every section
(readable while it still runs), one entry per section and mode with the plan's prediction beside the measurement."""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "bench"))

from gpu_check import ENTRY_KEYS, SECTIONS, skip_reason, write_report  # noqa: E402

from engine.requests import PERCEPTION_TASKS  # noqa: E402

MODE_SECTIONS = ("flux", "qwen", "wan", "wan_pair")  # one entry per mode; the others report their own figures
POSITIVE = ("predicted_peak_bytes", "reserved_peak_bytes", "allocated_peak_bytes", "mem_get_info_low_bytes",
            "host_rss_bytes", "s_per_step", "bound_s")


def read(path: Path) -> dict | None:
    try:
        return json.loads(path.read_text())
    except (OSError, json.JSONDecodeError):
        return None


def test_write_report_is_atomic(tmp_path):
    path = tmp_path / "r.json"
    write_report(str(path), {"a": 1})
    write_report(str(path), {"a": 2})
    assert read(path) == {"a": 2} and not (tmp_path / "r.json.tmp").exists()


def test_flags_leave_sections_out_with_a_reason():
    def args(**kw):
        return argparse.Namespace(**{"only": "", "quick": False, "no_pair": False, "no_perception": False, **kw})

    assert [s for s in SECTIONS if skip_reason(s, args())] == []  # the full run (and --tiny) runs every section
    assert {s: skip_reason(s, args(quick=True)) for s in SECTIONS if skip_reason(s, args(quick=True))} == \
        {"qwen": "--quick", "perception": "--quick", "context_parallel": "--quick"}
    assert skip_reason("wan_pair", args(no_pair=True)) == "--no-pair"
    assert skip_reason("perception", args(no_perception=True)) == "--no-perception"
    assert skip_reason("wan", args(only="flux,qwen")) == "not in --only" and not skip_reason("qwen", args(only="qwen"))


def test_tiny_run_writes_every_section_as_it_ends(tmp_path):
    """One ``--tiny --steps 1`` run with no section left out: the sections a GPU runs, in the same order."""
    out = tmp_path / "tiny.json"
    proc = subprocess.Popen([sys.executable, str(ROOT / "bench" / "gpu_check.py"), "--tiny", "--steps", "1",
                             "--out", str(out)], cwd=ROOT,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            env={**os.environ, "CUDA_VISIBLE_DEVICES": ""})
    # while it runs: as soon as the first section is done its entries are on disk, the later ones not yet done
    early, deadline = None, time.monotonic() + 600
    while proc.poll() is None and time.monotonic() < deadline:
        report = read(out)
        if report and report["sections"].get("flux", {}).get("status") == "done":
            early = report
            break
        time.sleep(0.1)  # polling the file for the event "flux written"
    output, _ = proc.communicate(timeout=600)
    assert proc.returncode == 0, output[-3000:]
    assert early is not None, "the flux section's results were not written before the run ended"
    assert early["sections"].get(SECTIONS[-1], {}).get("status") is None
    assert {e["section"] for e in early["entries"]} <= {"flux", "qwen"}

    report = read(out)
    assert list(report["sections"]) == list(SECTIONS)
    assert {s: report["sections"][s]["status"] for s in SECTIONS} == dict.fromkeys(SECTIONS, "done"), \
        {s: report["sections"][s].get("error") for s in SECTIONS}
    for section in MODE_SECTIONS:
        entries = [e for e in report["entries"] if e["section"] == section]
        modes = {e["mode"] for e in entries}
        expected = {"none", "model_offload", "block_swap", "adaptive"} if section == "wan_pair" else \
            {"none", "block_swap", "adaptive", "chunkwise", "layerwise"}
        assert modes == expected, (section, modes)
        for e in entries:
            assert "error" not in e, e
            assert set(ENTRY_KEYS) <= set(e), (section, e["mode"], set(ENTRY_KEYS) - set(e))
            for key in POSITIVE:  # predicted and measured, both there and positive
                assert e[key] > 0, (section, e["mode"], key, e[key])
            assert e["pinned_bytes"] >= 0 and e["measured_by"].startswith("ledger")
            assert e["predicted_weights_bytes"] <= e["predicted_peak_bytes"]
        if section != "wan_pair":  # the pair's modes run without the per-block trace
            streamed = [e for e in entries if e["mode"] in ("block_swap", "chunkwise")]
            assert streamed and all(e["hidden_fraction"] is not None for e in streamed)  # from the trace
    assert {e["section"] for e in report["entries"]} == set(MODE_SECTIONS)
    # after each section the models are gone: RSS is recorded at every section's end
    assert all("host_rss_bytes" in report["sections"][s]["after"] for s in SECTIONS)

    ip = report["sections"]["ipadapter"]["result"]
    assert ip["cache_hit"] and all(n > 0 for n in ip["ledger_bytes"].values())
    assert set(ip["ledger_bytes"]) == {"image_encoder", "projector", "adapter"}
    assert all(t > 0 for kind in ("double", "single") for t in ip["per_block_s"][kind].values())

    perception = report["sections"]["perception"]["result"]
    ran = [tuple(r["tasks"]) for r in perception["rows"]]
    assert set(ran) == {("depth",), *((t,) for t in PERCEPTION_TASKS), tuple(PERCEPTION_TASKS)}
    assert all(r["ledger_gib"] > 0 and set(r["seam_error"]) == set(r["tasks"]) for r in perception["rows"])

    # context parallelism: the Wan expert split over two CPU processes equals one; the engine path (torchrun over
    # CUDA GPUs) is recorded as skipped, with the reason
    cp = report["sections"]["context_parallel"]["result"]
    assert cp["expert"]["gpus"] == 2 and cp["expert"]["max_abs_diff"] <= 1e-5, cp["expert"]
    assert "CUDA" in cp["engine"]["skipped"], cp["engine"]
