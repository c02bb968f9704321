"""IP-Adapter: what "offload preprocessing" saves during denoising, and what the image-token cache saves.

Side by side in one run, on the demo models (or real ones with --real):
- bytes on the compute device while denoising, offload preprocessing on vs off: from the ledger (sampled at every
  step); on a GPU also the allocator peak from the moment the tokens exist to the end of the run;
- time of a run whose reference is new (tokens encoded) vs the same reference again (tokens from the cache),
  interleaved;
- the full-size pieces' bytes (SigLIP so400m, 128 x 4096 projector, 57 IP layers of FLUX.1-dev), built on the meta
  device from their real shapes, so the table also says what offloading saves at real size.

    python bench/ipadapter.py [--runs 5] [--size 64] [--steps 2] [--real]
On a CPU-only machine the encoder and projector are offloaded to disk, so that "off the compute device" is real.
"""

from __future__ import annotations

import argparse
import functools
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))  # swap_harness, for the full-size check

import numpy as np  # noqa: E402
import torch  # noqa: E402
from PIL import Image  # noqa: E402

from engine import Engine, IPAdapterRequest, ModelRef, ReferenceImage  # noqa: E402
from engine.adapters.ipadapter_flux import IPLayers, MLPProjModel  # noqa: E402
from engine.adapters.ipadapter_pieces import STORE_KEY  # noqa: E402
from engine.demo import build_demo_models  # noqa: E402
from engine.memory import module_bytes  # noqa: E402

GIB = 2**30


def full_size_bytes() -> dict[str, int]:
    """bf16 bytes of the real pieces, from their shapes alone (meta tensors: nothing is allocated)."""
    from transformers import SiglipVisionConfig, SiglipVisionModel

    with torch.device("meta"):
        encoder = SiglipVisionModel(SiglipVisionConfig(  # google/siglip-so400m-patch14-384, vision tower
            hidden_size=1152, intermediate_size=4304, num_hidden_layers=27, num_attention_heads=16, image_size=384,
            patch_size=14)).to(torch.bfloat16)
        projector = MLPProjModel(1152, 4096, 128).to(torch.bfloat16)
        layers = IPLayers(57, 4096, 3072).to(torch.bfloat16)
    return {"image_encoder": module_bytes(encoder), "projector": module_bytes(projector),
            "adapter": module_bytes(layers)}


def full_size_check(device: str, tiny: bool = False, repeats: int = 5) -> dict:
    """The full-size pieces on the compute device (``bench/gpu_check.py`` calls this): SigLIP so400m, the 128 x 4096
    projector and 57 IP layers with random weights in the ledger; the first encode vs the cached one; what the
    offload of encoder + projector frees (allocator); and the IP attention's cost per step at 1024 x 1024, timed on
    one full-size double and one single block with and without the IP processor (x19 / x38)."""
    from accelerate import init_empty_weights
    from diffusers.models.transformers.transformer_flux import (
        FluxPosEmbed,
        FluxSingleTransformerBlock,
        FluxTransformerBlock,
    )
    from swap_harness import materialise
    from transformers import SiglipImageProcessor, SiglipVisionConfig, SiglipVisionModel

    from engine.adapters import ipadapter_flux
    from engine.adapters.ipadapter_pieces import IPAdapterPieces
    from engine.memory import MemoryManager

    cuda = device.startswith("cuda")
    dtype = torch.bfloat16 if cuda else torch.float32
    if tiny:
        enc = dict(hidden_size=32, intermediate_size=37, num_hidden_layers=2, num_attention_heads=4, image_size=32,
                   patch_size=8)
        heads, head_dim, joint, tokens, blocks, img, txt = 2, 64, 32, 4, (2, 2), 64, 8
        rope = (16, 24, 24)
    else:  # google/siglip-so400m-patch14-384, InstantX/FLUX.1-dev-IP-Adapter, FLUX.1-dev at 1024 x 1024
        enc = dict(hidden_size=1152, intermediate_size=4304, num_hidden_layers=27, num_attention_heads=16,
                   image_size=384, patch_size=14)
        heads, head_dim, joint, tokens, blocks, img, txt = 24, 128, 4096, 128, (19, 38), 4096, 512
        rope = (16, 56, 56)
    inner = heads * head_dim
    with init_empty_weights(include_buffers=False):
        encoder = SiglipVisionModel(SiglipVisionConfig(**enc))
        projector = MLPProjModel(enc["hidden_size"], joint, tokens)
        layers = IPLayers(sum(blocks), joint, inner)
    memory = MemoryManager(device, offload_device="cpu")
    names = {}
    for role, module, seed in (("image_encoder", encoder, 1), ("projector", projector, 2), ("adapter", layers, 3)):
        materialise(module, "cpu", dtype, seed).eval()
        names[role] = memory.register(f"full/{role}", module, role).name
    side = enc["image_size"]
    pieces = IPAdapterPieces((), encoder, SiglipImageProcessor(size={"height": side, "width": side}), projector,
                             layers, names, Path("random"))
    reference = Path(tempfile.mkdtemp(prefix="bench-ref-")) / "ref.png"
    Image.fromarray((np.random.RandomState(0).rand(512, 512, 3) * 255).astype(np.uint8)).save(reference)

    def timed(fn):
        if cuda:
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        out = fn()
        if cuda:
            torch.cuda.synchronize()
        return out, time.perf_counter() - t0

    (ip_tokens, _), first_s = timed(lambda: pieces.encode(memory, str(reference), dtype, memory.compute_device))
    allocated_before = torch.cuda.memory_allocated() if cuda else None
    memory.offload([names["image_encoder"], names["projector"]])
    allocated_after = torch.cuda.memory_allocated() if cuda else None
    (_, hit), cached_s = timed(lambda: pieces.encode(memory, str(reference), dtype, memory.compute_device))
    memory.ensure_loaded([names["adapter"]])

    # one block of each kind, full size, with and without the IP processor
    gen = torch.Generator(device="cpu").manual_seed(0)

    def randn(*shape):
        return torch.randn(*shape, generator=gen).to(device=device, dtype=dtype)

    schedule = ipadapter_flux.IPSchedule([(ip_tokens.to(device), 1.0)], sigma_high=1.0, sigma_low=0.0)
    schedule.begin(0.5)
    ids = torch.zeros(txt + img, 3)
    ids[txt:, 1] = torch.arange(img) // int(img ** 0.5)
    ids[txt:, 2] = torch.arange(img) % int(img ** 0.5)
    rotary = tuple(t.to(device) for t in FluxPosEmbed(theta=10000, axes_dim=list(rope))(ids))
    temb = randn(1, inner)
    per_block = {}
    with init_empty_weights(include_buffers=False):
        double, single = FluxTransformerBlock(inner, heads, head_dim), FluxSingleTransformerBlock(inner, heads, head_dim)
    for kind, block, args in (("double", double, (randn(1, img, inner), randn(1, txt, inner), temb, rotary)),
                              ("single", single, (randn(1, img, inner), randn(1, txt, inner), temb, rotary))):
        materialise(block, device, dtype, 7).eval()
        original = block.attn.processor
        times = {}
        for label, processor in (("base", original),
                                 ("ip", ipadapter_flux.IPAttnProcessor(original, layers[0], schedule, head_dim))):
            block.attn.set_processor(processor)
            call = functools.partial(block, *args)
            with torch.inference_mode():
                call(), call()  # warm-up
                times[label] = statistics.median(timed(call)[1] for _ in range(repeats))
        block.attn.set_processor(original)
        per_block[kind] = times
        block.to("meta")  # free it before the next one
    overhead = blocks[0] * (per_block["double"]["ip"] - per_block["double"]["base"]) + blocks[1] * (
        per_block["single"]["ip"] - per_block["single"]["base"])
    base_step = blocks[0] * per_block["double"]["base"] + blocks[1] * per_block["single"]["base"]
    rows = {m["role"]: m["bytes"] for m in memory.snapshot()["modules"]}
    return {
        "device": device, "tiny": tiny, "ledger_bytes": rows, "encode_first_s": first_s, "encode_cached_s": cached_s,
        "cache_hit": hit, "allocated_before_offload": allocated_before, "allocated_after_offload": allocated_after,
        "per_block_s": per_block, "ip_overhead_per_step_s": overhead, "blocks_per_step_s": base_step,
        "ip_overhead_ratio": (base_step + overhead) / base_step,
    }


def print_full_size(r: dict) -> None:
    print(f"\nIP-Adapter full-size pieces on {r['device']}{' (tiny shapes)' if r['tiny'] else ''}")
    for role, n in r["ledger_bytes"].items():
        print(f"  ledger {role:14s} {n / GIB:7.2f} GiB")
    if r["allocated_before_offload"] is not None:
        freed = r["allocated_before_offload"] - r["allocated_after_offload"]
        print(f"  offload preprocessing frees {freed / GIB:.2f} GiB of allocated VRAM")
    print(f"  encode: first {r['encode_first_s']:.3f} s, same reference again {r['encode_cached_s']:.4f} s "
          f"(cache hit: {r['cache_hit']})")
    d, s = r["per_block_s"]["double"], r["per_block_s"]["single"]
    print(f"  double block {d['base'] * 1e3:.2f} -> {d['ip'] * 1e3:.2f} ms, single block {s['base'] * 1e3:.2f} -> "
          f"{s['ip'] * 1e3:.2f} ms with IP; per step +{r['ip_overhead_per_step_s'] * 1e3:.1f} ms "
          f"({r['ip_overhead_ratio']:.3f}x the blocks' time)")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--size", type=int, default=64)
    ap.add_argument("--steps", type=int, default=2)
    ap.add_argument("--models-dir", default=None)
    ap.add_argument("--real", action="store_true", help="real weights (models dir or HF cache) instead of the demo")
    ap.add_argument("--full-size", action="store_true", help="also the full-size pieces (GPU), see full_size_check")
    ap.add_argument("--tiny-full-size", action="store_true", help="full_size_check on small shapes (checks it)")
    args = ap.parse_args()
    if args.tiny_full_size:
        print_full_size(full_size_check("cpu", tiny=True))
        return

    models_dir = Path(args.models_dir or tempfile.mkdtemp(prefix="bench-models-"))
    if not args.real:
        build_demo_models(models_dir)
    cuda = torch.cuda.is_available()
    engine = Engine(models_dir=models_dir, demo=not args.real, outputs_dir=tempfile.mkdtemp(prefix="bench-out-"),
                    offload_device="cpu" if cuda else "disk")
    work = Path(tempfile.mkdtemp(prefix="bench-refs-"))
    rng = np.random.RandomState(0)

    def new_reference(i: int) -> str:
        path = work / f"ref-{i}.png"
        Image.fromarray((rng.rand(384, 384, 3) * 255).astype(np.uint8)).save(path)
        return str(path)

    def request(ref: str, offload: bool) -> IPAdapterRequest:
        return IPAdapterRequest(model=ModelRef(repo_id="black-forest-labs/FLUX.1-dev"), prompt="a red fox",
                                width=args.size, height=args.size, steps=args.steps, seed=1,
                                references=(ReferenceImage(ref),), offload_preprocessing=offload)

    def measured_run(req: IPAdapterRequest) -> tuple[int, int | None, dict]:
        resident = [0]

        def progress(fraction: float, message: str) -> None:
            if message.startswith("image tokens ready"):  # after the offload, when it is on
                if cuda:
                    torch.cuda.synchronize()
                    torch.cuda.reset_peak_memory_stats()
            if message.startswith("step"):
                resident[0] = max(resident[0], engine.memory.snapshot()["resident"])

        result = engine.run(req, progress=progress)
        peak = torch.cuda.max_memory_allocated() if cuda else None
        return resident[0], peak, result.timings

    engine.run(request(new_reference(-1), True))  # load everything once
    rows = {}
    for offload in (True, False, True, False):  # each twice, alternating
        resident, peak, _ = measured_run(request(new_reference(len(rows) + 10), offload))
        rows.setdefault(offload, []).append((resident, peak))

    first, second = [], []
    for i in range(args.runs):
        ref = new_reference(100 + i)
        first.append(measured_run(request(ref, True))[2])
        second.append(measured_run(request(ref, True))[2])
    pieces = engine.store.adapters[STORE_KEY]

    print(f"device {engine.memory.compute_device}, {args.size}x{args.size}, {args.steps} steps, "
          f"{'real weights' if args.real else 'demo models'}")
    print("\nbytes on the compute device while denoising")
    print(f"{'offload preprocessing':24s} {'ledger resident':>16s} {'allocator peak':>16s}")
    for offload in (True, False):
        resident, peak = max(rows[offload])
        print(f"{'on' if offload else 'off':24s} {resident:16,d} {peak if peak is not None else '-':>16}")
    saved = max(rows[False])[0] - max(rows[True])[0]
    print(f"saved by offloading: {saved:,d} B "
          f"(= encoder {module_bytes(pieces.encoder):,d} + projector {module_bytes(pieces.projector):,d})")

    def med(runs, key):
        return statistics.median(r.get(key, 0.0) for r in runs)

    print("\nsame reference again (token cache), medians of", args.runs)
    print(f"{'':22s} {'encode s':>10s} {'total s':>10s}")
    print(f"{'new reference':22s} {med(first, 'encode'):10.4f} {med(first, 'total'):10.4f}")
    print(f"{'same reference':22s} {med(second, 'encode'):10.4f} {med(second, 'total'):10.4f}")
    print(f"ratio second/first total: {med(second, 'total') / med(first, 'total'):.3f}; "
          f"cache hits {pieces.hits}, misses {pieces.misses}")

    full = full_size_bytes()
    print("\nfull-size pieces (bf16, from the real shapes)")
    for role, n in full.items():
        print(f"{role:14s} {n / GIB:7.2f} GiB")
    print(f"offload preprocessing frees {(full['image_encoder'] + full['projector']) / GIB:.2f} GiB during denoising; "
          f"the IP layers ({full['adapter'] / GIB:.2f} GiB) stay")
    if args.full_size and cuda:
        print_full_size(full_size_check(engine.memory.compute_device))


if __name__ == "__main__":
    main()
