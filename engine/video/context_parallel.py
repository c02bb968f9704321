"""One Wan 2.2 run over several GPUs: diffusers' context parallelism (Ulysses attention) on both experts.

Every rank (one process per GPU, started by ``torchrun``) loads the same pipeline on its own GPU; diffusers'
``enable_parallelism`` then splits the video tokens across the ranks before the first block, each rank attends
over all tokens through an all-to-all of heads (Ulysses), and ``proj_out`` gathers the tokens back, so every
rank ends the step with the whole latent and the same pixels as one GPU would give. Diffusers' context
parallelism needs an accelerator (its device mesh is built on ``torch.accelerator``); on a CPU-only machine
the flag is refused with a message.

    torchrun --nproc-per-node 2 -m engine run request.json --context-parallel 2

The weights are not split: each GPU holds both experts (or one at a time with ``model_offload``). What it buys is
time per step on long videos (attention is most of a 480p/720p x 81-frame step), not memory.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

from engine.errors import EngineError, InputError

# memory modes whose hooks leave the transformer's forward and its blocks alone (the CP hooks split their inputs)
CP_SWAP_MODES = ("none", "model_offload")


@dataclass(frozen=True)
class ContextParallel:
    """This process' place in a context-parallel run (``engine.context_parallel``; the i2v runner reads it)."""

    degree: int
    rank: int
    device: str  # this rank's GPU

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def from_torchrun(degree: int) -> ContextParallel:
    """Join the process group ``torchrun`` set up (NCCL) and pin this rank to its GPU."""
    import torch

    if degree < 2:
        raise InputError("context_parallel", f"needs 2 or more GPUs, got {degree}")
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world != degree:
        raise InputError("context_parallel", f"--context-parallel {degree} must run under "
                                             f"torchrun --nproc-per-node {degree} (this is {world} process(es))")
    if not torch.cuda.is_available() or torch.cuda.device_count() < degree:
        found = torch.cuda.device_count() if torch.cuda.is_available() else 0
        raise EngineError(f"context parallelism over {degree} GPUs needs {degree} CUDA GPUs on this machine; "
                          f"found {found}")
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    torch.cuda.set_device(local_rank)
    if not torch.distributed.is_initialized():
        torch.distributed.init_process_group("nccl", device_id=torch.device("cuda", local_rank))
    return ContextParallel(degree=degree, rank=torch.distributed.get_rank(), device=f"cuda:{local_rank}")


def tokens(req, vae_spatial: int, vae_temporal: int, patch: tuple[int, int, int]) -> int:
    """How many video tokens a step attends over (latent frames x latent height x latent width / patch)."""
    frames = (req.num_frames - 1) // vae_temporal + 1
    return (frames // patch[0]) * (req.height // vae_spatial // patch[1]) * (req.width // vae_spatial // patch[2])


def check_request(req, heads: int, token_count: int, degree: int) -> None:
    """What context parallelism over ``degree`` ranks cannot take, in words, before any work."""
    if req.swap.mode not in CP_SWAP_MODES:
        raise InputError("swap.mode", f"context parallelism runs with {' or '.join(CP_SWAP_MODES)}; "
                                      f"{req.swap.mode!r} streams blocks itself")
    if heads % degree:
        raise InputError("context_parallel", f"the transformer's {heads} attention heads do not split over "
                                             f"{degree} GPUs (Ulysses needs a divisor of {heads})")
    if token_count % degree:
        raise InputError("num_frames", f"{token_count} video tokens do not split evenly over {degree} GPUs: "
                                       "change the frame count or the size")


def enable(pipe, req, degree: int) -> list[str]:
    """Turn on Ulysses context parallelism on every transformer of a Wan pipeline (once per loaded model)."""
    from diffusers import ContextParallelConfig

    experts = [t for t in (pipe.transformer, getattr(pipe, "transformer_2", None)) if t is not None]
    config = experts[0].config
    count = tokens(req, pipe.vae_scale_factor_spatial, pipe.vae_scale_factor_temporal, tuple(config.patch_size))
    check_request(req, config.num_attention_heads, count, degree)
    for expert in experts:
        if getattr(expert, "_parallel_config", None) is None:  # a cached pipeline is split already
            expert.enable_parallelism(config=ContextParallelConfig(ulysses_degree=degree))
    return [f"context parallel over {degree} GPUs (Ulysses, {count // degree} of {count} tokens per GPU)"]
