"""Nunchaku Qwen-Image LoRAs composed into SVDQuant's low-rank branch as seed 004's pack does it, on CPU.

The real kernels need CUDA, but the composition is tensor work on ``SVDQW4A4Linear``'s ``proj_down``/``proj_up``
in the kernel's packed tile order. A fake ``nunchaku`` package on ``sys.path`` stands in for the wheel: a
version, the Qwen-Image transformer module, and ``nunchaku.lora.flux.nunchaku_converter`` with the low-rank
packers (the tile order below was written from nunchaku's ``pack_lowrank_weight`` / ``unpack_lowrank_weight`` and
checked against them once on random tensors). Tiny modules carry the real attribute names and shapes."""

from __future__ import annotations

import sys
import textwrap

import pytest
import torch

from engine.adapters import nunchaku
from engine.adapters.lora_stack import StackItem
from engine.errors import EngineError

PACKERS = '''
import torch

def _frags():
    return 2 * 8 * 1, 2 * 4 * 2  # frag_n, frag_k: 16 x 16 tiles of (n_pack 2, n_lanes 8) x (k_pack 2, k_lanes 4, 2)

def _pad(w, dn, dk):
    r, c = w.shape
    out = w.new_zeros(-(-r // dn) * dn, -(-c // dk) * dk)
    out[:r, :c] = w
    return out

def pack_lowrank_weight(weight, down):
    assert weight.dtype in (torch.float16, torch.bfloat16)
    fn, fk = _frags()
    weight = _pad(weight, fn, fk)
    if down:
        r, c = weight.shape
        rf, cf = r // fn, c // fk
        weight = weight.view(rf, fn, cf, fk).permute(2, 0, 1, 3)
    else:
        c, r = weight.shape
        cf, rf = c // fn, r // fk
        weight = weight.view(cf, fn, rf, fk).permute(0, 2, 1, 3)
    weight = weight.reshape(cf, rf, 2, 8, 2, 4, 2).permute(0, 1, 3, 5, 2, 4, 6).contiguous()
    return weight.view(c, r)

def unpack_lowrank_weight(weight, down):
    c, r = weight.shape
    fn, fk = _frags()
    if down:
        rf, cf = r // fn, c // fk
    else:
        cf, rf = c // fn, r // fk
    weight = weight.view(cf, rf, 8, 4, 2, 2, 2).permute(0, 1, 4, 2, 5, 3, 6).contiguous().view(cf, rf, fn, fk)
    if down:
        return weight.permute(1, 2, 0, 3).contiguous().view(r, c)
    return weight.permute(0, 2, 1, 3).contiguous().view(c, r)
'''


def fake_nunchaku(root, version: str, qwen: bool = True, converter: bool = True) -> None:
    pkg = root / "nunchaku"
    for sub in ("", "models", "models/transformers", "lora", "lora/flux"):
        (pkg / sub).mkdir(parents=True, exist_ok=True)
        (pkg / sub / "__init__.py").write_text("")
    (pkg / "__init__.py").write_text(f"__version__ = {version!r}\n")
    if qwen:
        (pkg / "models/transformers/transformer_qwenimage.py").write_text(
            "class NunchakuQwenImageTransformer2DModel:\n    pass\n")
    if converter:
        (pkg / "lora/flux/nunchaku_converter.py").write_text(textwrap.dedent(PACKERS))


@pytest.fixture
def fake(tmp_path, monkeypatch):
    def install(version="1.0.2", **kw):
        root = tmp_path / f"site-{version}-{len(kw)}"
        fake_nunchaku(root, version, **kw)
        for name in [m for m in sys.modules if m == "nunchaku" or m.startswith("nunchaku.")]:
            monkeypatch.delitem(sys.modules, name)
        monkeypatch.syspath_prepend(str(root))
        import importlib

        importlib.invalidate_caches()
        return root
    return install


class SVDQW4A4Linear(torch.nn.Module):
    """nunchaku.models.linear.SVDQW4A4Linear's attributes and shapes (int4, group 64), without its kernels."""

    def __init__(self, in_features, out_features, rank, pack):
        super().__init__()
        self.in_features, self.out_features, self.rank, self.group_size = in_features, out_features, rank, 64
        self.qweight = torch.nn.Parameter(torch.randint(-8, 8, (out_features, in_features // 2), dtype=torch.int8),
                                          requires_grad=False)
        self.wscales = torch.nn.Parameter(torch.rand(in_features // 64, out_features, dtype=torch.bfloat16),
                                          requires_grad=False)
        self.smooth_factor = torch.nn.Parameter(torch.ones(in_features, dtype=torch.bfloat16), requires_grad=False)
        self.bias = torch.nn.Parameter(torch.zeros(out_features, dtype=torch.bfloat16))
        down = (torch.randn(rank, in_features) * 0.1).to(torch.bfloat16)
        up = (torch.randn(out_features, rank) * 0.1).to(torch.bfloat16)
        self.proj_down = torch.nn.Parameter(pack(down, down=True))  # (in, rank) packed
        self.proj_up = torch.nn.Parameter(pack(up, down=False))  # (out, rank) packed


class AWQW4A16Linear(torch.nn.Module):
    def __init__(self, in_features, out_features):
        super().__init__()
        self.in_features, self.out_features = in_features, out_features
        self.qweight = torch.nn.Parameter(torch.zeros(out_features // 4, in_features // 2, dtype=torch.int32),
                                          requires_grad=False)


DIM, HIDDEN, BASE_RANK = 64, 128, 32


def tiny_transformer(pack, blocks=2):
    """NunchakuQwenImageTransformer2DModel's module names: fused to_qkv / add_qkv_proj, to_out.0, to_add_out,
    the MLPs' net.0.proj / net.2, AWQ img_mod.1 / txt_mod.1."""
    def block():
        b = torch.nn.Module()
        b.attn = torch.nn.Module()
        b.attn.to_qkv = SVDQW4A4Linear(DIM, 3 * DIM, BASE_RANK, pack)
        b.attn.add_qkv_proj = SVDQW4A4Linear(DIM, 3 * DIM, BASE_RANK, pack)
        b.attn.to_out = torch.nn.ModuleList([SVDQW4A4Linear(DIM, DIM, BASE_RANK, pack), torch.nn.Dropout()])
        b.attn.to_add_out = SVDQW4A4Linear(DIM, DIM, BASE_RANK, pack)
        for mlp in ("img_mlp", "txt_mlp"):
            m = torch.nn.Module()
            first = torch.nn.Module()
            first.proj = SVDQW4A4Linear(DIM, HIDDEN, BASE_RANK, pack)
            m.net = torch.nn.ModuleList([first, torch.nn.Dropout(), SVDQW4A4Linear(HIDDEN, DIM, BASE_RANK, pack)])
            setattr(b, mlp, m)
        b.img_mod = torch.nn.Sequential(torch.nn.SiLU(), AWQW4A16Linear(DIM, 6 * DIM))
        b.txt_mod = torch.nn.Sequential(torch.nn.SiLU(), AWQW4A16Linear(DIM, 6 * DIM))
        return b

    model = torch.nn.Module()
    model.transformer_blocks = torch.nn.ModuleList([block() for _ in range(blocks)])
    return model


def lora_state(seed: int, rank: int, fused_qkv: bool = False, modules=None, blocks: int = 2) -> dict[str, torch.Tensor]:
    """Our converted layout (``transformer.<diffusers module>.lora_A/B.weight``, alpha folded into B)."""
    g = torch.Generator().manual_seed(seed)
    sizes = {"attn.to_q": (DIM, DIM), "attn.to_k": (DIM, DIM), "attn.to_v": (DIM, DIM),
             "attn.add_q_proj": (DIM, DIM), "attn.add_k_proj": (DIM, DIM), "attn.add_v_proj": (DIM, DIM),
             "attn.to_out.0": (DIM, DIM), "attn.to_add_out": (DIM, DIM), "img_mlp.net.0.proj": (DIM, HIDDEN),
             "img_mlp.net.2": (HIDDEN, DIM), "txt_mlp.net.0.proj": (DIM, HIDDEN), "txt_mlp.net.2": (HIDDEN, DIM),
             "img_mod.1": (DIM, 6 * DIM)}
    out = {}
    for block in range(blocks):
        shared = torch.randn(rank, DIM, generator=g)
        for name, (i, o) in sizes.items():
            if modules is not None and name not in modules:
                continue
            key = f"transformer.transformer_blocks.{block}.{name}"
            a = shared.clone() if fused_qkv and name in ("attn.to_q", "attn.to_k", "attn.to_v") else torch.randn(
                rank, i, generator=g)
            out[f"{key}.lora_A.weight"] = a
            out[f"{key}.lora_B.weight"] = torch.randn(o, rank, generator=g) * 0.1
    return out


_FILES = {}


def item(state, weight, enabled=True, name="x", alpha=None) -> StackItem:
    """Through the real file path: a diffusers-layout file (``alpha`` per layer when given), read and converted
    by ``inspect_file`` as a run does (no module table: nunchaku's names differ from diffusers')."""
    import tempfile

    from safetensors.torch import save_file

    from engine.adapters.lora_files import inspect_file

    tensors = dict(state)
    if alpha is not None:
        for key in [k for k in state if k.endswith(".lora_A.weight")]:
            tensors[key.replace(".lora_A.weight", ".alpha")] = torch.tensor(float(alpha))
    folder = _FILES.setdefault("dir", tempfile.mkdtemp(prefix="nunchaku-loras-"))
    path = f"{folder}/{name}-{len(state)}-{alpha}.safetensors"
    save_file({k: v.contiguous() for k, v in tensors.items()}, path)
    return StackItem(info=inspect_file(path, None, "loras[0]", name), weight=weight, enabled=enabled, label=name)


def effective(module, unpack) -> torch.Tensor:
    """The low-rank branch's matrix, out x in: what the kernel adds to the W4 residual's output."""
    down = unpack(module.proj_down.data, down=True).float()
    up = unpack(module.proj_up.data, down=False).float()
    return up[:, :module.rank] @ down[:module.rank]


def expected_delta(states_weights, block: int, fused: str) -> torch.Tensor:
    """Seed 004's math from the diffusers-layout LoRAs: sum of strength * B @ A, q/k/v stacked by rows."""
    parts = {"to_qkv": ("attn.to_q", "attn.to_k", "attn.to_v"),
             "add_qkv_proj": ("attn.add_q_proj", "attn.add_k_proj", "attn.add_v_proj")}.get(fused, (fused,))
    total = 0
    for state, w in states_weights:
        rows = []
        for p in parts:
            key = f"transformer.transformer_blocks.{block}.{p}"
            rows.append(w * state[f"{key}.lora_B.weight"] @ state[f"{key}.lora_A.weight"])
        total = total + torch.cat(rows, dim=0)
    return total


def test_composed_branch_is_base_plus_the_scaled_lora_products_and_reset_restores_it_exactly(fake):
    fake()
    pack, unpack = nunchaku.lowrank_packers()
    torch.manual_seed(0)
    model = tiny_transformer(pack)
    base = {n: (m.proj_down.data.clone(), m.proj_up.data.clone(), m.rank) for n, m in model.named_modules()
            if hasattr(m, "proj_down")}
    base_eff = {n: effective(model.get_submodule(n), unpack) for n in base}
    a, b = lora_state(1, 4), lora_state(2, 8, fused_qkv=True)
    composer = nunchaku.NunchakuComposer(model)
    assert composer.apply([item(a, 0.8, name="a", alpha=2.0), item(b, -1.5, name="b")])
    assert "transformer_blocks.0.img_mod.1" in composer.skipped  # AWQ modulation: no low-rank branch (as seed 004)
    for block in (0, 1):
        for layer, fused in (("attn.to_qkv", "to_qkv"), ("attn.add_qkv_proj", "add_qkv_proj"),
                             ("attn.to_out.0", "attn.to_out.0"), ("attn.to_add_out", "attn.to_add_out"),
                             ("img_mlp.net.0.proj", "img_mlp.net.0.proj"), ("txt_mlp.net.2", "txt_mlp.net.2")):
            name = f"transformer_blocks.{block}.{layer}"
            module = model.get_submodule(name)
            got = effective(module, unpack) - base_eff[name]
            want = expected_delta([(a, 0.8 * 2.0 / 4), (b, -1.5)], block, fused)  # a: alpha 2 / rank 4
            # bf16 storage of the appended ranks (as nunchaku stores them): relative error of a few 1e-3
            assert (got - want).abs().max() <= 2e-2 * want.abs().max(), name
        qkv = model.get_submodule(f"transformer_blocks.{block}.attn.to_qkv")
        assert qkv.rank == BASE_RANK + 3 * 4 + 8  # a: q/k/v with their own A; b: one shared A appended once
        assert qkv.proj_down.shape == (DIM, 64) and qkv.proj_up.shape == (3 * DIM, 64)  # 52 padded to 16-rank tiles
        assert torch.equal(qkv.qweight, qkv.qweight)  # the W4 residual is never written
    composer.apply([item(a, 0.8, enabled=False, name="a", alpha=2.0), item(b, 0.0, name="b")])  # nothing left: the base
    for n, (down, up, rank) in base.items():
        m = model.get_submodule(n)
        assert torch.equal(m.proj_down.data, down) and torch.equal(m.proj_up.data, up) and m.rank == rank, n


def test_an_unchanged_stack_does_no_work_and_a_change_recomposes_from_the_base(fake):
    fake()
    pack, unpack = nunchaku.lowrank_packers()
    torch.manual_seed(1)
    model = tiny_transformer(pack, blocks=1)
    a, b = lora_state(3, 4, blocks=1), lora_state(4, 4, blocks=1)
    composer = nunchaku.NunchakuComposer(model)
    assert composer.apply([item(a, 1.0, name="a")]) and composer.composes == 1
    version = composer.version
    first = effective(model.get_submodule("transformer_blocks.0.attn.to_out.0"), unpack)
    assert not composer.apply([item(a, 1.0, name="a")])  # same stack: no compose, no tensor touched
    assert composer.composes == 1 and composer.version == version
    assert composer.apply([item(a, 1.0, name="a"), item(b, 0.5, name="b")]) and composer.composes == 2
    assert composer.version > version  # what a step cache keyed on the composition sees change
    assert model.get_submodule("transformer_blocks.0.attn.to_out.0").rank == BASE_RANK + 8  # not 12: from base
    assert composer.apply([item(a, 1.0, name="a")])
    assert torch.equal(effective(model.get_submodule("transformer_blocks.0.attn.to_out.0"), unpack), first)
    composer.reset()
    assert model.get_submodule("transformer_blocks.0.attn.to_out.0").rank == BASE_RANK


def test_a_lora_on_part_of_qkv_gets_zero_blocks_for_the_rest(fake):
    fake()
    pack, unpack = nunchaku.lowrank_packers()
    torch.manual_seed(2)
    model = tiny_transformer(pack, blocks=2)
    only_k = lora_state(5, 4, modules={"attn.to_k"})
    base = effective(model.get_submodule("transformer_blocks.0.attn.to_qkv"), unpack)
    nunchaku.NunchakuComposer(model).apply([item(only_k, 2.0)])
    delta = effective(model.get_submodule("transformer_blocks.0.attn.to_qkv"), unpack) - base
    key = "transformer.transformer_blocks.0.attn.to_k"
    want = 2.0 * only_k[f"{key}.lora_B.weight"] @ only_k[f"{key}.lora_A.weight"]
    assert delta[:DIM].abs().max() < 1e-6 and delta[2 * DIM:].abs().max() < 1e-6  # q and v rows untouched
    assert (delta[DIM:2 * DIM] - want).abs().max() <= 2e-2 * want.abs().max()


def test_packers_round_trip_and_are_a_permutation(fake):
    fake()
    pack, unpack = nunchaku.lowrank_packers()
    w = torch.randn(32, 64).to(torch.bfloat16)
    packed = pack(w, down=True)
    assert packed.shape == (64, 32) and not torch.equal(packed, w.T.contiguous())  # a tile order, not a transpose
    assert torch.equal(unpack(packed, down=True), w)
    up = torch.randn(64, 32).to(torch.bfloat16)
    assert torch.equal(unpack(pack(up, down=False), down=False), up)


def test_an_old_nunchaku_is_refused_naming_the_needed_version(fake):
    fake("0.3.2", qwen=False)
    state = nunchaku.status()
    assert not state.available and "0.3.2" in state.reason and f">= {nunchaku.MIN_VERSION}" in state.reason
    with pytest.raises(EngineError, match=r">= 1\.0\.0"):
        nunchaku.load_transformer("x.safetensors", torch.bfloat16, "cpu")


def test_a_nunchaku_without_the_lowrank_packers_is_refused_naming_the_version(fake):
    fake("1.0.0", converter=False)
    with pytest.raises(EngineError, match=r"unpack_lowrank_weight.*>= 1\.0\.0"):
        nunchaku.NunchakuComposer(torch.nn.Module()).apply([item(lora_state(6, 4), 1.0)])


def test_a_lora_for_another_model_is_refused_with_words(fake):
    fake()
    pack, _ = nunchaku.lowrank_packers()
    model = tiny_transformer(pack, blocks=1)  # block 1 missing: the LoRA targets it
    with pytest.raises(EngineError, match="transformer_blocks.1"):
        nunchaku.NunchakuComposer(model).apply([item(lora_state(7, 4), 1.0)])
