"""The memory ledger must match where every parameter really is, after every operation.

On a CPU-only machine the compute device is the CPU, so these tests offload to *disk*: an
offloaded module really leaves RAM (its tensors go to the meta device and a safetensors file),
which gives two truly different places to check the ledger against.
"""

from __future__ import annotations

import pytest
import torch
from torch import nn

from engine.errors import OutOfBudgetError
from engine.memory import DISK, MemoryManager, device_stats, module_bytes, real_device
from tests.conftest import scaled


def mlp(width: int, seed: int) -> nn.Module:
    torch.manual_seed(seed)
    m = nn.Sequential(nn.Linear(width, width), nn.GELU(), nn.Linear(width, width), nn.LayerNorm(width))
    m.register_buffer("scale", torch.ones(width), persistent=False)  # non-persistent buffers must survive disk
    return m


def assert_ledger_true(mm: MemoryManager) -> None:
    for name in mm.names():
        e = mm.entry(name)
        devices = {p.device.type for p in e.module.parameters()} | {b.device.type for b in e.module.buffers()}
        assert len(devices) == 1, f"{name} is split across {devices}"
        real = devices.pop()
        if e.device == DISK:
            assert real == "meta", f"{name}: ledger says disk, tensors on {real}"
            assert e.disk_file is not None and e.disk_file.is_file()
        else:
            assert real == e.device, f"{name}: ledger says {e.device}, tensors on {real}"
    snap = mm.snapshot()
    for row in snap["modules"]:
        assert row["device"] == mm.entry(row["name"]).device


@pytest.fixture
def mm(tmp_path):
    return MemoryManager("cpu", offload_device="disk", disk_dir=tmp_path / "offload")


def test_register_records_role_bytes_dtype_device(mm):
    m = mlp(64, 0)
    e = mm.register("a", m, "transformer")
    expected = sum(p.numel() * 4 for p in m.parameters()) + 64 * 4
    assert (e.role, e.bytes, e.dtype, e.device) == ("transformer", expected, "float32", "cpu")
    assert module_bytes(m) == expected
    assert_ledger_true(mm)
    with pytest.raises(ValueError):
        mm.register("b", mlp(8, 1), "gpu-thing")


def test_a_part_is_shown_on_its_own_row_but_counted_and_moved_with_its_parent(tmp_path):
    # a LoRA's peft layers live inside the transformer: one row each, the bytes once
    mm = MemoryManager("cpu", offload_device="disk", disk_dir=tmp_path / "offload", budget_bytes=10**9)
    parent = mlp(32, 0)
    part = nn.ModuleList([parent[0], parent[2]])  # tensors the parent already holds
    mm.register("transformer", parent, "transformer")
    row = mm.register("transformer/lora/a", part, "lora", part_of=parent)
    assert row.part_of == "transformer" and row.bytes == module_bytes(part) > 0
    mm.ensure_loaded("transformer")
    snap = mm.snapshot()
    assert snap["resident"] == module_bytes(parent)  # not parent + part
    rows = {m["name"]: m for m in snap["modules"]}
    assert rows["transformer/lora/a"]["part_of"] == "transformer"
    assert rows["transformer/lora/a"]["bytes_on_compute"] == module_bytes(part)  # its own row still says where
    mm.offload(["transformer/lora/a"])  # a part does not move on its own
    assert real_device(parent) == "cpu"
    mm.offload(["transformer"])
    assert mm.entry("transformer").device == DISK and mm.snapshot()["resident"] == 0
    loose = mm.register("loose", mlp(8, 1), "lora", part_of=mlp(8, 2))  # a parent the ledger does not know
    assert loose.part_of == ""


def test_offload_to_disk_and_back_keeps_weights_exact(mm):
    m = mlp(32, 1)
    x = torch.randn(4, 32)
    before = m(x)
    mm.register("a", m, "text_encoder")
    mm.offload("a")
    assert mm.entry("a").device == DISK and real_device(m) == "meta"
    assert_ledger_true(mm)
    mm.ensure_loaded("a")
    assert mm.entry("a").device == "cpu"
    assert_ledger_true(mm)
    assert torch.equal(m(x), before)
    assert torch.equal(m.scale, torch.ones(32))


def test_budget_evicts_least_recently_used_first(tmp_path):
    mods = {n: mlp(64, i) for i, n in enumerate("abc")}
    size = module_bytes(mods["a"])
    mm = MemoryManager("cpu", offload_device="disk", budget_bytes=int(size * 2.5), disk_dir=tmp_path)
    for n, m in mods.items():
        mm.register(n, m, "other")
    mm.offload(["a", "b", "c"])
    assert_ledger_true(mm)
    mm.ensure_loaded("a")
    mm.ensure_loaded("b")
    mm.ensure_loaded("a")  # a is now more recent than b
    assert_ledger_true(mm)
    mm.ensure_loaded("c")  # needs room: b is the least recently used
    assert mm.entry("b").device == DISK
    assert {mm.entry("a").device, mm.entry("c").device} == {"cpu"}
    assert mm.resident_bytes() <= mm.budget_bytes
    assert_ledger_true(mm)


def test_modules_in_use_are_never_evicted(tmp_path):
    a, b = mlp(64, 0), mlp(64, 1)
    size = module_bytes(a)
    mm = MemoryManager("cpu", offload_device="disk", budget_bytes=int(size * 1.5), disk_dir=tmp_path)
    mm.register("a", a, "other")
    mm.register("b", b, "other")
    mm.offload(["a", "b"])
    with mm.use("a"):
        with pytest.raises(OutOfBudgetError, match="in use"):
            mm.ensure_loaded("b")
        assert mm.entry("a").device == "cpu"
        assert_ledger_true(mm)
    mm.ensure_loaded("b")  # after the block, a may go
    assert mm.entry("a").device == DISK and mm.entry("b").device == "cpu"
    assert_ledger_true(mm)


def test_module_larger_than_budget_is_refused_with_advice(tmp_path):
    mm = MemoryManager("cpu", offload_device="disk", budget_bytes=1000, disk_dir=tmp_path)
    mm.register("big", mlp(64, 0), "transformer")
    mm.offload("big")
    with pytest.raises(OutOfBudgetError, match="swap mode"):
        mm.ensure_loaded("big")
    assert mm.entry("big").device == DISK
    assert_ledger_true(mm)


def test_refresh_follows_moves_made_elsewhere(mm):
    m = mlp(16, 0)
    mm.register("a", m, "vae")
    m.to("meta")  # something outside the manager moved it
    mm.refresh()
    assert mm.entry("a").device == "meta"
    assert_ledger_true(mm)


def test_snapshot_reports_devices_and_modules(mm):
    mm.register("a", mlp(16, 0), "transformer")
    mm.register("b", mlp(16, 1), "vae")
    mm.offload("b")
    snap = mm.snapshot()
    assert snap["compute_device"] == "cpu" and snap["offload_device"] == "disk"
    cpu = [d for d in snap["devices"] if d["device"] == "cpu"][0]
    assert cpu["total"] > 0 and 0 < cpu["used"] <= cpu["total"] and cpu["free"] > 0 and cpu["peak"] > 0
    rows = {r["name"]: r for r in snap["modules"]}
    assert rows["a"]["bytes_on_compute"] == rows["a"]["bytes"] > 0
    assert rows["b"]["device"] == DISK and rows["b"]["bytes_on_compute"] == 0
    assert snap["resident"] == rows["a"]["bytes"]


def test_device_stats_without_cuda_never_reports_zero_gpu():
    stats = device_stats()
    if not torch.cuda.is_available():
        assert [s["device"] for s in stats] == ["cpu"]


def test_unregister_removes_disk_copy(mm):
    mm.register("a", mlp(16, 0), "other")
    mm.offload("a")
    f = mm.entry("a").disk_file
    assert f.is_file()
    mm.unregister("a")
    assert not f.exists() and "a" not in mm


def test_ledger_true_on_a_real_diffusers_transformer(mm):
    from diffusers import FluxTransformer2DModel

    torch.manual_seed(0)
    t = FluxTransformer2DModel(
        patch_size=1, in_channels=16, num_layers=1, num_single_layers=1, attention_head_dim=16,
        num_attention_heads=2, joint_attention_dim=32, pooled_projection_dim=32, guidance_embeds=True,
        axes_dims_rope=(4, 4, 8),
    )
    ref = {k: v.clone() for k, v in t.state_dict().items()}
    mm.register("flux/transformer", t, "transformer")
    mm.offload("flux/transformer")
    assert_ledger_true(mm)
    mm.ensure_loaded("flux/transformer")
    assert_ledger_true(mm)
    assert all(torch.equal(ref[k], v) for k, v in t.state_dict().items())


def test_snapshot_never_waits_for_a_module_being_moved(mm):
    import threading
    import time

    mm.register("a", mlp(16, 0), "transformer")
    holding, release = threading.Event(), threading.Event()

    def mover():  # stands for a long .to() inside ensure_loaded, which holds the ledger lock
        with mm._lock:
            holding.set()
            release.wait(10)

    t = threading.Thread(target=mover)
    t.start()
    try:
        assert holding.wait(10)
        t0 = time.monotonic()
        snap = mm.snapshot()
        assert time.monotonic() - t0 < scaled(1.0)
        assert [m["name"] for m in snap["modules"]] == ["a"]
    finally:
        release.set()
        t.join()
