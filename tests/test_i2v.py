"""Image to video on the tiny Wan 2.2 models: expert routing, one expert on the device at a time, every memory mode
equal to ``none``, TurboWan conversion and rCM sampling, video files, cancel and cache resets, bad input."""

from __future__ import annotations

import dataclasses
import json
import math
import subprocess
import threading
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from engine import Engine, I2VRequest, InputError, ModelRef, SwapSettings
from engine.errors import Cancelled, ModelLoadError
from engine.memory.block_stream import find_blocks
from engine.requests import SWAP_MODES, TurboWanSettings
from engine.video.encode import read_video
from engine.video.rcm import net_timestep, rcm_timesteps

TI2V = ModelRef(repo_id="Wan-AI/Wan2.2-TI2V-5B-Diffusers")
A14B = ModelRef(repo_id="Wan-AI/Wan2.2-I2V-A14B-Diffusers")


@pytest.fixture(scope="module")
def start_image(tmp_path_factory):
    path = tmp_path_factory.mktemp("i2v-in") / "start.png"
    rng = np.random.default_rng(0)
    Image.fromarray(rng.integers(0, 255, (40, 56, 3), dtype=np.uint8)).save(path)
    return str(path)


@pytest.fixture(scope="module")
def engine(models_dir, tmp_path_factory):
    return Engine(device="cpu", models_dir=models_dir, demo=True, outputs_dir=tmp_path_factory.mktemp("i2v-out"))


@pytest.fixture(scope="module")
def disk_engine(models_dir, tmp_path_factory):
    return Engine(device="cpu", models_dir=models_dir, demo=True, offload_device="disk",
                  outputs_dir=tmp_path_factory.mktemp("i2v-disk"))


def i2v(image: str, **kw) -> I2VRequest:
    fields = dict(image=image, prompt="waves roll in", resolution="custom", width=32, height=32, num_frames=5,
                  steps=4, guidance_scale=3.0, guidance_scale_2=2.0, seed=5, swap=SwapSettings(), preview_every=0)
    return I2VRequest(**{**fields, **kw})


def last_frame(result) -> np.ndarray:
    png = next(f for f in result.files if f.endswith("-last-frame.png"))
    return np.asarray(Image.open(png)).astype(int)


def count_calls(pipe):
    """Forward pre-hooks that log (expert, timestep) for every call of either expert."""
    calls: list[tuple[str, float]] = []

    def hook(attr):
        def pre(module, args, kwargs):
            calls.append((attr, float(kwargs["timestep"].max())))
        return pre

    handles = [getattr(pipe, a).register_forward_pre_hook(hook(a), with_kwargs=True)
               for a in ("transformer", "transformer_2") if getattr(pipe, a) is not None]
    return calls, handles


# ---------------------------------------------------------------- Wan 2.2 A14B and TI2V
@pytest.mark.parametrize(("boundary", "high_steps"), [(0.9, 2), (0.6, 3), (0.3, 4)])
def test_expert_routing_follows_the_boundary(engine, start_image, boundary, high_steps):
    # 4 UniPC steps with flow shift 3 run at t = 999, 900, 750, 500
    pipe = engine.store.load_pipeline(A14B, "WanImageToVideoPipeline")
    calls, handles = count_calls(pipe)
    try:
        result = engine.run(i2v(start_image, boundary_ratio=boundary))
    finally:
        for h in handles:
            h.remove()
    timesteps = [t for i, (_, t) in enumerate(calls) if i % 2 == 0]  # CFG: cond + uncond per step
    assert len(calls) == 2 * 4 and len(set(timesteps)) == 4
    for step, t in enumerate(timesteps):
        expected = "transformer" if t >= boundary * 1000 else "transformer_2"
        assert [a for a, tt in calls if tt == t] == [expected, expected], (step, t, calls)
    assert sum(1 for a, _ in calls if a == "transformer") // 2 == high_steps
    assert result.video_path.endswith(".mp4")
    assert f"{boundary:g}" in result.metadata["experts"]


def test_high_noise_expert_has_left_before_the_low_noise_one_arrives(disk_engine, start_image):
    pipe = disk_engine.store.load_pipeline(A14B, "WanImageToVideoPipeline")
    names = {a: disk_engine.store._names[id(getattr(pipe, a))] for a in ("transformer", "transformer_2", "text_encoder", "vae")}
    seen = []

    def at_switch(module, args, kwargs=None):
        ledger = {a: disk_engine.memory.compute_bytes(disk_engine.memory.entry(n)) for a, n in names.items()}
        seen.append(ledger)

    handle = find_blocks(pipe.transformer_2)[0][1].register_forward_pre_hook(at_switch)
    try:
        for mode in ("model_offload", "block_swap", "chunkwise"):
            seen.clear()
            disk_engine.run(i2v(start_image, swap=SwapSettings(mode=mode, blocks_resident=1, block_size_mb=10)))
            assert seen, mode
            for ledger in seen:  # at the switch and at every low-noise step
                assert ledger["transformer"] == 0, (mode, ledger)
                assert ledger["text_encoder"] == 0 and ledger["vae"] == 0, (mode, ledger)
                assert ledger["transformer_2"] > 0
    finally:
        handle.remove()


def test_every_memory_mode_gives_the_frames_of_none(disk_engine, start_image):
    base = last_frame(disk_engine.run(i2v(start_image)))
    for mode in SWAP_MODES:
        swap = SwapSettings(mode=mode, blocks_resident=1, block_size_mb=10)
        result = disk_engine.run(i2v(start_image, swap=swap))
        assert np.abs(last_frame(result) - base).max() <= 1, mode
        assert result.metadata["memory"]["mode"] == mode


def test_ti2v_5b_runs_with_one_transformer_and_wants_multiples_of_32(engine, start_image):
    result = engine.run(i2v(start_image, model=TI2V, width=64, height=32))
    assert result.metadata["experts"].startswith("one transformer")
    frames, meta = read_video(result.video_path)
    assert frames.shape == (5, 32, 64, 3)
    with pytest.raises(InputError) as err:
        engine.run(i2v(start_image, model=TI2V, width=48, height=32))
    assert err.value.field == "width" and "multiple of 32" in err.value.message


# ---------------------------------------------------------------- video out
@pytest.mark.parametrize("fmt", ["mp4", "webm", "gif"])
def test_video_formats_decode_with_the_right_frames_and_size(engine, start_image, fmt):
    req = i2v(start_image, output_format=fmt, num_frames=9, width=48, height=32, steps=2, fps=12, loop=False)
    result = engine.run(req)
    frames, meta = read_video(result.video_path)
    assert frames.shape == (9, 32, 48, 3)
    assert round(meta["fps"]) == 12
    saved = json.loads(next(f for f in result.files if f.endswith(".json")) and
                       open(next(f for f in result.files if f.endswith(".json"))).read())
    # the start image was copied into the outputs (the upload cache is cleaned): the saved request names the copy
    kept = dataclasses.replace(req, image=saved["image"])
    assert Path(saved["image"]).parent.name == "start-images" and I2VRequest.from_dict(saved) == kept
    with Image.open(next(f for f in result.files if f.endswith("-last-frame.png"))) as im:
        assert im.size == (48, 32) and json.loads(im.text["request"]) == kept.to_dict()
    import imageio_ffmpeg

    probe = subprocess.run([imageio_ffmpeg.get_ffmpeg_exe(), "-hide_banner", "-i", result.video_path],
                           capture_output=True, text=True).stderr
    if fmt == "mp4":
        assert "h264" in probe and "yuv420p" in probe
    if fmt in ("mp4", "webm"):
        assert '"kind": "i2v"' in probe  # the request JSON in the container's comment
    if fmt == "gif":
        with Image.open(result.video_path) as im:
            assert "loop" not in im.info  # play once
        looped = engine.run(i2v(start_image, output_format="gif", steps=1, loop=True))
        with Image.open(looped.video_path) as im:
            assert im.info.get("loop") == 0  # forever


# ---------------------------------------------------------------- TurboWan and rCM
def test_rcm_timesteps_are_upstreams_formula():
    for n in (1, 2, 3, 4):
        trig = [math.atan(200.0), 1.5, 1.4, 1.0][:n] + [0.0]
        expected = [math.sin(t) / (math.cos(t) + math.sin(t)) for t in trig]
        assert rcm_timesteps(n, 200.0).tolist() == pytest.approx(expected, abs=1e-12)
    # the reference notes' values for 4 steps: 2 high-noise steps, then 2 low at boundary 0.9
    assert rcm_timesteps(4).tolist()[:4] == pytest.approx([0.995, 0.934, 0.853, 0.609], abs=1e-3)
    with pytest.raises(ValueError):
        rcm_timesteps(5)


def test_the_net_gets_the_time_as_upstream_feeds_it_on_cuda():
    """``(t.float() * 1000).to(bfloat16)``: upstream's tensors are bf16, so the 4-step times reach the experts as
    these exact values (the float32 times would be 995.02, 934.16, 852.66, 609.00)."""
    assert [net_timestep(t) for t in rcm_timesteps(4).tolist()[:4]] == [996.0, 932.0, 852.0, 608.0]
    assert [net_timestep(t) for t in rcm_timesteps(2).tolist()[:2]] == [996.0, 932.0]
    assert net_timestep(0.0) == 0.0
    assert net_timestep(rcm_timesteps(1, 1600.0).tolist()[0]) == 1000.0  # sigma_max 1600 (upstream README): t 0.99938


def test_turbowan_checkpoints_convert_to_the_diffusers_experts(models_dir):
    from engine.demo import demo_path
    from engine.video.turbowan import load_expert, read_checkpoint

    folder = demo_path(models_dir, "turbowan22-i2v")
    wan = demo_path(models_dir, "wan22-i2v")
    raw = read_checkpoint(folder / "TurboWan2.2-I2V-A14B-high-720P.pth")
    assert "blocks.0.self_attn.q.weight" in raw and "head.modulation" in raw  # upstream's names, not diffusers'
    assert raw["blocks.1.self_attn.attn_op.local_attn.proj_l.weight"].shape == (12, 12)  # SLA's branch, head_dim'
    assert raw["patch_embedding.weight"].dim() == 2  # upstream's patch embedding is a Linear
    quant = read_checkpoint(folder / "TurboWan2.2-I2V-A14B-high-720P-quant.pth")
    assert quant["blocks.0.ffn.0.int8_weight"].dtype == torch.int8 and quant["blocks.0.ffn.0.scale"].shape == (1, 1)
    config = json.loads((wan / "transformer" / "config.json").read_text())
    from diffusers import WanTransformer3DModel

    for sub, name in (("transformer", "high"), ("transformer_2", "low")):
        reference = WanTransformer3DModel.from_pretrained(wan, subfolder=sub).state_dict()
        plain, notes = load_expert(folder / f"TurboWan2.2-I2V-A14B-{name}-720P.pth", config, torch.float32)
        assert not notes
        for key, value in reference.items():
            assert torch.equal(plain.state_dict()[key], value), key
        from engine.video.sla import SLAProcessor

        for i, block in enumerate(plain.blocks):
            file_key = f"blocks.{i}.self_attn.attn_op.local_attn.proj_l.weight"
            other = read_checkpoint(folder / f"TurboWan2.2-I2V-A14B-{name}-720P.pth")
            assert torch.equal(block.attn1.proj_l.weight, other[file_key])
            assert isinstance(block.attn1.processor, SLAProcessor) and block.attn1.processor.topk == 0.1
            assert not isinstance(block.attn2.processor, SLAProcessor)  # cross-attention stays full (upstream too)
        q, notes = load_expert(folder / f"TurboWan2.2-I2V-A14B-{name}-720P-quant.pth", config, torch.float32)
        assert "dequantised" in notes[0]
        assert torch.equal(q.blocks[0].attn1.proj_l.weight, plain.blocks[0].attn1.proj_l.weight)  # never int8
        for key, value in reference.items():
            # int8 with scale = amax / 128 per 128x128 block (upstream's): rounding costs half a step, and the
            # block's largest value saturates at 127, one step
            err = (q.state_dict()[key] - value).abs().max().item()
            assert err <= value.abs().max().item() / 128 + 1e-7, key
            assert err > 0 or value.dim() != 2 or not key.startswith("blocks."), key  # block Linears went int8


@pytest.mark.parametrize("steps", [1, 2, 3, 4])
def test_turbowan_samples_in_1_to_4_steps_and_switches_on_t(engine, start_image, steps):
    req = i2v(start_image, steps=steps, turbo=TurboWanSettings(enabled=True, quantized=steps % 2 == 0))
    first = engine.run(req)
    pipe = next(p for k, p in engine.store._pipelines.items() if k[0] == "turbowan")
    calls, handles = count_calls(pipe)
    try:
        again = engine.run(req)
    finally:
        for h in handles:
            h.remove()
    ts = rcm_timesteps(steps).tolist()[:-1]
    assert [a for a, _ in calls] == ["transformer" if t >= 0.9 else "transformer_2" for t in ts]  # no CFG: 1 call
    assert [t for _, t in calls] == [net_timestep(t) for t in ts]  # t x 1000 rounded to bf16, as upstream
    assert np.array_equal(last_frame(first), last_frame(again))
    assert first.metadata["pipeline"] == "TurboWanI2VPipeline"


def test_turbowan_ode_differs_from_sde(engine, start_image):
    sde = last_frame(engine.run(i2v(start_image, steps=2, turbo=TurboWanSettings(enabled=True))))
    ode = last_frame(engine.run(i2v(start_image, steps=2, turbo=TurboWanSettings(enabled=True, ode=True))))
    assert np.abs(sde - ode).max() > 0


def test_turbowan_runs_sla_by_default_and_original_only_with_a_warning(engine, start_image, models_dir, tmp_path):
    """The demo experts carry proj_l as the released ones do. "sla" (default) runs it; "original" drops it with a
    warning saying so (and gives another video); a file without proj_l is refused for "sla" (upstream's strict
    load fails there too) and runs as "original"."""
    from engine.demo import demo_path
    from engine.video.sla import SLAProcessor

    # 5 frames at 128 px: 2 latent frames of 8 x 8 tokens = 128 tokens, 2 key blocks of 64, 1 query block of
    # 128: sla_topk 0.1 keeps 1 key block (real sparsity), 1.0 keeps both
    big = dict(width=128, height=128, num_frames=5, steps=2)
    result = engine.run(i2v(start_image, **big, turbo=TurboWanSettings(enabled=True)))
    pipe = next(p for k, p in engine.store._pipelines.items() if k[0] == "turbowan" and k[4] == "sla")
    calls = []
    handles = [b.attn1.register_forward_hook(lambda m, a, o: calls.append(type(m.processor).__name__))
               for expert in (pipe.transformer, pipe.transformer_2) for b in expert.blocks]
    try:
        sla_frame = last_frame(engine.run(i2v(start_image, **big, turbo=TurboWanSettings(enabled=True))))
    finally:
        for h in handles:
            h.remove()
    assert calls and set(calls) == {SLAProcessor.__name__}
    assert not any("SLA" in w or "original" in w for w in result.metadata.get("warnings", []))
    dense = last_frame(engine.run(i2v(start_image, **big, turbo=TurboWanSettings(enabled=True, sla_topk=1.0))))
    assert np.abs(dense - sla_frame).max() > 0  # the block selection matters at this size
    original = engine.run(i2v(start_image, **big, turbo=TurboWanSettings(enabled=True, attention_type="original")))
    assert any("proj_l" in w and "full softmax attention" in w for w in original.metadata["warnings"])
    assert np.abs(last_frame(original) - sla_frame).max() > 0

    folder = demo_path(models_dir, "turbowan22-i2v")
    paths = []
    for name in ("high", "low"):
        state = torch.load(folder / f"TurboWan2.2-I2V-A14B-{name}-720P-quant.pth", weights_only=True)
        state = {f"net.{k}": v for k, v in state.items() if "proj_l" not in k}  # a non-SLA training checkpoint
        torch.save(state, tmp_path / f"{name}.pth")
        paths.append(str(tmp_path / f"{name}.pth"))
    plain = TurboWanSettings(enabled=True, high_path=paths[0], low_path=paths[1])
    with pytest.raises(InputError) as err:
        engine.run(i2v(start_image, **big, turbo=plain))
    assert err.value.field == "turbo.attention_type" and "no SLA weights" in str(err.value)
    no_sla = engine.run(i2v(start_image, **big, turbo=TurboWanSettings(
        enabled=True, high_path=paths[0], low_path=paths[1], attention_type="original")))
    assert not any("proj_l" in w for w in no_sla.metadata.get("warnings", []))  # nothing was dropped
    assert np.array_equal(last_frame(no_sla), last_frame(original))  # same weights, same attention, same video


def test_turbowan_under_every_memory_mode_gives_the_frames_of_none(disk_engine, start_image):
    turbo = TurboWanSettings(enabled=True)
    base = last_frame(disk_engine.run(i2v(start_image, turbo=turbo)))
    for mode in SWAP_MODES:
        swap = SwapSettings(mode=mode, blocks_resident=1, block_size_mb=10)
        result = disk_engine.run(i2v(start_image, turbo=turbo, swap=swap))
        assert np.abs(last_frame(result) - base).max() <= 1, mode
        if mode not in ("none", "cpu_only"):
            assert result.metadata["memory"]["bytes_moved"] > 0, mode  # the TurboWan experts are in the ledger


class NotATensor:
    pass


def test_bad_turbowan_files_are_refused_with_words(engine, start_image, tmp_path):
    odd = tmp_path / "odd.pth"
    torch.save({"blocks.0.self_attn.q.weight": torch.zeros(2, 2), "mystery.layer.weight": torch.zeros(1),
                "vision_tower.x.bias": torch.zeros(1)}, odd)
    turbo = TurboWanSettings(enabled=True, high_path=str(odd), low_path=str(odd))
    with pytest.raises(ModelLoadError) as err:
        engine.run(i2v(start_image, steps=2, turbo=turbo))
    assert "match no known" in str(err.value) and "mystery.layer.weight" in str(err.value)
    unsafe = tmp_path / "unsafe.pth"
    torch.save({"w": torch.zeros(1), "obj": NotATensor()}, unsafe)
    turbo = TurboWanSettings(enabled=True, high_path=str(unsafe), low_path=str(unsafe))
    with pytest.raises(ModelLoadError, match="unsafe unpickling"):
        engine.run(i2v(start_image, steps=2, turbo=turbo))
    with pytest.raises(InputError) as err:
        i2v(start_image, steps=6, turbo=TurboWanSettings(enabled=True)).validate()
    assert err.value.field == "steps"
    with pytest.raises(InputError) as err:
        i2v(start_image, turbo=TurboWanSettings(enabled=True, high_path=str(odd))).validate()
    assert err.value.field == "turbo.low_path"


# ---------------------------------------------------------------- cancel, caches, preview
def test_cancel_then_rerun_equals_a_fresh_engine(models_dir, start_image, tmp_path):
    engine = Engine(device="cpu", models_dir=models_dir, demo=True, outputs_dir=tmp_path / "a")
    cancel = threading.Event()

    def progress(fraction, message):
        if message.startswith("step 2/"):
            cancel.set()

    with pytest.raises(Cancelled):
        engine.run(i2v(start_image, step_cache="first_block", cache_threshold=1e9), progress, cancel)
    again = last_frame(engine.run(i2v(start_image, step_cache="first_block", cache_threshold=1e9)))
    fresh = Engine(device="cpu", models_dir=models_dir, demo=True, outputs_dir=tmp_path / "b")
    assert np.array_equal(again, last_frame(fresh.run(i2v(start_image, step_cache="first_block",
                                                           cache_threshold=1e9))))


def test_the_step_cache_is_reset_after_an_exception_mid_run(models_dir, start_image, tmp_path):
    engine = Engine(device="cpu", models_dir=models_dir, demo=True, outputs_dir=tmp_path / "a")
    req = i2v(start_image, step_cache="first_block", cache_threshold=1e9)  # forced skipping after step 1

    def boom(fraction, message):
        if message.startswith("step 3/"):
            raise RuntimeError("the disk is full")

    with pytest.raises(RuntimeError):
        engine.run(req, boom)
    pipe = engine.store.load_pipeline(A14B, "WanImageToVideoPipeline")
    assert pipe.transformer.is_cache_enabled and pipe.transformer_2.is_cache_enabled  # on both experts
    after = last_frame(engine.run(req))
    fresh = Engine(device="cpu", models_dir=models_dir, demo=True, outputs_dir=tmp_path / "b")
    assert np.array_equal(after, last_frame(fresh.run(req)))
    plain = last_frame(engine.run(i2v(start_image)))  # and "none" really removes it
    assert not pipe.transformer.is_cache_enabled
    assert np.abs(plain - after).max() > 0  # forced skipping changed the frames


@pytest.fixture
def mag_dir(monkeypatch, models_dir):
    """MagCache calibrations of this test only (the demo models folder is shared by the session)."""
    import shutil
    import uuid

    from engine.speed import mag_cache

    name = f"mag-cache-test-{uuid.uuid4().hex[:8]}"
    monkeypatch.setattr(mag_cache, "DIRNAME", name)
    yield models_dir / name
    shutil.rmtree(models_dir / name, ignore_errors=True)


def ffn_calls(pipe):
    """Calls of each expert's second block's feed-forward: a step MagCache skips never reaches it."""
    calls = {"transformer": 0, "transformer_2": 0}

    def counter(attr):
        def pre(module, args):
            calls[attr] += 1
        return pre

    handles = [getattr(pipe, a).blocks[1].ffn.register_forward_pre_hook(counter(a)) for a in calls]
    return calls, handles


def test_mag_cache_calibrates_once_then_skips_steps(engine, start_image, mag_dir):
    from engine.speed.mag_cache import expert_steps

    pipe = engine.store.load_pipeline(A14B, "WanImageToVideoPipeline")
    plain = last_frame(engine.run(i2v(start_image, steps=10)))
    req = i2v(start_image, steps=10, step_cache="mag_cache", cache_threshold=0.5)
    calls, handles = ffn_calls(pipe)
    try:
        first = engine.run(req)  # calibration: skips nothing
        calibrated = dict(calls)
        saved = json.loads(next(mag_dir.glob("*.json")).read_text())
        counts = expert_steps(pipe, 10, req.boundary_ratio)
        assert {k: len(v) for k, v in saved["ratios"].items()} == counts == {"transformer": 3, "transformer_2": 7}
        assert calibrated == {k: 2 * n for k, n in counts.items()}  # cond + uncond per step
        assert np.array_equal(last_frame(first), plain)
        assert "calibrated" in " ".join(first.metadata["warnings"])
        for key in calls:
            calls[key] = 0
        second = engine.run(req)
        assert second.metadata["step_cache"] == ["WanTransformer3DModel"] * 2
        assert sum(calls.values()) < sum(calibrated.values())  # steps were skipped, on the low-noise expert too
        assert calls["transformer_2"] < calibrated["transformer_2"]
        swapped = engine.run(i2v(start_image, steps=10, step_cache="mag_cache", cache_threshold=0.5,
                                 swap=SwapSettings(mode="block_swap", blocks_resident=1)))
        assert np.array_equal(last_frame(swapped), last_frame(second))  # the cache and the memory mode agree
        cancel = threading.Event()

        def stop(fraction, message):
            if message.startswith("step 5/"):
                cancel.set()

        with pytest.raises(Cancelled):  # cancelled mid-run (its skip state half-way): the next run is not stale
            engine.run(req, stop, cancel)
        assert np.array_equal(last_frame(engine.run(req)), last_frame(second))
    finally:
        for h in handles:
            h.remove()
    engine.run(i2v(start_image, steps=10))
    assert not pipe.transformer.is_cache_enabled and not pipe.transformer_2.is_cache_enabled


def test_a_cancelled_mag_cache_calibration_saves_nothing(engine, start_image, mag_dir):
    from diffusers.hooks import HookRegistry

    cancel = threading.Event()

    def progress(fraction, message):
        if message.startswith("step 2/"):
            cancel.set()

    with pytest.raises(Cancelled):
        engine.run(i2v(start_image, steps=10, step_cache="mag_cache"), progress, cancel)
    assert not list(mag_dir.glob("*.json"))
    pipe = engine.store.load_pipeline(A14B, "WanImageToVideoPipeline")
    for block in (pipe.transformer.blocks[0], pipe.transformer.blocks[-1]):  # the recording hooks are gone
        assert not any(name.startswith("studio_mag") for name in HookRegistry.check_if_exists_or_initialize(block).hooks)
    with pytest.raises(InputError, match="TurboWan"):
        i2v(start_image, steps=2, step_cache="mag_cache", turbo=TurboWanSettings(enabled=True)).validate()


def test_live_preview_arrives_every_n_steps(engine, start_image):
    got = []

    class Progress:
        def __call__(self, fraction, message):
            pass

        def preview(self, image, step):
            got.append((step, image.size))

    engine.run(i2v(start_image, steps=4, preview_every=2), Progress())
    assert [s for s, _ in got] == [1, 3]
    assert all(w > 0 and h > 0 for _, (w, h) in got)
    got.clear()
    engine.run(i2v(start_image, steps=2, preview_every=1, turbo=TurboWanSettings(enabled=True)), Progress())
    assert [s for s, _ in got] == [0, 1]


# ---------------------------------------------------------------- bad input
def test_bad_input_gets_a_message_naming_the_field(engine, start_image, tmp_path):
    def field_of(**kw):
        with pytest.raises(InputError) as err:
            engine.run(i2v(kw.pop("image", start_image), **kw))
        return err.value

    assert field_of(image="").field == "image"
    (tmp_path / "broken.png").write_bytes(b"not an image")
    assert field_of(image=str(tmp_path / "broken.png")).field == "image"
    err = field_of(num_frames=50)
    assert err.field == "num_frames" and "49" in err.message and "53" in err.message
    assert field_of(width=40).field == "width"
    assert field_of(boundary_ratio=1.0).field == "boundary_ratio"
    assert field_of(boundary_ratio=0.0).field == "boundary_ratio"
    assert field_of(resolution="480p", width=32).field == "resolution"
    huge = tmp_path / "huge.png"
    Image.new("1", (9000, 8000)).save(huge)
    err = field_of(image=str(huge))
    assert err.field == "image" and "MP" in err.message
    err = field_of(swap=SwapSettings(mode="adaptive", max_vram_gb=0.000001))
    assert err.field == "swap.max_vram_gb" and "needs about" in err.message


def test_cmyk_and_16_bit_start_images_are_converted_and_said(engine, tmp_path):
    cmyk = tmp_path / "cmyk.jpg"
    Image.new("CMYK", (40, 40), (0, 200, 200, 0)).save(cmyk)
    deep = tmp_path / "deep.png"
    Image.fromarray(np.full((40, 40), 40000, dtype=np.uint16)).save(deep)
    for path, words in ((cmyk, "CMYK"), (deep, "8 bits")):
        result = engine.run(i2v(str(path), steps=1))
        assert any(words in w for w in result.metadata["warnings"]), result.metadata


def test_the_start_image_is_cropped_to_the_video_size():
    import tempfile

    from engine.video.start_image import load_start_image

    with tempfile.TemporaryDirectory() as d:
        path = f"{d}/wide.png"
        arr = np.zeros((20, 60, 3), dtype=np.uint8)
        arr[:, :14] = (255, 0, 0)  # red left edge, cut away by a centre crop to a square
        Image.fromarray(arr).save(path)
        crop, _ = load_start_image(path, 32, 32, "crop")
        pad, _ = load_start_image(path, 32, 32, "pad")
        stretch, _ = load_start_image(path, 32, 32, "stretch")
    assert crop.size == pad.size == stretch.size == (32, 32)
    assert np.asarray(crop)[:, :, 0].max() == 0  # no red left
    assert np.asarray(pad)[0].max() == 0 and np.asarray(pad)[16, 0, 0] > 200  # bars above, red kept
    assert np.asarray(stretch)[16, 0, 0] > 200


def test_request_round_trips_with_the_export_fields(start_image):
    req = i2v(start_image, turbo=TurboWanSettings(enabled=True, ode=True), steps=3,
              swap=SwapSettings(mode="adaptive", max_vram_gb=16.0, block_size_mb=300))
    data = json.loads(json.dumps(req.to_dict()))
    assert I2VRequest.from_dict(data) == req
    for key in ("resolution", "aspect_ratio", "boundary_ratio", "fps", "output_format", "quality", "loop"):
        assert key in data
    assert data["turbo"]["sigma_max"] == 200.0 and data["turbo"]["ode"] is True
    assert data["swap"]["max_vram_gb"] == 16.0 and data["swap"]["block_size_mb"] == 300
    assert data["turbo"]["attention_type"] == "sla" and data["turbo"]["sla_topk"] == 0.1
    for bad in ({"attention_type": "sagesla"}, {"attention_type": "flash"}, {"sla_topk": 0.0}, {"sla_topk": 2},
                {"sigma_max": 1600.5}):
        with pytest.raises(InputError) as err:
            I2VRequest.from_dict({**data, "turbo": {**data["turbo"], **bad}}).validate()
        assert err.value.field == f"turbo.{next(iter(bad))}"
    I2VRequest.from_dict({**data, "turbo": {**data["turbo"], "sigma_max": 1600.0}}).validate()  # upstream's README
    legacy = {k: v for k, v in data["turbo"].items() if k != "attention_type"}
    old = I2VRequest.from_dict({**data, "turbo": {**legacy, "attention": "original"}})  # a request saved before
    assert old.turbo.attention_type == "original"


def test_a_turbowan_run_downloads_no_base_experts(models_dir, start_image, tmp_path, monkeypatch):
    """Without --demo, through huggingface_hub from a local fake hub: the base repo lends text encoder, VAE and
    configs, and its two experts (2 x 28 GB for the real A14B) are never fetched; the TurboWan repo gives only its
    two files."""
    from engine.demo import demo_path
    from engine.requests import TURBOWAN_REPO
    from tests.fakehub import FakeHub

    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf-home"))
    monkeypatch.delenv("HF_HUB_CACHE", raising=False)
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.setenv("HF_HUB_DISABLE_XET", "1")
    with FakeHub() as hub:
        hub.add_repo("Wan-AI/Wan2.2-I2V-A14B-Diffusers", demo_path(models_dir, "wan22-i2v"))
        hub.add_repo(TURBOWAN_REPO, demo_path(models_dir, "turbowan22-i2v"))
        monkeypatch.setenv("HF_ENDPOINT", hub.endpoint)
        engine = Engine(device="cpu", models_dir=tmp_path / "models", outputs_dir=tmp_path / "out")
        result = engine.run(i2v(start_image, steps=2, turbo=TurboWanSettings(enabled=True)))
        assert result.video_path
        assert hub.count(contains="text_encoder/") > 0 and hub.count(contains="vae/") > 0
        assert hub.count("GET", "transformer/diffusion_pytorch_model") == 0
        assert hub.count("GET", "transformer_2/diffusion_pytorch_model") == 0
        assert hub.count(contains="-high-720P-quant.pth") > 0 and hub.count(contains="-high-720P.pth") == 0
