"""Image to video on the tiny demo Wan 2.2 models, on the CPU: seconds per denoising step (from the step
callbacks), and the step cache on vs off side by side (interleaved runs, same seed): time ratio and the largest
pixel difference, at a threshold that never skips on random weights (0.05) and at a forced-skip one (1e9, only the
first step computes fully); MagCache at its usual threshold and a high one (the first run of each calibrates and is
not timed). Also the TurboWan rCM pipeline (4 steps) against the diffusers pipeline.

    python bench/i2v.py [--side 64] [--frames 9] [--steps 8] [--repeats 3]
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
from PIL import Image  # noqa: E402

from engine import Engine, I2VRequest, SwapSettings  # noqa: E402
from engine.jobs.common import run_denoise  # noqa: E402
from engine.jobs.i2v import call_kwargs, load, step_cache_for  # noqa: E402
from engine.requests import TurboWanSettings  # noqa: E402


def timed_run(engine, req: I2VRequest):
    """(frames, seconds per step: median of the step-to-step intervals, total seconds)."""
    pipe, _ = load(engine, req, lambda f, m: None, None)
    _, calibration = step_cache_for(engine, pipe, req)  # MagCache: the warm-up run calibrates
    stamps: list[float] = []

    def progress(fraction, message):
        if message.startswith("step "):
            stamps.append(time.perf_counter())

    image = Image.open(req.image).convert("RGB").resize((req.width, req.height))
    t0 = time.perf_counter()
    try:
        out = run_denoise(engine, pipe, call_kwargs(pipe, req, image), req.steps, req.swap, progress, None, {})
    finally:
        if calibration is not None:
            calibration.remove()
    total = time.perf_counter() - t0
    if calibration is not None:
        calibration.save(req.model.to_dict())
    per_step = statistics.median(b - a for a, b in zip(stamps, stamps[1:], strict=False)) if len(stamps) > 1 else total
    return np.asarray(out.frames[0]), per_step, total


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--side", type=int, default=64)
    ap.add_argument("--frames", type=int, default=9)
    ap.add_argument("--steps", type=int, default=8)
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        engine = Engine(device="cpu", models_dir=Path(tmp) / "models", demo=True, outputs_dir=Path(tmp) / "out")
        start = Path(tmp) / "start.png"
        Image.fromarray(np.random.default_rng(0).integers(0, 255, (args.side, args.side, 3), dtype=np.uint8)).save(start)
        base = dict(image=str(start), prompt="waves", resolution="custom", width=args.side, height=args.side,
                    num_frames=args.frames, steps=args.steps, seed=3, swap=SwapSettings(), preview_every=0)
        variants = {
            "cache off": I2VRequest(**base),
            "FBC 0.05": I2VRequest(**base, step_cache="first_block", cache_threshold=0.05),
            "FBC forced": I2VRequest(**base, step_cache="first_block", cache_threshold=1e9),
            "MagCache 0.06": I2VRequest(**base, step_cache="mag_cache", cache_threshold=0.06),
            "MagCache 0.5": I2VRequest(**base, step_cache="mag_cache", cache_threshold=0.5),
            "TurboWan 4": I2VRequest(**{**base, "steps": 4}, turbo=TurboWanSettings(enabled=True)),
        }
        timed_run(engine, variants["cache off"])  # warm-up: loads, first-call costs
        results: dict[str, list] = {k: [] for k in variants}
        for _ in range(args.repeats):  # interleaved, so drift hits every variant alike
            for name, req in variants.items():
                timed_run(engine, req)  # untimed: switching pipelines or caches costs once, not per step
                results[name].append(timed_run(engine, req))
        ref_frames = results["cache off"][0][0]
        ref_step = statistics.median(r[1] for r in results["cache off"])
        ref_total = statistics.median(r[2] for r in results["cache off"])
        print(f"Wan 2.2 I2V tiny demo, {args.side}x{args.side}, {args.frames} frames, CPU, median of {args.repeats}")
        print(f"{'variant':13} {'steps':>5} {'s/step':>8} {'step vs off':>11} {'total s':>8} {'total vs off':>12} "
              f"{'max px diff':>12}")
        for name, runs in results.items():
            step = statistics.median(r[1] for r in runs)
            total = statistics.median(r[2] for r in runs)
            steps = variants[name].steps
            diff = np.abs(runs[0][0] - ref_frames).max() * 255 if name != "TurboWan 4" else float("nan")
            print(f"{name:13} {steps:5d} {step:8.4f} {step / ref_step:10.2f}x {total:8.3f} {total / ref_total:11.2f}x "
                  f"{diff:12.1f}")
        print("(s/step: median interval between step callbacks; total: the whole call, text and VAE encode and "
              "decode included; pixel differences in 0..255 over all frames)")


if __name__ == "__main__":
    main()
