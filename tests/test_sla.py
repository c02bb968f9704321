"""Sparse-Linear Attention (engine/video/sla.py) against a direct computation of upstream TurboDiffusion's math
(``SLA/core.py`` ``SparseLinearAttention.forward``, ``SLA/utils.py`` ``get_block_map``, ``SLA/kernel.py``
``_attn_fwd``), written out here the slow, obvious way: loops over blocks and a dense L x L mask."""

from __future__ import annotations

import warnings

import pytest
import torch
import torch.nn.functional as F

from engine.video import sla


def reference_sla(q, k, v, proj_l, ratio, bq, bk):
    """Upstream's SLA for q, k, v (B, H, L, D), in float64."""
    q, k, v = q.double(), k.double(), v.double()
    b, h, length, d = q.shape
    nq, nk = -(-length // bq), -(-length // bk)
    ks = k - k.mean(dim=-2, keepdim=True)  # get_block_map: smooth-k
    out_s = torch.zeros_like(q)
    for bi in range(b):
        for hi in range(h):
            pq = torch.stack([q[bi, hi, i * bq:(i + 1) * bq].mean(0) for i in range(nq)])  # mean_pool
            pk = torch.stack([ks[bi, hi, j * bk:(j + 1) * bk].mean(0) for j in range(nk)])
            score = pq @ pk.T
            topk = max(1, min(nk, int(ratio * nk)))
            chosen = score.topk(topk, dim=-1).indices
            mask = torch.zeros(length, length, dtype=torch.bool)
            for i in range(nq):
                for j in chosen[i].tolist():
                    mask[i * bq:(i + 1) * bq, j * bk:(j + 1) * bk] = True
            s = (q[bi, hi] @ k[bi, hi].T) / d ** 0.5  # _attn_fwd: qk * qk_scale, online softmax over the LUT blocks
            s = s.masked_fill(~mask, float("-inf"))
            out_s[bi, hi] = s.softmax(-1) @ v[bi, hi]
    fq, fk = F.softmax(q, dim=-1), F.softmax(k, dim=-1)  # feature_map 'softmax', tied
    kvsum = fk.transpose(-1, -2) @ v
    ksum = fk.sum(dim=-2, keepdim=True)
    o_l = (fq @ kvsum) / (1e-5 + (fq * ksum).sum(dim=-1, keepdim=True))
    o_l = o_l @ proj_l.weight.double().T + proj_l.bias.double()
    return out_s + o_l


def qkv(b=1, h=2, length=50, d=16, seed=0):
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(b, h, length, d, generator=g) for _ in range(3)]


def linear(d, seed=1):
    torch.manual_seed(seed)
    layer = torch.nn.Linear(d, d)
    torch.nn.init.normal_(layer.weight, std=0.3)
    return layer


@pytest.mark.parametrize("length,ratio", [(50, 0.3), (64, 0.5), (37, 0.2)])
def test_sla_equals_upstreams_math_computed_directly(length, ratio, monkeypatch):
    q, k, v = qkv(length=length)
    proj = linear(16)
    bq, bk = 8, 4  # small blocks so that the block map has something to choose (upstream: 128 x 64)
    lut = sla.block_map(q, k, ratio, bq, bk)
    assert lut.shape == (1, 2, -(-length // bq), max(1, int(ratio * -(-length // bk))))
    o_s = sla.sparse_attention_torch(q, k, v, lut, bq, bk)
    monkeypatch.setattr(sla, "CHUNK_ELEMENTS", 64)  # one query block per chunk: the chunking changes nothing
    assert torch.allclose(sla.sparse_attention_torch(q, k, v, lut, bq, bk), o_s, atol=1e-6)
    got = o_s + proj(sla.linear_attention(q, k, v))
    want = reference_sla(q, k, v, proj, ratio, bq, bk)
    assert (got.double() - want).abs().max() < 1e-5


def test_topk_one_makes_the_sparse_part_full_attention():
    q, k, v = qkv(length=300, d=32, seed=3)
    lut = sla.block_map(q, k, 1.0)
    assert lut.shape[-1] == -(-300 // sla.BLOCK_K)  # every key block
    full = F.scaled_dot_product_attention(q, k, v)
    assert (sla.sparse_attention_torch(q, k, v, lut) - full).abs().max() < 1e-5
    sparse = sla.sparse_attention_torch(q, k, v, sla.block_map(q, k, 0.2))
    assert (sparse - full).abs().max() > 1e-3  # a real selection changes the result


def test_at_least_one_key_block_where_upstream_would_pick_none():
    q, k, v = qkv(length=40)  # one key block of 64: int(0.1 * 1) = 0 upstream (its kernel then gives 0/0)
    lut = sla.block_map(q, k, 0.1)
    assert lut.shape[-1] == 1
    assert torch.isfinite(sla.sparse_attention_torch(q, k, v, lut)).all()


def test_flexattention_path_equals_the_torch_path():
    q, k, v = qkv(length=300, d=16, seed=4)
    lut = sla.block_map(q, k, 0.4)
    torch_path = sla.sparse_attention_torch(q, k, v, lut)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # "without torch.compile": the eager reference is the point
        flex = sla.sparse_attention_flex(q, k, v, lut, compiled=False)  # eager: the mask_mod, same block map
    assert (flex - torch_path).abs().max() < 1e-5


def wan_attention(seed=5):
    from diffusers.models.transformers.transformer_wan import WanAttention, WanAttnProcessor

    torch.manual_seed(seed)
    attn = WanAttention(dim=32, heads=2, dim_head=16, eps=1e-6, processor=WanAttnProcessor())
    attn.norm_q = torch.nn.RMSNorm(32, eps=1e-6)
    attn.norm_k = torch.nn.RMSNorm(32, eps=1e-6)
    return attn.eval()


def rotary(length, d=16):
    angles = torch.randn(1, length, 1, d // 2).repeat_interleave(2, dim=-1)
    return angles.cos(), angles.sin()


@torch.no_grad()
def test_the_processor_with_zero_proj_l_and_topk_one_is_diffusers_own_attention():
    attn = wan_attention()
    x = torch.randn(1, 200, 32)
    rope = rotary(200)
    full = attn(x, rotary_emb=rope)  # diffusers' WanAttnProcessor
    sla.add_proj_l_to(attn, torch.float32)
    torch.nn.init.zeros_(attn.proj_l.weight)
    torch.nn.init.zeros_(attn.proj_l.bias)  # upstream's init: the linear branch adds nothing
    attn.set_processor(sla.SLAProcessor(topk=1.0))
    assert (attn(x, rotary_emb=rope) - full).abs().max() < 1e-5


@torch.no_grad()
def test_the_processor_computes_upstreams_sla_on_the_modules_q_k_v():
    attn = wan_attention(6)
    sla.add_proj_l_to(attn, torch.float32)
    torch.nn.init.normal_(attn.proj_l.weight, std=0.3)
    x = torch.randn(1, 300, 32)
    rope = rotary(300)
    attn.set_processor(sla.SLAProcessor(topk=0.4))
    got = attn(x, rotary_emb=rope)
    # the module's own q, k, v (norms and RoPE as diffusers' Wan processor applies them), then upstream's SLA
    q = sla._rope(attn.norm_q(attn.to_q(x)).unflatten(2, (2, -1)), *rope).transpose(1, 2)
    k = sla._rope(attn.norm_k(attn.to_k(x)).unflatten(2, (2, -1)), *rope).transpose(1, 2)
    v = attn.to_v(x).unflatten(2, (2, -1)).transpose(1, 2)
    ref = reference_sla(q, k, v, attn.proj_l, 0.4, sla.BLOCK_Q, sla.BLOCK_K).float()
    want = attn.to_out[0](ref.transpose(1, 2).flatten(2, 3))
    assert (got - want).abs().max() < 1e-4


def test_the_export_carries_attention_type_and_sla_topk_to_the_loader_node(tmp_path):
    """seed 003's TurboWanModelLoader: attention_type [original, sla, sagesla] default sla, sla_topk 0.01..1; its
    sampler's sigma_max stops at 1000, so upstream's 1600 is written as 1000 with a note."""
    from PIL import Image

    from comfy_export import validate
    from comfy_export.export import both, build
    from engine.requests import I2VRequest, TurboWanSettings

    image = tmp_path / "start.png"
    Image.new("RGB", (32, 32), (10, 20, 30)).save(image)
    for attention, topk, sigma in (("sla", 0.15, 200.0), ("original", 0.1, 1600.0)):
        req = I2VRequest(image=str(image), prompt="go", steps=4, turbo=TurboWanSettings(
            enabled=True, attention_type=attention, sla_topk=topk, sigma_max=sigma))
        req.validate()
        api, _ = both(req)
        assert validate.problems(api) == []
        loaders = [n for n in api.values() if n["class_type"] == "TurboWanModelLoader"]
        assert len(loaders) == 2
        assert all(n["inputs"]["attention_type"] == attention and n["inputs"]["sla_topk"] == topk for n in loaders)
        sampler = next(n for n in api.values() if n["class_type"] == "TurboDiffusionI2VSampler")
        assert sampler["inputs"]["sigma_max"] == min(sigma, 1000.0)
        notes = build(req).notes
        assert any("sigma_max up to 1000" in n for n in notes) == (sigma > 1000)
