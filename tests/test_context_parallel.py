"""Context parallelism: one tiny Wan 2.2 I2V run split over two processes through diffusers' own
``enable_parallelism`` (Ulysses), via the engine's i2v runner, against the same run in one process.

On a GPU machine the ranks are GPUs over NCCL (``torchrun ... --context-parallel 2``; ``bench/gpu_multi.py``);
here they are two CPU processes over gloo. Diffusers builds its device mesh on ``torch.accelerator``, which
counts 0 devices on a CPU-only torch, so the worker reports one (the only patch: everything else is the real
code path, down to the all-to-all of heads and the gather of tokens).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from engine import Engine, I2VRequest, InputError, SwapSettings, TextToImageRequest
from engine.video.context_parallel import ContextParallel, check_request, tokens

ROOT = Path(__file__).resolve().parents[1]


def request(image: str, **kw) -> I2VRequest:
    fields = dict(image=image, prompt="waves roll in", resolution="custom", width=32, height=32, num_frames=5,
                  steps=3, guidance_scale=3.0, guidance_scale_2=2.0, seed=5, swap=SwapSettings(), preview_every=0)
    return I2VRequest(**{**fields, **kw})


def last_frame(files) -> np.ndarray:
    return np.asarray(Image.open(next(f for f in files if f.endswith("-last-frame.png")))).astype(int)


def _rank(rank: int, world: int, store: str, models_dir: str, out: str, data: dict) -> None:
    import torch.distributed as dist
    from torch.nn.modules.module import register_module_forward_pre_hook

    # a file store, not a TCP port: nothing to collide with when the suite runs on several workers
    dist.init_process_group("gloo", init_method=f"file://{store}", rank=rank, world_size=world)
    torch.accelerator.device_count = lambda: 1  # see the module docstring
    seen: list[int] = []

    def attention_tokens(module, args):
        # the attention modules' inputs (Wan's blocks pass them positionally): past the split that diffusers'
        # hook makes inside the first block's forward
        if type(module).__name__ == "WanAttention" and args:
            seen.append(int(args[0].shape[1]))

    register_module_forward_pre_hook(attention_tokens)
    from engine.requests import request_from_dict

    engine = Engine(device="cpu", models_dir=models_dir, demo=True, outputs_dir=Path(out) / f"rank{rank}")
    engine.context_parallel = ContextParallel(degree=world, rank=rank, device="cpu")
    result = engine.run(request_from_dict(data))
    (Path(out) / f"rank{rank}.json").write_text(json.dumps({"files": result.files, "tokens": sorted(set(seen)),
                                                            "warnings": result.metadata.get("warnings", [])}))
    dist.destroy_process_group()


@pytest.mark.timeout(300)
def test_one_wan_run_over_two_ranks_gives_the_single_process_pixels(models_dir, tmp_path):
    image = tmp_path / "start.png"
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (40, 56, 3), dtype=np.uint8)).save(image)
    req = request(str(image))
    torch.multiprocessing.spawn(_rank, args=(2, str(tmp_path / "store"), str(models_dir), str(tmp_path), req.to_dict()),
                                nprocs=2)
    ranks = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in (0, 1)]
    single = Engine(device="cpu", models_dir=models_dir, demo=True, outputs_dir=tmp_path / "single").run(req)
    pipe = Engine(device="cpu", models_dir=models_dir, demo=True).store.load_pipeline(req.model,
                                                                                     "WanImageToVideoPipeline")
    total = tokens(req, pipe.vae_scale_factor_spatial, pipe.vae_scale_factor_temporal,
                   tuple(pipe.transformer.config.patch_size))
    for info in ranks:
        assert info["tokens"] == [total // 2]  # every attention of both experts: half the tokens
        assert any("context parallel over 2 GPUs" in w for w in info["warnings"])
        assert np.abs(last_frame(info["files"]) - last_frame(single.files)).max() <= 1  # the same video


def test_what_context_parallelism_cannot_take_is_refused_in_words():
    req = request("x.png", num_frames=5)
    check_request(req, heads=40, token_count=32760, degree=2)
    with pytest.raises(InputError, match="streams blocks itself"):
        check_request(request("x.png", swap=SwapSettings(mode="block_swap")), heads=40, token_count=32760, degree=2)
    with pytest.raises(InputError, match="40 attention heads do not split over 3"):
        check_request(req, heads=40, token_count=32760, degree=3)
    with pytest.raises(InputError, match="do not split evenly over 8"):
        check_request(req, heads=40, token_count=32761, degree=8)
    # Wan 2.2 A14B at 480p x 81 frames: 21 latent frames x 30 x 52 patches
    assert tokens(request("x.png", width=832, height=480, num_frames=81), 8, 4, (1, 2, 2)) == 32760


def test_the_cli_flag_says_how_to_start_it(tmp_path):
    Image.new("RGB", (32, 32)).save(tmp_path / "x.png")
    path = tmp_path / "req.json"
    path.write_text(json.dumps(request(str(tmp_path / "x.png")).to_dict()))
    env = {k: v for k, v in os.environ.items() if k not in ("WORLD_SIZE", "RANK", "LOCAL_RANK")}
    proc = subprocess.run([sys.executable, "-m", "engine", "run", str(path), "--demo", "--context-parallel", "2"],
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2
    assert "torchrun --nproc-per-node 2" in proc.stderr and "Traceback" not in proc.stderr


def test_only_video_runs_are_split():
    from argparse import Namespace

    from engine.__main__ import _context_parallel

    assert _context_parallel(Namespace(context_parallel=0), TextToImageRequest()) is None
    with pytest.raises(InputError, match="splits image-to-video runs only, not text_to_image"):
        _context_parallel(Namespace(context_parallel=2), TextToImageRequest())
