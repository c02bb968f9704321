"""Shared by bench/swap_modes.py (CPU) and bench/gpu_check.py (CUDA): random-weight transformers in the real
shapes, their inputs, and one timed run of a transformer under a memory mode through the engine's own
strategies (the same code path the app runs)."""

from __future__ import annotations

import gc
import statistics
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import psutil  # noqa: E402
import torch  # noqa: E402
from accelerate import init_empty_weights  # noqa: E402

from engine.memory import MemoryManager  # noqa: E402
from engine.memory.strategies import Component, SwapContext  # noqa: E402
from engine.memory.trace import SwapTrace  # noqa: E402
from engine.requests import SwapSettings  # noqa: E402

# FLUX.1-dev: 19 double + 38 single blocks, 24 heads x 128 (black-forest-labs/FLUX.1-dev transformer/config.json)
FLUX_FULL = dict(patch_size=1, in_channels=64, num_layers=19, num_single_layers=38, attention_head_dim=128,
                 num_attention_heads=24, joint_attention_dim=4096, pooled_projection_dim=768, guidance_embeds=True,
                 axes_dims_rope=(16, 56, 56))
# One Wan 2.2 A14B expert: 40 blocks, 40 heads x 128, ffn 13824 (Wan-AI/Wan2.2-I2V-A14B-Diffusers transformer/)
WAN_FULL = dict(patch_size=(1, 2, 2), num_attention_heads=40, attention_head_dim=128, in_channels=36, out_channels=16,
                text_dim=4096, freq_dim=256, ffn_dim=13824, num_layers=40, cross_attn_norm=True,
                qk_norm="rms_norm_across_heads", rope_max_seq_len=1024)
# Qwen-Image: 60 blocks, 24 heads x 128, joint dim 3584 (Qwen/Qwen-Image transformer/config.json)
QWEN_FULL = dict(patch_size=2, in_channels=64, out_channels=16, num_layers=60, attention_head_dim=128,
                 num_attention_heads=24, joint_attention_dim=3584, guidance_embeds=False, axes_dims_rope=(16, 56, 56))


def scaled(config: dict, **changes) -> dict:
    return {**config, **changes}


def materialise(model: torch.nn.Module, device: str, dtype: torch.dtype, seed: int = 0,
                generate_on: str | None = None) -> torch.nn.Module:
    """Random weights for a model built with ``init_empty_weights`` (buffers such as RoPE tables stay real).
    ``generate_on``: where the random numbers are drawn (the GPU draws 14B weights in seconds, the CPU in
    minutes); each tensor is then moved to ``device``."""
    where = generate_on or "cpu"
    gen = torch.Generator(device=where).manual_seed(seed)
    for module in model.modules():
        for name, p in list(module._parameters.items()):
            if p is None:
                continue
            t = torch.empty(p.shape, dtype=dtype, device=where).normal_(0.0, 0.02, generator=gen)
            module._parameters[name] = torch.nn.Parameter(t.to(device), requires_grad=False)
            del t
    return model.to(device)


def build(kind: str, config: dict, dtype: torch.dtype, generate_on: str | None = None,
          seed: int = 0) -> torch.nn.Module:
    """The model in host RAM, its random weights drawn on ``generate_on`` (the GPU in gpu_check)."""
    from diffusers import FluxTransformer2DModel, QwenImageTransformer2DModel, WanTransformer3DModel

    cls = {"flux": FluxTransformer2DModel, "qwen": QwenImageTransformer2DModel, "wan": WanTransformer3DModel}[kind]
    with init_empty_weights(include_buffers=False):
        model = cls(**config)
    return materialise(model, "cpu", dtype, seed=seed, generate_on=generate_on).eval()


def host_pinned_bytes() -> int:
    """Pinned host bytes the memory layer holds (``engine.memory.host_pinned_bytes``, added with the packed
    pinned slabs; 0 before it exists)."""
    try:
        from engine.memory import host_pinned_bytes as pinned
    except ImportError:
        return 0
    return int(pinned())


def release_host_caches() -> None:
    """Between sections: collect what the last one dropped, give the CUDA allocator's cached blocks back, and
    empty PyTorch's pinned host cache (it keeps freed pinned blocks, rounded up to powers of two, until asked)."""
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.synchronize()
        torch.cuda.empty_cache()
        empty_host = getattr(torch._C, "_host_emptyCache", None)
        if empty_host is not None:
            empty_host()


class Sampler:
    """Low-water mark of free device memory (``mem_get_info``; available RAM without CUDA) and the peak host RSS
    while a mode runs, sampled from a thread every ``every`` seconds: the allocator's own peaks miss memory that
    other streams still hold and what the driver takes outside the allocator."""

    def __init__(self, cuda: bool, every: float = 0.002):
        self.cuda, self.every = cuda, every
        self.low_free = None
        self.peak_rss = 0
        self._stop = threading.Event()
        self._proc = psutil.Process()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def sample(self) -> None:
        free = torch.cuda.mem_get_info()[0] if self.cuda else psutil.virtual_memory().available
        self.low_free = free if self.low_free is None else min(self.low_free, free)
        self.peak_rss = max(self.peak_rss, self._proc.memory_info().rss)

    def _run(self) -> None:
        while not self._stop.wait(self.every):
            self.sample()

    def __enter__(self):
        self.sample()
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()
        self.sample()


def inputs(kind: str, config: dict, device: str, dtype: torch.dtype, *, width: int, height: int,
           frames: int = 1, text_tokens: int = 512) -> dict:
    gen = torch.Generator(device="cpu").manual_seed(1)

    def randn(*shape):
        return torch.randn(*shape, generator=gen).to(device=device, dtype=dtype)

    if kind == "flux":
        h, w = height // 16, width // 16
        img_ids = torch.zeros(h, w, 3)
        img_ids[..., 1] = torch.arange(h)[:, None]
        img_ids[..., 2] = torch.arange(w)[None, :]
        return {
            "hidden_states": randn(1, h * w, config["in_channels"]),
            "encoder_hidden_states": randn(1, text_tokens, config["joint_attention_dim"]),
            "pooled_projections": randn(1, config["pooled_projection_dim"]),
            "timestep": torch.tensor([0.5], device=device, dtype=dtype),
            "img_ids": img_ids.reshape(-1, 3).to(device), "txt_ids": torch.zeros(text_tokens, 3, device=device),
            "guidance": torch.tensor([3.5], device=device, dtype=dtype), "return_dict": False,
        }
    if kind == "qwen":  # the pipeline's call: packed 2x2 latents, a text mask, the timestep in [0, 1]
        h, w = height // 16, width // 16
        return {
            "hidden_states": randn(1, h * w, config["in_channels"]),
            "encoder_hidden_states": randn(1, text_tokens, config["joint_attention_dim"]),
            "encoder_hidden_states_mask": torch.ones(1, text_tokens, dtype=torch.long, device=device),
            "timestep": torch.tensor([0.5], device=device, dtype=dtype), "img_shapes": [[(1, h, w)]],
            "return_dict": False,
        }
    latent_frames = (frames - 1) // 4 + 1
    return {
        "hidden_states": randn(1, config["in_channels"], latent_frames, height // 8, width // 8),
        "timestep": torch.tensor([500], device=device),
        "encoder_hidden_states": randn(1, text_tokens, config["text_dim"]),
        "return_dict": False,
    }


@dataclass
class ModeResult:
    mode: str
    step_s: list[float] = field(default_factory=list)
    peak_ledger: int = 0
    peak_allocated: int = 0
    moved_per_step: int = 0
    trace: dict = field(default_factory=dict)
    layout: str = ""
    notes: list[str] = field(default_factory=list)
    peak_reserved: int = 0
    low_free: int = 0
    peak_rss: int = 0
    pinned: int = 0
    sizes: list = field(default_factory=list)  # ComponentSize of each transformer, measured (for the plan)

    @property
    def median(self) -> float:
        return statistics.median(self.step_s) if self.step_s else float("nan")


def _summarise(result: ModeResult, ledger: MemoryManager, info) -> None:
    result.peak_ledger = ledger.peak_compute
    result.notes = info.notes
    result.pinned = max(result.pinned, host_pinned_bytes())
    layout = info.layouts.get("transformer")
    if layout is not None:
        result.layout = f"{layout.resident} resident, {len(layout.groups)} groups"


def _release(ledger: MemoryManager, names: list[str]) -> None:
    ledger.swap.remove()
    ledger.to_host(names)  # back in RAM before the ledger (and its disk files) goes
    for name in names:
        ledger.unregister(name)


def run_mode(model: torch.nn.Module, kind_inputs: dict, settings: SwapSettings, compute: str, offload: str,
             steps: int, warmup: int = 1, activations: int = 0, disk_dir: str | None = None) -> ModeResult:
    """``steps`` timed forwards of ``model`` under ``settings`` (after ``warmup`` untimed ones), the way a run
    holds a transformer: one ledger entry, the mode's strategy applied through the engine's swap session."""
    cuda = compute.startswith("cuda")
    ledger = MemoryManager(compute, offload_device=offload, disk_dir=disk_dir)
    ledger.register("transformer", model, "transformer")
    comp = [Component("transformer", "transformer", model, "transformer")]
    result = ModeResult(settings.mode)
    trace = SwapTrace(compute) if settings.trace else None
    if cuda:
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    sampler = Sampler(cuda)
    try:
        with sampler, torch.inference_mode(), \
                ledger.swap.session(comp, settings, SwapContext(activations, trace)) as info:
            for i in range(warmup + steps):  # one session for all steps, as in a run of the app
                timed = i >= warmup
                if cuda:
                    torch.cuda.synchronize()
                moved0 = ledger.bytes_moved
                t0 = time.perf_counter()
                model(**kind_inputs)
                if cuda:
                    torch.cuda.synchronize()
                elapsed = time.perf_counter() - t0
                if trace is not None:
                    if timed:
                        trace.end_step()
                    else:  # warmup rows are not wanted
                        trace.end_step()
                        trace.rows.clear()
                if timed:
                    result.step_s.append(elapsed)
                    result.moved_per_step = ledger.bytes_moved - moved0
                result.pinned = max(result.pinned, host_pinned_bytes())
            _summarise(result, ledger, info)
    finally:
        _measured(result, cuda, sampler)
        _release(ledger, ["transformer"])
    if trace is not None:
        result.trace = trace.summary()
    return result


def _measured(result: ModeResult, cuda: bool, sampler: Sampler) -> None:
    """Peaks for the whole mode (warmup included: the slabs and the first call's copies are part of the run)."""
    if cuda:
        torch.cuda.synchronize()
        result.peak_reserved = int(torch.cuda.max_memory_reserved())
        result.peak_allocated = int(torch.cuda.max_memory_allocated())
    sampler.sample()
    result.low_free = int(sampler.low_free or 0)
    result.peak_rss = int(sampler.peak_rss)


def h2d_bandwidth(device: str, nbytes: int = 2**30) -> float:
    """Host-to-device copy speed from pinned memory, bytes per second; without CUDA, a RAM-to-RAM copy (what a
    CPU run's "transfer" is)."""
    if not device.startswith("cuda"):
        src, dst = torch.empty(nbytes, dtype=torch.uint8), torch.empty(nbytes, dtype=torch.uint8)
        dst.copy_(src)
        t0 = time.perf_counter()
        for _ in range(3):
            dst.copy_(src)
        return 3 * nbytes / (time.perf_counter() - t0)
    src = torch.empty(nbytes, dtype=torch.uint8, pin_memory=True)
    dst = torch.empty(nbytes, dtype=torch.uint8, device=device)
    dst.copy_(src, non_blocking=True)
    torch.cuda.synchronize()
    t0 = time.perf_counter()
    for _ in range(3):
        dst.copy_(src, non_blocking=True)
    torch.cuda.synchronize()
    seconds = time.perf_counter() - t0
    del src, dst
    release_host_caches()  # the 1 GiB pinned probe goes back (the host cache would keep it)
    return 3 * nbytes / seconds


def gib(n: float) -> str:
    return f"{n / 2**30:.2f}"


def run_pair(experts: list[torch.nn.Module], kind_inputs: dict, settings: SwapSettings, compute: str,
             offload: str, steps: int, switch_at: int) -> ModeResult:
    """A two-expert Wan 2.2 run: ``steps`` denoising steps with CFG (two forwards each), the high-noise expert
    before step ``switch_at`` and the low-noise one after, both experts in one session as the app holds them
    (the mode decides who is on the device: with offloading the high-noise expert leaves before the other comes)."""
    cuda = compute.startswith("cuda")
    ledger = MemoryManager(compute, offload_device=offload)
    names = ["transformer", "transformer_2"]
    for name, model in zip(names, experts):
        ledger.register(name, model, "transformer")
    comps = [Component(n, n, m, "transformer") for n, m in zip(names, experts)]
    result = ModeResult(settings.mode)
    if cuda:
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    sampler = Sampler(cuda)
    try:
        with sampler, torch.inference_mode(), ledger.swap.session(comps, settings, SwapContext()) as info:
            for step in range(steps):
                model = experts[0] if step < switch_at else experts[1]
                moved0 = ledger.bytes_moved
                t0 = time.perf_counter()
                for _ in range(2):  # cond and uncond
                    model(**kind_inputs)
                if cuda:
                    torch.cuda.synchronize()
                result.step_s.append(time.perf_counter() - t0)
                result.moved_per_step = max(result.moved_per_step, ledger.bytes_moved - moved0)
                result.pinned = max(result.pinned, host_pinned_bytes())
            _summarise(result, ledger, info)
    finally:
        _measured(result, cuda, sampler)
        _release(ledger, names)
    return result
