"""Panorama perception (OmniX) on the tiny Flux demo model with tiny adapter pairs in upstream's layout."""

from __future__ import annotations

import json
import shutil
import threading

import numpy as np
import pytest
import torch
from PIL import Image

from engine import Cancelled, Engine, InputError, ModelLoadError, ModelRef, PerceptionRequest, TextToImageRequest
from engine.adapters.omnix import OmniXSession
from engine.demo import demo_path
from engine.jobs.perception import image_tensor, omnix_pipeline
from engine.panorama import seam
from engine.panorama.tasks import TASKS, adapter_name
from engine.requests import PERCEPTION_TASKS, request_from_dict

FLUX = ModelRef(repo_id="black-forest-labs/FLUX.1-dev")
W, H = 128, 64  # the smallest panorama the tab takes


@pytest.fixture(scope="module")
def engine(models_dir, tmp_path_factory):
    return Engine(device="cpu", models_dir=models_dir, demo=True, outputs_dir=tmp_path_factory.mktemp("outputs"))


@pytest.fixture(scope="module")
def panorama(tmp_path_factory) -> str:
    """A smooth, horizontally periodic test panorama (what a real one looks like across its seam)."""
    x, y = np.meshgrid(np.arange(W) / W, np.arange(H) / H)
    rgb = np.stack([0.5 + 0.4 * np.sin(2 * np.pi * x), 0.5 + 0.4 * np.cos(4 * np.pi * x) * y, 0.2 + 0.6 * y], -1)
    path = tmp_path_factory.mktemp("pano") / "room.png"
    Image.fromarray((rgb * 255).astype(np.uint8)).save(path)
    return str(path)


def perception(panorama: str, **kw) -> PerceptionRequest:
    return PerceptionRequest(**{"panorama": panorama, "tasks": ("depth",), "steps": 1, "seed": 3, **kw})


def t2i() -> TextToImageRequest:
    return TextToImageRequest(model=FLUX, prompt="a lighthouse", width=64, height=64, steps=2, seed=5)


@pytest.fixture(scope="module")
def all_tasks(engine, panorama):
    return engine.run(perception(panorama, tasks=PERCEPTION_TASKS))


def _file(result, suffix: str) -> str:
    (path,) = [f for f in result.files if f.endswith(suffix)]
    return path


def test_every_task_writes_maps_of_the_right_shape_dtype_and_range(all_tasks):
    r = all_tasks
    depth = np.load(_file(r, "-depth.npy"))
    assert depth.shape == (H, W) and depth.dtype == np.float32 and 0 <= depth.min() <= depth.max() <= 1
    depth16 = np.asarray(Image.open(_file(r, "-depth16.png")))
    assert Image.open(_file(r, "-depth16.png")).mode == "I;16"
    assert depth16.dtype == np.uint16 and np.abs(depth16 / 65535 - depth).max() <= 0.5 / 65535 + 1e-7  # round trip
    normal = np.load(_file(r, "-normal.npy"))
    assert normal.shape == (H, W, 3) and normal.dtype == np.float32
    assert np.allclose(np.linalg.norm(normal, axis=-1), 1, atol=1e-4)
    for name in ("roughness", "metallic"):
        values = np.load(_file(r, f"-{name}.npy"))
        assert values.shape == (H, W) and 0 <= values.min() <= values.max() <= 1
        assert Image.open(_file(r, f"-{name}.png")).mode == "L"
    ids = np.load(_file(r, "-semantic-ids.npy"))
    palette = json.loads(open(_file(r, "-semantic-palette.json")).read())["classes"]
    assert ids.shape == (H, W) and ids.dtype == np.uint8 and ids.max() < len(palette)
    indexed = Image.open(_file(r, "-semantic-classes.png"))
    assert indexed.mode == "P" and np.array_equal(np.asarray(indexed), ids)
    for name in ("albedo", "normal", "semantic", "depth"):
        with Image.open(_file(r, f"-{name}.png")) as im:
            assert im.size == (W, H) and im.mode == "RGB"
    assert set(r.maps) == {"depth (distance)", "normal", "albedo", "roughness", "metallic",
                           f"semantic ({len(palette)} classes)"}
    saved = json.loads(open(_file(r, "-s3.json")).read())  # the request, beside its files
    assert request_from_dict(saved) == r.request
    assert not r.images  # the maps are files, not one more PNG per map


def test_sphere_glb_loads_with_a_gltf_reader(all_tasks):
    pygltflib = pytest.importorskip("pygltflib")
    gltf = pygltflib.GLTF2().load(_file(all_tasks, "-sphere.glb"))
    (mesh,) = gltf.meshes
    prim = mesh.primitives[0]
    positions = gltf.accessors[prim.attributes.POSITION]
    assert positions.count == H * (W + 1) // 1 or positions.count > 1000  # a dense latitude-longitude grid
    assert prim.attributes.TEXCOORD_0 is not None and len(gltf.images) == 1
    assert gltf.materials[0].doubleSided
    # the radius of each vertex is the predicted distance (plus a small floor): read the positions back
    import trimesh

    scene = trimesh.load(_file(all_tasks, "-sphere.glb"))
    (geometry,) = scene.geometry.values()
    radius = np.linalg.norm(geometry.vertices, axis=1)
    depth = np.load(_file(all_tasks, "-depth.npy"))
    assert radius.min() >= 0.05 - 1e-5 and radius.max() <= 0.05 + depth.max() + 1e-5


def test_a_task_gives_the_same_map_alone_as_among_others(engine, panorama, all_tasks):
    alone = engine.run(perception(panorama, tasks=("normal",)))
    assert np.allclose(np.load(_file(alone, "-normal.npy")), np.load(_file(all_tasks, "-normal.npy")), atol=1e-6)


def test_perception_uses_the_ledger_objects_of_text_to_image(engine, panorama):
    engine.run(t2i())
    flux = engine.store.load_pipeline(FLUX)
    names = engine.memory.names()
    pipe = omnix_pipeline(flux)
    for part in ("transformer", "vae", "text_encoder", "text_encoder_2"):
        assert getattr(pipe, part) is getattr(flux, part)
    assert engine.store.module_names(pipe) == engine.store.module_names(flux)
    result = engine.run(perception(panorama))
    assert engine.memory.names() == names  # adapters registered during the run only
    assert result.metadata["peak_ledger_bytes"] > sum(engine.memory.entry(n).bytes for n in names)


# ---------------------------------------------------------------- the cross-adapter method
def _session_pipe(engine, models_dir):
    flux = engine.store.load_pipeline(FLUX)
    return omnix_pipeline(flux), demo_path(models_dir, "omnix")


def _pano_tensor(panorama):
    return image_tensor(Image.open(panorama).convert("RGB"))


def test_item_i_goes_through_adapter_i_only(engine, models_dir, panorama, monkeypatch):
    from peft.tuners.lora import LoraLayer

    from engine.adapters import omnix

    pipe, root = _session_pipe(engine, models_dir)
    names = tuple(adapter_name("depth", a) for a in TASKS["depth"].adapters)
    seen, probes = [], []

    def route_and_probe(transformer, adapter_names):  # probes on every LoRA layer and each adapter's lora_A
        handles = omnix_route(transformer, adapter_names)
        layers = [m for m in transformer.modules() if isinstance(m, LoraLayer)]
        assert layers and all(set(names) <= set(m.lora_A) for m in layers)
        for layer in layers:
            inputs = {}
            probes.append(layer.register_forward_pre_hook(
                lambda m, a, kw, inputs=inputs: inputs.update(x=a[0]), with_kwargs=True))
            for i, name in enumerate(names):
                probes.append(layer.lora_A[name].register_forward_pre_hook(
                    lambda m, a, i=i, inputs=inputs: seen.append((i, a[0], inputs["x"]))))
        return handles

    omnix_route = omnix.route_items
    monkeypatch.setattr(omnix, "route_items", route_and_probe)
    try:
        with OmniXSession(pipe, root, engine.memory, ["depth"]) as session, torch.inference_mode():
            pipe(_pano_tensor(panorama), ["depth"], session, num_inference_steps=1)
    finally:
        for probe in probes:
            probe.remove()
    assert seen and {i for i, *_ in seen} == {0, 1}
    for i, got, x in seen:
        assert got.shape[0] == 1 and torch.equal(got, x[i:i + 1])  # adapter i saw item i, and only it
    assert all(not isinstance(m, LoraLayer) for m in pipe.transformer.modules())


def test_attention_joins_keys_and_values_of_all_items(engine):
    from diffusers.models.transformers.transformer_flux import FluxAttnProcessor

    from engine.adapters.omnix_attention import CrossItemFluxAttnProcessor

    attn = engine.store.load_pipeline(FLUX).transformer.single_transformer_blocks[0].attn
    g = torch.Generator().manual_seed(0)
    x = torch.randn(2, 10, attn.query_dim, generator=g)
    with torch.no_grad():
        joint = CrossItemFluxAttnProcessor()(attn, x)
        # reference: item i's queries against the keys/values of both items, written out by hand
        q = attn.norm_q(attn.to_q(x).unflatten(-1, (attn.heads, -1))).transpose(1, 2)
        k = attn.norm_k(attn.to_k(x).unflatten(-1, (attn.heads, -1))).transpose(1, 2)
        v = attn.to_v(x).unflatten(-1, (attn.heads, -1)).transpose(1, 2)
        k_all, v_all = torch.cat([k[0], k[1]], 1), torch.cat([v[0], v[1]], 1)
        ref = torch.stack([torch.nn.functional.scaled_dot_product_attention(q[i], k_all, v_all) for i in (0, 1)])
        assert torch.allclose(joint, ref.transpose(1, 2).flatten(2), atol=1e-5)
        alone = FluxAttnProcessor()(attn, x)
        assert torch.allclose(CrossItemFluxAttnProcessor()(attn, x[:1]), alone[:1], atol=1e-5)  # one item: Flux's
        assert not torch.allclose(joint[:1], alone[:1], atol=1e-3)  # two items: item 0 sees item 1


def _run_with_steps(pipe, root, memory, panorama, **kw):
    steps = []

    def on_step(p, i, t, tensors):
        steps.append({**{k: v.clone() for k, v in tensors.items()}, "t": float(t)})
        return tensors

    with OmniXSession(pipe, root, memory, ["depth"]) as session, torch.inference_mode():
        out = pipe(_pano_tensor(panorama), ["depth"], session, num_inference_steps=2, seed=3,
                   callback_on_step_end=on_step, **kw)
    return out, steps


@pytest.fixture(scope="module")
def stepped(engine, models_dir, panorama):
    """A 2-step depth run with the latents seen after every step."""
    pipe, root = _session_pipe(engine, models_dir)
    return (pipe, root, *_run_with_steps(pipe, root, engine.memory, panorama))


def test_condition_latent_is_the_clean_input_after_every_step(stepped, panorama):
    pipe, root, out, steps = stepped
    # what the condition must be: the posterior sample drawn right after the batch noise, as upstream
    g = torch.Generator().manual_seed(3)
    pipe.prepare_latents(2, 4, H, W, torch.float32, "cpu", g)
    with torch.inference_mode():
        clean = seam.extend(pipe.encode_condition(_pano_tensor(panorama), g))
    s = pipe.vae_scale_factor
    assert len(steps) == 2
    for tensors in steps:
        x = pipe._unpack_latents(tensors["latents"], H, clean.shape[-1] * s, s)
        assert torch.equal(x[0:1], clean)  # item 0 is the clean input latent again
        assert not torch.equal(x[1:2], clean)  # item 1 is the map being denoised
    assert out.maps["depth"].shape == (3, H, W)


def test_seam_the_left_edge_continues_the_right_edge(engine, stepped, panorama):
    pipe, root, _, steps = stepped
    s = pipe.vae_scale_factor
    lat_w = W // s
    for tensors in steps:  # after every step's blend, latent column 0 is the model's continuation of the right edge
        x = pipe._unpack_latents(tensors["latents"], H, (lat_w + seam.BLEND_EXTEND) * s, s)
        assert x.shape[-1] == lat_w + seam.BLEND_EXTEND
        assert torch.equal(x[..., 0], x[..., lat_w])
    _, plain = _run_with_steps(pipe, root, engine.memory, panorama, seam_blending=False)
    x = pipe._unpack_latents(plain[-1]["latents"], H, W, s)
    assert x.shape[-1] == lat_w  # no extension: nothing ties the two edges together
    assert not torch.allclose(x[..., 0], x[..., -1], atol=1e-2)


def test_seam_decode_makes_the_edges_agree_and_plain_decoding_does_not(engine):
    vae = engine.store.load_pipeline(FLUX).vae
    lat_h, lat_w = 32, 64  # a 64x128 panorama; two rows of VAE tiles on the demo VAE
    x, y = torch.arange(lat_w) / lat_w, torch.arange(lat_h) / lat_h
    g = torch.Generator().manual_seed(0)
    phase, amp = torch.rand(4, 1, 1, generator=g) * 6.28, torch.rand(4, 1, 1, generator=g) + 0.5
    z = (amp * torch.sin(2 * np.pi * x + phase) * torch.cos(np.pi * y[:, None]))[None]  # smooth and periodic
    with torch.no_grad():
        blended, plain = seam.decode(vae, z, seam=True), seam.decode(vae, z, seam=False)
    assert blended.shape == plain.shape == (1, 3, 2 * lat_h, 2 * lat_w)
    assert seam.seam_error(blended) < 0.6 * seam.seam_error(plain)
    assert vae.use_tiling is False  # the shared VAE's own flag is untouched


def test_schedule_is_flux_dynamic_shift_on_the_seam_extended_length(stepped):
    import numpy as np
    from diffusers.pipelines.flux.pipeline_flux import calculate_shift

    pipe, _, _, steps = stepped
    s = pipe.vae_scale_factor
    tokens = (H // s // 2) * ((W // s + seam.BLEND_EXTEND) // 2)  # packed 2x2 tokens of the extended latent
    scheduler = type(pipe.scheduler).from_config(pipe.scheduler.config)
    c = scheduler.config
    mu = calculate_shift(tokens, c.base_image_seq_len, c.max_image_seq_len, c.base_shift, c.max_shift)
    scheduler.set_timesteps(sigmas=np.linspace(1.0, 1 / 2, 2), mu=mu)
    assert [step["t"] for step in steps] == pytest.approx(scheduler.timesteps.tolist())
    scheduler.set_timesteps(sigmas=np.linspace(1.0, 1 / 2, 2),
                            mu=calculate_shift(tokens - H // s // 2 * 3, c.base_image_seq_len, c.max_image_seq_len,
                                               c.base_shift, c.max_shift))
    assert [step["t"] for step in steps] != pytest.approx(scheduler.timesteps.tolist())  # not the unextended one


def test_blend_is_upstreams_cross_fade():
    x = torch.arange(2 * 10, dtype=torch.float32).reshape(1, 1, 2, 10)
    ext = seam.extend(x.clone(), 3)
    assert torch.equal(ext[..., 10:], x[..., :3])
    ext[..., 10:] = 100.0
    seam.blend_seam(ext, 3)
    for i in range(3):
        assert torch.allclose(ext[..., i], 100.0 * (1 - i / 3) + x[..., i] * (i / 3))
    assert torch.equal(ext[..., 3:10], x[..., 3:])


# ---------------------------------------------------------------- sharing without leaks
def _fresh_t2i(models_dir, tmp_path):
    fresh = Engine(device="cpu", models_dir=models_dir, demo=True, outputs_dir=tmp_path / "fresh")
    return np.asarray(fresh.run(t2i()).images[0])


def _assert_transformer_is_plain(engine):
    from diffusers.models.transformers.transformer_flux import FluxAttnProcessor
    from peft.tuners.lora import LoraLayer

    transformer = engine.store.load_pipeline(FLUX).transformer
    assert not getattr(transformer, "peft_config", None)
    assert not any(isinstance(m, LoraLayer) for m in transformer.modules())
    assert all(type(p) is FluxAttnProcessor for p in transformer.attn_processors.values())
    assert not any(m._forward_pre_hooks for m in transformer.modules())
    assert not [n for n in engine.memory.names() if "OmniX" in n]


def test_text_to_image_after_perception_is_bit_identical_to_a_fresh_engine(engine, models_dir, panorama, tmp_path):
    expected = _fresh_t2i(models_dir, tmp_path)
    engine.run(perception(panorama, tasks=("depth", "pbr")))
    _assert_transformer_is_plain(engine)
    assert np.array_equal(np.asarray(engine.run(t2i()).images[0]), expected)

    cancel = threading.Event()
    with pytest.raises(Cancelled):
        engine.run(perception(panorama, tasks=("depth", "pbr"), steps=2), lambda f, m: cancel.set(), cancel)
    _assert_transformer_is_plain(engine)
    assert np.array_equal(np.asarray(engine.run(t2i()).images[0]), expected)

    def explode(fraction, message):
        if message.startswith("step"):
            raise RuntimeError("boom in the middle of the run")

    with pytest.raises(RuntimeError, match="boom"):
        engine.run(perception(panorama, steps=2), explode)
    _assert_transformer_is_plain(engine)
    assert np.array_equal(np.asarray(engine.run(t2i()).images[0]), expected)


# ---------------------------------------------------------------- bad input
def _image(tmp_path, name, size, mode="RGB", **save):
    path = tmp_path / name
    Image.new(mode, size).save(path, **save)
    return str(path)


@pytest.mark.parametrize(("size", "mode", "words"), [
    ((300, 100), "RGB", "not an equirectangular 2:1"),
    ((64, 32), "RGB", "at least 64 px high"),
    ((8200, 64), "L", "at most 8192 px wide"),
])
def test_bad_panoramas_get_a_message_naming_the_problem(engine, tmp_path, size, mode, words):
    with pytest.raises(InputError) as err:
        engine.run(perception(_image(tmp_path, "p.png", size, mode)))
    assert err.value.field == "panorama" and words in err.value.message


def test_truncated_file_gets_a_message(engine, tmp_path):
    good = _image(tmp_path, "full.png", (W, H))
    data = open(good, "rb").read()
    bad = tmp_path / "cut.png"
    bad.write_bytes(data[: len(data) // 2])
    with pytest.raises(InputError) as err:
        engine.run(perception(str(bad)))
    assert err.value.field == "panorama" and "cannot read" in err.value.message


@pytest.mark.parametrize("mode", ["L", "RGBA", "I;16", "P"])
def test_grayscale_alpha_16bit_and_palette_inputs_are_read_as_rgb(tmp_path, mode):
    from engine.panorama import input as panorama_input

    path = tmp_path / f"p-{mode.replace(';', '')}.png"
    if mode == "I;16":
        Image.fromarray(np.full((H, W), 40000, np.uint16)).save(path)
    else:
        Image.new(mode, (W, H)).save(path)
    image = panorama_input.check_panorama(path)
    assert image.mode == "RGB" and image.size == (W, H)
    if mode == "I;16":
        assert np.asarray(image)[0, 0, 0] == round(40000 / 65535 * 255)


def test_large_panoramas_run_at_upstreams_size_cap(tmp_path):
    from engine.panorama import input as panorama_input

    image, info = panorama_input.prepare(Image.new("RGB", (2048, 1024)))
    assert image.size == (1440, 720) and info["perception_size"] == [1440, 720]
    image, _ = panorama_input.prepare(Image.new("RGB", (1000, 500)))
    assert image.size == (992, 496)  # a multiple of 16 high, still 2:1


@pytest.mark.parametrize("how", ["pad", "crop"])
def test_pad_and_crop_make_a_two_to_one_copy(tmp_path, how):
    from engine.panorama import input as panorama_input

    for size in ((300, 100), (100, 100)):
        out = panorama_input.fix_aspect(_image(tmp_path, f"{size[0]}.png", size), how, tmp_path / "fixed")
        w, h = Image.open(out).size
        assert w == 2 * h
        assert (w, h) >= size if how == "pad" else (w <= size[0] and h <= size[1])


def test_adapter_folder_without_a_task_is_named(engine, models_dir, panorama, tmp_path):
    partial = tmp_path / "omnix"
    shutil.copytree(demo_path(models_dir, "omnix"), partial)
    shutil.rmtree(partial / "rgb_to_pbr")
    with pytest.raises(InputError) as err:
        engine.run(perception(panorama, tasks=("depth", "pbr"), adapters=ModelRef(path=str(partial))))
    assert err.value.field == "adapters" and "pbr" in err.value.message and "rgb_to_pbr/rgb" in err.value.message


def test_adapters_for_another_base_model_are_refused_with_the_mismatch(engine, models_dir, panorama, tmp_path):
    from safetensors.torch import save_file

    for keys, words in [
        ({"transformer.transformer_blocks.0.attn.to_q.lora_A.weight": torch.zeros(4, 3072),
          "transformer.transformer_blocks.0.attn.to_q.lora_B.weight": torch.zeros(3072, 4)}, "3072 inputs"),
        ({"transformer.down_blocks.0.attn.to_q.lora_A.weight": torch.zeros(4, 320)}, "'down_blocks.0.attn.to_q'"),
    ]:
        other = tmp_path / f"other-{len(words)}"
        shutil.copytree(demo_path(models_dir, "omnix"), other)
        save_file(keys, other / "rgb_to_depth" / "depth" / "pytorch_lora_weights.safetensors")
        with pytest.raises(ModelLoadError) as err:
            engine.run(perception(panorama, adapters=ModelRef(path=str(other))))
        assert "another base model" in str(err.value) and words in str(err.value)
    _assert_transformer_is_plain(engine)


def test_no_task_selected(engine, panorama):
    with pytest.raises(InputError) as err:
        engine.run(perception(panorama, tasks=()))
    assert err.value.field == "tasks"
