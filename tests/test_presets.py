"""presets/ data and its loader (engine/catalog/presets.py): shipped files load, filters count right, bad files fail clearly."""

from __future__ import annotations

import copy
import json
import os
import re

import pytest

from engine.catalog.presets import (
    ARCHITECTURES,
    CatalogEntry,
    CatalogError,
    architectures,
    catalog_entry,
    demo_for_repo,
    filter_catalog,
    load_catalog,
    load_models,
    load_vram_profiles,
    profile_for_vram,
    quantizations,
)
from engine.errors import EngineError, InputError
from engine.requests import SWAP_MODES, SwapSettings

GiB = 2**30

# The EnragedAntelope/comfyui-sdnq catalog table (reference/comfy_nodes.md section 4): dropdown name -> repo,
# less its two Optimum Quanto rows (FLUX.1-dev-qint8/qint4: not SDNQ, see the catalog's _dropped), plus the SDNQ
# repos that table lacked (issue 22).
DROPPED = {"Disty0/FLUX.1-dev-qint8", "Disty0/FLUX.1-dev-qint4"}
TABLE = {
    "Z-Image-SDNQ-4bit-hadamard": "Disty0/Z-Image-SDNQ-4bit-dynamic-hadamard-svd-r32",
    "Ideogram-4-SDNQ-4bit-hadamard": "Disty0/Ideogram-4-SDNQ-4bit-dynamic-hadamard",
    "FLUX.1-dev-SDNQ-uint4": "Disty0/FLUX.1-dev-SDNQ-uint4-svd-r32",
    "FLUX.1-schnell-SDNQ-uint4": "Disty0/FLUX.1-schnell-SDNQ-uint4-svd-r32",
    "FLUX.1-Krea-dev-SDNQ-uint4": "Disty0/FLUX.1-Krea-dev-SDNQ-uint4-svd-r32",
    "FLUX.1-Kontext-dev-SDNQ-uint4": "Disty0/FLUX.1-Kontext-dev-SDNQ-uint4-svd-r32",
    "FLUX.2-dev-SDNQ-uint4": "Disty0/FLUX.2-dev-SDNQ-uint4-svd-r32",
    "Qwen-Image-SDNQ-uint4": "Disty0/Qwen-Image-SDNQ-uint4-svd-r32",
    "Qwen-Image-Lightning-SDNQ-uint4": "Disty0/Qwen-Image-Lightning-SDNQ-uint4-svd-r32",
    "Qwen-Image-Edit-2509-SDNQ-uint4": "Disty0/Qwen-Image-Edit-2509-SDNQ-uint4-svd-r32",
    "Qwen-Image-Edit-2511-SDNQ-uint4": "Disty0/Qwen-Image-Edit-2511-SDNQ-uint4-svd-r32",
    "Qwen-Image-Edit-Lightning-SDNQ-uint4": "Disty0/Qwen-Image-Edit-Lightning-SDNQ-uint4-svd-r32",
    "Qwen-Image-Edit-SDNQ-uint4": "Disty0/Qwen-Image-Edit-SDNQ-uint4-svd-r32",
    "Z-Image-Turbo-SDNQ-int8": "Disty0/Z-Image-Turbo-SDNQ-int8",
    "Z-Image-Turbo-SDNQ-uint4": "Disty0/Z-Image-Turbo-SDNQ-uint4-svd-r32",
    "Chroma1-HD-SDNQ-uint4": "Disty0/Chroma1-HD-SDNQ-uint4-svd-r32",
    "ChronoEdit-14B-SDNQ-uint4": "Disty0/ChronoEdit-14B-SDNQ-uint4-svd-r32",
    "HunyuanImage3-SDNQ-uint4": "Disty0/HunyuanImage3-SDNQ-uint4-svd-r32",
    "NoobAI-XL-Vpred-v1.0-SDNQ-uint4": "Disty0/NoobAI-XL-Vpred-v1.0-SDNQ-uint4-svd-r128",
    "NoobAI-XL-v1.1-SDNQ-uint4": "Disty0/NoobAI-XL-v1.1-SDNQ-uint4-svd-r128",
    "Wan2.2-I2V-A14B-SDNQ-uint4": "Disty0/Wan2.2-I2V-A14B-SDNQ-uint4-svd-r32",
    "Wan2.2-T2V-A14B-SDNQ-uint4": "Disty0/Wan2.2-T2V-A14B-SDNQ-uint4-svd-r32",
    "FLUX.2-klein-4B-SDNQ-4bit": "Disty0/FLUX.2-klein-4B-SDNQ-4bit-dynamic",
    "FLUX.2-klein-9B-SDNQ-4bit": "Disty0/FLUX.2-klein-9B-SDNQ-4bit-dynamic-svd-r32",
    "GLM-Image-SDNQ-4bit": "Disty0/GLM-Image-SDNQ-4bit-dynamic",
    "Qwen-Image-2512-SDNQ-4bit": "Disty0/Qwen-Image-2512-SDNQ-4bit-dynamic",
    "Qwen-Image-2512-SDNQ-uint4": "Disty0/Qwen-Image-2512-SDNQ-uint4-svd-r32",
    "Qwen-Image-Layered-SDNQ-uint4": "Disty0/Qwen-Image-Layered-SDNQ-uint4-svd-r32",
    "LTX-2-SDNQ-4bit": "Disty0/LTX-2-SDNQ-4bit-dynamic",
    "LTX-2-SDNQ-8bit": "Disty0/LTX-2-SDNQ-8bit-dynamic",
}


@pytest.fixture(scope="module")
def catalog() -> list[CatalogEntry]:
    return load_catalog()


def by_id(entries):
    return {e.id: e for e in entries}


# ---------------------------------------------------------------- the shipped catalog
def test_catalog_loads_with_every_table_row(catalog):
    assert len(catalog) >= 30
    assert not DROPPED & {e.repo_id for e in catalog}, "Quanto checkpoints are not SDNQ entries"
    dropped = {d["repo_id"] for d in _shipped_doc()["_dropped"]}
    assert dropped == DROPPED and all("Quanto" in d["why"] for d in _shipped_doc()["_dropped"])
    ids = [e.id for e in catalog]
    assert len(set(ids)) == len(ids)
    assert len({e.repo_id.lower() for e in catalog}) == len(catalog)
    entries = by_id(catalog)
    for name, repo in TABLE.items():
        assert name in entries, f"catalog lacks the table row {name}"
        assert entries[name].repo_id == repo
    assert all(isinstance(e, CatalogEntry) for e in catalog)


def test_every_named_pipeline_exists_in_diffusers(catalog):
    diffusers = pytest.importorskip("diffusers")
    for e in catalog:
        if e.pipeline is None:
            assert not e.supported and e.notes, e.id
        else:
            assert hasattr(diffusers, e.pipeline), f"{e.id}: diffusers has no {e.pipeline}"
    assert by_id(catalog)["HunyuanImage3-SDNQ-uint4"].pipeline is None
    assert by_id(catalog)["HunyuanImage3-SDNQ-uint4"].supported is False


def test_entries_are_consistent(catalog):
    for e in catalog:
        assert e.architecture in ARCHITECTURES
        m = re.search(r"-svd-r(\d+)$", e.repo_id)
        assert e.svd_rank == (int(m.group(1)) if m else None), e.id
        assert e.download_gb > 0 and e.vram_gb > 0
        if e.is_video:
            assert e.default_frames is not None, e.id
        if e.architecture == "Qwen-Image-Edit":
            assert e.task == "image_edit"
    entries = by_id(catalog)
    assert entries["Z-Image-Turbo-SDNQ-int8"].quantization == "int8"
    assert entries["Z-Image-SDNQ-4bit-hadamard"].svd_rank == 32
    assert entries["Ideogram-4-SDNQ-4bit-hadamard"].pipeline == "Ideogram4Pipeline"  # diffusers 0.42.1 has it
    assert entries["LTX-2-SDNQ-8bit"].quantization == "8bit-dynamic"
    assert entries["NoobAI-XL-v1.1-SDNQ-uint4"].svd_rank == 128
    assert entries["FLUX.2-klein-9B-SDNQ-4bit"].svd_rank == 32
    assert entries["Wan2.2-I2V-A14B-SDNQ-uint4"].task == "image_to_video"
    assert entries["Wan2.2-T2V-A14B-SDNQ-uint4"].pipeline == "WanPipeline"
    assert entries["FLUX.1-Kontext-dev-SDNQ-uint4"].pipeline == "FluxKontextPipeline"
    # int8 Z-Image-Turbo is well above its 4-bit one; FLUX.2-dev (32B + 24B) dwarfs FLUX.1.
    assert entries["Z-Image-Turbo-SDNQ-int8"].download_gb > 1.5 * entries["Z-Image-Turbo-SDNQ-uint4"].download_gb
    assert entries["FLUX.2-dev-SDNQ-uint4"].download_gb > 2.5 * entries["FLUX.1-dev-SDNQ-uint4"].download_gb


def test_demo_field_only_on_pure_flux_text_to_image_and_ideogram(catalog):
    demos = {e.id for e in catalog if e.demo is not None}
    expected = {
        e.id for e in catalog if e.architecture == "Flux" and e.pipeline == "FluxPipeline" and e.task == "text_to_image"
    }
    assert demos == expected | {"Ideogram-4-SDNQ-4bit-hadamard"}
    assert {"FLUX.1-dev-SDNQ-uint4", "FLUX.1-schnell-SDNQ-uint4", "FLUX.1-Krea-dev-SDNQ-uint4"} <= demos
    assert "FLUX.1-Kontext-dev-SDNQ-uint4" not in demos
    assert {e.demo for e in catalog} == {None, "flux-dev-sdnq-int8", "ideogram-4-sdnq"}
    models = {m.demo: m for m in load_models()}
    for e in catalog:
        if e.demo is not None:  # a stand-in runs the entry's own pipeline class
            assert models[e.demo].pipeline == e.pipeline, e.id


def test_load_catalog_returns_a_fresh_list(catalog):
    first = load_catalog()
    first.clear()
    assert load_catalog() == catalog


# ---------------------------------------------------------------- lists and filters
def test_architecture_and_quantization_lists(catalog):
    archs = architectures(catalog)
    assert archs == [a for a in ARCHITECTURES if any(e.architecture == a for e in catalog)]
    assert {"Flux", "Flux2", "Qwen-Image", "Qwen-Image-Edit", "Wan", "LTX2"} <= set(archs)
    quants = quantizations(catalog)
    assert set(quants) == {e.quantization for e in catalog}
    assert quants.index("int8") < quants.index("uint4")


def test_filter_none_and_all_keep_everything(catalog):
    assert filter_catalog(catalog) == catalog
    assert filter_catalog(catalog, architecture="All", quantization="All", text="") == catalog
    assert filter_catalog(catalog, architecture=None, quantization=None, fits_vram_bytes=None) == catalog


@pytest.mark.parametrize("arch", sorted({"Flux", "Flux2", "Qwen-Image", "Qwen-Image-Edit", "Wan", "SDXL", "SD3.5"}))
def test_filter_by_architecture(catalog, arch):
    got = filter_catalog(catalog, architecture=arch)
    assert got == [e for e in catalog if e.architecture == arch]


def test_filter_by_architecture_known_entries(catalog):
    flux = {e.id for e in filter_catalog(catalog, architecture="Flux")}
    assert {"FLUX.1-dev-SDNQ-uint4", "FLUX.1-Kontext-dev-SDNQ-uint4"} <= flux
    assert "FLUX.2-dev-SDNQ-uint4" not in flux
    assert {e.id for e in filter_catalog(catalog, architecture="Wan")} == {
        "Wan2.2-I2V-A14B-SDNQ-uint4", "Wan2.2-T2V-A14B-SDNQ-uint4",
    }
    assert {e.id for e in filter_catalog(catalog, architecture="Qwen-Image-Edit")} == {
        "Qwen-Image-Edit-2509-SDNQ-uint4", "Qwen-Image-Edit-2511-SDNQ-uint4",
        "Qwen-Image-Edit-Lightning-SDNQ-uint4", "Qwen-Image-Edit-SDNQ-uint4",
    }
    assert filter_catalog(catalog, architecture="SD3.5") == []


def test_filter_by_quantization(catalog):
    for quant in quantizations(catalog):
        assert filter_catalog(catalog, quantization=quant) == [e for e in catalog if e.quantization == quant]
    assert {e.id for e in filter_catalog(catalog, quantization="int8")} == {
        "Z-Image-Turbo-SDNQ-int8",
    }
    assert {e.id for e in filter_catalog(catalog, quantization="8bit-dynamic")} == {"LTX-2-SDNQ-8bit"}
    assert len(filter_catalog(catalog, quantization="uint4")) == sum(e.quantization == "uint4" for e in catalog)


@pytest.mark.parametrize("gib", [4, 8, 12, 16, 24, 48, 80])
def test_filter_fits_vram(catalog, gib):
    got = filter_catalog(catalog, fits_vram_bytes=gib * GiB)
    assert got == [e for e in catalog if e.vram_gb * GiB <= gib * GiB]


def test_filter_fits_vram_known_entries_and_boundary(catalog):
    small = {e.id for e in filter_catalog(catalog, fits_vram_bytes=8 * GiB)}
    assert {"FLUX.2-klein-4B-SDNQ-4bit", "NoobAI-XL-v1.1-SDNQ-uint4"} <= small
    assert "FLUX.1-dev-SDNQ-uint4" not in small and "Wan2.2-I2V-A14B-SDNQ-uint4" not in small
    assert "Z-Image-Turbo-SDNQ-uint4" in {e.id for e in filter_catalog(catalog, fits_vram_bytes=10 * GiB)}
    assert len(filter_catalog(catalog, fits_vram_bytes=1000 * GiB)) == len(catalog)
    assert filter_catalog(catalog, fits_vram_bytes=0) == []
    entry = by_id(catalog)["Chroma1-HD-SDNQ-uint4"]
    assert entry in filter_catalog(catalog, fits_vram_bytes=entry.vram_gb * GiB)
    assert entry not in filter_catalog(catalog, fits_vram_bytes=entry.vram_gb * GiB - 1)


def _text_match(e: CatalogEntry, text: str) -> bool:
    hay = f"{e.id} {e.repo_id} {e.architecture} {e.task} {e.quantization} {e.pipeline or ''} {e.notes}".lower()
    return all(w in hay for w in text.lower().split())


@pytest.mark.parametrize("text", ["wan", "KLEIN", "qwen edit", "lightning", "svd-r128", "nothing-matches-this"])
def test_filter_by_text(catalog, text):
    assert filter_catalog(catalog, text=text) == [e for e in catalog if _text_match(e, text)]


def test_filter_by_text_known_entries(catalog):
    assert {e.id for e in filter_catalog(catalog, text="wan2.2")} == {
        "Wan2.2-I2V-A14B-SDNQ-uint4", "Wan2.2-T2V-A14B-SDNQ-uint4",
    }
    assert {e.id for e in filter_catalog(catalog, text="klein")} == {
        "FLUX.2-klein-4B-SDNQ-4bit", "FLUX.2-klein-9B-SDNQ-4bit",
    }
    assert {e.id for e in filter_catalog(catalog, text="noobai")} == {
        "NoobAI-XL-Vpred-v1.0-SDNQ-uint4", "NoobAI-XL-v1.1-SDNQ-uint4",
    }
    assert filter_catalog(catalog, text="  ") == catalog


def test_filters_combine(catalog):
    got = filter_catalog(catalog, architecture="Qwen-Image", quantization="uint4", fits_vram_bytes=24 * GiB, text="2512")
    assert [e.id for e in got] == ["Qwen-Image-2512-SDNQ-uint4"]
    expected = [e for e in catalog if e.architecture == "Flux" and e.quantization == "uint4" and e.vram_gb <= 16]
    assert filter_catalog(catalog, architecture="Flux", quantization="uint4", fits_vram_bytes=16 * GiB) == expected
    assert filter_catalog(catalog, task="text_to_video") == [e for e in catalog if e.task == "text_to_video"]


def test_catalog_entry_lookup(catalog):
    assert catalog_entry(catalog, "FLUX.1-dev-SDNQ-uint4").repo_id == "Disty0/FLUX.1-dev-SDNQ-uint4-svd-r32"
    assert catalog_entry(catalog, "Disty0/Z-Image-Turbo-SDNQ-int8").id == "Z-Image-Turbo-SDNQ-int8"
    assert catalog_entry(catalog, "flux.1-dev-sdnq-uint4").id == "FLUX.1-dev-SDNQ-uint4"
    with pytest.raises(InputError) as info:
        catalog_entry(catalog, "FLUX.1-dev-SDNQ-uint5")
    assert info.value.field == "entry"
    assert "unknown catalog entry 'FLUX.1-dev-SDNQ-uint5'" in str(info.value)
    assert "see the catalog table" in str(info.value)
    assert "FLUX.1-dev-SDNQ-uint4" in str(info.value)  # suggests the near miss


# ---------------------------------------------------------------- bad catalogs
def _shipped_doc() -> dict:
    from engine.catalog.presets import CATALOG_PATH

    with open(CATALOG_PATH, encoding="utf-8") as fh:
        return json.load(fh)


def _write(tmp_path, doc, name="bad_catalog.json"):
    path = tmp_path / name
    path.write_text(doc if isinstance(doc, str) else json.dumps(doc, indent=2), encoding="utf-8")
    return path


def _broken(tmp_path, index, change):
    doc = _shipped_doc()
    entry = doc["entries"][index]
    change(entry, doc)
    return _write(tmp_path, doc), doc["entries"][index].get("id")


CASES = {
    "missing field": (3, lambda e, d: e.pop("vram_gb"), "vram_gb", "is missing"),
    "missing nullable field": (4, lambda e, d: e.pop("svd_rank"), "svd_rank", "is missing"),
    "wrong type": (5, lambda e, d: e.update(default_steps="28"), "default_steps", "must be a whole number"),
    "wrong type bool for number": (2, lambda e, d: e.update(download_gb=True), "download_gb", "must be a positive number"),
    "duplicate id": (4, lambda e, d: e.update(id=d["entries"][1]["id"]), "id", "duplicate of entry 1"),
    "duplicate repo": (1, lambda e, d: e.update(repo_id=d["entries"][0]["repo_id"]), "repo_id", "already used by entry 0"),
    "bad repo id": (7, lambda e, d: e.update(repo_id="FLUX.1-dev-SDNQ-uint4"), "repo_id", "owner/name"),
    "negative size": (1, lambda e, d: e.update(download_gb=-1), "download_gb", "must be a positive number, got -1"),
    "zero vram": (8, lambda e, d: e.update(vram_gb=0), "vram_gb", "must be a positive number, got 0"),
    "unknown architecture": (9, lambda e, d: e.update(architecture="FLUX"), "architecture", "must be one of"),
    "unknown task": (9, lambda e, d: e.update(task="t2i"), "task", "must be one of"),
    "svd rank mismatch": (2, lambda e, d: e.update(svd_rank=64), "svd_rank", "to match the repo id"),
    "unsupported without pipeline": (0, lambda e, d: e.update(pipeline=None, supported=True), "supported", "must be false"),
    "bad pipeline name": (0, lambda e, d: e.update(pipeline="flux"), "pipeline", "diffusers pipeline class name"),
    "bad size": (0, lambda e, d: e.update(default_size=[1024]), "default_size", "[width, height]"),
    "unknown field": (10, lambda e, d: e.update(vram_gbs=3), "vram_gbs", "did you mean 'vram_gb'"),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_bad_catalog_names_entry_and_field(tmp_path, case):
    index, change, field, words = CASES[case]
    path, entry_id = _broken(tmp_path, index, change)
    with pytest.raises(CatalogError) as info:
        load_catalog(path)
    err = info.value
    message = str(err)
    assert isinstance(err, EngineError)
    assert message.startswith(f"bad_catalog.json entry {index} ({entry_id}): {field} "), message
    assert words in message, message
    assert (err.index, err.entry_id, err.field) == (index, entry_id, field)
    assert err.path == str(path)


def test_negative_size_message_matches_the_documented_form(tmp_path):
    doc = _shipped_doc()
    doc["entries"][7]["id"] = "FLUX.1-dev-uint4-copy"
    doc["entries"][7]["download_gb"] = -1
    path = _write(tmp_path, doc, name="sdnq_catalog.json")
    with pytest.raises(CatalogError, match=re.escape(
        "sdnq_catalog.json entry 7 (FLUX.1-dev-uint4-copy): download_gb must be a positive number, got -1"
    )):
        load_catalog(path)


def test_entry_that_is_not_an_object(tmp_path):
    doc = _shipped_doc()
    doc["entries"].insert(2, ["not", "an", "object"])
    with pytest.raises(CatalogError, match=r"bad_catalog\.json entry 2: must be a JSON object"):
        load_catalog(_write(tmp_path, doc))


def test_invalid_json_names_file_and_line(tmp_path):
    text = json.dumps(_shipped_doc(), indent=2).splitlines()
    line = next(i for i, s in enumerate(text) if '"vram_gb"' in s)
    text[line] = text[line].rstrip(",")  # a missing comma
    path = _write(tmp_path, "\n".join(text))
    with pytest.raises(CatalogError) as info:
        load_catalog(path)
    assert re.match(rf"bad_catalog\.json line {line + 2} column \d+: invalid JSON", str(info.value)), str(info.value)


def test_top_level_shape_and_missing_file(tmp_path):
    with pytest.raises(CatalogError, match=r"bad_catalog\.json: entries must be a list"):
        load_catalog(_write(tmp_path, {"entries": {"a": 1}}))
    with pytest.raises(CatalogError, match=r"bad_catalog\.json: the top level must be a JSON object"):
        load_catalog(_write(tmp_path, [1, 2]))
    with pytest.raises(CatalogError, match=r"bad_catalog\.json: invalid JSON"):
        load_catalog(_write(tmp_path, '{"entries": [NaN]}'))
    with pytest.raises(CatalogError, match=r"nowhere\.json: file not found"):
        load_catalog(tmp_path / "nowhere.json")


def test_cache_sees_edits(tmp_path):
    doc = _shipped_doc()
    path = _write(tmp_path, doc, name="cat.json")
    assert load_catalog(path)[0].vram_gb == doc["entries"][0]["vram_gb"]
    doc2 = copy.deepcopy(doc)
    doc2["entries"][0]["vram_gb"] = 99.5
    path.write_text(json.dumps(doc2), encoding="utf-8")
    st = path.stat()
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))  # a coarse clock must still see a change
    assert load_catalog(path)[0].vram_gb == 99.5


# ---------------------------------------------------------------- models.json and VRAM profiles
def test_models_json_loads():
    models = load_models()
    ids = [m.id for m in models]
    assert len(ids) == len(set(ids)) >= 8
    flux = next(m for m in models if m.id == "flux-dev")
    assert flux.repo_id == "black-forest-labs/FLUX.1-dev"
    assert flux.pipeline == "FluxPipeline" and "text_to_image" in flux.jobs and flux.demo == "flux-dev"
    assert all(m.demo for m in models)


def test_demo_for_repo():
    assert demo_for_repo("black-forest-labs/FLUX.1-dev") == "flux-dev"
    assert demo_for_repo("Wan-AI/Wan2.2-I2V-A14B-Diffusers") == "wan22-i2v"
    assert demo_for_repo("disty0/flux.1-dev-sdnq-uint4-svd-r32") == "flux-dev-sdnq-int8"
    assert demo_for_repo("Disty0/FLUX.1-schnell-SDNQ-uint4-svd-r32") == "flux-dev-sdnq-int8"
    assert demo_for_repo("Disty0/Wan2.2-T2V-A14B-SDNQ-uint4-svd-r32") is None
    assert demo_for_repo("nobody/nothing") is None


def test_bad_models_json(tmp_path):
    from engine.catalog.presets import MODELS_PATH

    doc = json.loads(MODELS_PATH.read_text(encoding="utf-8"))
    doc["models"][2]["jobs"] = []
    path = _write(tmp_path, doc, name="models.json")
    with pytest.raises(CatalogError, match=r"models\.json entry 2 \(wan22-i2v\): jobs must be a non-empty list"):
        load_models(path)


def test_vram_profiles_load():
    profiles = load_vram_profiles()
    assert [p.vram_gb for p in profiles] == [8, 12, 16, 24, 48, 80]
    for p in profiles:
        for job in ("text_to_image", "i2v"):
            settings = p.swap_for(job)
            assert isinstance(settings, SwapSettings) and settings.mode in SWAP_MODES
            settings.validate()
        assert p.notes
    assert profiles[0].swap_for("i2v").mode != "none"
    assert profiles[-1].swap_for("text_to_image").mode == "none"
    with pytest.raises(InputError):
        profiles[0].swap_for("perception")


def test_profile_for_vram():
    profiles = load_vram_profiles()
    assert profile_for_vram(profiles, 24 * GiB).vram_gb == 24
    assert profile_for_vram(profiles, 23.6 * GiB).vram_gb == 24  # what a "24 GB" card reports
    assert profile_for_vram(profiles, 20 * GiB).vram_gb == 16
    assert profile_for_vram(profiles, 4 * GiB).vram_gb == 8
    assert profile_for_vram(profiles, 141 * GiB).vram_gb == 80


def test_bad_vram_profile(tmp_path):
    from engine.catalog.presets import VRAM_PROFILES_PATH

    doc = json.loads(VRAM_PROFILES_PATH.read_text(encoding="utf-8"))
    doc["profiles"][1]["swap"]["i2v"]["mode"] = "turbo"
    path = _write(tmp_path, doc, name="vram_profiles.json")
    with pytest.raises(CatalogError) as info:
        load_vram_profiles(path)
    assert str(info.value).startswith("vram_profiles.json profile 1 (12 GB): swap.i2v.mode must be one of")
    assert info.value.field == "swap.i2v.mode"
    del doc["profiles"][1]["swap"]["i2v"]
    path = _write(tmp_path, doc, name="vram_profiles.json")
    with pytest.raises(CatalogError, match=r"profile 1 \(12 GB\): swap\.i2v is missing"):
        load_vram_profiles(path)
