"""Every named endpoint of the running app, every input, wrong types over plain HTTP: always a message naming the
field, and a live server afterwards (issue 22). The endpoints come from /gradio_api/info, so a new tab is walked
without a line here."""

from __future__ import annotations

import json

import httpx
import pytest

from ui.components import input_problem

pytestmark = pytest.mark.timeout(300)

NUMBERS = ("Number", "Slider")
CHOICES = ("Dropdown", "Radio", "Checkboxgroup")
FILES = ("Image", "File", "Video", "Gallery")


def _call(base: str, api: str, data: list, http: httpx.Client | None = None) -> tuple[str, object]:
    """POST /gradio_api/call/<api>, then read its event stream: ("complete" | "error", payload). ``http``: a client
    to reuse (a walk makes hundreds of calls; a new client costs 25 ms of TLS setup each)."""
    if http is None:
        with httpx.Client(timeout=30) as http:
            return _call(base, api, data, http)
    body = json.dumps({"data": data})  # NaN and Infinity too: a hostile client sends what JSON parsers take
    event_id = http.post(f"{base}/gradio_api/call/{api}", content=body,
                         headers={"content-type": "application/json"}).raise_for_status().json()["event_id"]
    kind, payload = "", None
    with http.stream("GET", f"{base}/gradio_api/call/{api}/{event_id}") as stream:
        for line in stream.iter_lines():
            if line.startswith("event:"):
                kind = line.split(":", 1)[1].strip()
            elif line.startswith("data:") and kind in ("complete", "error"):
                payload = json.loads(line.split(":", 1)[1].strip() or "null")
                return kind, payload
    return kind, payload


def _bad_values(component: str, props: dict) -> list:
    custom = props.get("allow_custom_value", False)
    if component in NUMBERS:
        return ["abc", None, [1, 2]]
    if component == "Checkbox":
        return ["yes", None, [True]]
    if component == "Checkboxgroup" or (component == "Dropdown" and props.get("multiselect")):
        return ["abc", {"a": 1}, [[1]]]
    if component in CHOICES:
        return [{"a": 1}, [1, 2]] + ([] if custom else [None, "certainly not a choice"])
    if component == "Textbox":
        return [[1, 2], {"a": 1}]
    return ["not a file", 12345]  # images, files, galleries...: Gradio's data model refuses these


def _endpoints(base: str):
    info = httpx.get(f"{base}/gradio_api/info", timeout=30).raise_for_status().json()
    config = httpx.get(f"{base}/config", timeout=30).raise_for_status().json()
    props = {c["id"]: c.get("props", {}) for c in config["components"]}
    deps = {d.get("api_name"): d for d in config["dependencies"] if d.get("api_name")}
    for name, endpoint in info["named_endpoints"].items():
        api = name.lstrip("/")
        inputs = deps[api]["inputs"]
        yield api, endpoint["parameters"], [props.get(i, {}) for i in inputs]


SHARDS = 4  # the walk is split so that each part fits its timeout on a busy machine


def _walk(base: str, shard: int, values_for, expect_refused: bool = True, only=None) -> int:
    """Call every endpoint of shard ``shard`` once per value ``values_for(component, props)`` gives for each of its
    inputs (the others at their defaults). Refused values must come back as an error starting with the field's
    label; others (``expect_refused=False``) may also complete, but never fail without words."""
    calls = 0
    with httpx.Client(timeout=30) as http:  # one connection for the walk
        endpoints = list(_endpoints(base))
        assert len(endpoints) >= 10 and any(api == "catalog_generate" for api, _, _ in endpoints)
        for api, params, props in endpoints[shard::SHARDS]:
            if only is not None and not only(api):
                continue
            good = [p["parameter_default"] if p.get("parameter_has_default") else
                    None if p["component"] in FILES else p.get("example_input") for p in params]  # no example URL
            for i, param in enumerate(params):
                label = param.get("label") or param["parameter_name"]
                for bad in values_for(param["component"], props[i]):
                    data = list(good)
                    data[i] = bad
                    kind, payload = _call(base, api, data, http)
                    calls += 1
                    where = f"{api} input {i} ({label}, {param['component']}) = {_short(bad)}"
                    message = payload.get("error") if isinstance(payload, dict) else payload
                    if kind == "complete" and not expect_refused:
                        continue
                    assert kind == "error", f"{where}: accepted ({kind}: {_short(payload)})"
                    assert isinstance(message, str) and message.strip(), f"{where}: an error without a message"
                    assert "Unexpected error" not in message and "Traceback" not in message, f"{where}: {message!r}"
                    if expect_refused:
                        assert message.startswith(f"{label}: "), f"{where}: the message does not name the field: {message!r}"
    return calls


def _short(value) -> str:
    text = repr(value)
    return text if len(text) <= 80 else text[:77] + "…"


def _alive(base: str) -> None:
    kind, payload = _call(base, "catalog_table", ["All", "All", False, "schnell"])
    assert kind == "complete" and "FLUX.1-schnell-SDNQ-uint4" in json.dumps(payload)


@pytest.mark.parametrize("shard", range(SHARDS))
def test_every_wrong_value_on_every_endpoint_gets_a_message_naming_the_field(served, shard):
    base = served[1].rstrip("/")
    assert _walk(base, shard, _bad_values) >= 20
    _alive(base)


# ---------------------------------------------------------------- hostile values of the right type (issue 30)
def _hostile_numbers(component: str, props: dict) -> list:
    """Numbers no widget takes: not finite, and just outside a bounded widget's range."""
    if component not in NUMBERS:
        return []
    found = [float("nan"), float("inf"), float("-inf")]
    lo, hi = props.get("minimum"), props.get("maximum")
    if hi is not None:
        found += [hi + 1, 1e308]
    if lo is not None:
        found += [lo - 1, -1e308]
    return found


UPLOADED_ELSEWHERE = [  # files a caller names instead of uploading: outside Gradio's upload folder, or absent
    {"path": "/etc/passwd", "meta": {"_type": "gradio.FileData"}},
    {"path": "../../../../etc/passwd", "meta": {"_type": "gradio.FileData"}, "orig_name": "x.png"},
    {"path": "/proc/self/environ", "meta": {"_type": "gradio.FileData"}},
]


def _hostile_files(component: str, props: dict) -> list:
    return list(UPLOADED_ELSEWHERE) if component in FILES else []


HOSTILE_TEXT = ["../../../../etc/passwd", "/etc/shadow", "\x00\x01\x1b[31m\u202e", "x" * 200_000,
                "{{7*7}} ${HOME} `id` $(id)", "C:\\Windows\\System32"]


def _hostile_text(component: str, props: dict) -> list:
    if component == "Textbox":
        return HOSTILE_TEXT
    if component == "Dropdown" and props.get("allow_custom_value") and not props.get("multiselect"):
        return HOSTILE_TEXT[:2] + ["comfy:../../../../etc/passwd"]
    if component == "Json":
        deep: list = []
        for _ in range(500):  # deep, yet under what the server's JSON parser takes
            deep = [deep]
        return [deep, [{"path": "/etc/passwd", "weight": 1.0}] * 500, {"loras": "x" * 10_000}, [None, 1, "a"]]
    return []


@pytest.mark.parametrize("shard", range(SHARDS))
def test_numbers_outside_every_range_are_refused_naming_the_field(served, shard):
    base = served[1].rstrip("/")
    _walk(base, shard, _hostile_numbers)
    _alive(base)


@pytest.mark.parametrize("shard", range(SHARDS))
def test_files_named_instead_of_uploaded_are_refused_naming_the_field(served, shard):
    base = served[1].rstrip("/")
    _walk(base, shard, _hostile_files)
    _alive(base)


def _no_run(api: str) -> bool:
    """Endpoints whose handler builds and checks a request (or a setting) without running a job or downloading:
    the exports share every input and every check with their tab's run, so hostile text meets the same code."""
    return api.endswith("_comfy_export") or api in ("catalog_table", "comfy_models_set")


@pytest.mark.parametrize("shard", range(SHARDS))
def test_hostile_text_is_answered_in_words_and_the_server_stays_up(served, shard):
    base = served[1].rstrip("/")
    _walk(base, shard, _hostile_text, expect_refused=False, only=_no_run)
    _alive(base)


def test_input_problem_messages():
    import gradio as gr

    with gr.Blocks():
        steps = gr.Slider(1, 100, value=20, label="Steps")
        flag = gr.Checkbox(label="SVD")
        pick = gr.Dropdown(["int8", "uint4"], value="int8", label="Weights dtype")
        many = gr.CheckboxGroup(["transformer", "vae"], label="Components")
        text = gr.Textbox(label="Prompt")
    assert input_problem(steps, "abc") == "expects a number between 1 and 100, got 'abc'"
    assert input_problem(steps, 500) == "expects a number between 1 and 100, got 500"
    assert input_problem(steps, True) is not None and input_problem(steps, 20) is None
    assert input_problem(flag, None) == "expects true or false, got nothing (null)"
    assert input_problem(pick, "int3") == "expects one of 'int8', 'uint4', got 'int3'"
    assert input_problem(many, ["vae", "unet"]) == (
        "expects a list of choices from 'transformer', 'vae'; 'unet' is not one of them")
    assert input_problem(text, [1]) == "expects text, got a list" and input_problem(text, None) is None
