"""Sparse-Linear Attention (SLA), the attention the released TurboWan experts were fine-tuned for, as a diffusers
attention processor on Wan's self-attention.

Written from upstream thu-ml/TurboDiffusion (``turbodiffusion/SLA/core.py`` ``SparseLinearAttention``,
``SLA/utils.py`` ``get_block_map``, ``SLA/kernel.py`` ``_attn_fwd``; ``inference/modify_model.py``
``replace_attention``), per head, with q, k, v (B, H, L, D) after the q/k RMSNorm and RoPE:

- block map: mean-pool q over blocks of ``BLOCK_Q`` = 128 tokens and the *smoothed* k (``k - mean_L(k)``) over
  blocks of ``BLOCK_K`` = 64 (a last, shorter block is the mean of what it holds); score = pooled_q @ pooled_k^T;
  each query block keeps its ``topk = min(K, int(sla_topk * K))`` best key blocks (K = number of key blocks);
- sparse part ``o_s``: softmax(q k^T / sqrt(D)) @ v over the selected key blocks only (keys past the sequence end
  masked), i.e. exact attention restricted to those blocks;
- linear part ``o_l``: phi = softmax over the head dimension, applied to q and k (the unsmoothed k);
  ``o_l = phi(q) (phi(k)^T v) / (1e-5 + phi(q) . sum_L phi(k))``, then ``proj_l`` (Linear(D, D), the weights the
  checkpoints carry as ``blocks.<i>.self_attn.attn_op.local_attn.proj_l``);
- output ``o_s + proj_l(o_l)``. Only self-attention is replaced (upstream matches ``type(m) is WanSelfAttention``,
  so the cross-attention keeps full attention).

Where ours differs: upstream casts q, k, v to bf16 inside the module; ours computes in the run's dtype (bf16 on a
GPU run, as upstream; float32 on CPU). ``topk`` is at least 1 block: upstream's ``int(0.1 * K)`` is 0 below 10 key
blocks (fewer than 640 tokens), where its kernel divides 0 by 0; the real 480p/720p sequences have hundreds.

Two paths for the sparse part, the same math: ``sparse_attention_torch`` (plain PyTorch, gathers the selected
key blocks per query block, chunked to bound memory; runs anywhere) and, on CUDA, PyTorch's FlexAttention with a
``BlockMask`` built from the same block map (a maintained fused block-sparse kernel, compiled by Triton; we do
not ship a kernel of our own). Tests hold both, and the processor, against a direct computation of upstream's
math (tests/test_sla.py).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

BLOCK_Q, BLOCK_K = 128, 64  # upstream replace_attention(): SLA(head_dim, topk, BLKQ=128, BLKK=64)
DEFAULT_TOPK = 0.1  # upstream's --sla_topk default and seed 003's loader default
CHUNK_ELEMENTS = 2**26  # the gathered keys of one chunk of query blocks (elements), to bound the torch path's memory
ATTENTION_TYPES = ("sla", "original")


def _block_means(x: torch.Tensor, block: int) -> torch.Tensor:
    """(B, H, L, D) -> (B, H, ceil(L / block), D): the mean of each block of tokens (a short last block too)."""
    b, h, length, d = x.shape
    n = -(-length // block)
    padded = F.pad(x.float(), (0, 0, 0, n * block - length))
    sums = padded.view(b, h, n, block, d).sum(dim=3)
    counts = torch.full((n,), float(block), device=x.device)
    counts[-1] = length - (n - 1) * block
    return sums / counts.view(1, 1, n, 1)


def topk_blocks(num_key_blocks: int, ratio: float) -> int:
    return max(1, min(num_key_blocks, int(ratio * num_key_blocks)))


def block_map(q: torch.Tensor, k: torch.Tensor, ratio: float, block_q: int = BLOCK_Q,
              block_k: int = BLOCK_K) -> torch.Tensor:
    """The key blocks each query block attends to: (B, H, ceil(L / block_q), topk) block indices."""
    smoothed = k - k.mean(dim=-2, keepdim=True)  # smooth-k (SageAttention's), as upstream
    score = _block_means(q, block_q) @ _block_means(smoothed, block_k).transpose(-1, -2)
    return torch.topk(score, topk_blocks(score.shape[-1], ratio), dim=-1, sorted=False).indices


def sparse_attention_torch(q, k, v, lut, block_q: int = BLOCK_Q, block_k: int = BLOCK_K,
                           scale: float | None = None) -> torch.Tensor:
    """Softmax attention of each query block over its selected key blocks only. q, k, v (B, H, L, D)."""
    b, h, length, d = q.shape
    scale = d ** -0.5 if scale is None else scale
    nq, nk, topk = lut.shape[2], -(-length // block_k), lut.shape[3]
    kp = F.pad(k, (0, 0, 0, nk * block_k - length)).view(b, h, nk, block_k, d)
    vp = F.pad(v, (0, 0, 0, nk * block_k - length)).view(b, h, nk, block_k, d)
    valid = (torch.arange(nk * block_k, device=q.device) < length).view(nk, block_k)
    qp = F.pad(q, (0, 0, 0, nq * block_q - length)).view(b, h, nq, block_q, d)
    out = torch.empty_like(qp)
    per_block = b * h * topk * block_k * d
    step = max(1, CHUNK_ELEMENTS // max(per_block, 1))
    for start in range(0, nq, step):
        idx = lut[:, :, start:start + step]  # (B, H, c, topk)
        c = idx.shape[2]
        gather = idx.reshape(b, h, c * topk, 1, 1).expand(-1, -1, -1, block_k, d)
        keys = torch.gather(kp, 2, gather).view(b, h, c, topk * block_k, d)
        values = torch.gather(vp, 2, gather).view(b, h, c, topk * block_k, d)
        mask = valid[idx].view(b, h, c, 1, topk * block_k)  # keys past the sequence end never count
        scores = (qp[:, :, start:start + c].float() @ keys.float().transpose(-1, -2)) * scale
        scores = scores.masked_fill(~mask, float("-inf"))
        out[:, :, start:start + c] = (scores.softmax(dim=-1) @ values.float()).to(q.dtype)
    return out.view(b, h, nq * block_q, d)[:, :, :length]


def sparse_attention_flex(q, k, v, lut, block_q: int = BLOCK_Q, block_k: int = BLOCK_K,
                          scale: float | None = None, compiled: bool = True) -> torch.Tensor:
    """The same, through FlexAttention: the block map as a ``BlockMask`` (its ``mask_mod`` looks the same map up,
    so eager mode, which applies only ``mask_mod``, computes the same thing as the compiled block-sparse kernel)."""
    from torch.nn.attention.flex_attention import BlockMask, flex_attention

    b, h, length, _ = q.shape
    nq, nk = lut.shape[2], -(-length // block_k)
    dense = torch.zeros(b, h, nq, nk, dtype=torch.bool, device=q.device)
    dense.scatter_(-1, lut, True)
    indices = torch.cat([lut, torch.zeros(b, h, nq, nk - lut.shape[3], dtype=lut.dtype, device=lut.device)], -1)

    def mask_mod(bi, hi, qi, ki):
        return dense[bi, hi, qi // block_q, ki // block_k] & (ki < length)

    mask = BlockMask.from_kv_blocks(torch.full((b, h, nq), lut.shape[3], dtype=torch.int32, device=q.device),
                                    indices.to(torch.int32), BLOCK_SIZE=(block_q, block_k), mask_mod=mask_mod,
                                    seq_lengths=(length, length))
    fn = _compiled_flex() if compiled else flex_attention
    return fn(q, k, v, block_mask=mask, scale=scale)


_FLEX = None


def _compiled_flex():
    global _FLEX
    if _FLEX is None:
        from torch.nn.attention.flex_attention import flex_attention

        _FLEX = torch.compile(flex_attention, dynamic=False)
    return _FLEX


def linear_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """Upstream's linear branch before ``proj_l``, softmax feature map (tied for q and k)."""
    fq, fk = q.softmax(dim=-1), k.softmax(dim=-1)
    kv = fk.transpose(-1, -2) @ v
    ksum = fk.sum(dim=-2, keepdim=True)
    return (fq @ kv) / (1e-5 + (fq * ksum).sum(dim=-1, keepdim=True))


def sla(q, k, v, proj_l: torch.nn.Linear, topk: float = DEFAULT_TOPK, fused: bool | None = None) -> torch.Tensor:
    """Sparse-Linear Attention, q, k, v (B, H, L, D) -> (B, H, L, D)."""
    lut = block_map(q, k, topk)
    if fused is None:
        fused = q.is_cuda
    o_s = sparse_attention_flex(q, k, v, lut) if fused else sparse_attention_torch(q, k, v, lut)
    o_l = proj_l(linear_attention(q, k, v).to(proj_l.weight.dtype)).to(q.dtype)
    return o_s + o_l


class SLAProcessor:
    """diffusers' ``WanAttnProcessor`` for a self-attention (attn1), with SLA instead of full attention. The
    module's ``proj_l`` (Linear(head_dim, head_dim)) holds the checkpoint's linear-branch weights."""

    def __init__(self, topk: float = DEFAULT_TOPK, fused: bool | None = None):
        self.topk = topk
        self.fused = fused

    def __call__(self, attn, hidden_states, encoder_hidden_states=None, attention_mask=None, rotary_emb=None):
        from diffusers.models.transformers.transformer_wan import _get_qkv_projections

        if encoder_hidden_states is not None or attn.add_k_proj is not None:
            raise ValueError("SLA replaces self-attention only")
        query, key, value = _get_qkv_projections(attn, hidden_states, None)
        query, key = attn.norm_q(query), attn.norm_k(key)
        query, key, value = (t.unflatten(2, (attn.heads, -1)) for t in (query, key, value))
        if rotary_emb is not None:
            query, key = _rope(query, *rotary_emb), _rope(key, *rotary_emb)
        out = sla(query.transpose(1, 2), key.transpose(1, 2), value.transpose(1, 2), attn.proj_l, self.topk,
                  self.fused)
        out = out.transpose(1, 2).flatten(2, 3).type_as(query)
        return attn.to_out[1](attn.to_out[0](out))


def _rope(x, cos, sin):
    """diffusers' Wan rotary embedding (its ``WanAttnProcessor`` keeps it as a closure)."""
    x1, x2 = x.unflatten(-1, (-1, 2)).unbind(-1)
    out = torch.empty_like(x)
    out[..., 0::2] = x1 * cos[..., 0::2] - x2 * sin[..., 1::2]
    out[..., 1::2] = x1 * sin[..., 1::2] + x2 * cos[..., 0::2]
    return out.type_as(x)


def add_proj_l_to(attn, dtype) -> None:
    """A ``proj_l`` (Linear(head_dim, head_dim)) on one self-attention, for the checkpoint's weights."""
    head_dim = attn.inner_dim // attn.heads
    attn.proj_l = torch.nn.Linear(head_dim, head_dim, dtype=dtype, device=attn.to_q.weight.device)


def add_proj_l(model, dtype) -> None:
    """Every block's self-attention gets its ``proj_l``; a strict load then fails on a checkpoint without them,
    as upstream's does."""
    for block in model.blocks:
        add_proj_l_to(block.attn1, dtype)


def use_sla(model, topk: float = DEFAULT_TOPK, fused: bool | None = None) -> int:
    """SLA on every block's self-attention that has ``proj_l``; returns how many."""
    count = 0
    for block in model.blocks:
        if hasattr(block.attn1, "proj_l"):
            block.attn1.set_processor(SLAProcessor(topk, fused))
            count += 1
    return count


ORIGINAL_ON_SLA = (
    "attention_type \"original\" on SLA-finetuned TurboWan experts: their proj_l (linear-attention) weights are "
    "dropped and every self-attention runs full softmax attention, a different computation from the one the "
    "checkpoints were fine-tuned for (the video drifts from upstream's SLA result)")
