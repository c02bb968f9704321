"""A LoRA stack composed into Nunchaku's SVDQuant layers, the way seed 004's pack does it.

SVDQuant splits every quantized linear into a 4-bit residual and a 16-bit low-rank branch
(``SVDQW4A4Linear.proj_down`` (in, rank) and ``proj_up`` (out, rank), both stored in the kernel's packed tile
order, ``rank`` on the module). A LoRA is one more low-rank product, so seed 004's pack
(``ussoewwin/ComfyUI-QwenImageLoraLoader`` ``nunchaku_code/lora_qwen.py``: ``compose_loras_v2``,
``_apply_lora_to_module``, ``reset_lora_v2``, ``_lora_slots``) appends each LoRA's ranks to that branch:
unpack with ``nunchaku.lora.flux.nunchaku_converter.unpack_lowrank_weight``, ``proj_down = cat([down, A])``,
``proj_up = cat([up, strength * B], dim=1)``, pack again, ``rank = base + appended``; reset cuts back to the
base rank. The W4 residual is never touched, so the composition is exact and reversible.

Where ours follows it: the same attributes, the same packer functions from the installed nunchaku, the same
concatenation (base ranks first, then each LoRA in stack order), strength folded into B, the same module
names (Qwen-Image's q/k/v fused into ``attn.to_qkv``, the added ones into ``attn.add_qkv_proj``), the AWQ
``img_mod.1``/``txt_mod.1`` modulation layers left out by default (the pack skips them: W4A16 has no low-rank
branch and the pack finds LoRAs there give noise).
Where ours differs: (1) reset restores the base tensors we kept, not a re-slice of a re-unpacked tensor, so the
base is restored bit for bit; (2) a q/k/v LoRA is fused with the file's alpha/rank per component (folded in when
the file is read) -- the pack scales a fused q/k/v by alpha / (3 * rank), a third of what the file asks; (3) when
q, k and v share one A (a file saved with a fused ``to_qkv``), it is appended once with the three B stacked, not
three times; (4) a LoRA that covers only some of q/k/v gets zero blocks for the rest instead of being dropped.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

#: diffusers Qwen-Image module (suffix after ``transformer_blocks.<i>.``) -> (nunchaku module, component index
#: in the fused output or None)
FUSED = {
    "attn.to_q": ("attn.to_qkv", 0), "attn.to_k": ("attn.to_qkv", 1), "attn.to_v": ("attn.to_qkv", 2),
    "attn.add_q_proj": ("attn.add_qkv_proj", 0), "attn.add_k_proj": ("attn.add_qkv_proj", 1),
    "attn.add_v_proj": ("attn.add_qkv_proj", 2),
}
SAME = ("attn.to_out.0", "attn.to_add_out", "img_mlp.net.0.proj", "img_mlp.net.2", "txt_mlp.net.0.proj",
        "txt_mlp.net.2")
MODULATION = ("img_mod.1", "txt_mod.1")  # AWQ W4A16 in nunchaku: no low-rank branch (seed 004 skips them too)


def target_of(module: str) -> tuple[str, int | None] | None:
    """``transformer_blocks.3.attn.to_k`` -> (``transformer_blocks.3.attn.to_qkv``, 1); None if not a layer with a
    low-rank branch."""
    head, sep, rest = module.partition(".")
    block, sep2, tail = rest.partition(".")
    if head != "transformer_blocks" or not sep or not sep2 or not block.isdigit():
        return None
    prefix = f"transformer_blocks.{block}."
    if tail in FUSED:
        name, index = FUSED[tail]
        return prefix + name, index
    if tail in SAME:
        return prefix + tail, None
    return None


@dataclass
class LowRank:
    """What one stack adds to one SVDQuant layer: ``A`` (R, in), ``B`` (out, R), strengths folded into B."""

    a: list[torch.Tensor] = field(default_factory=list)
    b: list[torch.Tensor] = field(default_factory=list)

    def tensors(self) -> tuple[torch.Tensor, torch.Tensor]:
        return torch.cat(self.a, dim=0), torch.cat(self.b, dim=1)


def stack_deltas(stack: list[tuple[dict[str, torch.Tensor], float]], out_features: dict[str, int]
                 ) -> tuple[dict[str, LowRank], list[str]]:
    """The low-rank additions of a stack, per nunchaku module, in stack order. ``stack``: (state dict in our
    converted layout ``transformer.<module>.lora_A/B.weight`` with alpha folded into B, strength).
    ``out_features``: the fused layers' output sizes. Returns (additions, modules skipped)."""
    deltas: dict[str, LowRank] = {}
    skipped: set[str] = set()
    for state, strength in stack:
        parts: dict[str, dict[int | None, tuple[torch.Tensor, torch.Tensor]]] = {}
        for key, a in state.items():
            if not key.endswith(".lora_A.weight"):
                continue
            module = key[len("transformer."):-len(".lora_A.weight")]
            target = target_of(module)
            if target is None:
                skipped.add(module)
                continue
            b = state[f"transformer.{module}.lora_B.weight"]
            parts.setdefault(target[0], {})[target[1]] = (a.float(), b.float() * strength)
        for name, comps in parts.items():
            entry = deltas.setdefault(name, LowRank())
            if None in comps:
                a, b = comps[None]
                entry.a.append(a)
                entry.b.append(b)
                continue
            a, b = _fuse(comps, out_features.get(name) or 3 * next(iter(comps.values()))[1].shape[0])
            entry.a.append(a)
            entry.b.append(b)
    return deltas, sorted(skipped)


def _fuse(comps: dict, out_total: int) -> tuple[torch.Tensor, torch.Tensor]:
    """q/k/v pieces into one (A, B) for the fused layer: B block-diagonal over the components' rows."""
    each = out_total // 3
    first_a = next(iter(comps.values()))[0]
    if len(comps) == 3 and all(torch.equal(c[0], first_a) for c in comps.values()):
        return first_a, torch.cat([comps[i][1] for i in range(3)], dim=0)  # one shared A: no repeated ranks
    a_parts, b_cols = [], []
    for i in sorted(comps):
        a, b = comps[i]
        col = torch.zeros(out_total, b.shape[1], dtype=b.dtype)
        col[i * each:(i + 1) * each] = b
        a_parts.append(a)
        b_cols.append(col)
    return torch.cat(a_parts, dim=0), torch.cat(b_cols, dim=1)


class LowRankSlots:
    """The base low-rank branch of every layer a stack touched, kept to restore it exactly (seed 004's
    ``_lora_slots``, holding the original tensors rather than a base rank to cut back to)."""

    def __init__(self, model: torch.nn.Module, pack, unpack):
        self.model = model
        self.pack, self.unpack = pack, unpack
        self._base: dict[str, tuple[torch.Tensor, torch.Tensor, int]] = {}

    def layer(self, name: str):
        module = self.model.get_submodule(name)
        if not (hasattr(module, "proj_down") and hasattr(module, "proj_up")):
            raise TypeError(f"{name} ({type(module).__name__}) has no SVDQuant low-rank branch")
        return module

    def compose(self, deltas: dict[str, LowRank]) -> int:
        """Base + the stack, on every layer in ``deltas``; every other touched layer back to its base. Returns the
        number of layers written."""
        self.reset()
        for name, delta in deltas.items():
            module = self.layer(name)
            down, up = module.proj_down.data, module.proj_up.data
            self._base[name] = (down, up, int(module.rank))
            a, b = delta.tensors()
            base_down = self.unpack(down, down=True)  # (rank, in): the packer's down layout
            base_up = self.unpack(up, down=False)  # (out, rank)
            rank = int(module.rank)
            new_down = torch.cat([base_down[:rank], a.to(base_down.device, base_down.dtype)], dim=0)
            new_up = torch.cat([base_up[:, :rank], b.to(base_up.device, base_up.dtype)], dim=1)
            module.proj_down.data = self.pack(new_down, down=True)
            module.proj_up.data = self.pack(new_up, down=False)
            module.rank = rank + a.shape[0]
        return len(deltas)

    def reset(self) -> None:
        for name, (down, up, rank) in self._base.items():
            module = self.model.get_submodule(name)
            module.proj_down.data, module.proj_up.data, module.rank = down, up, rank
        self._base.clear()

    @property
    def touched(self) -> tuple[str, ...]:
        return tuple(self._base)
