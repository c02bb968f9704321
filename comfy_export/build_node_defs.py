"""Writes ``node_defs.json``: the node definitions the exporter and importer check against, as data.

Run from the repository root with ComfyUI's own ``/object_info`` dump (ComfyUI 0.3.64 with the six packs; the
team's copy is ``../shared/reference/comfy_object_info.json``)::

    python -m comfy_export.build_node_defs ../shared/reference/comfy_object_info.json

Every node of the dump is kept (tooltips and descriptions dropped: the checks never read them), with the
``_validation_hints`` (which combos list model files, which nodes validate themselves). Added, each marked with its
``_origin``, are definitions the dump cannot hold:

- the FluxChroma fork of seed 000: the IPAdapter-Flux nodes renamed, the Apply nodes with ``offload_preprocessing``;
- SDNQ's ``SDNQModelQuantizer`` (comfyui-sdnq commit 6c6c85d; unregistered at the dumped HEAD);
- nodes of newer ComfyUI cores that the official templates use (primitives, switch, math expression), for import
  only: an export never writes them.
"""

from __future__ import annotations

import copy
import json
import sys
from pathlib import Path

OUT = Path(__file__).with_name("node_defs.json")
DROP_KEYS = ("tooltip", "description", "output_tooltips")

FLUXCHROMA = {  # seed 000, section 1 (names) and 4 (offload_preprocessing on the Apply nodes)
    "IPAdapterFluxLoader": ("IPAdapterFluxChromaLoader", "Load IPAdapter Flux Model (Chroma)"),
    "ApplyIPAdapterFlux": ("ApplyIPAdapterFluxChroma", "Apply IPAdapter Flux Model (Chroma)"),
    "IPAdapterFluxLoaderAdvanced": ("IPAdapterFluxChromaLoaderAdvanced", "Load IPAdapter Flux Model Advanced (Chroma)"),
    "ApplyIPAdapterFluxAdvanced": ("ApplyIPAdapterFluxChromaAdvanced", "Apply IPAdapter Flux Model Advanced (Chroma)"),
}

SDNQ_QUANTIZER = {  # comfy_nodes.md section 4: registered only at comfyui-sdnq 6c6c85d
    "input": {
        "required": {"model": ["MODEL", {}],
                     "quant_type": [["int8", "int6", "uint4", "float8_e4m3fn"], {"default": "int8"}],
                     "output_name": ["STRING", {"default": "my-quantized-model", "multiline": False}]},
        "optional": {"use_svd": ["BOOLEAN", {"default": False}],
                     "svd_rank": ["INT", {"default": 32, "min": 8, "max": 128, "step": 8}],
                     "group_size": ["INT", {"default": 0, "min": 0, "max": 256}]},
    },
    "input_order": {"required": ["model", "quant_type", "output_name"], "optional": ["use_svd", "svd_rank", "group_size"]},
    "output": ["STRING"], "output_is_list": [False], "output_name": ["model_path"], "name": "SDNQModelQuantizer",
    "display_name": "SDNQ Model Quantizer", "python_module": "custom_nodes.comfyui-sdnq", "category": "loaders/SDNQ",
    "output_node": True, "_origin": "EnragedAntelope/comfyui-sdnq@6c6c85d (comfy_nodes.md section 4)",
}


def _simple(name: str, inputs: dict, order: list[str], outputs: list[str], names: list[str] | None = None) -> dict:
    return {"input": {"required": inputs}, "input_order": {"required": order}, "output": outputs,
            "output_is_list": [False] * len(outputs), "output_name": names or outputs, "name": name,
            "display_name": name, "python_module": "comfy_extras (newer than 0.3.64)", "category": "utils",
            "output_node": False, "_origin": "newer ComfyUI core, as the official templates save it; import only",
            "_import_only": True}


SEED = {"default": 0, "min": -(2**63), "max": 2**64 - 1, "control_after_generate": True}
IMPORT_ONLY = {
    "PrimitiveInt": _simple("PrimitiveInt", {"value": ["INT", SEED]}, ["value"], ["INT"]),
    "PrimitiveFloat": _simple("PrimitiveFloat", {"value": ["FLOAT", {"default": 0.0, "min": -1e300, "max": 1e300}]},
                              ["value"], ["FLOAT"]),
    "PrimitiveBoolean": _simple("PrimitiveBoolean", {"value": ["BOOLEAN", {"default": False}]}, ["value"], ["BOOLEAN"]),
    "PrimitiveString": _simple("PrimitiveString", {"value": ["STRING", {"default": ""}]}, ["value"], ["STRING"]),
    "PrimitiveStringMultiline": _simple("PrimitiveStringMultiline",
                                        {"value": ["STRING", {"default": "", "multiline": True}]},
                                        ["value"], ["STRING"]),
    "ComfySwitchNode": _simple("ComfySwitchNode", {"on_false": ["*", {}], "on_true": ["*", {}],
                                                   "switch": ["BOOLEAN", {"default": False}]},
                               ["on_false", "on_true", "switch"], ["*"], ["output"]),
    "ComfyMathExpression": _simple("ComfyMathExpression", {"expression": ["STRING", {"default": "a"}]},
                                   ["expression"], ["FLOAT", "INT", "BOOLEAN"], ["FLOAT", "INT", "BOOL"]),
}
IMPORT_ONLY["ComfyMathExpression"]["input"]["optional"] = {f"values.{k}": ["FLOAT,INT,BOOLEAN", {}] for k in "abc"}
IMPORT_ONLY["ComfyMathExpression"]["input_order"]["optional"] = [f"values.{k}" for k in "abc"]
#: frontend-only nodes: never executed, dropped from the API format
VIRTUAL = ["Note", "MarkdownNote", "Reroute", "PrimitiveNode", "GetNode", "SetNode"]


def _strip(value):
    if isinstance(value, dict):
        return {k: _strip(v) for k, v in value.items() if k not in DROP_KEYS}
    if isinstance(value, list):
        return [_strip(v) for v in value]
    return value


def build(object_info: dict) -> dict:
    nodes = {name: _strip(spec) for name, spec in object_info.items() if not name.startswith("_")}
    for name in nodes:
        nodes[name]["_origin"] = "ComfyUI 0.3.64 /object_info"
    hints = copy.deepcopy(object_info.get("_validation_hints", {}))
    for original, (renamed, title) in FLUXCHROMA.items():
        spec = copy.deepcopy(nodes[original])
        spec.update(name=renamed, display_name=title, python_module="custom_nodes.ComfyUI-IPAdapter-FluxChroma",
                    _origin=f"seed 000: {original} renamed by the FluxChroma fork")
        if original.startswith("Apply"):
            spec["input"]["required"]["offload_preprocessing"] = [
                "BOOLEAN", {"default": True, "label_on": "enabled", "label_off": "disabled"}]
            spec["input_order"]["required"].append("offload_preprocessing")
        nodes[renamed] = spec
        if original in hints:
            hints[renamed] = copy.deepcopy(hints[original])
    nodes["SDNQModelQuantizer"] = SDNQ_QUANTIZER
    flux_dit = nodes.get("NunchakuFluxDiTLoader")
    if flux_dit:  # dumped without a GPU: widen the GPU-dependent options to what a GPU machine lists (_source)
        required = flux_dit["input"]["required"]
        required["attention"][0] = ["nunchaku-fp16", "flash-attention2"]
        required["data_type"][0] = ["bfloat16", "float16"]
        required["device_id"][1]["max"] = 15
        flux_dit["_origin"] += "; attention/data_type/device_id widened (they depend on the GPUs present)"
    nodes.update(IMPORT_ONLY)
    return {"_source": object_info.get("_source", {}).get("comfyui", {}), "_virtual": VIRTUAL,
            "_validation_hints": {k: v for k, v in hints.items() if not k.startswith("_")}, "nodes": nodes}


def main(argv: list[str]) -> int:
    if len(argv) != 1:
        print(__doc__)
        return 2
    data = build(json.loads(Path(argv[0]).read_text(encoding="utf-8")))
    OUT.write_text(json.dumps(data, indent=None, separators=(",", ":"), sort_keys=True) + "\n", encoding="utf-8")
    print(f"wrote {OUT} ({len(data['nodes'])} nodes)")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
