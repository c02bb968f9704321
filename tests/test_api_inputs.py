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


def _call(base: str, api: str, data: list) -> tuple[str, object]:
    """POST /gradio_api/call/<api>, then read its event stream: ("complete" | "error", payload)."""
    with httpx.Client(timeout=30) as http:
        event_id = http.post(f"{base}/gradio_api/call/{api}", json={"data": data}).raise_for_status().json()["event_id"]
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


def test_every_wrong_value_on_every_endpoint_gets_a_message_naming_the_field(served):
    _, url = served
    base = url.rstrip("/")
    calls = 0
    endpoints = list(_endpoints(base))
    assert len(endpoints) >= 10 and any(api == "catalog_generate" for api, _, _ in endpoints)
    for api, params, props in endpoints:
        good = [p["parameter_default"] if p.get("parameter_has_default") else p.get("example_input") for p in params]
        for i, param in enumerate(params):
            label = param.get("label") or param["parameter_name"]
            for bad in _bad_values(param["component"], props[i]):
                data = list(good)
                data[i] = bad
                kind, payload = _call(base, api, data)
                calls += 1
                where = f"{api} input {i} ({label}, {param['component']}) = {bad!r}"
                assert kind == "error", f"{where}: accepted ({kind}: {payload!r})"
                message = payload.get("error") if isinstance(payload, dict) else payload
                assert isinstance(message, str) and message.strip(), f"{where}: an error without a message"
                assert message.startswith(f"{label}: "), f"{where}: the message does not name the field: {message!r}"
    assert calls >= 100
    # the server is alive and answers a good call
    kind, payload = _call(base, "catalog_table", ["All", "All", False, "schnell"])
    assert kind == "complete" and "FLUX.1-schnell-SDNQ-uint4" in json.dumps(payload)


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
