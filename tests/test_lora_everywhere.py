"""LoRA stacks on every job through one composer: Flux and Chroma text to image in every layout, IP-Adapter, the
SDNQ catalog, Wan 2.2 A14B with one stack per expert and TI2V 5B, with the stack's guarantees (an unchanged stack
does no LoRA work, no LoRA after LoRAs is a fresh engine's result bit for bit, cancel leaves nothing active, the
step cache keys on the stack, block_swap with a stack equals none with it) and the bad input of issue 31."""

from __future__ import annotations

import threading

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import load_file, save_file

from engine import Engine, I2VRequest, InputError, LoraSpec, ModelRef, SwapSettings, TextToImageRequest
from engine.demo import CHROMA_LORA_FILES, FLUX_LORA_FILES, WAN_LORA_FILES, demo_path, demo_root
from engine.errors import Cancelled
from engine.requests import MAX_LORAS, CatalogRequest, IPAdapterRequest, ReferenceImage

FLUX = ModelRef(repo_id="black-forest-labs/FLUX.1-dev")
CHROMA = ModelRef(repo_id="lodestones/Chroma1-HD")
A14B = ModelRef(repo_id="Wan-AI/Wan2.2-I2V-A14B-Diffusers")
TI2V = ModelRef(repo_id="Wan-AI/Wan2.2-TI2V-5B-Diffusers")
NO_WORK = {"loads": 0, "deletes": 0, "set_adapters": 0}


def spec(models_dir, rel: str, **kw) -> LoraSpec:
    return LoraSpec(path=str(demo_root(models_dir) / rel), **kw)


def new_engine(models_dir, tmp_path_factory) -> Engine:
    return Engine(device="cpu", models_dir=models_dir, demo=True, outputs_dir=tmp_path_factory.mktemp("loras-out"))


@pytest.fixture(scope="module")
def engine(models_dir, tmp_path_factory):
    return new_engine(models_dir, tmp_path_factory)


def t2i(model=FLUX, loras=(), **kw) -> TextToImageRequest:
    return TextToImageRequest(model=model, prompt="a red fox", width=64, height=64, steps=3, seed=11,
                              loras=tuple(loras), **kw)


def pixels(result) -> np.ndarray:
    return np.asarray(result.images[0]).astype(np.int16)


def composers(engine, model=FLUX, attrs=("transformer",)):
    pipe = engine.store.load_pipeline(model)
    return [getattr(getattr(pipe, a), "_studio_lora_composer", None) for a in attrs]


@pytest.fixture(scope="module")
def start_image(tmp_path_factory):
    path = tmp_path_factory.mktemp("lora-i2v-in") / "start.png"
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (40, 56, 3), dtype=np.uint8)).save(path)
    return str(path)


def i2v(image: str, **kw) -> I2VRequest:
    fields = dict(model=A14B, image=image, prompt="waves roll in", resolution="custom", width=32, height=32,
                  num_frames=5, steps=4, guidance_scale=1.0, guidance_scale_2=1.0, seed=5, swap=SwapSettings(),
                  preview_every=0)
    return I2VRequest(**{**fields, **kw})


def frames(result) -> np.ndarray:
    from engine.video.encode import read_video

    png = next(f for f in result.files if f.endswith("-last-frame.png"))
    return np.asarray(Image.open(png)).astype(int) if png else read_video(result.video_path)


# ---------------------------------------------------------------- Flux / Chroma
@pytest.mark.parametrize("layout", ["diffusers", "kohya", "comfyui", "xlabs"])
def test_every_flux_layout_changes_the_image_and_an_unchanged_stack_does_no_work(engine, models_dir,
                                                                                 tmp_path_factory, layout):
    rel = FLUX_LORA_FILES[layout][0] if layout == "diffusers" else FLUX_LORA_FILES[layout]
    base = pixels(engine.run(t2i()))
    first = engine.run(t2i(loras=[spec(models_dir, rel)]))
    assert np.abs(pixels(first) - base).max() > 0
    assert first.metadata["lora_work"]["loads"] == 1
    again = engine.run(t2i(loras=[spec(models_dir, rel)]))
    assert again.metadata["lora_work"] == NO_WORK
    assert np.array_equal(pixels(again), pixels(first))
    if layout == "kohya":  # the CLIP part is said to be ignored, never dropped silently
        assert any("text-encoder key(s) ignored" in w for w in first.metadata["warnings"])
    after = engine.run(t2i())
    assert np.array_equal(pixels(after), base)
    assert np.array_equal(pixels(after), pixels(new_engine(models_dir, tmp_path_factory).run(t2i())))
    assert not composers(engine)[0].is_active()


def test_kohya_flux_file_computes_what_diffusers_own_loader_computes(engine, models_dir, tmp_path):
    from diffusers import FluxPipeline

    from engine.jobs.common import generator_for

    # without its CLIP part: diffusers applies that to the text encoder, we (as LoraLoaderModelOnly) do not
    state = load_file(str(demo_root(models_dir) / FLUX_LORA_FILES["kohya"]))
    path = str(tmp_path / "kohya-unet-only.safetensors")
    save_file({k: v for k, v in state.items() if not k.startswith("lora_te")}, path)
    ours = pixels(engine.run(t2i(loras=[LoraSpec(path=path)])))
    pipe = FluxPipeline.from_pretrained(demo_path(models_dir, "flux-dev"))
    pipe.load_lora_weights(path)
    theirs = pipe(prompt="a red fox", width=64, height=64, num_inference_steps=3, guidance_scale=3.5,
                  generator=generator_for(11), output_type="pil").images[0]
    assert np.abs(ours - np.asarray(theirs).astype(np.int16)).max() <= 1


def test_chroma_takes_its_own_and_flux_layouts_reporting_the_layers_it_lacks(engine, models_dir):
    base = pixels(engine.run(t2i(CHROMA)))
    own = engine.run(t2i(CHROMA, [spec(models_dir, CHROMA_LORA_FILES["kohya"])]))
    assert np.abs(pixels(own) - base).max() > 0 and not own.metadata.get("warnings")
    flux_file = engine.run(t2i(CHROMA, [spec(models_dir, FLUX_LORA_FILES["comfyui"])]))
    (warning,) = flux_file.metadata["warnings"]
    assert "not applied" in warning and "norm1.linear" in warning  # Chroma has no per-block modulation Linear


def test_ip_adapter_and_catalog_take_a_stack_with_the_same_guarantees(engine, models_dir, tmp_path):
    ref = tmp_path / "ref.png"
    Image.fromarray(np.random.default_rng(3).integers(0, 255, (48, 48, 3), dtype=np.uint8)).save(ref)
    a = spec(models_dir, FLUX_LORA_FILES["diffusers"][0])
    b = spec(models_dir, FLUX_LORA_FILES["diffusers"][1], weight=0.5)
    ip = dict(model=FLUX, references=(ReferenceImage(str(ref)),), prompt="a red fox", width=64, height=64, steps=3,
              seed=11)
    plain = pixels(engine.run(IPAdapterRequest(**ip)))
    with_stack = engine.run(IPAdapterRequest(**ip, loras=(a, b)))
    assert np.abs(pixels(with_stack) - plain).max() > 0
    again = engine.run(IPAdapterRequest(**ip, loras=(a, b)))
    assert again.metadata["lora_work"] == NO_WORK and again.metadata["token_cache_hits"] == 1
    assert np.array_equal(pixels(engine.run(IPAdapterRequest(**ip))), plain)

    sdnq = ModelRef(path=str(demo_path(models_dir, "flux-dev-sdnq-int8")))
    cat = dict(model=sdnq, prompt="a red fox", width=64, height=64, steps=3, seed=11)
    plain = pixels(engine.run(CatalogRequest(**cat)))
    first = engine.run(CatalogRequest(**cat, loras=(a,)))
    assert np.abs(pixels(first) - plain).max() > 0
    assert engine.run(CatalogRequest(**cat, loras=(a,))).metadata["lora_work"] == NO_WORK
    reweighted = engine.run(CatalogRequest(**cat, loras=(LoraSpec(path=a.path, weight=0.5),)))
    assert reweighted.metadata["lora_work"] == {"loads": 0, "deletes": 0, "set_adapters": 1}
    assert np.array_equal(pixels(engine.run(CatalogRequest(**cat))), plain)


def test_ip_adapter_token_cache_keys_on_the_stack_fingerprint(engine, models_dir, tmp_path):
    from engine.adapters import ipadapter_pieces
    from engine.adapters.lora_stack import fingerprint

    ref = tmp_path / "ref-cache.png"
    Image.fromarray(np.random.default_rng(4).integers(0, 255, (48, 48, 3), dtype=np.uint8)).save(ref)
    a = spec(models_dir, FLUX_LORA_FILES["diffusers"][0])
    ip = dict(model=FLUX, references=(ReferenceImage(str(ref)),), prompt="a red fox", width=64, height=64, steps=2,
              seed=11)
    assert engine.run(IPAdapterRequest(**ip)).metadata["token_cache_hits"] == 0
    stacked = engine.run(IPAdapterRequest(**ip, loras=(a,)))
    assert stacked.metadata["token_cache_hits"] == 0  # a new stack: a new key, the tokens are encoded again
    assert engine.run(IPAdapterRequest(**ip, loras=(a,))).metadata["token_cache_hits"] == 1  # unchanged: reused
    reweighted = engine.run(IPAdapterRequest(**ip, loras=(LoraSpec(path=a.path, weight=0.5),)))
    assert reweighted.metadata["token_cache_hits"] == 0
    assert engine.run(IPAdapterRequest(**ip)).metadata["token_cache_hits"] == 1  # no stack: the first run's tokens
    pieces = engine.store.adapters[ipadapter_pieces.STORE_KEY]
    digest, _ = ipadapter_pieces.token_key(str(ref))
    keys = {k for k in pieces.tokens if k[0] == digest}
    assert {k[1] for k in keys} == {fingerprint([]), stacked.metadata["fingerprint"],
                                     reweighted.metadata["fingerprint"]}


def test_cancel_and_exception_mid_run_leave_no_adapter_active(engine, models_dir):
    a = spec(models_dir, FLUX_LORA_FILES["diffusers"][0])
    cancel = threading.Event()

    def progress(fraction, message):
        if message.startswith("step 1/"):
            cancel.set()

    with pytest.raises(Cancelled):
        engine.run(t2i(loras=[a]), progress=progress, cancel=cancel)
    (composer,) = composers(engine)
    assert composer.loaded() and not composer.is_active()
    pipe = engine.store.load_pipeline(FLUX)
    original = pipe.transformer.forward

    def boom(*args, **kw):
        assert composer.is_active()  # the stack is on while the transformer computes ...
        raise RuntimeError("boom")

    pipe.transformer.forward = boom
    try:
        with pytest.raises(Exception, match="boom"):
            engine.run(t2i(loras=[a]))
    finally:
        pipe.transformer.forward = original
    assert not composer.is_active()  # ... and off after the failure


# ---------------------------------------------------------------- Wan 2.2
def test_wan_a14b_has_one_stack_per_expert_and_its_guarantees(engine, models_dir, tmp_path_factory, start_image):
    high = spec(models_dir, WAN_LORA_FILES["lightx2v_high"])
    low = spec(models_dir, WAN_LORA_FILES["lightx2v_low"])
    base = frames(engine.run(i2v(start_image)))
    both = engine.run(i2v(start_image, loras=(high,), loras_2=(low,)))
    assert np.abs(frames(both) - base).max() > 0
    assert both.metadata["lora_work"]["loads"] == 2
    assert both.metadata["loras"][0]["layout"] == "ComfyUI" and both.metadata["loras_2"][0]["file"].endswith(
        "low_noise.safetensors")
    hi_c, lo_c = composers(engine, A14B, ("transformer", "transformer_2"))
    assert len(hi_c.loaded()) == 1 and len(lo_c.loaded()) == 1 and hi_c.loaded() != lo_c.loaded()
    again = engine.run(i2v(start_image, loras=(high,), loras_2=(low,)))
    assert again.metadata["lora_work"] == NO_WORK and np.array_equal(frames(again), frames(both))
    only_high = frames(engine.run(i2v(start_image, loras=(high,))))
    assert not np.array_equal(only_high, frames(both)) and not np.array_equal(only_high, base)
    assert np.array_equal(frames(engine.run(i2v(start_image))), base)
    assert np.array_equal(base, frames(new_engine(models_dir, tmp_path_factory).run(i2v(start_image))))
    assert not hi_c.is_active() and not lo_c.is_active()


def test_turbowan_experts_take_a_stack_each_through_the_same_composer(engine, models_dir, tmp_path_factory,
                                                                       start_image):
    from engine.requests import TurboWanSettings

    def turbo(**kw) -> I2VRequest:  # 4 rCM steps: t = 0.995, 0.934 on the high-noise expert, 0.853, 0.609 on the low
        return i2v(start_image, steps=4, turbo=TurboWanSettings(enabled=True), **kw)

    high = spec(models_dir, WAN_LORA_FILES["lightx2v_high"])
    low = spec(models_dir, WAN_LORA_FILES["lightx2v_low"])
    base = frames(engine.run(turbo()))
    both = engine.run(turbo(loras=(high,), loras_2=(low,)))
    assert both.metadata["pipeline"] == "TurboWanI2VPipeline" and both.metadata["lora_work"]["loads"] == 2
    assert np.abs(frames(both) - base).max() > 0
    pipe = next(p for k, p in engine.store._pipelines.items() if k and k[0] == "turbowan")
    assert type(pipe.transformer).__name__ == "WanTransformer3DModel"
    hi_c, lo_c = (m._studio_lora_composer for m in (pipe.transformer, pipe.transformer_2))
    assert len(hi_c.loaded()) == 1 and len(lo_c.loaded()) == 1
    again = engine.run(turbo(loras=(high,), loras_2=(low,)))
    assert again.metadata["lora_work"] == NO_WORK and np.array_equal(frames(again), frames(both))
    only_low = frames(engine.run(turbo(loras_2=(low,))))
    assert not np.array_equal(only_low, frames(both)) and not np.array_equal(only_low, base)
    assert np.array_equal(frames(engine.run(turbo())), base)
    assert np.array_equal(base, frames(new_engine(models_dir, tmp_path_factory).run(turbo())))
    assert not hi_c.is_active() and not lo_c.is_active()


@pytest.mark.parametrize("layout", ["diffusers", "kohya"])
def test_wan_layouts_load_and_block_swap_with_a_stack_equals_none(engine, models_dir, start_image, layout):
    lora = spec(models_dir, WAN_LORA_FILES[layout])
    resident = engine.run(i2v(start_image, loras=(lora,), loras_2=(lora,)))
    swapped = engine.run(i2v(start_image, loras=(lora,), loras_2=(lora,),
                             swap=SwapSettings(mode="block_swap", blocks_resident=1)))
    assert np.array_equal(frames(resident), frames(swapped))
    rows = [engine.memory.entry(n) for n in engine.memory.names() if engine.memory.entry(n).role == "lora"]
    assert rows and all(e.part_of for e in rows)  # the LoRA layers are rows of their transformer


def test_ti2v_has_one_stack_and_wan_refuses_flux_loras_naming_the_family(engine, models_dir, start_image):
    base = frames(engine.run(i2v(start_image, model=TI2V)))
    one = engine.run(i2v(start_image, model=TI2V, loras=(spec(models_dir, WAN_LORA_FILES["ti2v"]),)))
    assert np.abs(frames(one) - base).max() > 0
    with pytest.raises(InputError) as err:
        engine.run(i2v(start_image, model=TI2V, loras_2=(spec(models_dir, WAN_LORA_FILES["ti2v"]),)))
    assert err.value.field == "loras_2"
    with pytest.raises(InputError) as err:
        engine.run(i2v(start_image, loras=(spec(models_dir, FLUX_LORA_FILES["kohya"]),)))
    assert err.value.field == "loras[0]" and "LoRA for Flux" in err.value.message and "Wan" in err.value.message


def test_the_step_cache_keys_on_both_stacks(engine, models_dir, start_image):
    high = spec(models_dir, WAN_LORA_FILES["lightx2v_high"])
    engine.run(i2v(start_image, loras=(high,), step_cache="first_block", cache_threshold=0.01))
    pipe = engine.store.load_pipeline(A14B, "WanImageToVideoPipeline")
    key_with = pipe.transformer._studio_step_cache
    engine.run(i2v(start_image, step_cache="first_block", cache_threshold=0.01))
    assert pipe.transformer._studio_step_cache != key_with
    assert "transformer:" in key_with[-1]


def test_the_plan_counts_each_stack_on_the_transformer_it_loads_into(engine, models_dir, start_image, tmp_path):
    from engine.plan import load_elem_bytes

    def size(lora: LoraSpec, model: ModelRef) -> int:  # the file's tensors at the dtype the run loads them in
        return sum(t.numel() for t in load_file(lora.path).values()) * load_elem_bytes(model.dtype, engine.device)

    ref = tmp_path / "ref-plan.png"
    Image.new("RGB", (48, 48), (10, 200, 30)).save(ref)
    a = spec(models_dir, FLUX_LORA_FILES["diffusers"][0])
    sdnq = ModelRef(path=str(demo_path(models_dir, "flux-dev-sdnq-int8")))
    builds = {
        "text to image": (FLUX, lambda stack: t2i(loras=stack)),
        "ip-adapter": (FLUX, lambda stack: IPAdapterRequest(model=FLUX, references=(ReferenceImage(str(ref)),),
                                                             prompt="a fox", width=64, height=64, loras=stack)),
        "catalog": (sdnq, lambda stack: CatalogRequest(model=sdnq, prompt="a fox", width=64, height=64,
                                                       loras=stack)),
    }
    for what, (model, build) in builds.items():
        base, stacked = engine.plan(build(())), engine.plan(build((a,)))
        assert stacked.components["transformer"] - base.components["transformer"] == size(a, model), what
        assert {k: v for k, v in stacked.components.items() if k != "transformer"} == \
            {k: v for k, v in base.components.items() if k != "transformer"}, what
        assert stacked.weights_peak - base.weights_peak == size(a, model), what  # mode none: all of it resident
        for idle in (LoraSpec(path=a.path, weight=0.0), LoraSpec(path=a.path, enabled=False)):
            assert engine.plan(build((idle,))).components == base.components, what  # an idle entry loads nothing

    high, low = spec(models_dir, WAN_LORA_FILES["lightx2v_high"]), spec(models_dir, WAN_LORA_FILES["lightx2v_low"])
    base = engine.plan(i2v(start_image)).components
    only_low = engine.plan(i2v(start_image, loras_2=(low,))).components
    assert only_low["transformer_2"] - base["transformer_2"] == size(low, A14B)
    assert only_low["transformer"] == base["transformer"]  # the low-noise expert's stack is not on the high one
    both = engine.plan(i2v(start_image, loras=(high,), loras_2=(low,))).components
    assert both["transformer"] - base["transformer"] == size(high, A14B)
    assert both["transformer_2"] == only_low["transformer_2"]
    swapped = engine.plan(i2v(start_image, loras=(high,), swap=SwapSettings(mode="block_swap", blocks_resident=1)))
    assert swapped.components["transformer"] - base["transformer"] == size(high, A14B)  # inside its blocks


# ---------------------------------------------------------------- bad input
def test_bad_loras_are_refused_with_words(engine, models_dir, tmp_path):
    a_path = demo_root(models_dir) / FLUX_LORA_FILES["diffusers"][0]
    a = load_file(str(a_path))
    key = next(k for k in a if k.endswith("lora_B.weight"))
    save_file(dict(a, **{key: torch.zeros(a[key].shape[0], 8)}), str(tmp_path / "rank.safetensors"))
    with pytest.raises(InputError) as err:
        engine.run(t2i(loras=[LoraSpec(path=str(tmp_path / "rank.safetensors"))]))
    layer = key.removeprefix("transformer.").removesuffix(".lora_B.weight")
    assert "rank mismatch" in err.value.message and layer in err.value.message
    assert f"({a[key].shape[0]}, 8)" in err.value.message and "(4, " in err.value.message

    te = {"lora_te1_text_model_encoder_layers_0_mlp_fc1.lora_down.weight": torch.randn(4, 32),
          "lora_te1_text_model_encoder_layers_0_mlp_fc1.lora_up.weight": torch.randn(37, 4)}
    save_file(te, str(tmp_path / "te.safetensors"))
    with pytest.raises(InputError, match="only text-encoder weights"):
        engine.run(t2i(loras=[LoraSpec(path=str(tmp_path / "te.safetensors"))]))

    a_spec = LoraSpec(path=str(a_path))
    engine.run(t2i(loras=[a_spec]))
    fresh = spec(models_dir, FLUX_LORA_FILES["diffusers"][1], weight=0.0)
    (composer,) = composers(engine)
    loaded = composer.loaded()
    idle = engine.run(t2i(loras=[a_spec, fresh]))  # the entry at 0 strength: not read, not loaded, not activated
    assert idle.metadata["lora_work"] == NO_WORK and composer.loaded() == loaded
    assert idle.metadata["loras"][1]["layout"].startswith("not read")

    too_many = tuple(LoraSpec(path=str(a_path), name=str(i)) for i in range(MAX_LORAS + 1))
    with pytest.raises(InputError, match=f"the limit is {MAX_LORAS}"):
        t2i(loras=too_many).validate()


# ---------------------------------------------------------------- the shared editor's requests (no browser)
def test_every_tab_builds_its_loras_from_the_one_shared_editor(models_dir, start_image):
    from ui import lora_editor
    from ui.tabs import catalog, ipadapter, lora_stack, text_to_image
    from ui.tabs import i2v as i2v_tab

    for module in (text_to_image, ipadapter, catalog, i2v_tab, lora_stack):  # one editor, not a copy per tab
        assert module.stack_editor is lora_editor.stack_editor and module.specs is lora_editor.specs
    a = {"path": str(demo_root(models_dir) / FLUX_LORA_FILES["diffusers"][0]), "weight": 0.7, "info": {"x": 1}}
    req = text_to_image.build_request("black-forest-labs/FLUX.1-dev", "a fox", "", 64, 64, 2, 3.5, 1.0, 0, loras=[a])
    assert req.loras == (LoraSpec(path=a["path"], weight=0.7),)
    h = {"path": str(demo_root(models_dir) / WAN_LORA_FILES["lightx2v_high"]), "weight": 1.0}
    args = ["Wan-AI/Wan2.2-I2V-A14B-Diffusers", start_image, "waves", "", "custom", "16:9", 32, 32, "crop", 5, 4, 1.0,
            1.0, 0.875, 16, 0, "mp4", 8, True, "none", 0.05, 0, False, True, "", "", 200.0, False, "sla", 0.1]
    both = i2v_tab.build_request(*args, loras=[h], loras_2=[], both=True)
    assert both.loras == both.loras_2 == (LoraSpec(path=h["path"]),)
    assert i2v_tab.build_request(*args, loras=[h], loras_2=[], both=False).loras_2 == ()
