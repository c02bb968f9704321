"""SDNQ weight bytes, load time and pixel error per dtype, on a Flux-shaped transformer with the
real widths (inner dim 3072 = 24 heads x 128, MLP ratio 4) but only a few blocks, so it runs on a CPU.

Each dtype goes through the app's own quantize job (sdnq via diffusers' PipelineQuantizationConfig,
save_pretrained, reload with from_pretrained), side by side with the bf16 original in one run.
    python bench/sdnq_bytes.py [--double 1] [--single 2] [--dtypes int8,int6,uint4,float8_e4m3fn]
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("SDNQ_USE_TORCH_COMPILE", "0")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np  # noqa: E402
import torch  # noqa: E402

from engine import Engine, ModelRef, QuantizeRequest  # noqa: E402
from engine.demo import build_demo_models, demo_path  # noqa: E402
from engine.jobs.common import generator_for  # noqa: E402
from engine.memory import module_bytes  # noqa: E402


def build_source(models_dir: Path, double: int, single: int) -> Path:
    """The demo Flux pipeline with its transformer swapped for a realistic-width one, saved in bf16."""
    from diffusers import FluxPipeline, FluxTransformer2DModel

    demo = FluxPipeline.from_pretrained(str(demo_path(models_dir, "flux-dev")))
    cfg = demo.transformer.config
    torch.manual_seed(0)
    transformer = FluxTransformer2DModel(
        patch_size=1, in_channels=cfg.in_channels, num_layers=double, num_single_layers=single,
        attention_head_dim=128, num_attention_heads=24, joint_attention_dim=cfg.joint_attention_dim,
        pooled_projection_dim=cfg.pooled_projection_dim, guidance_embeds=True, axes_dims_rope=(16, 56, 56),
    )
    with torch.no_grad():  # random init at realistic scale, so quantization error is representative
        for p in transformer.parameters():
            if p.dim() == 2:
                p.normal_(0.0, 0.02)
    pipe = FluxPipeline(scheduler=demo.scheduler, vae=demo.vae, text_encoder=demo.text_encoder, tokenizer=demo.tokenizer,
                        text_encoder_2=demo.text_encoder_2, tokenizer_2=demo.tokenizer_2, transformer=transformer)
    out = models_dir / "bench-flux-bf16"
    pipe.to(torch.bfloat16).save_pretrained(str(out), safe_serialization=True)
    return out


def timed_load(path: Path):
    from diffusers import FluxPipeline

    if any("sdnq" in p.read_text() for p in path.glob("*/config.json")):
        import sdnq  # noqa: F401
    t0 = time.perf_counter()
    pipe = FluxPipeline.from_pretrained(str(path), dtype=torch.bfloat16)
    return pipe, time.perf_counter() - t0


def part_bytes(transformer) -> dict[str, int]:
    """Weight bytes of the double blocks, the single blocks and everything else (embedders, norm_out)."""
    double = sum(module_bytes(b) for b in transformer.transformer_blocks)
    single = sum(module_bytes(b) for b in transformer.single_transformer_blocks)
    return {"double": double, "single": single, "rest": module_bytes(transformer) - double - single}


def full_flux_bytes(parts: dict[str, int], double: int, single: int) -> float:
    """The same per-block bytes scaled to FLUX.1-dev's 19 double + 38 single blocks."""
    return parts["double"] / double * 19 + parts["single"] / single * 38 + parts["rest"]


def render(pipe) -> np.ndarray:
    with torch.inference_mode():
        img = pipe(prompt="a lighthouse at dusk", width=128, height=128, num_inference_steps=4, guidance_scale=3.5,
                   generator=generator_for(7)).images[0]
    return np.asarray(img, dtype=np.int16)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--double", type=int, default=1)
    ap.add_argument("--single", type=int, default=2)
    ap.add_argument("--dtypes", default="int8,int6,uint4,uint4:128,float8_e4m3fn,int8:0:all,uint4:128:all",
                    help="comma list of dtype[:group[:all]]: group size N (0 = sdnq's automatic choice); "
                         "'all' also quantizes the layers sdnq keeps at 16 bit by default")
    args = ap.parse_args()

    models_dir = Path(tempfile.mkdtemp(prefix="bench-sdnq-"))
    build_demo_models(models_dir)
    src = build_source(models_dir, args.double, args.single)
    engine = Engine(device="cpu", models_dir=models_dir, outputs_dir=models_dir / "out")

    base, base_load = timed_load(src)
    base_bytes = module_bytes(base.transformer)
    base_full = full_flux_bytes(part_bytes(base.transformer), args.double, args.single)
    base_img = render(base)
    n_params = sum(p.numel() for p in base.transformer.parameters())
    print(f"Flux-shaped transformer: {args.double} double + {args.single} single blocks, inner dim 3072, "
          f"{n_params / 1e6:.0f}M params; 4 steps at 128x128, seed 7; device {engine.device}")
    rows = [("bf16", base_bytes, 1.0, 1.0, base_load, 1.0, 0, "-")]
    del base
    for spec in args.dtypes.split(","):
        dtype, group, scope = (spec.split(":") + ["", ""])[:3]
        req = QuantizeRequest(source=ModelRef(path=str(src), dtype="bfloat16"),
                              output_name=f"bench-{dtype}-{group or 0}-{scope or 'default'}", weights_dtype=dtype,
                              group_size=int(group or 0), components=("transformer",),
                              keep_sensitive_layers=scope != "all")
        t0 = time.perf_counter()
        engine.run(req)
        quant_s = time.perf_counter() - t0
        pipe, load_s = timed_load(models_dir / "sdnq" / req.output_name)
        qbytes = module_bytes(pipe.transformer)
        full = full_flux_bytes(part_bytes(pipe.transformer), args.double, args.single) / base_full
        diff = int(np.abs(render(pipe) - base_img).max())
        label = spec
        rows.append((label, qbytes, qbytes / base_bytes, full, load_s, load_s / base_load, diff, f"{quant_s:.1f}s"))
        del pipe
    print(f"{'dtype[:group]':<15}{'weight MiB':>11}{'vs bf16':>9}{'19+38 blk':>10}{'load s':>8}{'load vs bf16':>13}"
          f"{'max px diff':>12}{'quantize':>10}")
    for label, b, ratio, full, load_s, load_ratio, diff, q in rows:
        print(f"{label:<15}{b / 2**20:>11.1f}{ratio:>8.3f}x{full:>9.3f}x{load_s:>8.2f}{load_ratio:>12.2f}x{diff:>12}"
              f"{q:>10}")
    print("dtype:group:all = every large Linear quantized (keep_sensitive_layers off).")
    print("'19+38 blk' scales the measured per-block bytes to FLUX.1-dev's 19 double + 38 single blocks.")
    print("goals: int8 <= 0.52x, uint4 <= 0.30x of bf16 weight bytes")


if __name__ == "__main__":
    main()
