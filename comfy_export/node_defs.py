"""Node definitions as data (``node_defs.json``, written by ``build_node_defs``): input order, widgets, types,
ranges and combo options, and the checks of one input value against them."""

from __future__ import annotations

import functools
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .errors import WorkflowError

DATA = Path(__file__).with_name("node_defs.json")
COMFY_VERSION = "0.3.64"  # the ComfyUI whose /object_info the definitions are
WIDGET_TYPES = ("INT", "FLOAT", "STRING", "BOOLEAN", "COMBO")


@dataclass(frozen=True)
class InputDef:
    name: str
    type: str  # "INT", "MODEL", "COMBO" (options then set), "FLOAT,INT,BOOLEAN", "*"
    options: dict[str, Any]
    required: bool
    choices: tuple | None = None

    @property
    def is_widget(self) -> bool:
        return self.choices is not None or self.type in WIDGET_TYPES

    @property
    def default(self) -> Any:
        if "default" in self.options:
            return self.options["default"]
        if self.choices:
            return self.choices[0]
        return {"INT": 0, "FLOAT": 0.0, "STRING": "", "BOOLEAN": False}.get(self.type, "")

    def ui_extras(self) -> int:
        """Values the frontend stores after this widget that the API never sees."""
        return int(bool(self.options.get("control_after_generate") or self.options.get("image_upload")))


@dataclass(frozen=True)
class NodeDef:
    name: str
    inputs: tuple[InputDef, ...]
    outputs: tuple[str, ...]
    output_names: tuple[str, ...]
    output_node: bool
    display_name: str
    python_module: str
    origin: str
    import_only: bool = False
    file_combos: dict[str, list[str]] = field(default_factory=dict)
    self_validated: tuple[str, ...] = ()

    def input(self, name: str) -> InputDef | None:
        return next((i for i in self.inputs if i.name == name), None)

    @property
    def widgets(self) -> tuple[InputDef, ...]:
        return tuple(i for i in self.inputs if i.is_widget)

    @property
    def links(self) -> tuple[InputDef, ...]:
        return tuple(i for i in self.inputs if not i.is_widget)

    @property
    def title(self) -> str:
        return self.display_name or self.name

    @property
    def pack(self) -> str:
        module = self.python_module
        return module.split(".", 1)[1] if module.startswith("custom_nodes.") else "ComfyUI core"


def _input_def(name: str, spec: list, required: bool) -> InputDef:
    kind = spec[0] if spec else "*"
    options = spec[1] if len(spec) > 1 and isinstance(spec[1], dict) else {}
    if isinstance(kind, list):
        return InputDef(name, "COMBO", options, required, tuple(kind))
    if kind == "COMBO":
        return InputDef(name, "COMBO", options, required, tuple(options.get("options", ())))
    return InputDef(name, str(kind), options, required)


@functools.lru_cache(maxsize=1)
def _load() -> tuple[dict[str, NodeDef], frozenset[str]]:
    data = json.loads(DATA.read_text(encoding="utf-8"))
    hints = data.get("_validation_hints", {})
    defs = {}
    for name, spec in data["nodes"].items():
        order = spec.get("input_order", {})
        inputs = []
        for section, required in (("required", True), ("optional", False)):
            specs = spec.get("input", {}).get(section, {})
            for input_name in order.get(section, list(specs)):
                inputs.append(_input_def(input_name, specs[input_name], required))
        hint = hints.get(name, {})
        defs[name] = NodeDef(
            name=name, inputs=tuple(inputs), outputs=tuple(spec.get("output", ())),
            output_names=tuple(spec.get("output_name") or spec.get("output", ())),
            output_node=bool(spec.get("output_node")), display_name=spec.get("display_name") or name,
            python_module=spec.get("python_module", ""), origin=spec.get("_origin", ""),
            import_only=bool(spec.get("_import_only")), file_combos=hint.get("file_combos", {}),
            self_validated=tuple(hint.get("validate_inputs_args") or ()),
        )
    return defs, frozenset(data.get("_virtual", ()))


def all_defs() -> dict[str, NodeDef]:
    return _load()[0]


def virtual_types() -> frozenset[str]:
    return _load()[1]


def get(class_type: str, node_id: Any = None) -> NodeDef:
    node = all_defs().get(class_type)
    if node is None:
        where = f" (node {node_id})" if node_id is not None else ""
        raise WorkflowError(f"unsupported node {class_type!r}{where}: not a ComfyUI core node of 0.3.64 nor one of "
                            "the supported packs (IPAdapter-Flux/FluxChroma, SDNQ, OmniX, TurboDiffusion, Nunchaku)")
    return node


def types_match(wanted: str, given: str) -> bool:
    """ComfyUI's link type rule: equal, ``*`` on either side, or comma unions that overlap."""
    if wanted == given or "*" in (wanted, given):
        return True
    return bool(set(wanted.split(",")) & set(given.split(",")))


def check_value(node: NodeDef, spec: InputDef, value: Any) -> str | None:
    """What is wrong with a literal ``value`` for this input, or None. Model-file combos accept any file name (the
    options are the files in the user's folders); nodes that validate an input themselves skip range and combo
    checks for it, as ComfyUI does."""
    if spec.type == "COMBO":
        if spec.name in node.file_combos or spec.name in node.self_validated:
            return None if isinstance(value, str) and value else "needs a file name"
        if value not in spec.choices:
            shown = ", ".join(map(repr, spec.choices[:8])) + (" …" if len(spec.choices) > 8 else "")
            return f"{value!r} is not one of {shown}"
        if any(type(value) is not type(c) for c in spec.choices if c == value):  # 4 is not "4" (INT combos)
            return f"{value!r} has the wrong type for options {spec.choices!r}"
        return None
    if spec.type == "INT":
        if isinstance(value, bool) or not isinstance(value, int):
            return f"must be a whole number, got {value!r}"
    elif spec.type == "FLOAT":
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            return f"must be a number, got {value!r}"
    elif spec.type == "BOOLEAN":
        if not isinstance(value, bool):
            return f"must be true or false, got {value!r}"
        return None
    elif spec.type == "STRING":
        return None if isinstance(value, str) else f"must be text, got {value!r}"
    else:
        return f"is a {spec.type} input and needs a link, got the value {value!r}"
    if spec.name in node.self_validated:
        return None
    lo, hi = spec.options.get("min"), spec.options.get("max")
    if lo is not None and value < lo:
        return f"{value} is below the minimum {lo}"
    if hi is not None and value > hi:
        return f"{value} is above the maximum {hi}"
    return None
