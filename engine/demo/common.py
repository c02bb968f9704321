"""Pieces every demo family uses: seeded init, quiet builds, tokenizers from vocabularies, tiny text encoders,
the scheduler, and random LoRA files in the diffusers/peft layout."""

from __future__ import annotations

import json
import string
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from engine.demo.names import FLUX_JOINT_DIM, FLUX_POOLED_DIM, QWEN_SPECIAL_TOKENS


@contextmanager
def seeded(seed: int) -> Iterator[None]:
    """Fixed-seed random init that leaves the caller's global RNG state untouched."""
    import torch

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        yield


@contextmanager
def quiet() -> Iterator[None]:
    """No progress bars, info logs or deprecation warnings from diffusers/transformers during the build."""
    from diffusers.utils import logging as dlog
    from transformers.utils import logging as tlog

    saved = [(mod, mod.get_verbosity(), mod.is_progress_bar_enabled()) for mod in (dlog, tlog)]
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", FutureWarning)
            for mod, _, _ in saved:
                mod.set_verbosity_error()
                mod.disable_progress_bar()
            yield
    finally:
        for mod, verbosity, bars in saved:
            mod.set_verbosity(verbosity)
            if bars:
                mod.enable_progress_bar()


def byte_alphabet() -> list[str]:
    from tokenizers import pre_tokenizers

    return sorted(pre_tokenizers.ByteLevel.alphabet())


def clip_tokenizer():
    from transformers import CLIPTokenizer

    alphabet = byte_alphabet()
    tokens = ["<|startoftext|>", "<|endoftext|>"] + alphabet + [c + "</w>" for c in alphabet]
    return CLIPTokenizer(vocab={t: i for i, t in enumerate(tokens)}, merges=[], model_max_length=77)  # 514 ids


def t5_tokenizer():
    from transformers import T5Tokenizer

    chars = string.ascii_letters + string.digits + string.punctuation
    vocab = [("<pad>", 0.0), ("</s>", 0.0), ("<unk>", 0.0), ("\u2581", -2.0)]
    vocab += [(c, -3.0) for c in chars] + [("\u2581" + c, -2.5) for c in chars]
    return T5Tokenizer(vocab=vocab, extra_ids=0, model_max_length=512)  # 192 ids


def qwen_tokenizer():
    from transformers import Qwen2Tokenizer

    tok = Qwen2Tokenizer(
        vocab={c: i for i, c in enumerate(byte_alphabet())}, merges=[], model_max_length=131072
    )  # adds <|endoftext|> as id 256
    tok.add_tokens(list(QWEN_SPECIAL_TOKENS), special_tokens=True)
    return tok


def clip_text_encoder():
    from transformers import CLIPTextConfig, CLIPTextModel

    config = CLIPTextConfig(
        vocab_size=1000,
        hidden_size=FLUX_POOLED_DIM,
        projection_dim=FLUX_POOLED_DIM,
        intermediate_size=37,
        num_hidden_layers=2,
        num_attention_heads=4,
        max_position_embeddings=77,
        bos_token_id=0,
        eos_token_id=1,
        pad_token_id=1,
    )
    return CLIPTextModel(config).eval()


def t5_encoder(umt5: bool = False):
    from transformers import T5Config, T5EncoderModel, UMT5Config, UMT5EncoderModel

    kwargs = dict(
        vocab_size=256,
        d_model=FLUX_JOINT_DIM,
        d_ff=37,
        d_kv=8,
        num_heads=4,
        num_layers=2,
        relative_attention_num_buckets=8,
        decoder_start_token_id=0,
        pad_token_id=0,
        eos_token_id=1,
    )
    if umt5:
        return UMT5EncoderModel(UMT5Config(**kwargs)).eval()
    return T5EncoderModel(T5Config(**kwargs)).eval()


def flow_match_scheduler():
    from diffusers import FlowMatchEulerDiscreteScheduler

    # the FLUX.1-dev scheduler config (dynamic shifting on)
    return FlowMatchEulerDiscreteScheduler(
        num_train_timesteps=1000,
        shift=3.0,
        use_dynamic_shifting=True,
        base_shift=0.5,
        max_shift=1.15,
        base_image_seq_len=256,
        max_image_seq_len=4096,
    )


def lora_tensors(transformer, targets: list[str], seed: int, rank: int = 4) -> dict:
    """``<module>.lora_A.weight`` / ``.lora_B.weight`` of a random (non-zero) peft adapter."""
    from peft import LoraConfig
    from peft.utils import get_peft_model_state_dict

    name = f"demo_{seed}"
    with seeded(seed):
        transformer.add_adapter(LoraConfig(r=rank, lora_alpha=rank, target_modules=targets, init_lora_weights=False),
                                adapter_name=name)
    try:
        state = get_peft_model_state_dict(transformer, adapter_name=name)
        return {k: v.detach().clone().contiguous() for k, v in sorted(state.items())}
    finally:
        transformer.delete_adapters(name)


def save_lora(pipeline_cls, transformer, targets: list[str], seed: int, out: Path, rank: int = 4,
               with_metadata: bool = True) -> None:
    """A random (non-zero) LoRA for ``transformer`` saved in diffusers format with ``pipeline_cls``.

    ``with_metadata=False`` writes no peft config into the file, as diffusers before 0.34 saved LoRAs (the OmniX
    release): the loader then infers rank from the shapes and alpha = rank, the same path the real files take."""
    from peft import LoraConfig
    from peft.utils import get_peft_model_state_dict

    name = f"demo_{seed}"
    config = LoraConfig(r=rank, lora_alpha=rank, target_modules=targets, init_lora_weights=False)
    with seeded(seed):
        transformer.add_adapter(config, adapter_name=name)
    try:
        state = get_peft_model_state_dict(transformer, adapter_name=name)
        state = {k: v.detach().clone().contiguous() for k, v in state.items()}
        extra = {}
        if with_metadata:
            metadata = transformer.peft_config[name].to_dict()
            metadata["target_modules"] = sorted(metadata["target_modules"])  # a set: keep files byte-reproducible
            extra["transformer_lora_adapter_metadata"] = metadata
        out.parent.mkdir(parents=True, exist_ok=True)
        pipeline_cls.save_lora_weights(out.parent, transformer_lora_layers=state, weight_name=out.name, **extra)
    finally:
        transformer.delete_adapters(name)


def stable_sdnq_config(config_path) -> None:
    """Rewrite an SDNQ model's saved config so that it does not depend on where or in which process it was built:
    from_pretrained records the temporary build path, and sdnq keeps its skip lists in sets."""
    config = json.loads(config_path.read_text(encoding="utf-8"))
    config.pop("_name_or_path", None)
    qconfig = config.get("quantization_config") or {}
    for key in ("modules_to_not_convert", "modules_to_not_use_matmul"):
        if isinstance(qconfig.get(key), list):
            qconfig[key] = sorted(qconfig[key])
    config_path.write_text(json.dumps(config, indent=2, sort_keys=True) + "\n", encoding="utf-8")
