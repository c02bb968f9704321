"""The workflow import under attack (issue 30, point 3): a huge chain, a deep array, a decompression bomb, subgraph
instances that multiply, a fuzzed graph: each answers with a WorkflowError in words, within 2 s, and the import
endpoint queues in its own small group."""

from __future__ import annotations

import contextlib
import copy
import gc
import json
import random
import struct
import sys
import time
import zlib
from pathlib import Path

import pytest

import comfy_export
from comfy_export import limits
from comfy_export.errors import WorkflowError
from engine.requests import TextToImageRequest
from tests.conftest import scaled

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "bench"))
from import_attack import lora_chain  # noqa: E402

# seconds of CPU time of the thread that imports: the goal for any import, valid or not. Not wall time, nor
# the process's CPU time: on a loaded machine (CI, xdist workers beside it) wall time measures the neighbours (a 1 s
# import took 3.7 s there), and the process's counts the served apps other tests left running in this worker (4.3 s)
FAST = 2.0


@contextlib.contextmanager
def within_goal():
    """Asserts the block took under ``FAST`` seconds of this thread's CPU. What earlier tests of this worker left
    alive is frozen for the while (``gc.freeze``): a parse that makes many objects starts full collections, which
    late in a suite walk millions of objects that are not the import's."""
    gc.collect()
    gc.freeze()
    t0 = time.thread_time()
    try:
        yield
    finally:
        elapsed = time.thread_time() - t0
        gc.unfreeze()
    assert elapsed < FAST, f"took {elapsed:.2f} s"


def refused(data, *words: str) -> str:
    with within_goal(), pytest.raises(WorkflowError) as info:
        comfy_export.from_workflow(data)
    for word in words:
        assert word in str(info.value), str(info.value)
    return str(info.value)


def png(chunks: list[tuple[bytes, bytes]], size: tuple[int, int] = (1, 1)) -> bytes:
    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))

    ihdr = struct.pack(">IIBBBBB", *size, 8, 2, 0, 0, 0)
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + b"".join(chunk(k, b) for k, b in chunks)
            + chunk(b"IDAT", zlib.compress(b"\0\0\0\0")) + chunk(b"IEND", b""))


def test_the_150000_node_chain_is_refused_at_once_with_the_limit_named():
    data = json.dumps(lora_chain(150_000)).encode()
    assert len(data) > 18 * 2**20
    refused(data, f"{limits.MAX_JSON_BYTES >> 20} MB", f"{limits.MAX_NODES} nodes")


def test_a_chain_over_the_node_limit_is_refused_naming_the_limit():
    refused(json.dumps(lora_chain(limits.MAX_NODES + 100)).encode(), f"at most {limits.MAX_NODES}", "nodes")


def test_a_long_chain_under_the_limit_is_read_without_recursion():
    """Today: RecursionError past ~1000 nodes (validate's recursive cycle check)."""
    with within_goal():
        try:
            comfy_export.from_workflow(json.dumps(lora_chain(4_900)))
        except WorkflowError as exc:
            assert "recursion" not in str(exc).lower()


def test_a_long_cycle_is_found_iteratively():
    api = lora_chain(3_000)
    api["1000"]["inputs"]["model"] = ["3999", 0]  # the first loader now reads the last: a 3000-node loop
    message = refused(json.dumps(api), "cycle")
    assert "3999 (LoraLoaderModelOnly)" in message


@pytest.mark.parametrize("text, words", [
    ("[" * 100_000 + "]" * 100_000, ("nested more than 100",)),
    ('{"a": ' * 50_000 + "1" + "}" * 50_000, ("nested more than 100",)),
    ("[" * 1_000_000, ("do not pair up",)),
    ('{"1": ' + "9" * 5_000 + "}", ("not valid JSON",)),  # Python's int digit limit: a ValueError, not JSONDecode
    ('{"1": {"class_type": "SaveImage", "inputs": {"images": ["2", 0]}}, "2": 5}', ()),
    ('{"1": {"class_type": "SaveImage", "inputs": {"images": {"x": [[[]]]}}}}', ()),
    ('{"nodes": [{"id": 1, "type": "Reroute"}], "links": [[1, 1, 0, 1, 0, "*"]]}', ()),
])
def test_hostile_json_is_a_workflow_error(text, words):
    refused(text, *words)
    refused(text.encode(), *words)


def test_a_decompression_bomb_png_is_refused_without_inflating_it():
    bomb = zlib.compress(b"{" + b" " * (200 * 2**20), 9)  # 200 MB of text in a ~200 KB chunk
    message = refused(png([(b"zTXt", b"prompt\0\0" + bomb)]), "prompt", "inflates to more than")
    assert "decompression bomb" in message
    itxt = png([(b"iTXt", b"workflow\0\1\0\0\0" + bomb)])
    refused(itxt, "workflow", "inflates to more than")


def test_a_png_of_huge_dimensions_is_read_without_decoding_its_pixels():
    """A 30000x30000 header with a valid prompt chunk: the text is read, no pixel is (Pillow's .text decodes)."""
    api = comfy_export.to_api(TextToImageRequest(prompt="a cat", steps=3))
    data = png([(b"tEXt", b"prompt\0" + json.dumps(api).encode())], size=(30_000, 30_000))
    with within_goal():
        request = comfy_export.from_workflow(data)
    assert request.prompt == "a cat" and request.steps == 3


def test_truncated_and_odd_pngs_are_workflow_errors():
    good = png([(b"tEXt", b"prompt\0{}")])
    refused(good[:30], "cut short")
    refused(png([(b"zTXt", b"prompt\0\0not zlib")]), "damaged")
    refused(png([]), "no ComfyUI workflow")


def test_subgraph_instances_that_multiply_are_capped_while_flattening():
    """Ten instances of a subgraph holding ten instances of the next one, eight levels down: 10**8 nodes once
    flattened. The count is checked per level, so this answers at once."""
    subgraphs = []
    for level in range(8):
        inner = f"sg{level + 1}" if level < 7 else "Note"
        subgraphs.append({"id": f"sg{level}", "nodes": [{"id": i, "type": inner} for i in range(10)], "links": [],
                          "inputs": [], "outputs": []})
    workflow = {"nodes": [{"id": i, "type": "sg0"} for i in range(10)], "links": [],
                "definitions": {"subgraphs": subgraphs}}
    refused(json.dumps(workflow), f"at most {limits.MAX_NODES}")


def test_a_long_reroute_chain_is_a_message_not_a_recursion_error():
    n = 3_000
    nodes = [{"id": 1, "type": "UNETLoader", "inputs": [], "outputs": [{"type": "MODEL"}],
              "widgets_values": ["flux1-dev.safetensors", "default"]}]
    nodes += [{"id": i, "type": "Reroute", "inputs": [{"name": "", "type": "*"}]} for i in range(2, n)]
    nodes.append({"id": n, "type": "SaveImage", "inputs": [{"name": "images", "type": "IMAGE"}],
                  "widgets_values": ["x"]})
    links = [[i, i, 0, i + 1, 0, "*"] for i in range(1, n)]
    refused(json.dumps({"nodes": nodes, "links": links}), "reroutes")


def _mutations(value, rng: random.Random):
    hostile = [None, -1, 2**70, 1e308, float("nan"), "", "../../etc/passwd", "\x00", [], {}, [["1", 0]], ["1", 0],
               ["999", 0], ["1", 99], [True, False], "x" * 10_000, {"class_type": 5}]
    if isinstance(value, dict) and value:
        key = rng.choice(list(value))
        if rng.random() < 0.5:
            return {**value, key: _mutations(value[key], rng)}
        return {**value, key: rng.choice(hostile)}
    if isinstance(value, list) and value:
        i = rng.randrange(len(value))
        return value[:i] + [rng.choice(hostile) if rng.random() < 0.5 else _mutations(value[i], rng)] + value[i + 1:]
    return rng.choice(hostile)


@pytest.mark.parametrize("export", ["api", "ui"])
def test_fuzzed_graphs_give_a_request_or_a_workflow_error(export):
    """300 random hostile edits of a real export (API and UI format): never another exception."""
    request = TextToImageRequest(prompt="fuzz", steps=3)
    base = comfy_export.to_api(request) if export == "api" else comfy_export.both(request)[1]
    rng = random.Random(30)
    for _ in range(300):
        mutated = copy.deepcopy(base)
        for _ in range(rng.randint(1, 3)):
            mutated = _mutations(mutated, rng)
        try:
            comfy_export.from_workflow(json.dumps(mutated, allow_nan=True))
        except WorkflowError:
            pass


def test_the_import_endpoint_has_its_own_small_concurrency_group():
    import gradio as gr

    from ui import comfy_io

    with gr.Blocks() as app:
        tabs = gr.Tabs()
        upload, status = comfy_io.import_box(None)

        class Engine:
            comfy = None
            models_dir = outputs_dir = "."

        comfy_io.wire_import(Engine(), upload, status, tabs, {}, {})
    fn = next(f for f in app.fns.values() if f.api_name == "comfy_import")
    assert fn.concurrency_id == "comfy_import" and fn.concurrency_limit == comfy_io.IMPORT_LIMIT <= 2


def test_the_served_import_answers_a_huge_chain_within_the_goal(client, tmp_path):
    from gradio_client import handle_file

    path = tmp_path / "chain.json"
    path.write_text(json.dumps(lora_chain(150_000)))
    t0 = time.perf_counter()
    out = client.predict(handle_file(str(path)), api_name="/comfy_import")
    elapsed = time.perf_counter() - t0
    status = next(o for o in out if isinstance(o, str) and o.startswith("Cannot import"))
    assert f"{limits.MAX_NODES} nodes" in status
    assert elapsed < scaled(10), elapsed  # the upload of 20 MB plus the answer; the import itself is checked above
