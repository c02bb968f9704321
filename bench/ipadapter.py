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
import statistics
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

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


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--size", type=int, default=64)
    ap.add_argument("--steps", type=int, default=2)
    ap.add_argument("--models-dir", default=None)
    ap.add_argument("--real", action="store_true", help="real weights (models dir or HF cache) instead of the demo")
    args = ap.parse_args()

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


if __name__ == "__main__":
    main()
