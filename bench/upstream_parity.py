"""Our OmniX perception against upstream's own pipeline code, on the same tiny random weights and seed.

    git clone https://github.com/HKU-MMLab/OmniX /path/to/OmniX   # upstream, at 237d91e or later
    pip install einops                                              # upstream's one extra import
    python bench/upstream_parity.py --upstream /path/to/OmniX [--steps 3]

Upstream's ``OmniXPipeline`` hard-codes a VAE factor of 8, so this builds a copy of the demo Flux with a 4-level
(factor 8) random VAE and runs both pipelines on it. Upstream samples the VAE posterior from the global RNG; here
its encode is given the run's generator (ours draws noise and that sample from one CPU generator), which is the
only change made to how it runs. Its one pre-0.35 import (``transformer_flux.Attention``) is aliased to the
current ``FluxAttention``. Prints the largest difference per task (float32: expect ~1e-6).
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np  # noqa: E402
import torch  # noqa: E402

from engine.adapters.omnix import OmniXSession  # noqa: E402
from engine.adapters.omnix_pipeline import OmniXPerceptionPipeline  # noqa: E402
from engine.demo import build_demo_models, demo_path  # noqa: E402
from engine.memory import MemoryManager  # noqa: E402


def flux_with_factor8_vae(models_dir: Path, out: Path) -> Path:
    from diffusers import AutoencoderKL

    shutil.copytree(demo_path(models_dir, "flux-dev"), out)
    shutil.rmtree(out / "vae")
    torch.manual_seed(0)
    AutoencoderKL(in_channels=3, out_channels=3, latent_channels=4, block_out_channels=(8, 8, 8, 8), norm_num_groups=4,
                  layers_per_block=1, down_block_types=("DownEncoderBlock2D",) * 4,
                  up_block_types=("UpDecoderBlock2D",) * 4, use_quant_conv=False, use_post_quant_conv=False,
                  shift_factor=0.0609, scaling_factor=1.5035, sample_size=32).save_pretrained(out / "vae")
    return out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--upstream", required=True, help="a checkout of HKU-MMLab/OmniX")
    ap.add_argument("--steps", type=int, default=3)
    ap.add_argument("--seed", type=int, default=3)
    ap.add_argument("--tasks", default="depth,normal,albedo,pbr,semantic")
    args = ap.parse_args()

    import diffusers.models.transformers.transformer_flux as transformer_flux

    transformer_flux.Attention = transformer_flux.FluxAttention  # the name upstream imports (diffusers < 0.35)
    sys.path.insert(0, str(Path(args.upstream).resolve()))
    from src.pipelines.pipeline_omnix import OmniXPipeline  # upstream's own code

    work = Path(tempfile.mkdtemp(prefix="omnix-parity-"))
    models_dir = work / "models"
    build_demo_models(models_dir)
    flux = flux_with_factor8_vae(models_dir, work / "flux8")
    adapters = demo_path(models_dir, "omnix")
    h, w = 64, 128
    x, y = np.meshgrid(np.arange(w) / w, np.arange(h) / h)
    rgb = np.stack([0.5 + 0.4 * np.sin(2 * np.pi * x), 0.5 + 0.4 * np.cos(4 * np.pi * x) * y, 0.2 + 0.6 * y], -1)
    image = torch.from_numpy((np.round(rgb * 255) / 127.5 - 1).astype(np.float32)).permute(2, 0, 1)[None]

    print(f"| task | max abs difference | mean abs difference |  ({w}x{h}, {args.steps} steps, seed {args.seed})")
    print("|---|---|---|")
    for task in args.tasks.split(","):
        up = OmniXPipeline.from_pretrained(flux)
        up.set_progress_bar_config(disable=True)
        up.load_task_specific_adapters(f"rgb_to_{task}", hf_repo=str(adapters))
        generator = torch.Generator("cpu").manual_seed(args.seed)

        def encode(images, up=up, generator=generator):
            images, info = up.prepare_inputs(images)
            z = up.vae.encode(images).latent_dist.sample(generator=generator)
            return up.prepare_outputs((z - up.vae.config.shift_factor) * up.vae.config.scaling_factor, **info)

        up.encode_images_into_latents = encode
        theirs = up(prompt=up.get_camera_specific_prompt(), conditions={"rgb": image}, num_inference_steps=args.steps,
                    num_images_per_prompt=2, height=h, width=w, output_type="pt", generator=generator).images[1]
        ours_pipe = OmniXPerceptionPipeline.from_pretrained(flux)
        ours_pipe.set_progress_bar_config(disable=True)
        with OmniXSession(ours_pipe, adapters, MemoryManager("cpu"), [task]) as session, torch.inference_mode():
            ours = ours_pipe(image, [task], session, num_inference_steps=args.steps, seed=args.seed).maps[task]
        diff = (theirs.float() - ours).abs()
        print(f"| {task} | {diff.max().item():.2e} | {diff.mean().item():.2e} |")


if __name__ == "__main__":
    main()
