"""Qwen-Image-Edit (and Edit-2509) on the LoRA stack: the tiny Edit models in the real repos' layout, loaded and
run through the real diffusers Edit pipelines, with the stack's guarantees (exact composition, no LoRA work for
an unchanged stack, no stale cache, ledger rows, memory modes) and clear messages for bad input."""

from __future__ import annotations

import dataclasses
import json

import numpy as np
import pytest

from engine import Engine, InputError, LoraSpec, LoraStackRequest, ModelLoadError, ModelRef, SwapSettings
from engine import TextToImageRequest as T2I
from engine.demo import QWEN_LORA_FILES, QWEN_LORA_LAYOUT_FILES, demo_path, demo_root
from engine.jobs.common import generator_for
from engine.jobs.qwen_edit import load_processor

EDIT = ModelRef(repo_id="Qwen/Qwen-Image-Edit")
EDIT_2509 = ModelRef(repo_id="Qwen/Qwen-Image-Edit-2509")
FORCE_SKIP = 1e9  # First Block Cache skips every step after the first: a stale cache would show


@pytest.fixture(scope="module")
def files(models_dir):
    root = demo_root(models_dir)
    return {"a": LoraSpec(path=str(root / QWEN_LORA_FILES[0])), "b": LoraSpec(path=str(root / QWEN_LORA_FILES[1])),
            "kohya": LoraSpec(path=str(root / QWEN_LORA_LAYOUT_FILES["kohya"]))}


@pytest.fixture(scope="module")
def images(tmp_path_factory):
    from PIL import Image

    folder = tmp_path_factory.mktemp("edit-in")
    paths = {"photo": str(folder / "photo.png"), "other": str(folder / "other.png")}
    Image.fromarray((np.random.RandomState(0).rand(48, 64, 3) * 255).astype("uint8")).save(paths["photo"])
    Image.new("RGB", (64, 64), (20, 40, 160)).save(paths["other"])  # another size and colour
    return paths


def edit_request(images, loras=(), model=EDIT, image="photo", **kw) -> LoraStackRequest:
    base = {"model": model, "prompt": "make the sky green", "width": 32, "height": 32, "steps": 2, "seed": 5,
            "input_image": images[image] if image else ""}
    return LoraStackRequest(**{**base, "loras": tuple(loras), **kw})


def new_engine(models_dir, tmp_path_factory, **kw) -> Engine:
    return Engine(device="cpu", models_dir=models_dir, demo=True, outputs_dir=tmp_path_factory.mktemp("edit-out"),
                  **kw)


@pytest.fixture(scope="module")
def engine(models_dir, tmp_path_factory):
    return new_engine(models_dir, tmp_path_factory)


def pixels(result) -> np.ndarray:
    return np.asarray(result.images[0]).astype(np.int16)


def fresh(models_dir, tmp_path_factory, req) -> np.ndarray:
    return pixels(new_engine(models_dir, tmp_path_factory).run(req))


# ---------------------------------------------------------------- layout
@pytest.mark.parametrize("name, cls", [("qwen-image-edit", "QwenImageEditPipeline"),
                                       ("qwen-image-edit-2509", "QwenImageEditPlusPipeline")])
def test_the_tiny_edit_models_have_the_real_repos_layout(models_dir, name, cls):
    folder = demo_path(models_dir, name)
    index = json.loads((folder / "model_index.json").read_text())
    assert index["_class_name"] == cls and index["processor"] == ["transformers", "Qwen2VLProcessor"]
    assert index["text_encoder"] == ["transformers", "Qwen2_5_VLForConditionalGeneration"]
    for part in ("processor", "tokenizer", "text_encoder", "transformer", "vae", "scheduler"):
        assert (folder / part).is_dir(), part
    pre = json.loads((folder / "processor" / "preprocessor_config.json").read_text())
    assert pre["image_processor_type"] == "Qwen2VLImageProcessor" and pre["patch_size"] == 14
    assert (folder / "processor" / "video_preprocessor_config.json").is_file() == (cls == "QwenImageEditPlusPipeline")
    encoder = json.loads((folder / "text_encoder" / "config.json").read_text())
    assert encoder["vision_config"]["out_hidden_size"] == encoder["text_config"]["hidden_size"]
    assert len(json.loads((folder / "vae" / "config.json").read_text())["temperal_downsample"]) == 4  # 16x
    processor = load_processor(folder)
    vocab = processor.tokenizer.get_vocab()
    for token in ("<|vision_start|>", "<|image_pad|>", "<|vision_end|>"):
        assert vocab[token] in (encoder["vision_start_token_id"], encoder["image_token_id"],
                                encoder["vision_end_token_id"]), token
    # the processor expands the one image token to the image's merged patches (16 at the tiny pixel cap)
    from PIL import Image

    out = processor(text=["<|vision_start|><|image_pad|><|vision_end|>hi"], images=Image.new("RGB", (1024, 768)),
                    return_tensors="pt")
    assert int((out["input_ids"] == encoder["image_token_id"]).sum()) == int(out["image_grid_thw"].prod()) // 4 > 1


def test_a_missing_processor_is_a_clear_message(tmp_path):
    with pytest.raises(ModelLoadError, match="processor/preprocessor_config.json"):
        load_processor(tmp_path)


# ---------------------------------------------------------------- the edit run
def _diffusers_edit(models_dir, name: str, cls_name: str, req, loras: dict[str, float]) -> np.ndarray:
    """The same edit with diffusers alone: its own pipeline, ``load_lora_weights``, ``set_adapters``."""
    import diffusers
    from PIL import Image

    folder = demo_path(models_dir, name)
    pipe = getattr(diffusers, cls_name).from_pretrained(str(folder), processor=load_processor(folder))
    pipe.set_progress_bar_config(disable=True)
    for i, path in enumerate(loras):
        pipe.load_lora_weights(path.rsplit("/", 1)[0], weight_name=path.rsplit("/", 1)[1], adapter_name=f"l{i}")
    pipe.set_adapters([f"l{i}" for i in range(len(loras))], list(loras.values()))
    with Image.open(req.input_image) as im:
        image = im.convert("RGB")
    out = pipe(prompt=req.prompt, image=image, width=req.width, height=req.height, num_inference_steps=req.steps,
               true_cfg_scale=1.0, guidance_scale=req.guidance_scale, generator=generator_for(req.seed))
    return np.asarray(out.images[0]).astype(np.int16)


def test_an_edit_with_a_stack_equals_diffusers_own_edit_pipeline(engine, files, images, models_dir):
    req = edit_request(images, [files["a"], LoraSpec(path=files["b"].path, weight=0.5)])
    ours = engine.run(req)
    assert ours.metadata["pipeline"] == "QwenImageEditPipeline" and ours.images[0].size == (32, 32)
    expected = _diffusers_edit(models_dir, "qwen-image-edit", "QwenImageEditPipeline", req,
                               {files["a"].path: 1.0, files["b"].path: 0.5})
    assert np.array_equal(pixels(ours), expected)
    base = pixels(engine.run(edit_request(images)))
    assert np.abs(base - expected).max() > 0  # the stack changes the edit
    other = pixels(engine.run(edit_request(images, image="other")))
    assert np.abs(other - base).max() > 0  # and the input image conditions it


def test_edit_strengths_one_zero_equal_a_alone_and_an_unchanged_stack_does_no_lora_work(engine, files, images):
    only_a = engine.run(edit_request(images, [files["a"]]))
    one_zero = engine.run(edit_request(images, [files["a"], LoraSpec(path=files["b"].path, weight=0.0)]))
    assert np.array_equal(pixels(one_zero), pixels(only_a))
    again = engine.run(edit_request(images, [files["a"], LoraSpec(path=files["b"].path, weight=0.0)]))
    assert again.metadata["lora_work"] == {"loads": 0, "deletes": 0, "set_adapters": 0}
    assert np.array_equal(pixels(again), pixels(only_a))
    rows = {m["name"] for m in engine.memory.snapshot()["modules"] if m["role"] == "lora"}
    assert any("Qwen-Image-Edit" in n and "qwen-style-a" in n for n in rows), rows  # a ledger row per loaded LoRA
    assert not any("qwen-style-b" in n for n in rows), rows  # strength 0: never read (issue 31)
    # one Edit pipeline (and one processor) serves every run on the folder
    assert [type(p).__name__ for p in engine.store.loaded_pipelines()].count("QwenImageEditPipeline") == 1


def test_edit_plus_2509_with_a_stack_equals_diffusers_own_pipeline(engine, files, images, models_dir):
    req = edit_request(images, [files["kohya"]], model=EDIT_2509)
    ours = engine.run(req)
    assert ours.metadata["pipeline"] == "QwenImageEditPlusPipeline"
    expected = _diffusers_edit(models_dir, "qwen-image-edit-2509", "QwenImageEditPlusPipeline", req,
                               {files["kohya"].path: 1.0})
    assert np.array_equal(pixels(ours), expected)


def test_an_edit_then_a_refine_stage_keeps_the_edit_as_stage_one(engine, files, images):
    req = edit_request(images, [files["a"]], stage2=True, stage2_loras=(files["b"],), stage2_strength=0.5)
    result = engine.run(req)
    final, first = result.images
    assert result.metadata["pipeline"] == "QwenImageEditPipeline"  # stage 2: QwenImageImg2ImgPipeline, same folder
    assert np.array_equal(np.asarray(first), np.asarray(engine.run(edit_request(images, [files["a"]])).images[0]))
    assert np.abs(np.asarray(final).astype(np.int16) - np.asarray(first)).max() > 0


# ---------------------------------------------------------------- stale caches and memory modes
def _raise_at(step: int):
    def progress(fraction, message):
        if message == f"step {step}/2":
            raise RuntimeError("boom mid-edit")
    return progress


def test_a_stack_change_after_edits_that_completed_or_failed_equals_a_fresh_engine(files, images, models_dir,
                                                                                   tmp_path_factory):
    engine = new_engine(models_dir, tmp_path_factory)
    with_a = edit_request(images, [files["a"]], step_cache=FORCE_SKIP)
    with_b = edit_request(images, [files["b"], files["kohya"]], step_cache=FORCE_SKIP)
    engine.run(with_a)  # completed, its step cache filled
    with pytest.raises(RuntimeError, match="boom"):
        engine.run(dataclasses.replace(with_a, seed=6), progress=_raise_at(1))  # and one that died mid-run
    after = pixels(engine.run(with_b))
    assert np.array_equal(after, fresh(models_dir, tmp_path_factory, with_b))
    uncached = pixels(engine.run(dataclasses.replace(with_b, step_cache=0.0)))
    assert np.abs(uncached - after).max() > 0  # the cache really skipped a step: a stale one would show
    # the input image is part of the result as well: a new image on the same stack is a new edit
    assert np.abs(pixels(engine.run(dataclasses.replace(with_b, input_image=images["other"]))) - after).max() > 0


def test_an_edit_under_block_swap_from_disk_equals_the_resident_edit(files, images, models_dir, tmp_path_factory,
                                                                      engine):
    swap = SwapSettings(mode="block_swap", blocks_resident=1)
    swapped = new_engine(models_dir, tmp_path_factory, offload_device="disk")
    req = edit_request(images, [files["a"], files["kohya"]], swap=swap)
    result = swapped.run(req)
    transformer = next(p for p in swapped.store.loaded_pipelines() if "Edit" in type(p).__name__).transformer
    assert any(p.device.type == "meta" for p in transformer.parameters())  # streamed blocks really wait on disk
    assert np.array_equal(pixels(result), pixels(engine.run(dataclasses.replace(req, swap=SwapSettings()))))
    assert len([m for m in swapped.memory.snapshot()["modules"] if m["role"] == "lora"]) == 2


# ---------------------------------------------------------------- bad input
def test_edit_bad_input_is_a_clear_message(engine, files, images):
    with pytest.raises(InputError) as err:
        engine.run(edit_request(images, [files["a"]], image=None))
    assert err.value.field == "input_image" and "give it an input image" in err.value.message
    with pytest.raises(InputError) as err:
        engine.run(edit_request(images, [files["a"]], model=ModelRef(repo_id="Qwen/Qwen-Image")))
    assert err.value.field == "input_image" and "not an edit model" in err.value.message
    assert "Qwen-Image-Edit" in err.value.message
    with pytest.raises(InputError, match="input_image"):
        edit_request(images, image=None, input_image="/no/such.png").validate()
    with pytest.raises(InputError, match="multiple of 32") as err:  # the tiny VAE's 16x grid (the real one: 16 px)
        engine.run(edit_request(images, [files["a"]], width=48))
    assert err.value.field == "width"
    with pytest.raises(InputError, match="edit model") as err:  # Text to image on an Edit model
        engine.run(T2I(model=EDIT, prompt="a kite", width=32, height=32, steps=1))
    assert err.value.field == "model"
    assert engine.run(edit_request(images, [files["a"]])).images  # the engine keeps working
    assert any("input image's latents" in n for n in engine.plan(edit_request(images)).notes)
