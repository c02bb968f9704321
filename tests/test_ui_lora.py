"""The LoRA stack tab: the editor's pure edits, request building, and the tab through the app's HTTP API."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from engine import InputError, LoraSpec, ModelRef, request_from_dict
from engine.demo import QWEN_LORA_FILES, QWEN_LORA_LAYOUT_FILES, demo_root
from ui.tabs import lora_stack as tab
from ui.tabs import lora_stack_editor as editor


@pytest.fixture(scope="module")
def paths(models_dir):
    root = demo_root(models_dir)
    return {"a": str(root / QWEN_LORA_FILES[0]), "b": str(root / QWEN_LORA_FILES[1]),
            "kohya": str(root / QWEN_LORA_LAYOUT_FILES["kohya"])}


def entry(path, **kw):
    return {**LoraSpec(path=path, **kw).to_dict(), "info": {"file": Path(path).name, "hash": Path(path).stem}}


def test_editor_edits_are_pure_and_keep_order(paths):
    stack = [entry(paths["a"]), entry(paths["b"], weight=0.5)]
    assert [e["path"] for e in editor.move(stack, 1, -1)] == [paths["b"], paths["a"]]
    assert editor.move(stack, 0, -1) == stack  # nothing above the first
    assert editor.update(stack, 1, enabled=False)[1]["enabled"] is False and stack[1]["enabled"] is True
    assert [e["path"] for e in editor.remove(stack, 0)] == [paths["b"]]
    assert editor.specs(stack) == (LoraSpec(path=paths["a"]), LoraSpec(path=paths["b"], weight=0.5))
    with pytest.raises(InputError, match="already in the stack"):
        editor.add(stack, LoraSpec(path=paths["a"]), {"hash": "x"})
    with pytest.raises(InputError, match="strength must be between"):
        editor._weight(stack, 0, 3.0)


def test_add_inspects_the_file_against_the_model(served, paths):
    engine, _ = served
    stack = editor.add_source(engine, [], ModelRef(repo_id="Qwen/Qwen-Image"), path=paths["kohya"])
    info = stack[0]["info"]
    assert info["layout"] == "kohya" and info["rank"] == "4" and info["hits"] == "8 of 34"
    text = editor.entry_text(stack[0])
    assert "rank 4" in text and "hits 8 of 34" in text and "img_mod.1" in text
    with pytest.raises(InputError, match="already in the stack"):
        editor.add_source(engine, stack, ModelRef(repo_id="Qwen/Qwen-Image"), path=paths["kohya"])
    with pytest.raises(InputError, match="not found"):
        editor.add_source(engine, stack, ModelRef(repo_id="Qwen/Qwen-Image"), path="/nope.safetensors")
    choices = dict(editor.folder_choices(engine))
    assert "qwen-kohya.safetensors (demo)" in choices


def test_upload_is_copied_into_the_app_lora_folder_once(served, paths, tmp_path):
    engine, _ = served
    first = editor.spec_from_source(engine, upload=paths["b"])
    again = editor.spec_from_source(engine, upload=paths["b"])
    assert first.path == again.path and Path(first.path).parent == Path(engine.models_dir) / "loras"


def _args(stack, **kw):
    values = {"model": "Qwen/Qwen-Image", "stack": stack, "prompt": "a kite", "negative": "", "width": 32,
              "height": 32, "steps": 2, "guidance": 1.0, "true_cfg": 1.0, "seed": 3, "step_cache": 0.0,
              "backend": "diffusers", "nunchaku_file": "", "input_image": None, "stage2": False, "stage2_stack": [],
              "stage2_strength": 0.5, "stage2_steps": 0, "stage2_upscale": 1.0}
    swap = {"mode": "none", "max_vram_gb": 0.0, "blocks_resident": 0, "block_size_mb": 100, "prefetch": 1,
            "use_streams": True, "trace": False}
    swap.update({k: kw.pop(k) for k in list(kw) if k in swap})
    values.update(kw)
    return list(values.values()) + list(swap.values())


def test_build_request_round_trips_and_names_fields(paths):
    from ui.memory_mode import swap_settings

    stack = [entry(paths["a"]), entry(paths["b"], weight=-0.5, enabled=False)]
    args = _args(stack, stage2=True, stage2_stack=[entry(paths["kohya"])], stage2_upscale=2.0, mode="block_swap",
                 blocks_resident=1.0)
    req = tab.build_request(*args[:-7], swap_settings(*args[-7:]))
    assert req.swap.mode == "block_swap" and req.swap.blocks_resident == 1
    assert req.loras[1] == LoraSpec(path=paths["b"], weight=-0.5, enabled=False)
    assert req.stage2_loras == (LoraSpec(path=paths["kohya"]),)
    assert request_from_dict(json.loads(json.dumps(req.to_dict()))) == req
    with pytest.raises(InputError) as err:
        tab.build_request(*_args([entry(paths["a"], weight=5.0)])[:-7])
    assert err.value.field == "loras[0].weight" and tab.LABELS["loras"] == "LoRA stack"


def test_api_run_twice_second_does_no_lora_work_and_bad_input_is_a_message(client, paths):
    from gradio_client.exceptions import AppError

    stack = [entry(paths["a"]), entry(paths["kohya"], weight=0.5)]
    gallery, info, _, status, *_ = client.predict(*_args(stack), api_name="/lora_stack")
    assert Path(gallery[0]["image"]).is_file() and status.startswith("Done")
    _, _, _, status, plan, _ = client.predict(*_args(stack, mode="block_swap", blocks_resident=1), api_name="/lora_stack")
    assert "LoRA work: none (stack unchanged)" in status and "Measured" in plan and "block_swap" in plan
    _, _, _, status, *_ = client.predict(*_args(editor.update(stack, 1, weight=0.8)), api_name="/lora_stack")
    assert "0 load(s), 1 set_adapters" in status
    with pytest.raises(AppError, match="LoRA stack"):
        client.predict(*_args(stack + [entry(paths["a"])]), api_name="/lora_stack")
    _, _, _, status, *_ = client.predict(*_args(stack), api_name="/lora_stack")  # the server keeps working
    assert status.startswith("Done")


def test_api_edit_run_on_qwen_image_edit_and_its_bad_input(client, paths, tmp_path):
    from gradio_client import handle_file
    from gradio_client.exceptions import AppError
    from PIL import Image

    image = tmp_path / "in.png"
    Image.new("RGB", (64, 48), (200, 120, 40)).save(image)
    stack = [entry(paths["a"]), entry(paths["kohya"], weight=0.5)]
    edit = {"model": "Qwen/Qwen-Image-Edit", "input_image": handle_file(str(image))}
    gallery, info, _, status, *_ = client.predict(*_args(stack, **edit), api_name="/lora_stack")
    assert Path(gallery[0]["image"]).is_file() and status.startswith("Done") and "1 set_adapters" in status
    with pytest.raises(AppError, match="Input image: .*give it an input image"):
        client.predict(*_args(stack, model="Qwen/Qwen-Image-Edit"), api_name="/lora_stack")
    with pytest.raises(AppError, match="Input image: .*not an edit model"):
        client.predict(*_args(stack, input_image=handle_file(str(image))), api_name="/lora_stack")
    assert tab.is_edit_model("Qwen/Qwen-Image-Edit-2509") and not tab.is_edit_model("Qwen/Qwen-Image")
    assert set(tab.DEMO_MODELS) <= set(tab.MODELS)


def test_result_text_shows_lora_work_and_unknown_key_warnings():
    class R:
        files = ["/x/a.png"]
        timings = {"total": 1.0, "load": 0.5, "lora": 0.1, "denoise_decode": 0.4}
        metadata = {"lora_work": {"loads": 0, "deletes": 0, "set_adapters": 0}, "fingerprint": "abc",
                    "warnings": ["x.safetensors: 2 key(s) not applied, e.g. foo"]}

    text = tab.format_result(R())
    assert "LoRA 0.10 s" in text and "none (stack unchanged)" in text and "2 key(s) not applied" in text


# ---------------------------------------------------------------- the plan line counts the stacks
def _plan_event(app, elem_id: str):
    """The event that writes the tab's plan line (its only output) as its inputs change."""
    return next(fn for fn in app.fns.values() if fn.inputs and len(fn.outputs) == 1
                and getattr(fn.outputs[0], "elem_id", None) == elem_id)


@pytest.fixture(scope="module")
def page(served):
    from ui import build_app

    return build_app(served[0])


def test_the_plan_line_counts_the_lora_stack_of_text_to_image(served, page, models_dir):
    import dataclasses

    from engine.demo import FLUX_LORA_FILES
    from ui.memory_mode import plan_text
    from ui.tabs import text_to_image as t2i

    event = _plan_event(page, "t2i-plan")
    assert getattr(event.inputs[-1], "elem_id", None) == "t2i-lora-stack"
    values = [i.value for i in event.inputs[:-1]]
    values[4] = "block_swap"
    lora = LoraSpec(path=str(demo_root(models_dir) / FLUX_LORA_FILES["diffusers"][0]))
    without, with_stack = event.fn(*values, []), event.fn(*values, [lora.to_dict()])
    assert with_stack != without and "waiting" not in with_stack
    expected = plan_text(served[0], lambda: dataclasses.replace(t2i.plan_request(*values), loras=(lora,)))
    assert with_stack == expected


def test_the_i2v_plan_line_counts_each_expert_stack_and_apply_to_both(page, models_dir):
    from engine.demo import WAN_LORA_FILES

    event = _plan_event(page, "i2v-plan")
    assert [getattr(i, "elem_id", None) for i in event.inputs[-3:]] == [
        "i2v-lora-stack", "i2v-lora2-stack", "i2v-lora-both"]
    values = [i.value for i in event.inputs[:-3]]
    values[4] = "block_swap"
    high = LoraSpec(path=str(demo_root(models_dir) / WAN_LORA_FILES["lightx2v_high"])).to_dict()
    alone = event.fn(*values, [high], [], False)
    both = event.fn(*values, [high], [], True)
    assert both != alone and "waiting" not in both
    assert both == event.fn(*values, [high], [high], False)  # "apply to both" is the same stack on each expert
