"""Cold start: wall time from spawning ``python app.py --demo`` to the first HTTP 200 on ``/``.

The demo models are built beforehand (not timed), so this measures imports, engine and page
construction and server start; the app's own ``startup:`` line gives the breakdown by stage (the rest of the
total is the interpreter's start and app.py's own imports). Goal: at most 2.5 s (median) on 2 CPU cores.

    python bench/cold_start.py [--models-dir DIR] [--runs 3] [--cpus 2]
"""

from __future__ import annotations

import argparse
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
GOAL_S = 2.5


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def stages_of(out: str) -> dict[str, float]:
    """``startup: engine import 0.31 s, engine 0.00 s, ...`` (printed by app.py) as {stage: seconds}."""
    line = next((ln for ln in out.splitlines() if ln.startswith("startup: ")), "")
    found = {}
    for part in line[len("startup: "):].split(", "):
        name, _, rest = part.rpartition(" ")[0].rpartition(" ")
        if name:
            found[name] = float(rest)
    return found


def one_start(models_dir: Path, outputs_dir: Path, cpus: int | None, timeout: float) -> tuple[float, dict]:
    port = free_port()
    url = f"http://127.0.0.1:{port}/"
    cmd = [sys.executable, "app.py", "--demo", "--port", str(port), "--models-dir", str(models_dir),
           "--outputs-dir", str(outputs_dir)]
    pin = None
    if cpus and hasattr(os, "sched_setaffinity"):
        cores = sorted(os.sched_getaffinity(0))[:cpus]
        pin = lambda: os.sched_setaffinity(0, cores)  # noqa: E731 - runs in the child before exec
    log = tempfile.TemporaryFile()  # a file, not a pipe: a chatty server can never block on a full pipe
    out = tempfile.TemporaryFile()
    t0 = time.perf_counter()
    proc = subprocess.Popen(cmd, cwd=ROOT, stdout=out, stderr=log, preexec_fn=pin)
    try:
        while True:
            elapsed = time.perf_counter() - t0
            if proc.poll() is not None:
                log.seek(0)
                err = log.read().decode(errors="replace")[-2000:]
                raise SystemExit(f"app.py exited with code {proc.returncode} after {elapsed:.1f} s\n{err}")
            if elapsed > timeout:
                raise SystemExit(f"no HTTP 200 on {url} within {timeout:.0f} s")
            try:
                with urllib.request.urlopen(url, timeout=1) as response:
                    if response.status == 200:
                        total = time.perf_counter() - t0
                        for _ in range(100):  # the stage line comes right after launch() returns
                            out.seek(0)
                            stages = stages_of(out.read().decode(errors="replace"))
                            if stages:
                                break
                            time.sleep(0.05)
                        return total, stages
            except (urllib.error.URLError, ConnectionError, TimeoutError):
                pass
            time.sleep(0.02)
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        log.close()
        out.close()


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--models-dir", type=Path, default=None, help="models dir (default: a temporary one)")
    p.add_argument("--runs", type=int, default=5)
    p.add_argument("--cpus", type=int, default=2, help="pin the app to this many cores (0 = no pinning)")
    p.add_argument("--timeout", type=float, default=120.0)
    args = p.parse_args()

    sys.path.insert(0, str(ROOT))
    from engine.demo import build_demo_models

    with tempfile.TemporaryDirectory(prefix="cold-start-") as tmp:
        models_dir = args.models_dir or Path(tmp) / "models"
        t0 = time.perf_counter()
        build_demo_models(models_dir)
        print(f"demo models ready in {models_dir} ({time.perf_counter() - t0:.1f} s, not timed)")
        times, breakdowns = [], []
        for i in range(args.runs):
            t, stages = one_start(models_dir, Path(tmp) / "outputs", args.cpus or None, args.timeout)
            times.append(t)
            breakdowns.append(stages)
            print(f"run {i + 1}: first HTTP 200 after {t:.2f} s ("
                  + ", ".join(f"{k} {v:.2f}" for k, v in stages.items()) + ")")
    names = [k for k in breakdowns[0]] if breakdowns and breakdowns[0] else []
    if names:
        medians = {k: statistics.median(b.get(k, 0.0) for b in breakdowns) for k in names}
        rest = statistics.median(t - sum(b.values()) for t, b in zip(times, breakdowns))  # per run, then median
        print("median breakdown: " + ", ".join(f"{k} {v:.2f} s" for k, v in medians.items())
              + f", interpreter + app.py imports + first answer {rest:.2f} s"
              + (" (negative: the first answer came while launch() was still running its own checks, inside "
                 "'server start')" if rest < 0 else ""))
    cores = f"{args.cpus} core(s)" if args.cpus else f"{os.cpu_count()} cores"
    median = statistics.median(times)
    verdict = "OK" if median <= GOAL_S else "OVER GOAL"
    print(f"cold start on {cores}: best {min(times):.2f} s, median {median:.2f} s of {len(times)} "
          f"(goal <= {GOAL_S:g} s): {verdict}")
    return 0 if median <= GOAL_S else 1


if __name__ == "__main__":
    sys.exit(main())
