"""The three IP-Adapter pieces an engine keeps between runs (SigLIP encoder, projector, IP layers), each with its
own ledger row, and the image-token cache that belongs to exactly that set of pieces.

The token cache keys on the image's content and the run's LoRA stack fingerprint. The stack changes the
transformer, not the encoder or projector, so today the tokens would be equal anyway; the key holds it because
every cache of a LoRA run keys on the stack (issue 31's rule), so no future LoRA target (a projector LoRA, a
token path through the transformer) can serve stale tokens. The cost: one encoder pass per reference per stack."""

from __future__ import annotations

import contextlib
import hashlib
from collections import OrderedDict
from dataclasses import dataclass, field
from pathlib import Path

import torch

from engine.adapters.ipadapter_loader import (
    adapter_file,
    build_layers,
    build_projector,
    check_fits,
    load_image_encoder,
    read_adapter_state,
    reference_rgb,
)

STORE_KEY = "ipadapter"
TOKEN_CACHE_SIZE = 32  # references; a FLUX.1-dev token set is 128 x 4096 values (1 MiB in bf16), kept on the CPU


@dataclass
class IPAdapterPieces:
    key: tuple
    encoder: torch.nn.Module
    image_processor: object
    projector: torch.nn.Module
    layers: torch.nn.Module
    names: dict[str, str]  # role -> ledger name: image_encoder, projector, adapter
    adapter_path: Path
    tokens: OrderedDict = field(default_factory=OrderedDict)  # (image digest, LoRA fingerprint) -> tokens (CPU)
    hits: int = 0
    misses: int = 0

    def modules(self) -> list[torch.nn.Module]:
        return [self.encoder, self.projector, self.layers]

    def encode(self, memory, path: str, dtype: torch.dtype, device: str,
               lora_key: str = "") -> tuple[torch.Tensor, bool]:
        """Image tokens [1, N, cross] on the CPU for one reference, and whether they came from the cache
        (``lora_key``: the run's stack fingerprint). The encoder and projector are placed on ``device`` (through the
        ledger) only on a miss."""
        digest = token_key(path, lora_key)
        cached = self.tokens.get(digest)
        if cached is not None:
            self.tokens.move_to_end(digest)
            self.hits += 1
            return cached, True
        self.misses += 1
        image = reference_rgb(path)
        names = [self.names["image_encoder"], self.names["projector"]]
        with placed(memory, names, device), torch.inference_mode():
            pixels = self.image_processor(images=[image], return_tensors="pt").pixel_values
            pooled = self.encoder(pixel_values=pixels.to(device, self.encoder.dtype)).pooler_output
            tokens = self.projector(pooled.to(next(self.projector.parameters()).dtype)).to(dtype)
        tokens = tokens.to("cpu")
        self.tokens[digest] = tokens
        while len(self.tokens) > TOKEN_CACHE_SIZE:
            self.tokens.popitem(last=False)
        return tokens, False


@contextlib.contextmanager
def placed(memory, names: list[str], device: str):
    """These modules on ``device`` for the block: the compute device through ``use`` (loaded and protected from
    eviction), or RAM when the run's memory mode computes on the CPU (cpu_only)."""
    if device == memory.compute_device:
        with memory.use(names):
            yield
    else:
        memory.to_host(names)
        yield


def token_key(path: str, lora_key: str = "") -> tuple[str, str]:
    """A token cache entry's key: the reference image's content and the LoRA stack's fingerprint."""
    return _digest(path), lora_key


def _digest(path: str) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _file_id(path: Path) -> tuple:
    stat = path.stat()
    return str(path.resolve()), stat.st_size, stat.st_mtime_ns


def pieces_for(store, adapter_location: Path, adapter_name: str, encoder_folder: Path, transformer,
               dtype: torch.dtype, labels: tuple[str, str], encoder_file: str = "") -> IPAdapterPieces:
    """The loaded pieces for this adapter file, encoder and transformer layout: the kept ones when nothing changed
    (and the ledger still has them), else freshly loaded and registered, the old ones (and their token cache)
    dropped from the ledger first."""
    path = adapter_file(adapter_location, adapter_name)
    config = transformer.config
    layout = (len(transformer.attn_processors), config.num_attention_heads * config.attention_head_dim,
              config.joint_attention_dim)
    key = (_file_id(path), str(encoder_folder.resolve()), encoder_file and _file_id(Path(encoder_file)), str(dtype),
           layout)
    kept: IPAdapterPieces | None = store.adapters.get(STORE_KEY)
    if kept is not None and kept.key == key and all(n in store.memory for n in kept.names.values()):
        return kept
    if kept is not None:
        drop(store)
    adapter_label, encoder_label = labels
    state = read_adapter_state(path)
    projector = build_projector(state["image_proj"], path.name).to(dtype)
    layers = build_layers(state["ip_adapter"], transformer, path.name).to(dtype)
    del state
    encoder, image_processor = load_image_encoder(encoder_folder, dtype, encoder_label, encoder_file)
    check_fits(projector, transformer, encoder.config.hidden_size, path.name)
    names = {
        "image_encoder": store.register_module(f"{encoder_label}/vision_model", encoder, "image_encoder"),
        "projector": store.register_module(f"{adapter_label}/image_proj", projector, "projector"),
        "adapter": store.register_module(f"{adapter_label}/ip_layers", layers, "adapter"),
    }
    pieces = IPAdapterPieces(key, encoder, image_processor, projector, layers, names, path)
    store.adapters[STORE_KEY] = pieces
    return pieces


def drop(store) -> None:
    """Forget the kept pieces: their ledger rows and their token cache."""
    pieces = store.adapters.pop(STORE_KEY, None)
    if pieces is not None:
        for module in pieces.modules():
            store.unregister_module(module)
