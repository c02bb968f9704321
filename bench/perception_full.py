"""Panorama perception (OmniX) at real size on random weights, for ``bench/gpu_check.py``: FLUX.1-dev's 12B
transformer and its VAE with OmniX adapter pairs of upstream's rank (64), on a 720 x 1440 panorama (upstream's
perception size), through the same pipeline and adapter session the app runs.

Measured side by side in one run: the seam error (mean |first column - last column|) with and without seam
blending, and time and allocator peak of each task alone vs all five in one run (the condition latent is
encoded once for all). The text encoders are one-layer stand-ins with the real output widths (CLIP-L 768,
T5-XXL 4096): they run once per run and are not what this measures. Every task loads the same two random
adapter files, so on these weights the five maps agree with each other; the timings and peaks are what counts.

    python bench/perception_full.py [--tiny] [--steps 2]
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

import torch  # noqa: E402

from engine.requests import PERCEPTION_TASKS  # noqa: E402

# black-forest-labs/FLUX.1-dev vae/config.json
FLUX_VAE_FULL = dict(in_channels=3, out_channels=3, latent_channels=16, block_out_channels=(128, 256, 512, 512),
                     layers_per_block=2, down_block_types=("DownEncoderBlock2D",) * 4,
                     up_block_types=("UpDecoderBlock2D",) * 4, norm_num_groups=32, use_quant_conv=False,
                     use_post_quant_conv=False, shift_factor=0.1159, scaling_factor=0.3611)
UPSTREAM_RANK = 64


def build_pipeline(tiny: bool, device: str, dtype: torch.dtype):
    """The OmniX perception pipeline over a random-weight Flux (full size, or the gpu_check --tiny shapes)."""
    from diffusers import AutoencoderKL, FluxPipeline
    from swap_harness import FLUX_FULL, build, scaled
    from transformers import CLIPTextConfig, CLIPTextModel, T5Config, T5EncoderModel

    from engine.adapters.omnix_pipeline import OmniXPerceptionPipeline
    from engine.demo import common as demo_common

    if tiny:
        config = scaled(FLUX_FULL, num_layers=2, num_single_layers=2, attention_head_dim=16, num_attention_heads=2,
                        joint_attention_dim=32, pooled_projection_dim=32, axes_dims_rope=(4, 4, 8))
        vae_config = dict(FLUX_VAE_FULL, block_out_channels=(8, 8), layers_per_block=1, norm_num_groups=4,
                          down_block_types=("DownEncoderBlock2D",) * 2, up_block_types=("UpDecoderBlock2D",) * 2)
    else:
        config, vae_config = FLUX_FULL, FLUX_VAE_FULL
    torch.manual_seed(0)
    transformer = build("flux", config, dtype)
    clip = CLIPTextModel(CLIPTextConfig(vocab_size=1000, hidden_size=config["pooled_projection_dim"],
                                        projection_dim=config["pooled_projection_dim"], intermediate_size=256,
                                        num_hidden_layers=1, num_attention_heads=4, max_position_embeddings=77,
                                        bos_token_id=0, eos_token_id=1, pad_token_id=1)).eval()
    t5 = T5EncoderModel(T5Config(vocab_size=256, d_model=config["joint_attention_dim"], d_ff=256, d_kv=8,
                                 num_heads=4, num_layers=1, relative_attention_num_buckets=8,
                                 decoder_start_token_id=0, pad_token_id=0, eos_token_id=1)).eval()
    flux = FluxPipeline(scheduler=demo_common.flow_match_scheduler(), vae=AutoencoderKL(**vae_config).eval(),
                        text_encoder=clip, tokenizer=demo_common.clip_tokenizer(), text_encoder_2=t5,
                        tokenizer_2=demo_common.t5_tokenizer(), transformer=transformer)
    return flux, OmniXPerceptionPipeline(**flux.components)


def write_adapters(flux, root: Path, tiny: bool) -> None:
    """Upstream's folder layout for every task. Two random adapters of upstream's rank and targets (one for the
    condition item, one for the target item), hard-linked into every task's folder: each file is still loaded
    through ``load_lora_weights`` as the real ones are, without writing ten multi-GB files."""
    from diffusers import FluxPipeline

    from engine import demo
    from engine.demo import common as demo_common
    from engine.panorama.tasks import TASKS

    rank = demo.OMNIX_LORA_RANK if tiny else UPSTREAM_RANK
    made = {}
    for slot, seed in (("condition", 11), ("target", 12)):
        made[slot] = root / "_random" / slot / "pytorch_lora_weights.safetensors"
        demo_common.save_lora(FluxPipeline, flux.transformer, demo.OMNIX_LORA_TARGETS, seed, made[slot], rank=rank,
                        with_metadata=False)
    for task in PERCEPTION_TASKS:
        spec = TASKS[task]
        for i, adapter in enumerate(spec.adapters):
            dest = root / spec.weight_name(adapter)
            dest.parent.mkdir(parents=True, exist_ok=True)
            os.link(made["condition" if i in spec.conditions else "target"], dest)


def full_size_check(device: str, tiny: bool = False, steps: int = 2) -> dict:
    from perception import panorama  # bench/perception.py: a smooth, horizontally periodic panorama
    from PIL import Image

    from engine.adapters.omnix import OmniXSession
    from engine.jobs.perception import image_tensor
    from engine.memory import MemoryManager
    from engine.panorama.seam import seam_error

    cuda = device.startswith("cuda")
    dtype = torch.bfloat16 if cuda else torch.float32
    t0 = time.perf_counter()
    flux, pipe = build_pipeline(tiny, device, dtype)
    root = Path(tempfile.mkdtemp(prefix="bench-omnix-"))
    write_adapters(flux, root, tiny)
    pipe.to(device=device, dtype=dtype)
    pipe.set_progress_bar_config(disable=True)
    memory = MemoryManager(device, offload_device="cpu")
    for name in ("transformer", "vae", "text_encoder", "text_encoder_2"):
        memory.register(f"flux/{name}", getattr(pipe, name), "text_encoder" if name.startswith("text") else name)
    build_s = time.perf_counter() - t0
    height = 64 if tiny else 720  # upstream's perception size: at most 720 x 1440
    image = image_tensor(Image.open(panorama(root / "pano.png", height)).convert("RGB"))

    def run(tasks, seam_blending=True):
        if cuda:
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
        t1 = time.perf_counter()
        with OmniXSession(pipe, root, memory, tasks, label="OmniX") as session:
            out = pipe(image=image, tasks=list(tasks), session=session, num_inference_steps=steps,
                       seam_blending=seam_blending)
        if cuda:
            torch.cuda.synchronize()
        return {"tasks": list(tasks), "seam_blending": seam_blending, "s": time.perf_counter() - t1,
                "peak_allocated_gib": torch.cuda.max_memory_allocated() / 2**30 if cuda else None,
                "ledger_gib": session.peak_ledger_bytes / 2**30,
                "seam_error": {t: seam_error(m) for t, m in out.maps.items()}}

    run(["depth"])  # warm-up: first-call costs (kernels, allocator)
    rows = [run(["depth"], seam_blending=False)]
    rows += [run([task]) for task in PERCEPTION_TASKS]
    rows.append(run(list(PERCEPTION_TASKS)))
    singles = sum(r["s"] for r in rows[1:-1])
    return {"device": device, "tiny": tiny, "size": f"{2 * height}x{height}", "steps": steps, "build_s": build_s,
            "rows": rows, "all_vs_sum_of_singles": rows[-1]["s"] / singles,
            "seam_on": rows[1]["seam_error"]["depth"], "seam_off": rows[0]["seam_error"]["depth"]}


def print_full_size(r: dict) -> None:
    print(f"\nperception (OmniX) {r['size']}, {r['steps']} steps, random weights (built in {r['build_s']:.0f} s)")
    print(f"{'tasks':40} {'seam':5} {'s':>7} {'peak GiB':>8} {'ledger GiB':>10}  seam error")
    for row in r["rows"]:
        peak = f"{row['peak_allocated_gib']:8.1f}" if row["peak_allocated_gib"] is not None else f"{'-':>8}"
        errors = " ".join(f"{t}={e:.4f}" for t, e in row["seam_error"].items())
        print(f"{','.join(row['tasks']):40} {'on' if row['seam_blending'] else 'off':5} {row['s']:7.2f} {peak} "
              f"{row['ledger_gib']:10.2f}  {errors}")
    print(f"all five in one run / sum of singles: {r['all_vs_sum_of_singles']:.2f}x; depth seam error "
          f"{r['seam_on']:.4f} with blending vs {r['seam_off']:.4f} without")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--tiny", action="store_true")
    ap.add_argument("--steps", type=int, default=2)
    args = ap.parse_args()
    cuda = torch.cuda.is_available()
    if not cuda and not args.tiny:
        raise SystemExit("the full-size check needs a CUDA GPU (use --tiny to check the script on the CPU)")
    print_full_size(full_size_check("cuda" if cuda else "cpu", tiny=args.tiny, steps=args.steps))


if __name__ == "__main__":
    main()
