"""Engine vs raw diffusers on the same tiny Flux, same seed, same steps, measured side by side.

Prints the time ratio (goal <= 1.03x) and whether the pixels are identical.
    python bench/overhead.py [--runs 20] [--size 256] [--steps 4]
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

from engine import Engine, ModelRef, TextToImageRequest  # noqa: E402
from engine.demo import build_demo_models  # noqa: E402
from engine.jobs.common import generator_for  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--runs", type=int, default=20)
    ap.add_argument("--size", type=int, default=256)
    ap.add_argument("--steps", type=int, default=4)
    ap.add_argument("--models-dir", default=None)
    args = ap.parse_args()
    torch.set_num_threads(max(1, torch.get_num_threads()))

    models_dir = Path(args.models_dir or tempfile.mkdtemp(prefix="bench-models-"))
    build_demo_models(models_dir)
    out = Path(tempfile.mkdtemp(prefix="bench-out-"))
    engine = Engine(models_dir=models_dir, demo=True, outputs_dir=out)
    req = TextToImageRequest(
        model=ModelRef(repo_id="black-forest-labs/FLUX.1-dev"), prompt="a red fox in the snow",
        width=args.size, height=args.size, steps=args.steps, seed=1234,
    )
    pipe = engine.store.load_pipeline(req.model)  # the raw side calls the very same loaded pipeline
    kwargs = dict(prompt=req.prompt, width=req.width, height=req.height, num_inference_steps=req.steps,
                  guidance_scale=req.guidance_scale, output_type="pil")

    def raw():
        with torch.inference_mode():
            return pipe(**kwargs, generator=generator_for(req.seed)).images[0]

    def eng():
        return engine.run(req).images[0]

    raw(), eng()  # warm up both paths
    t_raw, t_eng = [], []
    for i in range(args.runs):  # interleaved so drift hits both sides alike
        for fn, acc in ((raw, t_raw), (eng, t_eng)) if i % 2 == 0 else ((eng, t_eng), (raw, t_raw)):
            t0 = time.perf_counter()
            fn()
            acc.append(time.perf_counter() - t0)
    same = np.array_equal(np.asarray(raw()), np.asarray(eng()))
    med_raw, med_eng = statistics.median(t_raw), statistics.median(t_eng)
    device = engine.device
    print(f"device {device}, {args.size}x{args.size}, {args.steps} steps, {args.runs} runs each (interleaved)")
    print(f"{'path':<10}{'median s':>10}{'min s':>10}")
    print(f"{'diffusers':<10}{med_raw:>10.4f}{min(t_raw):>10.4f}")
    print(f"{'engine':<10}{med_eng:>10.4f}{min(t_eng):>10.4f}")
    print(f"ratio engine/diffusers (median): {med_eng / med_raw:.3f}x  (goal <= 1.03x)")
    print(f"pixels identical: {same}")


if __name__ == "__main__":
    main()
