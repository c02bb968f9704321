"""``bench/gpu_check.py --tiny`` on the CPU: the same sections as on a GPU, its JSON written after every section
(readable while it still runs), one entry per section and mode with the plan's prediction beside the measurement."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "bench"))

from gpu_check import ENTRY_KEYS, write_report  # noqa: E402

SECTIONS = ("flux", "wan", "wan_pair")
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


def test_tiny_run_writes_every_section_as_it_ends(tmp_path):
    out = tmp_path / "tiny.json"
    proc = subprocess.Popen([sys.executable, str(ROOT / "bench" / "gpu_check.py"), "--tiny", "--steps", "1",
                             "--only", ",".join(SECTIONS), "--out", str(out)], cwd=ROOT,
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
    assert early["sections"].get("wan_pair", {}).get("status") != "done"
    assert {e["section"] for e in early["entries"]} <= {"flux", "wan"}

    report = read(out)
    assert [report["sections"][s]["status"] for s in SECTIONS] == ["done"] * 3
    for section in SECTIONS:
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
        streamed = [e for e in entries if e["mode"] in ("block_swap", "chunkwise") and section != "wan_pair"]
        assert all(e["hidden_fraction"] is not None for e in streamed)  # from the per-block trace
    # after each section the models are gone: RSS is recorded at every section's end
    assert all("host_rss_bytes" in report["sections"][s]["after"] for s in SECTIONS)
