"""Imports never drop a node silently (issue 31): the official Wan 2.2 I2V template with its 4-step switch on
imports both lightx2v LoRAs into their expert stacks, a node the request cannot express is named with its
settings, a missing LoRA file is named while the rest imports, every node type is mapped, reported or safe to
ignore, and every tab's export with a 2-LoRA stack comes back as the same request."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

import comfy_export
from comfy_export import node_defs
from comfy_export.errors import WorkflowError
from comfy_export.import_nodes import REPORTED, SAFE_TO_IGNORE, UNDERSTOOD
from comfy_export.importer import as_api, load_workflow
from comfy_export.read_graph import ReadGraph
from engine.demo import FLUX_LORA_FILES, WAN_LORA_FILES
from engine.demo.comfy import build_demo_comfy, main_models
from engine.requests import (
    I2VRequest,
    IPAdapterRequest,
    LoraSpec,
    LoraStackRequest,
    ModelRef,
    ReferenceImage,
    SwapSettings,
    TextToImageRequest,
    TurboWanSettings,
)

TEMPLATES = Path(__import__("comfyui_workflow_templates_json").__file__).parent / "templates"
WAN_TEMPLATE = TEMPLATES / "video_wan2_2_14B_i2v.json"
HIGH, LOW = (f"wan2.2_i2v_lightx2v_4steps_lora_v1_{e}_noise.safetensors" for e in ("high", "low"))


def template_api(four_steps: bool) -> dict:
    api, _ = as_api(load_workflow(WAN_TEMPLATE.read_text()))
    switch = next(k for k, v in api.items() if v["class_type"] == "PrimitiveBoolean")
    api[switch]["inputs"]["value"] = four_steps
    return api


@pytest.fixture(scope="module")
def comfy_loras(models_dir) -> str:
    build_demo_comfy(models_dir)
    return str(main_models(models_dir) / "loras")


def test_the_official_wan_template_imports_both_lightx2v_loras_into_their_expert_stacks(comfy_loras):
    req, warnings = comfy_export.from_workflow(template_api(True), {"loras": [comfy_loras]}, with_warnings=True)
    assert (req.steps, req.guidance_scale, req.guidance_scale_2) == (4, 1.0, 1.0)
    assert [(Path(s.path).name, s.weight) for s in req.loras] == [(HIGH, pytest.approx(1.0))]
    assert [(Path(s.path).name, s.weight) for s in req.loras_2] == [(LOW, pytest.approx(1.0))]
    assert all(Path(s.path).is_file() for s in (*req.loras, *req.loras_2))  # resolved in the ComfyUI folder
    assert not [w for w in warnings if "LoRA" in w]

    away, warnings = comfy_export.from_workflow(template_api(True), {}, with_warnings=True)
    assert [s.path for s in away.loras] == [HIGH] and [s.path for s in away.loras_2] == [LOW]
    missing = [w for w in warnings if w.startswith("missing LoRA file")]
    assert len(missing) == 2 and HIGH in missing[0] and LOW in missing[1]  # named; the rest imported

    plain = comfy_export.from_workflow(template_api(False))
    assert plain.steps == 20 and not plain.loras and not plain.loras_2  # the switch off: no LoRA on the path


def test_a_node_the_request_cannot_express_is_named_with_its_settings():
    api = template_api(True)
    shift = next(k for k, v in api.items() if v["class_type"] == "ModelSamplingSD3")
    api[shift]["inputs"]["shift"] = 8.0
    _, warnings = comfy_export.from_workflow(api, {}, with_warnings=True)
    assert f"not imported: node {shift} ModelSamplingSD3 shift=8 (the app samples Wan with shift 5)" in warnings

    t2i = comfy_export.to_api(TextToImageRequest(prompt="a fox", width=64, height=64, steps=4))
    decode = next(k for k, v in t2i.items() if v["class_type"] == "VAEDecode")
    t2i[decode]["class_type"] = "VAEDecodeTiled"
    t2i[decode]["inputs"].update(tile_size=512, overlap=64, temporal_size=64, temporal_overlap=8)
    sampler = next(k for k, v in t2i.items() if v["class_type"] == "KSampler")
    t2i[sampler]["inputs"]["sampler_name"] = "dpmpp_2m"
    req, warnings = comfy_export.from_workflow(t2i, {}, with_warnings=True)
    assert req.steps == 4
    assert any(w.startswith(f"not imported: node {decode} VAEDecodeTiled tile_size=512") for w in warnings)
    assert any(w.startswith(f"not imported: node {sampler} KSampler sampler_name=dpmpp_2m") for w in warnings)
    assert not comfy_export.from_workflow(comfy_export.to_api(TextToImageRequest(prompt="a fox")), {},
                                          with_warnings=True)[1]  # the app's own export loses nothing


def test_every_node_type_is_mapped_reported_or_safe_to_ignore():
    types = set(node_defs.all_defs())
    unclassified = types - UNDERSTOOD - SAFE_TO_IGNORE - REPORTED
    assert not unclassified
    assert not (UNDERSTOOD & REPORTED) and not (SAFE_TO_IGNORE & (UNDERSTOOD | REPORTED))


def test_no_official_template_imports_with_an_unnamed_node():
    """Every template either fails with words, or imports with each reachable node mapped, safe to ignore, or
    named in the warnings."""
    imported = 0
    for path in sorted(TEMPLATES.glob("*.json")):
        try:
            req, warnings = comfy_export.from_workflow(path.read_text(), {}, with_warnings=True)
        except WorkflowError:
            continue
        imported += 1
        api, _ = as_api(load_workflow(path.read_text()))
        graph = ReadGraph(api)
        for nid in graph.reachable:
            kind = graph.type(nid)
            if kind in SAFE_TO_IGNORE or kind in UNDERSTOOD:
                continue
            assert any(f"node {nid} {kind}" in w for w in warnings), (path.name, nid, kind)
    assert imported >= 7  # the templates test_comfy_export imports at least


@pytest.fixture(scope="module")
def inputs(tmp_path_factory):
    folder = tmp_path_factory.mktemp("lora-rt-in")
    Image.fromarray(np.full((32, 32, 3), 90, np.uint8)).save(folder / "start.png")
    return folder


def test_every_tabs_export_with_a_two_lora_stack_returns_the_same_request(models_dir, inputs):
    root = models_dir / "demo"
    a, b = (LoraSpec(path=str(root / rel), weight=w) for rel, w in zip(FLUX_LORA_FILES["diffusers"], (0.8, 0.5)))
    hi, lo = (LoraSpec(path=str(root / WAN_LORA_FILES[k]), weight=w)
              for k, w in (("lightx2v_high", 1.0), ("lightx2v_low", 0.75)))
    dirs = {"loras": [str(root / "loras")], "input": [str(inputs)]}
    image = str(inputs / "start.png")
    requests = [
        TextToImageRequest(prompt="a fox", width=64, height=64, steps=4, loras=(a, b)),
        TextToImageRequest(model=ModelRef(repo_id="lodestones/Chroma1-HD"), prompt="a fox", width=64, height=64,
                           steps=4, guidance_scale=4.0, loras=(a, b)),
        IPAdapterRequest(prompt="a fox", width=64, height=64, steps=4, references=(ReferenceImage(image),),
                         loras=(a, b)),
        I2VRequest(image=image, prompt="waves", resolution="custom", width=32, height=32, num_frames=5, steps=4,
                   swap=SwapSettings(), preview_every=0, loras=(hi, a), loras_2=(lo, b)),
        I2VRequest(image=image, prompt="waves", steps=4, turbo=TurboWanSettings(enabled=True), preview_every=0,
                   loras=(hi, a), loras_2=(lo, b)),  # chained after each TurboWanModelLoader
        LoraStackRequest(prompt="x", width=32, height=32, steps=2, loras=(a, b)),
    ]
    for req in requests:
        api = comfy_export.to_api(req)
        assert sum(v["class_type"] == "LoraLoaderModelOnly" for v in api.values()) == \
            len(req.loras) + len(getattr(req, "loras_2", ()))
        back = comfy_export.from_workflow(api, dirs)
        for field_name in ("loras", "loras_2"):
            assert [(s.path, s.weight) for s in getattr(back, field_name, ())] == \
                [(s.path, s.weight) for s in getattr(req, field_name, ())], (req.kind, field_name)
        ui = comfy_export.to_workflow(req)
        assert comfy_export.from_workflow(ui, dirs) == req, req.kind
