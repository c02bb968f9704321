"""One Wan 2.2 job over several GPUs (diffusers' context parallelism), for a machine with 2+ CUDA GPUs.
``bench/gpu_check.py`` calls ``check``; on one GPU it says so and skips.

1. One full-size Wan 2.2 A14B expert (random weights, bf16) at 832x480 x 81 frames: seconds per forward on one
   GPU vs the same forward split over N GPUs with Ulysses context parallelism (``enable_parallelism``), and the
   largest difference between the two outputs. Each rank first runs the forward alone (every GPU measures the
   one-GPU time at once), then all ranks run it split.
2. The engine end to end: ``torchrun --nproc-per-node N -m engine run <request> --context-parallel N`` on the
   tiny demo Wan 2.2 I2V against the same request in one process: the same last frame.

    python bench/gpu_multi.py [--gpus 2] [--frames 81] [--steps 2] [--out gpu_multi.json]
    python bench/gpu_multi.py --tiny     # small shapes; without CUDA over gloo on CPU processes (checks the script)
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch
from swap_harness import WAN_FULL, build, inputs, scaled  # bench/ is the script's folder: on sys.path

ROOT = Path(__file__).resolve().parents[1]


def _init(rank: int, world: int, store: str) -> str:
    """Join the ranks through a file store (``store``: a path in a fresh temp dir): no TCP port to pick, so no
    collision with whatever else on the machine is binding ports."""
    import torch.distributed as dist

    init = f"file://{store}"
    if torch.cuda.is_available():
        torch.cuda.set_device(rank)
        dist.init_process_group("nccl", init_method=init, rank=rank, world_size=world,
                                device_id=torch.device("cuda", rank))
        return f"cuda:{rank}"
    dist.init_process_group("gloo", init_method=init, rank=rank, world_size=world)
    torch.accelerator.device_count = lambda: 1  # diffusers builds its mesh on torch.accelerator (CPU: 0 devices)
    return "cpu"


def _timed(model, kwargs: dict, steps: int, device: str) -> tuple[float, torch.Tensor]:
    with torch.no_grad():
        out = model(**kwargs)[0]  # warm-up (kernels, NCCL communicators)
        times = []
        for _ in range(steps):
            if device.startswith("cuda"):
                torch.cuda.synchronize()
            t0 = time.perf_counter()
            out = model(**kwargs)[0]
            if device.startswith("cuda"):
                torch.cuda.synchronize()
            times.append(time.perf_counter() - t0)
    return sorted(times)[len(times) // 2], out


def _expert_rank(rank: int, world: int, store: str, config: dict, dims: dict, steps: int, out: str) -> None:
    import torch.distributed as dist
    from diffusers import ContextParallelConfig

    device = _init(rank, world, store)
    dtype = torch.bfloat16 if device.startswith("cuda") else torch.float32
    model = build("wan", config, dtype).to(device)
    kwargs = inputs("wan", config, device, dtype, **dims)
    alone_s, reference = _timed(model, kwargs, steps, device)
    dist.barrier()
    model.enable_parallelism(config=ContextParallelConfig(ulysses_degree=world))
    split_s, split = _timed(model, kwargs, steps, device)
    diff = (split.float() - reference.float()).abs()
    peak = torch.cuda.max_memory_allocated(device) / 2**30 if device.startswith("cuda") else None
    if rank == 0:
        Path(out).write_text(json.dumps({
            "gpus": world, "device": device, "dims": dims, "one_gpu_s": alone_s, "split_s": split_s,
            "speedup": alone_s / split_s, "max_abs_diff": float(diff.max()), "mean_abs_diff": float(diff.mean()),
            "peak_gib_rank0": peak}))
    dist.destroy_process_group()


def expert_check(gpus: int, tiny: bool, steps: int, frames: int) -> dict:
    if tiny:
        config = scaled(WAN_FULL, num_layers=2, num_attention_heads=2 * gpus, attention_head_dim=16, text_dim=32,
                        ffn_dim=32)
        dims = {"width": 64, "height": 64, "frames": 5, "text_tokens": 8}
    else:
        config, dims = WAN_FULL, {"width": 832, "height": 480, "frames": frames, "text_tokens": 512}
    with tempfile.TemporaryDirectory() as tmp:
        result = Path(tmp) / "expert.json"
        torch.multiprocessing.spawn(_expert_rank, args=(gpus, str(Path(tmp) / "store"), config, dims, steps, str(result)),
                                    nprocs=gpus)
        return json.loads(result.read_text())


def engine_check(gpus: int) -> dict:
    """The tiny demo I2V through ``torchrun ... -m engine run --context-parallel`` vs one process."""
    import numpy as np
    from PIL import Image

    from engine import Engine, I2VRequest, SwapSettings
    from engine.demo import build_demo_models

    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        build_demo_models(tmp / "models")
        Image.fromarray(np.random.default_rng(0).integers(0, 255, (40, 56, 3), dtype=np.uint8)).save(tmp / "s.png")
        req = I2VRequest(image=str(tmp / "s.png"), prompt="waves", resolution="custom", width=32, height=32,
                         num_frames=5, steps=3, seed=5, swap=SwapSettings(), preview_every=0)
        (tmp / "req.json").write_text(json.dumps(req.to_dict()))
        t0 = time.perf_counter()
        proc = subprocess.run([sys.executable, "-m", "torch.distributed.run", f"--nproc-per-node={gpus}", "-m",
                               "engine", "run", str(tmp / "req.json"), "--demo", "--models-dir", str(tmp / "models"),
                               "--out", str(tmp / "split"), "--context-parallel", str(gpus)],
                              cwd=ROOT, capture_output=True, text=True, timeout=600)
        wall = time.perf_counter() - t0
        if proc.returncode:
            return {"error": (proc.stderr.strip().splitlines() or ["?"])[-1], "wall_s": wall}
        split = next(tmp.joinpath("split").glob("*-last-frame.png"))
        single = Engine(device="cuda:0", models_dir=tmp / "models", demo=True, outputs_dir=tmp / "one").run(req)
        one = next(f for f in single.files if f.endswith("-last-frame.png"))
        diff = np.abs(np.asarray(Image.open(split)).astype(int) - np.asarray(Image.open(one)).astype(int)).max()
        return {"gpus": gpus, "wall_s": wall, "last_frame_max_diff": int(diff)}


def check(tiny: bool = False, steps: int = 2, frames: int = 81, gpus: int = 2) -> dict:
    found = torch.cuda.device_count() if torch.cuda.is_available() else 0
    if found < gpus and not (tiny and found == 0):
        return {"skipped": f"context parallelism needs {gpus} GPUs; found {found}"}
    report = {"expert": expert_check(gpus, tiny, steps, frames)}
    report["engine"] = engine_check(gpus) if found >= gpus else {"skipped": "the engine path needs CUDA GPUs"}
    return report


def print_report(report: dict) -> None:
    if "skipped" in report:
        print(f"context parallel: skipped ({report['skipped']})")
        return
    e = report["expert"]
    print(f"context parallel: Wan expert {e['dims']} on {e['gpus']} x {e['device']}: one GPU {e['one_gpu_s']:.2f} s, "
          f"split {e['split_s']:.2f} s ({e['speedup']:.2f}x), max |diff| {e['max_abs_diff']:.3g}")
    print(f"context parallel: engine run {json.dumps(report['engine'])}")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--gpus", type=int, default=2)
    ap.add_argument("--steps", type=int, default=2)
    ap.add_argument("--frames", type=int, default=81)
    ap.add_argument("--tiny", action="store_true")
    ap.add_argument("--out", default="gpu_multi.json")
    args = ap.parse_args()
    report = check(args.tiny, args.steps, args.frames, args.gpus)
    Path(args.out).write_text(json.dumps(report, indent=1))
    print_report(report)


if __name__ == "__main__":
    main()
