"""The IP-Adapter job on the tiny Flux and Chroma demo models with the tiny InstantX-layout adapter and SigLIP."""

from __future__ import annotations

import argparse
import dataclasses

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import load_file, save_file

import comfy_export
from engine import Engine, InputError, IPAdapterRequest, ModelLoadError, ModelRef, ReferenceImage, TextToImageRequest
from engine.adapters import ipadapter_flux
from engine.adapters.ipadapter_pieces import STORE_KEY
from engine.demo import demo_path
from engine.memory import module_bytes

FLUX = ModelRef(repo_id="black-forest-labs/FLUX.1-dev")
CHROMA = ModelRef(repo_id="lodestones/Chroma1-HD")
BASE = dict(prompt="a red fox", width=64, height=64, steps=4, seed=11)


def pixels(result) -> np.ndarray:
    return np.asarray(result.images[0]).astype(np.int16)


@pytest.fixture(scope="module")
def refs(tmp_path_factory):
    folder = tmp_path_factory.mktemp("refs")
    rng = np.random.RandomState(0)
    noise = folder / "noise.png"
    Image.fromarray((rng.rand(48, 40, 3) * 255).astype(np.uint8)).save(noise)
    red = folder / "red.png"
    Image.new("RGB", (40, 40), (220, 20, 20)).save(red)
    return {"noise": str(noise), "red": str(red), "dir": folder}


@pytest.fixture(scope="module")
def engine(models_dir, tmp_path_factory):
    return Engine(device="cpu", models_dir=models_dir, demo=True, outputs_dir=tmp_path_factory.mktemp("ip-out"))


def ip_request(model=FLUX, *paths, **kw) -> IPAdapterRequest:
    references = tuple(ReferenceImage(p) if isinstance(p, str) else p for p in paths)
    return IPAdapterRequest(model=model, references=references, **{**BASE, **kw})


def base_request(model=FLUX) -> TextToImageRequest:
    return TextToImageRequest(model=model, **BASE)


@pytest.mark.parametrize("model", [FLUX, CHROMA], ids=["flux", "chroma"])
def test_reference_changes_output_weight_zero_and_removal_are_exact(engine, refs, model):
    transformer = engine.store.load_pipeline(model).transformer
    before = dict(transformer.attn_processors)
    with_noise = pixels(engine.run(ip_request(model, refs["noise"])))
    with_red = pixels(engine.run(ip_request(model, refs["red"])))
    base = pixels(engine.run(base_request(model)))
    assert np.abs(with_noise - with_red).max() > 0  # the reference matters
    assert np.abs(with_noise - base).max() > 0  # and the adapter acts at all
    assert np.array_equal(pixels(engine.run(ip_request(model, refs["noise"], weight=0.0))), base)
    after = dict(transformer.attn_processors)
    assert after.keys() == before.keys() and all(after[k] is before[k] for k in before)  # the very same objects
    fresh = Engine(device="cpu", models_dir=engine.models_dir, demo=True, outputs_dir=engine.outputs_dir)
    assert np.array_equal(pixels(engine.run(base_request(model))), pixels(fresh.run(base_request(model))))


def test_bin_and_safetensors_copies_give_the_same_image(engine, refs):
    st = engine.run(ip_request(FLUX, refs["noise"], ip_adapter_file="ip-adapter.safetensors"))
    pt = engine.run(ip_request(FLUX, refs["noise"], ip_adapter_file="ip-adapter.bin"))
    assert st.metadata["adapter_file"] == "ip-adapter.safetensors" and pt.metadata["adapter_file"] == "ip-adapter.bin"
    assert np.array_equal(pixels(st), pixels(pt))


def _count_ip_steps(engine, request) -> tuple[list[float], list[float]]:
    """Run with independent hooks: the sigma of every transformer call, and those where IP keys were computed."""
    pipe = engine.store.load_pipeline(request.model)
    sigmas, ip_sigmas = [], []

    def on_transformer(module, args, kwargs):  # one entry per timestep (CFG calls the transformer twice)
        sigma = float(kwargs["timestep"][0])
        if not sigmas or sigmas[-1] != sigma:
            sigmas.append(sigma)

    def on_ip(module, args, output):
        if not ip_sigmas or ip_sigmas[-1] != sigmas[-1]:
            ip_sigmas.append(sigmas[-1])

    engine.run(request)  # loads the pieces this request uses, so that the hook below sits on them
    pieces = engine.store.adapters[STORE_KEY]
    hooks = [pipe.transformer.register_forward_pre_hook(on_transformer, with_kwargs=True),
             pieces.layers[0].to_k_ip.register_forward_hook(on_ip)]
    try:
        engine.run(request)
    finally:
        for h in hooks:
            h.remove()
    return sigmas, ip_sigmas


@pytest.mark.parametrize("model", [FLUX, CHROMA], ids=["flux", "chroma"])
def test_start_end_window_is_a_sigma_window(engine, refs, model):
    # 4 steps on the linear timeline t = 1, .75, .5, .25 (ComfyUI's simple schedule too): percent p sits at
    # t = 1 - p, so 30 %..80 % holds the steps at t = .5 and .25, i.e. the 3rd and 4th
    sigmas, ip_sigmas = _count_ip_steps(engine, ip_request(FLUX, refs["noise"], start_percent=0.3, end_percent=0.8))
    assert len(sigmas) == 4
    assert ip_sigmas == sigmas[2:]
    sigmas, ip_sigmas = _count_ip_steps(engine, ip_request(FLUX, refs["noise"], end_percent=0.3))
    assert ip_sigmas == sigmas[:2]  # t = 1 and .75
    # the window's time shift is the one the pipeline's scheduler applied (same mu for this image size)
    pipe = engine.store.load_pipeline(FLUX)
    shift = ipadapter_flux.shift_function(pipe.scheduler.config, (64 // (pipe.vae_scale_factor * 2)) ** 2)
    assert [shift(1 - i / 4) for i in range(4)] == pytest.approx([float(s) for s in pipe.scheduler.sigmas[:4]],
                                                                  abs=1e-6)
    assert sigmas == pytest.approx([float(s) for s in pipe.scheduler.sigmas[:4]], abs=1e-6)


def test_window_follows_comfyui_percent_to_sigma():
    # ComfyUI ModelSamplingFlux (shift 1.15): percent_to_sigma(p) = e^1.15 / (e^1.15 + (1/(1-p) - 1))
    config = {"use_dynamic_shifting": True, "base_image_seq_len": 256, "max_image_seq_len": 4096,
              "base_shift": 0.5, "max_shift": 1.15}
    shift = ipadapter_flux.shift_function(config, 4096)  # 1024 x 1024: diffusers' mu is 1.15
    for p in (0.1, 0.25, 0.5, 0.9):
        expected = np.exp(1.15) / (np.exp(1.15) + (1 / (1 - p) - 1))
        assert ipadapter_flux.percent_to_sigma(p, shift) == pytest.approx(expected, rel=1e-12)
    assert ipadapter_flux.percent_to_sigma(0.0, shift) == 1.0 and ipadapter_flux.percent_to_sigma(1.0, shift) == 0.0


def test_weight_ramp_per_step_scales(engine, refs):
    ramped = engine.run(ip_request(FLUX, refs["noise"], ramp=True, weight_start=0.2, weight_end=1.0, ramp_steps=3))
    assert [row["scale"] for row in ramped.metadata["ip_steps"]] == pytest.approx([0.2, 0.6, 1.0, 1.0])
    # the ramp counts in-window steps only (Advanced node): window from the 3rd step on starts at weight_start
    late = engine.run(ip_request(FLUX, refs["noise"], ramp=True, weight_start=0.2, weight_end=1.0, ramp_steps=3,
                                 start_percent=0.4))
    assert [row["scale"] for row in late.metadata["ip_steps"]] == pytest.approx([0.0, 0.0, 0.2, 0.6])
    # true CFG calls the transformer twice per step: still one ramp step per timestep
    cfg = engine.run(ip_request(FLUX, refs["noise"], ramp=True, weight_start=0.2, weight_end=1.0, ramp_steps=3,
                                negative_prompt="blurry", true_cfg_scale=2.0))
    assert [row["scale"] for row in cfg.metadata["ip_steps"]] == pytest.approx([0.2, 0.6, 1.0, 1.0])
    flat = engine.run(ip_request(FLUX, refs["noise"], ramp=True, weight_start=0.5, weight_end=0.5))
    assert np.array_equal(pixels(flat), pixels(engine.run(ip_request(FLUX, refs["noise"], weight=0.5))))
    assert not np.array_equal(pixels(ramped), pixels(flat))


def test_each_reference_has_its_own_weight(engine, refs):
    both = engine.run(ip_request(FLUX, refs["noise"], ReferenceImage(refs["red"], 0.0)))
    assert np.array_equal(pixels(both), pixels(engine.run(ip_request(FLUX, refs["noise"]))))
    mixed = engine.run(ip_request(FLUX, refs["noise"], ReferenceImage(refs["red"], 0.7)))
    assert not np.array_equal(pixels(mixed), pixels(both))
    api = comfy_export.to_api(mixed.request)  # the ComfyUI export: one chained Apply node per reference
    nodes = [n for n in api.values() if "IPAdapter" in n["class_type"]]
    assert [n["class_type"] for n in nodes] == ["IPAdapterFluxLoader", "ApplyIPAdapterFlux", "ApplyIPAdapterFlux"]
    assert nodes[2]["inputs"]["weight"] == pytest.approx(0.7)
    ramp = dataclasses.replace(mixed.request, ramp=True, weight_start=0.0, weight_end=2.0, ramp_steps=5,
                               model=ModelRef(repo_id="lodestones/Chroma1-HD"))
    chroma = [n for n in comfy_export.to_api(ramp).values() if "IPAdapter" in n["class_type"]]
    assert [n["class_type"] for n in chroma] == ["IPAdapterFluxChromaLoaderAdvanced"] + [
        "ApplyIPAdapterFluxChromaAdvanced"] * 2
    inputs = {k: v for k, v in chroma[2]["inputs"].items() if not isinstance(v, list)}
    assert inputs == {"weight_start": 0.0, "weight_end": pytest.approx(1.4), "steps": 5,
                      "start_percent": 0.0, "end_percent": 1.0, "offload_preprocessing": True}
    assert chroma[0]["inputs"] == {"ipadapter": "ip-adapter.bin", "clip_vision": "google/siglip-so400m-patch14-384",
                                   "provider": "cuda"}


def test_token_cache_hit_and_drop_when_the_adapter_changes(engine, refs):
    first = engine.run(ip_request(FLUX, refs["red"], ip_adapter_file="ip-adapter.safetensors", seed=3))
    pieces = engine.store.adapters[STORE_KEY]
    misses = pieces.misses
    second = engine.run(ip_request(FLUX, refs["red"], ip_adapter_file="ip-adapter.safetensors", seed=3))
    assert second.metadata["token_cache_hits"] == 1 and pieces.misses == misses
    assert np.array_equal(pixels(first), pixels(second))
    other = engine.run(ip_request(FLUX, refs["red"], ip_adapter_file="ip-adapter.bin", seed=3))
    assert engine.store.adapters[STORE_KEY] is not pieces  # other weights: new pieces, an empty cache
    assert other.metadata["token_cache_hits"] == 0


@pytest.mark.parametrize("offload", [True, False], ids=["offload", "keep"])
def test_ledger_rows_and_offload_preprocessing_with_disk_offload(models_dir, refs, tmp_path, offload):
    engine = Engine(device="cpu", models_dir=models_dir, demo=True, outputs_dir=tmp_path, offload_device="disk")
    during = []

    def progress(fraction, message):
        if message.startswith("step"):
            during.append({m["role"]: m for m in engine.memory.snapshot()["modules"]})

    engine.run(ip_request(FLUX, refs["noise"], steps=2, offload_preprocessing=offload), progress=progress)
    pieces = engine.store.adapters[STORE_KEY]
    rows = {m["role"]: m for m in engine.memory.snapshot()["modules"] if m["role"] in
            ("image_encoder", "projector", "adapter")}
    assert rows["image_encoder"]["name"] == "google/siglip-so400m-patch14-384/vision_model"
    assert rows["projector"]["name"] == "InstantX/FLUX.1-dev-IP-Adapter/image_proj"
    assert rows["adapter"]["name"] == "InstantX/FLUX.1-dev-IP-Adapter/ip_layers"
    assert rows["adapter"]["bytes"] == module_bytes(pieces.layers) > 0
    assert rows["projector"]["bytes"] == module_bytes(pieces.projector) > 0
    assert len(during) == 2
    for snap in during:
        assert snap["adapter"]["device"] == "cpu"  # the compute device here
        where = "disk" if offload else "cpu"
        assert snap["image_encoder"]["device"] == where and snap["projector"]["device"] == where
    # the IP layers are not counted inside the transformer's row
    transformer = engine.store.load_pipeline(FLUX).transformer
    assert engine.memory.entry("black-forest-labs/FLUX.1-dev/transformer").bytes == module_bytes(transformer)
    # the next run with the same reference needs no encoder at all: it stays on disk
    engine.run(ip_request(FLUX, refs["noise"], steps=1, offload_preprocessing=offload))
    assert engine.memory.entry(pieces.names["image_encoder"]).device == ("disk" if offload else "cpu")


@pytest.mark.parametrize("mode", ["L", "CMYK", "RGBA", "I;16", "P"])
def test_reference_modes_are_converted(engine, refs, mode):
    path = refs["dir"] / f"ref-{mode.replace(';', '')}.{'tif' if mode == 'CMYK' else 'png'}"
    if mode == "I;16":
        Image.fromarray((np.arange(32 * 32).reshape(32, 32) * 60).astype(np.uint16)).save(path)
    else:
        Image.new("RGB", (32, 32), (10, 200, 60)).convert(mode).save(path)
    result = engine.run(ip_request(FLUX, str(path), steps=1))
    assert result.images[0].size == (64, 64)


def test_bad_references_and_controls_are_input_errors(refs, tmp_path, monkeypatch):
    truncated = tmp_path / "cut.png"
    whole = open(refs["noise"], "rb").read()
    truncated.write_bytes(whole[: len(whole) // 2])
    cases = [
        (ip_request(FLUX), "references", "no reference"),
        (ip_request(FLUX, str(truncated)), "references[0].path", "cannot read"),
        (ip_request(FLUX, str(tmp_path / "none.png")), "references[0].path", "not found"),
        (ip_request(FLUX, refs["noise"], start_percent=0.6, end_percent=0.6), "end_percent", "greater"),
        (ip_request(FLUX, refs["noise"], weight=6.0), "weight", "between -1 and 5"),
        (ip_request(FLUX, ReferenceImage(refs["noise"], -2.0)), "references[0].weight", "between -1 and 5"),
        (ip_request(FLUX, refs["noise"], ramp=True, weight_end=9.0), "weight_end", "between"),
        (ip_request(FLUX, refs["noise"], ramp_steps=0), "ramp_steps", "between 1"),
        (ip_request(FLUX, refs["noise"], ip_norm="v"), "ip_norm", "one of"),
        (ip_request(FLUX, refs["noise"], ip_adapter_file="../x.bin"), "ip_adapter_file", "file name"),
    ]
    for req, field, words in cases:
        with pytest.raises(InputError) as err:
            req.validate()
        assert err.value.field == field and words in err.value.message, (field, err.value)
    with pytest.raises(InputError, match="too large"):  # a 30000 x 30000 header: Pillow's bomb check fires
        ip_request(FLUX, _bomb(tmp_path / "bomb.png")).validate()
    monkeypatch.setattr("engine.requests.ipadapter.MAX_REFERENCE_PIXELS", 1000)
    with pytest.raises(InputError, match="megapixels|limit"):
        ip_request(FLUX, refs["noise"]).validate()


def _bomb(path) -> str:
    import struct
    import zlib

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    header = struct.pack(">IIBBBBB", 30000, 30000, 8, 2, 0, 0, 0)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(b"\0"))
                     + chunk(b"IEND", b""))
    return str(path)


def _adapter_variant(models_dir, tmp_path, name, change) -> ModelRef:
    state = load_file(demo_path(models_dir, "flux-ip-adapter") / "ip-adapter.safetensors")
    path = tmp_path / name
    save_file(change(dict(state)), path)
    return ModelRef(path=str(path))


def test_bad_adapter_files_have_clear_messages(engine, models_dir, refs, tmp_path):
    def drop_key(state):
        del state["ip_adapter.3.to_v_ip.weight"]
        return state

    def xlabs(state):
        return {"double_blocks.0.processor.ip_adapter_double_stream_k_proj.weight": torch.zeros(4, 4)}

    def wrong_width(state):
        state["ip_adapter.0.to_k_ip.weight"] = torch.zeros(7, 32)
        return state

    evil = tmp_path / "evil.bin"
    torch.save({"image_proj": {}, "ip_adapter": {}, "config": argparse.Namespace(x=1)}, evil)
    cases = [
        (_adapter_variant(models_dir, tmp_path, "missing.safetensors", drop_key), "ip_adapter.3.to_v_ip.weight"),
        (_adapter_variant(models_dir, tmp_path, "xlabs.safetensors", xlabs), "XLabs"),
        (_adapter_variant(models_dir, tmp_path, "width.safetensors", wrong_width), "shape [7, 32]"),
        (ModelRef(path=str(evil)), "weights_only"),
    ]
    for adapter, words in cases:
        with pytest.raises(ModelLoadError, match=words.replace("[", r"\[")):
            engine.run(dataclasses.replace(ip_request(FLUX, refs["noise"], steps=1), ip_adapter=adapter))
    # and a good run afterwards: nothing half-installed was left behind
    assert engine.run(ip_request(FLUX, refs["noise"], steps=1)).images


def test_a_model_that_is_neither_flux_nor_chroma_is_named(engine, refs):
    with pytest.raises(ModelLoadError, match="QwenImagePipeline, which is neither"):
        engine.run(ip_request(ModelRef(repo_id="Qwen/Qwen-Image"), refs["noise"], steps=1))


def test_shares_the_flux_another_tab_loaded_and_cancel_restores_the_processors(engine, refs):
    import threading

    from engine import Cancelled

    other = engine.store.load_pipeline(FLUX, pipeline_class="FluxImg2ImgPipeline")  # e.g. what Panorama loads
    engine.run(ip_request(FLUX, refs["noise"], steps=1))
    flux_rows = [n for n in engine.memory.names() if n.startswith("black-forest-labs/FLUX.1-dev/")]
    assert sorted(flux_rows) == sorted(f"black-forest-labs/FLUX.1-dev/{c}" for c in
                                       ("transformer", "vae", "text_encoder", "text_encoder_2"))
    assert engine.store.load_pipeline(FLUX).transformer is other.transformer  # one copy, one ledger row

    before = dict(other.transformer.attn_processors)
    cancel = threading.Event()

    def progress(fraction, message):
        if message.startswith("step"):
            cancel.set()

    with pytest.raises(Cancelled):
        engine.run(ip_request(FLUX, refs["noise"], steps=6), progress=progress, cancel=cancel)
    after = dict(other.transformer.attn_processors)
    assert all(after[k] is before[k] for k in before)
    assert not other.transformer._forward_pre_hooks  # the sigma hook is gone too
    fresh = Engine(device="cpu", models_dir=engine.models_dir, demo=True, outputs_dir=engine.outputs_dir)
    assert np.array_equal(pixels(engine.run(base_request())), pixels(fresh.run(base_request())))


@pytest.mark.parametrize("norm_values", [True, False], ids=["pack-kv-norm", "instantx-k-norm"])
def test_processor_matches_the_comfyui_pack_formula(engine, norm_values):
    """Our processor against the pack's math written out (IPAFluxAttnProcessor2_0 + DoubleStreamBlockIPA /
    SingleStreamBlockIPA): q after the QK norm and before RoPE, RMS norm on the IP keys (and values), the result
    added to the image tokens before to_out (double) or to the whole attention output (single)."""
    from diffusers.models.normalization import RMSNorm

    transformer = engine.store.load_pipeline(FLUX).transformer
    gen = torch.Generator().manual_seed(0)
    heads, head_dim = transformer.config.num_attention_heads, transformer.config.attention_head_dim
    inner, cross = heads * head_dim, transformer.config.joint_attention_dim
    layer = ipadapter_flux.IPLayer(cross, inner)
    tokens = torch.randn(1, 4, cross, generator=gen)
    schedule = ipadapter_flux.IPSchedule([(tokens, 0.5)], sigma_high=1.0, sigma_low=0.0, weight=1.5,
                                         norm_values=norm_values)
    schedule.begin(0.5)
    n_txt, n_img = 3, 5
    rotary = transformer.pos_embed(torch.randn(n_txt + n_img, 3, generator=gen) * 8)
    rms = RMSNorm(head_dim, eps=1e-5, elementwise_affine=False)

    def pack_ip(attn, x):  # the pack: query = the block's q after norm, [B, H, L, D]; k, v RMS-normed per head
        q = attn.norm_q(attn.to_q(x).unflatten(-1, (heads, head_dim))).transpose(1, 2)
        k = rms(layer.to_k_ip(tokens).unflatten(-1, (heads, head_dim)).transpose(1, 2))
        v = layer.to_v_ip(tokens).unflatten(-1, (heads, head_dim)).transpose(1, 2)
        v = rms(v) if norm_values else v
        ip = torch.nn.functional.scaled_dot_product_attention(q, k, v)
        return 0.75 * ip.transpose(1, 2).flatten(2, 3)  # scale 1.5 x the reference's own 0.5

    with torch.no_grad():
        single = transformer.single_transformer_blocks[0].attn
        x = torch.randn(1, n_txt + n_img, inner, generator=gen)
        ours = ipadapter_flux.IPAttnProcessor(single.processor, layer, schedule, head_dim)(single, x, None, None, rotary)
        expected = single.processor(single, x, None, None, rotary) + pack_ip(single, x)
        torch.testing.assert_close(ours, expected, rtol=1e-4, atol=1e-5)

        double = transformer.transformer_blocks[0].attn
        img, txt = torch.randn(1, n_img, inner, generator=gen), torch.randn(1, n_txt, inner, generator=gen)
        ours_img, ours_txt = ipadapter_flux.IPAttnProcessor(double.processor, layer, schedule, head_dim)(
            double, img, txt, None, rotary)
        base_img, base_txt = double.processor(double, img, txt, None, rotary)
        # to_out[0] is linear: to_out(a + ip) = to_out(a) + W ip
        expected_img = base_img + torch.nn.functional.linear(pack_ip(double, img), double.to_out[0].weight)
        torch.testing.assert_close(ours_img, expected_img, rtol=1e-4, atol=1e-5)
        torch.testing.assert_close(ours_txt, base_txt)  # text tokens untouched in double blocks


def test_every_memory_mode_runs_the_adapter_to_the_same_image(engine, refs):
    from engine import SwapSettings
    from engine.requests import SWAP_MODES

    reference = pixels(engine.run(ip_request(FLUX, refs["noise"], steps=2)))
    for mode in SWAP_MODES[1:]:
        result = engine.run(ip_request(FLUX, refs["noise"], steps=2, swap=SwapSettings(mode=mode, blocks_resident=1)))
        assert np.array_equal(pixels(result), reference), mode
        assert all(row["active"] for row in result.metadata["ip_steps"]), mode


def test_real_loading_path_downloads_only_what_it_reads(models_dir, refs, tmp_path, monkeypatch):
    """Without --demo: the three repos come from a (local, fake) hub through huggingface_hub, the adapter repo laid
    out as published (ip-adapter.bin only), and only the adapter file and configs are fetched from it."""
    import shutil

    from tests.fakehub import FakeHub

    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf-home"))
    monkeypatch.delenv("HF_HUB_CACHE", raising=False)
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.setenv("HF_HUB_DISABLE_XET", "1")
    published = tmp_path / "published-adapter"
    published.mkdir()
    shutil.copy(demo_path(models_dir, "flux-ip-adapter") / "ip-adapter.bin", published / "ip-adapter.bin")
    (published / "README.md").write_text("not fetched")
    with FakeHub() as hub:
        hub.add_repo("black-forest-labs/FLUX.1-dev", demo_path(models_dir, "flux-dev"))
        hub.add_repo("InstantX/FLUX.1-dev-IP-Adapter", published)
        hub.add_repo("google/siglip-so400m-patch14-384", demo_path(models_dir, "siglip"))
        monkeypatch.setenv("HF_ENDPOINT", hub.endpoint)
        engine = Engine(device="cpu", models_dir=tmp_path / "models", outputs_dir=tmp_path / "out")
        result = engine.run(ip_request(FLUX, refs["noise"], steps=1))
        assert result.metadata["adapter_file"] == "ip-adapter.bin"
        assert hub.count(contains="ip-adapter.bin") > 0 and hub.count(contains="README.md") == 0
    demo_engine = Engine(device="cpu", models_dir=models_dir, demo=True, outputs_dir=tmp_path / "out")
    demo = demo_engine.run(ip_request(FLUX, refs["noise"], steps=1, ip_adapter_file="ip-adapter.bin"))
    assert np.array_equal(pixels(result), pixels(demo))  # the same files, the same image
