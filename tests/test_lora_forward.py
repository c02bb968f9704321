"""The stack's LoRA layers compute peft's arithmetic in place (``engine.adapters.lora_forward``): a run with a 2-LoRA
stack takes that forward on every wrapped Linear, gives peft's own result bit for bit, and anything peft's forward
handles differently (gradients, disabled adapters) goes to peft's forward."""

from __future__ import annotations

import numpy as np
import torch
from peft.tuners.lora.layer import Linear

from engine import Engine, LoraSpec, ModelRef, TextToImageRequest
from engine.demo import FLUX_LORA_FILES, demo_root

FLUX = ModelRef(repo_id="black-forest-labs/FLUX.1-dev")


def request(models_dir, weights) -> TextToImageRequest:
    a, b = (str(demo_root(models_dir) / rel) for rel in FLUX_LORA_FILES["diffusers"])
    loras = tuple(LoraSpec(path=p, weight=w) for p, w in zip((a, b), weights)) if weights else ()
    return TextToImageRequest(model=FLUX, prompt="a red fox", width=64, height=64, steps=2, seed=11, loras=loras)


def test_a_stack_runs_the_in_place_forward_and_gets_peft_s_pixels(models_dir, tmp_path, monkeypatch):
    engine = Engine(device="cpu", models_dir=models_dir, demo=True, outputs_dir=tmp_path)
    ours = np.asarray(engine.run(request(models_dir, (0.8, 1.0))).images[0])  # one scale of 1: the skipped multiply
    layers = [m for m in engine.store.load_pipeline(FLUX).transformer.modules() if isinstance(m, Linear)]
    assert layers and all("forward" in vars(m) for m in layers)

    # the same run with peft's forward on every layer: bit for bit the same pixels
    for layer in layers:
        del layer.forward
    theirs = np.asarray(engine.run(request(models_dir, (0.8, 1.0))).images[0])
    assert np.array_equal(ours, theirs) and ours.std() > 0

    # and the in-place forward was the one that ran: with peft's made to fail, the stack still runs
    fresh = Engine(device="cpu", models_dir=models_dir, demo=True, outputs_dir=tmp_path / "again")
    fresh.run(request(models_dir, None))  # loads the pipeline before peft's forward is broken

    def refuse(self, *args, **kwargs):
        raise AssertionError("peft's forward ran")

    monkeypatch.setattr(Linear, "forward", refuse)
    again = np.asarray(fresh.run(request(models_dir, (0.8, 1.0))).images[0])
    assert np.array_equal(again, ours)


def test_what_the_in_place_forward_does_not_cover_goes_to_peft(models_dir, tmp_path, monkeypatch):
    engine = Engine(device="cpu", models_dir=models_dir, demo=True, outputs_dir=tmp_path)
    engine.run(request(models_dir, (0.8, 0.5)))
    layer = next(m for m in engine.store.load_pipeline(FLUX).transformer.modules() if isinstance(m, Linear))
    calls = []
    peft_forward = Linear.forward
    monkeypatch.setattr(Linear, "forward", lambda self, *a, **k: calls.append(1) or peft_forward(self, *a, **k))
    x = torch.randn(3, layer.in_features)
    layer._disable_adapters = False
    with torch.no_grad():
        fast = layer(x)
    assert not calls
    with torch.enable_grad():  # gradients on (a training-style call): peft's forward, nothing written in place
        slow = layer(x)
    assert calls and torch.equal(fast, slow)
    layer._disable_adapters = True  # the stack switched off: the base layer alone, through peft
    with torch.no_grad():
        assert torch.equal(layer(x), layer.base_layer(x))
    assert len(calls) == 2
