"""Panorama perception (OmniX) on the demo model: seam error with and without seam blending, and one task vs all
tasks in one run (time and peak ledger bytes), measured side by side in one process.

    python bench/perception.py [--size 64] [--steps 2] [--seeds 4]

Times are this process's CPU seconds (``time.process_time``): the wall clock of a shared machine mostly measures
the other processes. Seam error = mean |first column - last column| of a map (0..1 scale). On the demo's random weights a map has no
spatial coherence, so the pipeline-level numbers mostly show noise; the VAE-level row decodes a smooth periodic
latent, where the seam decode's effect is visible. On real weights (a GPU) the pipeline row is the one to read.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np  # noqa: E402
import torch  # noqa: E402
from PIL import Image  # noqa: E402

from engine import Engine, ModelRef, PerceptionRequest  # noqa: E402
from engine.demo import build_demo_models  # noqa: E402
from engine.panorama import seam
from engine.requests import PERCEPTION_TASKS  # noqa: E402


def panorama(path: Path, height: int) -> str:
    """A smooth, horizontally periodic test panorama."""
    w = 2 * height
    x, y = np.meshgrid(np.arange(w) / w, np.arange(height) / height)
    rgb = np.stack([0.5 + 0.4 * np.sin(2 * np.pi * x), 0.5 + 0.4 * np.cos(4 * np.pi * x) * y, 0.2 + 0.6 * y], -1)
    Image.fromarray((rgb * 255).astype(np.uint8)).save(path)
    return str(path)


def vae_seam(vae, lat_h: int) -> tuple[float, float]:
    lat_w = 2 * lat_h
    x, y = torch.arange(lat_w) / lat_w, torch.arange(lat_h) / lat_h
    g = torch.Generator().manual_seed(0)
    phase, amp = torch.rand(4, 1, 1, generator=g) * 6.28, torch.rand(4, 1, 1, generator=g) + 0.5
    z = (amp * torch.sin(2 * np.pi * x + phase) * torch.cos(np.pi * y[:, None]))[None]
    with torch.no_grad():
        return seam.seam_error(seam.decode(vae, z, seam=True)), seam.seam_error(seam.decode(vae, z, seam=False))


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--size", type=int, default=64, help="panorama height (width is twice it)")
    ap.add_argument("--steps", type=int, default=2)
    ap.add_argument("--seeds", type=int, default=4)
    ap.add_argument("--repeats", type=int, default=3, help="timings: the best of this many interleaved runs")
    ap.add_argument("--models-dir", default=None)
    args = ap.parse_args()

    models_dir = Path(args.models_dir or tempfile.mkdtemp(prefix="bench-models-"))
    build_demo_models(models_dir)
    out = Path(tempfile.mkdtemp(prefix="bench-out-"))
    engine = Engine(models_dir=models_dir, demo=True, outputs_dir=out)
    path = panorama(out / "pano.png", args.size)

    def run(tasks, **kw):
        req = PerceptionRequest(panorama=path, tasks=tuple(tasks), steps=args.steps, sphere_mesh=False, **kw)
        # CPU seconds of this process: on a shared machine the wall clock mostly measures the neighbours
        t0 = time.process_time()
        result = engine.run(req)
        return time.process_time() - t0, result

    run(["depth"])  # warm up (first-call costs)

    print(f"# seam error, depth map, {2 * args.size}x{args.size}, {args.steps} steps, {args.seeds} seeds")
    on, off = [], []
    for seed in range(args.seeds):
        on.append(run(["depth"], seed=seed)[1].metadata["seam_error"]["depth"])
        off.append(run(["depth"], seed=seed, seam_blending=False)[1].metadata["seam_error"]["depth"])
    print("| where | blending on | blending off | on / off |")
    print("|---|---|---|---|")
    print(f"| pipeline (demo weights) | {statistics.mean(on):.4f} | {statistics.mean(off):.4f} | "
          f"{statistics.mean(on) / statistics.mean(off):.2f} |")
    v_on, v_off = vae_seam(engine.store.load_pipeline(ModelRef(repo_id="black-forest-labs/FLUX.1-dev")).vae,
                           args.size // 2)
    print(f"| VAE decode, smooth periodic latent | {v_on:.4f} | {v_off:.4f} | {v_on / v_off:.2f} |")

    print(f"\n# one task vs all {len(PERCEPTION_TASKS)} tasks in one run")
    print(f"| run | CPU seconds (best of {args.repeats}) | peak ledger MiB |")
    print("|---|---|---|")
    best: dict[str, float] = {}
    peaks: dict[str, int] = {}
    for _ in range(args.repeats):  # interleaved, so load changes on the machine hit every row alike
        for task in (*PERCEPTION_TASKS, "all"):
            t, r = run(PERCEPTION_TASKS if task == "all" else [task])
            best[task] = min(best.get(task, t), t)
            peaks[task] = r.metadata["peak_ledger_bytes"]
    for task in PERCEPTION_TASKS:
        print(f"| {task} alone | {best[task]:.2f} | {peaks[task] / 2**20:.2f} |")
    singles_t = sum(best[t] for t in PERCEPTION_TASKS)
    singles_peak = max(peaks[t] for t in PERCEPTION_TASKS)
    print(f"| sum of the {len(PERCEPTION_TASKS)} singles | {singles_t:.2f} | {singles_peak / 2**20:.2f} (max) |")
    print(f"| all in one run | {best['all']:.2f} | {peaks['all'] / 2**20:.2f} |")
    print(f"\nall-in-one / sum of singles: time {best['all'] / singles_t:.2f}x; "
          f"peak ledger {peaks['all'] / singles_peak:.2f}x the largest single (all adapter pairs stay in for the run)")
    if torch.cuda.is_available():
        print(f"peak CUDA memory: {torch.cuda.max_memory_allocated() / 2**30:.2f} GiB")


if __name__ == "__main__":
    main()
