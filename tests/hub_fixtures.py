"""Shared setup of the download tests: a tiny SDNQ-like repo on the local fake hub, an empty HF cache per test,
and helpers (tests/test_hub.py, tests/test_hub_faults.py)."""

from __future__ import annotations

import json
import random
import socket
import struct
import threading
import time
from pathlib import Path

import huggingface_hub.constants as hf_constants
import huggingface_hub.file_download as hf_file_download
import pytest

from tests.fakehub import FakeHub

ROOT = Path(__file__).resolve().parents[1]
REPO = "Disty0/tiny-sdnq-int8"
WEIGHTS = "transformer/diffusion_pytorch_model.safetensors"
WEIGHTS_BYTES = 3 * 1024 * 1024
SELECTED = [
    "model_index.json",
    "scheduler/scheduler_config.json",
    "tokenizer/vocab.txt",
    "transformer/config.json",
    WEIGHTS,
]


# ---------------------------------------------------------------------------------------------- fixtures
def _safetensors(n: int, seed: int = 0) -> bytes:
    header = {"weight": {"dtype": "I8", "shape": [n], "data_offsets": [0, n]}, "__metadata__": {"format": "pt"}}
    raw = json.dumps(header).encode()
    raw += b" " * (-len(raw) % 8)
    return struct.pack("<Q", len(raw)) + raw + random.Random(seed).randbytes(n)


@pytest.fixture(scope="module")
def model_folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny SDNQ-like diffusers folder: model_index, configs, a ~3 MB safetensors, plus files the patterns skip."""
    root = tmp_path_factory.mktemp("tiny-sdnq")
    files = {
        "model_index.json": {
            "_class_name": "FluxPipeline",
            "_diffusers_version": "0.42.1",
            "scheduler": ["diffusers", "FlowMatchEulerDiscreteScheduler"],
            "transformer": ["diffusers", "FluxTransformer2DModel"],
        },
        "transformer/config.json": {
            "_class_name": "FluxTransformer2DModel",
            "num_layers": 1,
            "quantization_config": {"quant_method": "sdnq", "weights_dtype": "int8"},
        },
        "scheduler/scheduler_config.json": {"_class_name": "FlowMatchEulerDiscreteScheduler", "shift": 3.0},
    }
    for rel, obj in files.items():
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_text(json.dumps(obj, indent=2))
    (root / "tokenizer").mkdir()
    (root / "tokenizer/vocab.txt").write_text("\n".join(["<pad>", "<s>", "</s>", "a", "cat"]))
    (root / WEIGHTS).write_bytes(_safetensors(WEIGHTS_BYTES - 200))  # ~3 MB with the header
    (root / "text_encoder").mkdir()
    (root / "text_encoder/pytorch_model.bin").write_bytes(b"\x80\x02pickle, never fetched" * 100)
    (root / "README.md").write_text("# tiny\n")
    (root / "flux1-dev.safetensors").write_bytes(_safetensors(4096))  # root single-file checkpoint: never fetched
    return root


class _NoSleep:
    """Stands in for the `time` module inside huggingface_hub.file_download: in-call retries without 1 s waits."""

    def __getattr__(self, name):
        return getattr(time, name)

    @staticmethod
    def sleep(_seconds: float) -> None:
        pass


@pytest.fixture
def fakehub(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, model_folder: Path):
    with FakeHub() as server:
        server.add_repo(REPO, model_folder)
        monkeypatch.setenv("HF_ENDPOINT", server.endpoint)
        monkeypatch.setenv("HF_HOME", str(tmp_path / "hf-home"))
        monkeypatch.setenv("HF_HUB_DISABLE_XET", "1")
        for name in ("HF_HUB_CACHE", "HUGGINGFACE_HUB_CACHE", "HF_TOKEN", "HUGGING_FACE_HUB_TOKEN", "HF_TOKEN_PATH"):
            monkeypatch.delenv(name, raising=False)
        for name in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE"):
            monkeypatch.delenv(name, raising=False)
        # 64 KiB steps: smooth progress and a cancel that lands mid-file (the real default is 10 MiB)
        monkeypatch.setattr(hf_constants, "DOWNLOAD_CHUNK_SIZE", 64 * 1024)
        monkeypatch.setattr(hf_file_download, "time", _NoSleep())
        # fault tests stay fast: short waits between retries, short timeouts for a hub that stops answering
        monkeypatch.setenv("STUDIO_HUB_RETRY_WAIT", "0.01")
        monkeypatch.setenv("STUDIO_HUB_READ_TIMEOUT", "2")
        monkeypatch.setenv("STUDIO_HUB_CONNECT_TIMEOUT", "2")
        yield server


def storage_of(tmp_path: Path) -> Path:
    return tmp_path / "hf-home" / "hub" / ("models--" + REPO.replace("/", "--"))


def sources(model_folder: Path) -> dict[str, bytes]:
    return {rel: (model_folder / rel).read_bytes() for rel in SELECTED}


def total_of(model_folder: Path) -> int:
    return sum(len(b) for b in sources(model_folder).values())


def assert_files(folder: Path, model_folder: Path) -> None:
    for rel, data in sources(model_folder).items():
        assert (folder / rel).read_bytes() == data, rel
    assert not (folder / "text_encoder/pytorch_model.bin").exists()  # pickles are never fetched
    assert not (folder / "README.md").exists()
    assert not (folder / "flux1-dev.safetensors").exists()  # nor the root single-file checkpoint


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Recorder:
    def __init__(self, cancel_at: int | None = None):
        self.calls: list[tuple[int, int, str]] = []
        self.cancel = threading.Event()
        self.cancel_at = cancel_at

    def __call__(self, done: int, total: int, message: str) -> None:
        self.calls.append((done, total, message))
        if self.cancel_at is not None and done >= self.cancel_at:
            self.cancel.set()
