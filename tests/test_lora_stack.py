"""LoRA stacks on tiny Qwen-Image through the real diffusers + peft path: formats, composition, counters,
stale-cache safety (First Block Cache at a forced-skip threshold), two stages, SDNQ int8, the ledger, bad input."""

from __future__ import annotations

import dataclasses
import threading

import numpy as np
import pytest
import torch
from safetensors.torch import load_file, save_file

from engine import Cancelled, Engine, EngineError, InputError, LoraSpec, LoraStackRequest, ModelRef, TextToImageRequest
from engine.adapters import nunchaku
from engine.adapters.lora_presets import load_preset, save_preset
from engine.demo import QWEN_LORA_FILES, QWEN_LORA_LAYOUT_FILES, demo_path, demo_root
from engine.jobs.common import generator_for
from engine.jobs.lora_stack import inspect

QWEN = ModelRef(repo_id="Qwen/Qwen-Image")
FORCE_SKIP = 1e9  # random tiny weights never skip at real thresholds; this skips every step after the first


def lora(models_dir, rel: str, **kw) -> LoraSpec:
    return LoraSpec(path=str(demo_root(models_dir) / rel), **kw)


@pytest.fixture(scope="module")
def files(models_dir):
    a, b = QWEN_LORA_FILES
    return {"a": lora(models_dir, a), "b": lora(models_dir, b),
            **{k: lora(models_dir, v) for k, v in QWEN_LORA_LAYOUT_FILES.items()}}


def stack_request(loras=(), model=QWEN, **kw) -> LoraStackRequest:
    base = {"model": model, "prompt": "a paper lantern", "width": 32, "height": 32, "steps": 4, "seed": 7}
    return LoraStackRequest(**{**base, "loras": tuple(loras), **kw})


def new_engine(models_dir, tmp_path_factory) -> Engine:
    return Engine(device="cpu", models_dir=models_dir, demo=True, outputs_dir=tmp_path_factory.mktemp("lora-out"))


@pytest.fixture(scope="module")
def engine(models_dir, tmp_path_factory):
    return new_engine(models_dir, tmp_path_factory)


def pixels(result) -> np.ndarray:
    return np.asarray(result.images[0]).astype(np.int16)


def fresh(models_dir, tmp_path_factory, req) -> np.ndarray:
    """The same request on an engine that never saw any other LoRA."""
    return pixels(new_engine(models_dir, tmp_path_factory).run(req))


def t2i(req: LoraStackRequest) -> TextToImageRequest:
    fields = {k: getattr(req, k) for k in ("model", "prompt", "width", "height", "steps", "seed", "true_cfg_scale",
                                           "guidance_scale", "swap")}
    return TextToImageRequest(**fields)


# ---------------------------------------------------------------- composition
def test_strengths_order_and_delete_are_exact(engine, files, models_dir, tmp_path_factory):
    a, b = files["a"], files["b"]
    base = pixels(engine.run(t2i(stack_request())))
    only_a = pixels(engine.run(stack_request([a])))
    assert np.abs(only_a - base).max() > 0  # the LoRA does something, so equalities below can fail
    half_b = LoraSpec(path=b.path, weight=0.5)
    assert np.array_equal(pixels(engine.run(stack_request([a, LoraSpec(path=b.path, weight=0.0)]))), only_a)
    zero = pixels(engine.run(stack_request([LoraSpec(path=a.path, weight=0.0), LoraSpec(path=b.path, weight=0.0)])))
    assert np.array_equal(zero, base)
    both = engine.run(stack_request([a, half_b]))
    swapped = engine.run(stack_request([half_b, a]))
    assert np.array_equal(pixels(both), pixels(swapped))  # reordering does not change the sum
    assert both.metadata["fingerprint"] != swapped.metadata["fingerprint"]  # but the order is in the key
    assert swapped.metadata["lora_work"]["set_adapters"] == 0  # the composition was already in place
    disabled = engine.run(stack_request([a, LoraSpec(path=b.path, weight=0.5, enabled=False)]))
    assert np.array_equal(pixels(disabled), only_a)
    # deleting b (it left the stack) equals a fresh pipeline that only ever had a
    deleted = engine.run(stack_request([a]))
    assert deleted.metadata["lora_work"]["deletes"] == 1
    assert np.array_equal(pixels(deleted), fresh(models_dir, tmp_path_factory, stack_request([a])))


def test_unchanged_stack_does_no_lora_work(engine, files):
    a, b = files["a"], files["b"]
    stack = [a, LoraSpec(path=b.path, weight=0.7)]
    engine.run(stack_request(stack))
    again = engine.run(stack_request(stack))
    assert again.metadata["lora_work"] == {"loads": 0, "deletes": 0, "set_adapters": 0}
    stronger = engine.run(stack_request([a, LoraSpec(path=b.path, weight=0.9)]))
    assert stronger.metadata["lora_work"] == {"loads": 0, "deletes": 0, "set_adapters": 1}
    added = engine.run(stack_request([a, LoraSpec(path=b.path, weight=0.9), files["comfyui"]]))
    assert added.metadata["lora_work"] == {"loads": 1, "deletes": 0, "set_adapters": 1}


@pytest.mark.parametrize("layout", ["comfyui", "kohya"])
def test_comfyui_and_kohya_files_match_diffusers_own_loader(engine, files, layout, models_dir):
    from diffusers import QwenImagePipeline

    req = stack_request([files[layout]], steps=2)
    ours = engine.run(req)
    raw = QwenImagePipeline.from_pretrained(str(demo_path(models_dir, "qwen-image")), dtype=torch.float32)
    raw.set_progress_bar_config(disable=True)
    path = files[layout].path
    raw.load_lora_weights(path.rsplit("/", 1)[0], weight_name=path.rsplit("/", 1)[1], adapter_name="x")
    expected = raw(prompt=req.prompt, width=32, height=32, num_inference_steps=2, true_cfg_scale=1.0,
                   guidance_scale=req.guidance_scale, generator=generator_for(req.seed)).images[0]
    assert np.array_equal(pixels(ours), np.asarray(expected).astype(np.int16))
    info = ours.metadata["loras"][0]
    assert info["layout"] == {"comfyui": "ComfyUI", "kohya": "kohya"}[layout] and info["unknown_keys"] == 0


def test_seed004_aliases_split_fused_qkv(engine, files, models_dir, tmp_path):
    """Fused ``to_qkv`` (one A, B stacked), ``attn.to_out`` and ``out_proj_context`` give what the same LoRA
    written out per module in diffusers keys gives."""
    src = load_file(files["seed004"].path)
    plain = {}
    for key, value in src.items():
        module, tag = key.split(".lora", 1)
        part = "lora_A" if ("down" in tag or "_A" in tag) else "lora_B"
        module = module.replace("attn.to_out", "attn.to_out.0").replace("out_proj_context", "attn.to_add_out")
        if module.endswith("to_qkv"):
            for name, chunk in zip("qkv", value.chunk(3) if part == "lora_B" else (value,) * 3):
                plain[f"transformer.{module[:-3]}{name}.{part}.weight"] = chunk.clone()
        else:
            plain[f"transformer.{module}.{part}.weight"] = value
    path = tmp_path / "plain.safetensors"
    save_file(plain, str(path))
    ours = engine.run(stack_request([files["seed004"]]))
    reference = engine.run(stack_request([LoraSpec(path=str(path))]))
    assert np.array_equal(pixels(ours), pixels(reference))
    assert ours.metadata["loras"][0]["hits"] == "10 of 34"


def test_inspect_shows_rank_targets_size_and_hits(engine, files):
    info = inspect(engine, QWEN, files["kohya"])
    assert info["rank"] == "4" and info["layout"] == "kohya" and info["hits"] == "8 of 34"
    assert "img_mod.1" in info["targets"] and info["file_bytes"] > 0


# ---------------------------------------------------------------- stale caches
def _cancel_at(step: int, cancel: threading.Event):
    def progress(fraction, message):
        if message == f"step {step}/4":
            cancel.set()
    return progress


def _raise_at(step: int):
    def progress(fraction, message):
        if message == f"step {step}/4":
            raise RuntimeError("boom mid-run")
    return progress


@pytest.mark.parametrize("how", ["completed", "cancelled", "exception"])
def test_switching_stacks_under_first_block_cache_never_reuses_a_stale_cache(how, files, models_dir,
                                                                              tmp_path_factory):
    engine = new_engine(models_dir, tmp_path_factory)
    with_a = stack_request([files["a"]], step_cache=FORCE_SKIP)
    with_b = stack_request([files["b"]], step_cache=FORCE_SKIP)
    if how == "completed":
        engine.run(with_a)
    elif how == "cancelled":
        cancel = threading.Event()
        with pytest.raises(Cancelled):
            engine.run(with_a, progress=_cancel_at(2, cancel), cancel=cancel)
    else:
        with pytest.raises(RuntimeError, match="boom"):
            engine.run(with_a, progress=_raise_at(2))
    after = pixels(engine.run(with_b))
    expected = fresh(models_dir, tmp_path_factory, with_b)
    assert np.array_equal(after, expected)
    uncached = fresh(models_dir, tmp_path_factory, stack_request([files["b"]]))
    assert np.abs(expected - uncached).max() > 0  # the cache really skipped steps: a stale one would show
    # and Text to image on the shared components is the base model, bit for bit
    assert np.array_equal(pixels(engine.run(t2i(with_b))), fresh(models_dir, tmp_path_factory, t2i(with_b)))


def test_two_stages_with_different_stacks_equal_the_stages_run_separately(engine, files, models_dir):
    from diffusers import QwenImageImg2ImgPipeline

    req = stack_request([files["a"]], stage2=True, stage2_loras=(files["b"],), stage2_strength=0.6,
                        stage2_upscale=2.0, step_cache=FORCE_SKIP)
    result = engine.run(req)
    final, first = result.images
    assert final.size == (64, 64) and first.size == (32, 32)
    alone = engine.run(stack_request([files["a"]], step_cache=FORCE_SKIP))
    assert np.array_equal(np.asarray(first), np.asarray(alone.images[0]))
    raw = QwenImageImg2ImgPipeline.from_pretrained(str(demo_path(models_dir, "qwen-image")), dtype=torch.float32)
    raw.set_progress_bar_config(disable=True)
    b = files["b"].path
    raw.load_lora_weights(b.rsplit("/", 1)[0], weight_name=b.rsplit("/", 1)[1], adapter_name="b")
    from diffusers import FirstBlockCacheConfig

    raw.transformer.enable_cache(FirstBlockCacheConfig(threshold=FORCE_SKIP))
    expected = raw(prompt=req.prompt, image=first.resize((64, 64), resample=3), strength=0.6, width=64, height=64,
                   num_inference_steps=4, true_cfg_scale=1.0, guidance_scale=req.guidance_scale,
                   generator=generator_for(req.seed)).images[0]
    assert np.array_equal(np.asarray(final), np.asarray(expected))


# ---------------------------------------------------------------- SDNQ int8
@pytest.fixture(scope="module")
def sdnq_qwen(models_dir, tmp_path_factory) -> ModelRef:
    """The demo Qwen-Image with its transformer in SDNQ int8 (every Linear: the tiny layers are under sdnq's
    default size filters), saved as a folder the store loads back through diffusers' ``quant_method="sdnq"``."""
    import diffusers
    from diffusers import PipelineQuantizationConfig, QwenImagePipeline

    out = tmp_path_factory.mktemp("qwen-sdnq") / "qwen-image-sdnq-int8"
    config = PipelineQuantizationConfig(quant_mapping={"transformer": diffusers.SDNQConfig(
        weights_dtype="int8", minimum_allowed_numel=0, minimum_allowed_channel_size=0)})
    with torch._dynamo.config.patch(disable=True):
        pipe = QwenImagePipeline.from_pretrained(str(demo_path(models_dir, "qwen-image")),
                                                 quantization_config=config)
    pipe.save_pretrained(str(out), safe_serialization=True)
    return ModelRef(path=str(out))


def test_sdnq_int8_stack_switch_after_an_exception_equals_a_fresh_pipeline(sdnq_qwen, files, models_dir,
                                                                           tmp_path_factory):
    engine = new_engine(models_dir, tmp_path_factory)
    with_a = stack_request([files["a"]], model=sdnq_qwen, step_cache=FORCE_SKIP)
    with_b = stack_request([files["b"], LoraSpec(path=files["kohya"].path, weight=0.5)], model=sdnq_qwen,
                           step_cache=FORCE_SKIP)
    first = engine.run(with_a)
    linear = engine.store.loaded_pipelines()[0].transformer.transformer_blocks[0].attn.to_q.base_layer
    assert type(linear).__name__ == "SDNQLinear"
    with pytest.raises(RuntimeError, match="boom"):
        engine.run(with_b, progress=_raise_at(2))
    after = engine.run(with_b)
    assert np.array_equal(pixels(after), fresh(models_dir, tmp_path_factory, with_b))
    assert np.abs(pixels(after) - pixels(first)).max() > 0


# ---------------------------------------------------------------- memory ledger
def test_each_lora_has_a_ledger_row_with_its_bytes_and_removing_frees_it(files, models_dir, tmp_path_factory):
    engine = new_engine(models_dir, tmp_path_factory)
    engine.run(stack_request([files["a"], files["comfyui"]]))
    rows = {m["name"]: m for m in engine.memory.snapshot()["modules"] if m["role"] == "lora"}
    assert len(rows) == 2
    comfy = next(r for n, r in rows.items() if "qwen-comfy" in n)
    # 14 layers of rank 4, fp32: A is 4 x in, B is out x 4 (48 wide attention, 192 wide MLP hidden)
    expected = sum(t.numel() * 4 for t in load_file(files["comfyui"].path).values())
    assert comfy["bytes"] == expected
    snap = engine.memory.snapshot()
    transformer = comfy["part_of"]
    assert transformer and all(r["part_of"] == transformer for r in rows.values())
    # counted once: the transformer's own bytes already hold its LoRA layers
    assert snap["resident"] == sum(m["bytes_on_compute"] for m in snap["modules"] if not m["part_of"])
    engine.run(stack_request([files["a"]]))
    names = [m["name"] for m in engine.memory.snapshot()["modules"] if m["role"] == "lora"]
    assert len(names) == 1 and "qwen-style-a" in names[0]
    engine.run(stack_request([]))
    assert not [m for m in engine.memory.snapshot()["modules"] if m["role"] == "lora"]


# ---------------------------------------------------------------- bad input
def _assert_stack_unchanged(engine, req, before):
    again = engine.run(req)
    assert again.metadata["lora_work"] == {"loads": 0, "deletes": 0, "set_adapters": 0}
    assert np.array_equal(pixels(again), before)


def test_bad_files_get_a_clear_message_and_leave_the_stack_as_it_was(engine, files, models_dir, tmp_path):
    good = stack_request([files["a"]])
    before = pixels(engine.run(good))

    garbage = tmp_path / "notes.safetensors"
    garbage.write_bytes(b"this is not a tensor file")
    pickle = tmp_path / "evil.ckpt"

    class Boom:
        def __reduce__(self):
            return (print, ("pwned",))
    torch.save({"x": Boom()}, str(pickle))
    a = load_file(files["a"].path)
    key = next(k for k in a if "lora_B" in k)
    nan = dict(a, **{key: torch.full_like(a[key], float("nan"))})
    save_file(nan, str(tmp_path / "nan.safetensors"))
    rank = dict(a, **{key: torch.zeros(a[key].shape[0], 8)})
    save_file(rank, str(tmp_path / "rank.safetensors"))
    flux_lora = demo_path(models_dir, "omnix") / "rgb_to_depth" / "depth" / "pytorch_lora_weights.safetensors"
    sdxl = {"lora_unet_down_blocks_0_attentions_0_proj_in.lora_down.weight": torch.randn(4, 320),
            "lora_unet_down_blocks_0_attentions_0_proj_in.lora_up.weight": torch.randn(320, 4)}
    save_file(sdxl, str(tmp_path / "sdxl.safetensors"))
    cases = [
        (str(garbage), "not a readable safetensors"),
        (str(pickle), "weights_only=True"),
        (str(tmp_path / "nan.safetensors"), "NaN"),
        (str(tmp_path / "rank.safetensors"), "rank mismatch"),
        (str(flux_lora), "made for another model"),  # Flux shares Qwen-Image's module names, not its sizes
        (str(tmp_path / "sdxl.safetensors"), "matches 0 of 34 modules"),
    ]
    for path, words in cases:
        with pytest.raises(InputError) as err:
            engine.run(stack_request([files["a"], LoraSpec(path=path)]))
        assert words in err.value.message and err.value.field == "loras[1]", err.value
        _assert_stack_unchanged(engine, good, before)

    copy = tmp_path / "copy-of-a.safetensors"
    copy.write_bytes(open(files["a"].path, "rb").read())
    with pytest.raises(InputError, match="same content"):
        engine.run(stack_request([files["a"], LoraSpec(path=str(copy))]))
    with pytest.raises(InputError, match="already in the stack"):
        stack_request([files["a"], files["a"]]).validate()
    with pytest.raises(InputError, match="between -2 and 2"):
        stack_request([LoraSpec(path=files["a"].path, weight=2.5)]).validate()
    with pytest.raises(InputError, match="limit is 32"):
        stack_request([files["a"]] * 50).validate()
    _assert_stack_unchanged(engine, good, before)


def test_presets_round_trip_and_name_missing_files(files, tmp_path):
    stack = (files["a"], LoraSpec(path=files["kohya"].path, weight=-0.5, enabled=False, name="k"))
    save_preset(tmp_path, "my stack", stack)
    assert load_preset(tmp_path, "my stack") == stack
    gone = tmp_path / "gone.safetensors"
    gone.write_bytes(open(files["b"].path, "rb").read())
    save_preset(tmp_path, "stale", (files["a"], LoraSpec(path=str(gone))))
    gone.unlink()
    with pytest.raises(InputError, match="gone.safetensors"):
        load_preset(tmp_path, "stale")
    with pytest.raises(InputError, match="no saved stack"):
        load_preset(tmp_path, "nope")
    # the folder is every session's: the same name with another stack never replaces the saved one (issue 30)
    other = (files["b"],)
    assert save_preset(tmp_path, "my stack", other).name == "my stack-2.json"
    assert load_preset(tmp_path, "my stack") == stack and load_preset(tmp_path, "my stack-2") == other
    assert save_preset(tmp_path, "my stack", stack).name == "my stack.json"  # the same stack: saved in place


# ---------------------------------------------------------------- Nunchaku detection
def test_nunchaku_status_without_it_and_with_the_unrelated_pypi_package(tmp_path, monkeypatch):
    import sys

    state = nunchaku.status()
    if not state.available:
        assert "Nunchaku" in state.reason
    fake = tmp_path / "nunchaku"
    fake.mkdir()
    (fake / "__init__.py").write_text("'''an unrelated package that happens to share the name'''\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    for name in [m for m in sys.modules if m == "nunchaku" or m.startswith("nunchaku.")]:
        monkeypatch.delitem(sys.modules, name)
    state = nunchaku.status()
    assert not state.available and "unrelated PyPI package" in state.reason
    with pytest.raises(InputError, match="svdq"):
        stack_request(backend="nunchaku").validate()
    with pytest.raises(EngineError, match="unrelated"):
        nunchaku.load_transformer(str(tmp_path / "x.safetensors"), torch.float32, "cpu")


def test_an_input_image_needs_an_edit_model(engine, files, tmp_path):
    from PIL import Image

    image = tmp_path / "in.png"
    Image.new("RGB", (32, 32), (200, 30, 30)).save(image)
    with pytest.raises(InputError) as err:
        engine.run(stack_request([files["a"]], input_image=str(image)))
    assert err.value.field == "input_image" and "Qwen-Image-Edit" in err.value.message


def test_loras_work_under_block_swap_streaming_from_disk(files, models_dir, tmp_path_factory):
    """Block swap with the streamed blocks waiting on disk (so the CPU test really moves tensors): loading a
    LoRA wraps layers (renames their tensors) under a live strategy; switching stacks after an exception still
    equals a fresh, fully resident pipeline with the new stack, and Text to image is the base model."""
    from engine import SwapSettings

    swap = SwapSettings(mode="block_swap", blocks_resident=1)
    engine = Engine(device="cpu", models_dir=models_dir, demo=True, offload_device="disk",
                    outputs_dir=tmp_path_factory.mktemp("lora-swap"))
    with_a = stack_request([files["a"]], step_cache=FORCE_SKIP, swap=swap)
    with_b = stack_request([files["b"], files["kohya"]], step_cache=FORCE_SKIP, swap=swap)
    engine.run(with_a)
    transformer = engine.store.loaded_pipelines()[0].transformer
    assert any(p.device.type == "meta" for p in transformer.parameters())  # blocks really wait on disk
    with pytest.raises(RuntimeError, match="boom"):
        engine.run(with_b, progress=_raise_at(2))
    after = engine.run(with_b)
    plain = dataclasses.replace(with_b, swap=SwapSettings())
    assert np.array_equal(pixels(after), fresh(models_dir, tmp_path_factory, plain))
    rows = [m for m in engine.memory.snapshot()["modules"] if m["role"] == "lora"]
    assert len(rows) == 2 and all(r["bytes"] > 0 for r in rows)
    assert np.array_equal(pixels(engine.run(t2i(with_b))), fresh(models_dir, tmp_path_factory, t2i(plain)))


@pytest.mark.parametrize("mode", ["model_offload", "adaptive", "chunkwise", "layerwise", "cpu_only"])
def test_switching_stacks_under_every_other_memory_mode_equals_a_resident_pipeline(mode, files, models_dir,
                                                                                  tmp_path_factory, reference_b):
    from engine import SwapSettings

    swap = SwapSettings(mode=mode, blocks_resident=1, max_vram_gb=0.01 if mode == "adaptive" else 0.0)
    engine = Engine(device="cpu", models_dir=models_dir, demo=True, offload_device="disk",
                    outputs_dir=tmp_path_factory.mktemp(f"lora-{mode}"))
    engine.run(stack_request([files["a"]], steps=2, swap=swap))
    after = engine.run(stack_request([files["b"], files["kohya"]], steps=2, swap=swap))
    assert np.array_equal(pixels(after), reference_b)


@pytest.fixture(scope="module")
def reference_b(files, models_dir, tmp_path_factory):
    return fresh(models_dir, tmp_path_factory, stack_request([files["b"], files["kohya"]], steps=2))


def test_a_hub_lora_is_fetched_before_the_run_and_equals_the_local_file(engine, files, tmp_path, monkeypatch):
    import shutil

    from engine import ModelLoadError
    from tests.conftest import empty_hf_cache
    from tests.fakehub import FakeHub

    empty_hf_cache(tmp_path, monkeypatch)
    repo = tmp_path / "repo"
    repo.mkdir()
    shutil.copyfile(files["kohya"].path, repo / "style.safetensors")
    with FakeHub() as fake:
        fake.add_repo("someone/qwen-loras", repo)
        monkeypatch.setenv("HF_ENDPOINT", fake.endpoint)
        import huggingface_hub.constants as constants

        monkeypatch.setattr(constants, "ENDPOINT", fake.endpoint)
        monkeypatch.setattr(constants, "HUGGINGFACE_CO_URL_TEMPLATE", fake.endpoint + "/{repo_id}/resolve/{revision}/{filename}")
        hub = engine.run(stack_request([LoraSpec(repo_id="someone/qwen-loras", filename="style.safetensors")]))
        with pytest.raises(ModelLoadError, match="no file"):
            engine.run(stack_request([LoraSpec(repo_id="someone/qwen-loras", filename="other.safetensors")]))
    local = engine.run(stack_request([files["kohya"]]))
    assert np.array_equal(pixels(hub), pixels(local))
    assert local.metadata["lora_work"]["loads"] == 0  # same bytes: the hub file's adapter is reused


def test_unknown_keys_are_reported_by_count_and_example_and_lycoris_is_refused(engine, files, tmp_path):
    a = load_file(files["a"].path)
    extra = dict(a)
    extra["lora_te_text_model_encoder_layers_0_mlp_fc1.lora_down.weight"] = torch.randn(4, 16)
    extra["transformer.pos_embed.lora_A.weight"] = torch.randn(4, 16)  # a module Qwen-Image does not have
    extra["transformer.pos_embed.lora_B.weight"] = torch.randn(16, 4)
    save_file(extra, str(tmp_path / "extra.safetensors"))
    result = engine.run(stack_request([LoraSpec(path=str(tmp_path / "extra.safetensors"))]))
    (warning,) = result.metadata["warnings"]
    assert "3 key(s) not applied" in warning and "pos_embed" in warning
    assert result.metadata["loras"][0]["unknown_keys"] == 3
    assert np.array_equal(pixels(result), pixels(engine.run(stack_request([files["a"]]))))

    lokr = {"lora_unet_transformer_blocks_0_attn_to_q.lokr_w1": torch.randn(4, 4),
            "lora_unet_transformer_blocks_0_attn_to_q.lokr_w2": torch.randn(12, 12)}
    save_file(lokr, str(tmp_path / "lokr.safetensors"))
    with pytest.raises(InputError, match="LoKr"):
        engine.run(stack_request([LoraSpec(path=str(tmp_path / "lokr.safetensors"))]))
