"""The ComfyUI workflow import under attack (issue 30, point 3): one huge API workflow (a chain of N LoRA loaders,
18 MB at N = 150 000) and 6 of them at once, against a running app's /comfy_import, with the server's CPU time
and RSS read from /proc. Run: ``python bench/import_attack.py [--nodes 150000] [--parallel 6]`` (starts its own
demo app in a subprocess; ``--url`` to point at a running one and ``--pid`` for its process)."""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def lora_chain(n: int) -> dict:
    """A text-to-image API graph whose model passes through ``n`` chained LoraLoaderModelOnly nodes."""
    from comfy_export import to_api
    from engine.requests import TextToImageRequest

    api = to_api(TextToImageRequest(prompt="attack"))
    previous = ["1", 0]
    for i in range(n):
        nid = str(1000 + i)
        api[nid] = {"class_type": "LoraLoaderModelOnly",
                    "inputs": {"model": previous, "lora_name": f"l{i}.safetensors", "strength_model": 1.0}}
        previous = [nid, 0]
    api["8"]["inputs"]["model"] = previous
    return api


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


def cpu_s(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    import os

    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def one_import(url: str, path: Path, out: list) -> None:
    from gradio_client import Client, handle_file

    t0 = time.perf_counter()
    try:
        result = Client(url, verbose=False).predict(handle_file(str(path)), api_name="/comfy_import")
        status = next((r for r in result if isinstance(r, str) and r), "")
    except Exception as exc:  # noqa: BLE001 - the bench reports whatever the server answered
        status = f"{type(exc).__name__}: {exc}"
    out.append((time.perf_counter() - t0, status[:140]))


def main() -> int:
    p = argparse.ArgumentParser()
    p.add_argument("--nodes", type=int, default=150_000)
    p.add_argument("--parallel", type=int, default=6)
    p.add_argument("--url", default=None)
    p.add_argument("--pid", type=int, default=None)
    p.add_argument("--port", type=int, default=7899)
    p.add_argument("--models-dir", default=None, help="reuse a models folder with the demo models built")
    args = p.parse_args()
    work = Path(tempfile.mkdtemp(prefix="import-attack-"))
    path = work / "chain.json"
    path.write_text(json.dumps(lora_chain(args.nodes)))
    print(f"workflow: {args.nodes} chained LoRA loaders, {path.stat().st_size / 2**20:.1f} MB")
    server = None
    url, pid = args.url, args.pid
    if url is None:
        server = subprocess.Popen([sys.executable, "app.py", "--demo", "--port", str(args.port), "--models-dir",
                                   args.models_dir or str(work / "models"), "--outputs-dir", str(work / "out")], cwd=ROOT,
                                  stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        for line in server.stdout:
            if line.startswith("Open "):
                break
        url, pid = f"http://127.0.0.1:{args.port}/", server.pid
    try:
        base_rss, base_cpu = rss_mb(pid), cpu_s(pid)
        peak = [base_rss]
        done = threading.Event()

        def sample():
            while not done.is_set():
                peak[0] = max(peak[0], rss_mb(pid))
                time.sleep(0.05)

        threading.Thread(target=sample, daemon=True).start()
        out: list = []
        one_import(url, path, out)
        print(f"one import: {out[0][0]:.2f} s wall, {cpu_s(pid) - base_cpu:.2f} s server CPU, "
              f"RSS {base_rss:.0f} -> peak {peak[0]:.0f} MB; answer: {out[0][1]!r}")
        out.clear()
        threads = [threading.Thread(target=one_import, args=(url, path, out)) for _ in range(args.parallel)]
        t0 = time.perf_counter()
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        done.set()
        print(f"{args.parallel} parallel imports: all answered in {time.perf_counter() - t0:.2f} s "
              f"(slowest {max(o[0] for o in out):.2f} s), server peak RSS {peak[0]:.0f} MB "
              f"(started at {base_rss:.0f} MB)")
    finally:
        if server is not None:
            server.terminate()
            server.wait(timeout=30)
    return 0


if __name__ == "__main__":
    sys.exit(main())
