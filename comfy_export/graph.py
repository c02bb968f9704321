"""One graph, two formats: the builder every request kind uses, written out as ComfyUI's API (``/prompt``) format
or its UI (editor, schema 0.4) format: nodes laid out left to right by stage, the links table, ``widgets_values``
in each node's widget order (with the frontend's extra values after seed and upload widgets), a group per stage."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, NamedTuple

from . import node_defs
from .errors import WorkflowError

COLUMN_W, NODE_W, GAP_Y, PAD = 420, 340, 40, 30
UI_EXTRA = {"control_after_generate": "fixed", "image_upload": "image"}  # what the frontend stores after them
PACK_IDS = {  # properties.cnr_id / aux_id, as the frontend records the registry id of a node's pack
    "ComfyUI core": ("comfy-core", ""),
    "ComfyUI-IPAdapter-Flux": ("comfyui-ipadapter-flux", "Shakker-Labs/ComfyUI-IPAdapter-Flux"),
    "comfyui-sdnq": ("comfyui-sdnq", "EnragedAntelope/comfyui-sdnq"),
    "ComfyUI-OmniX": ("", "cedarconnor/ComfyUI-OmniX"),
    "Comfyui_turbodiffusion_blockswap": ("comfyui-turbodiffusion", "freezelion/Comfyui_turbodiffusion_blockswap"),
    "ComfyUI-nunchaku": ("ComfyUI-nunchaku", "nunchaku-ai/ComfyUI-nunchaku"),
    "ComfyUI-QwenImageLoraLoader": ("ComfyUI-QwenImageLoraLoader", "ussoewwin/ComfyUI-QwenImageLoraLoader"),
}


class Out(NamedTuple):
    """An output socket: node id and output index."""

    node: int
    slot: int
    type: str


@dataclass
class Node:
    id: int
    definition: node_defs.NodeDef
    title: str
    group: str
    inputs: dict[str, Any]
    mode: int = 0  # 4 = bypassed (the UI keeps it; the API format passes its input through)

    @property
    def class_type(self) -> str:
        return self.definition.name

    def __getitem__(self, slot: int) -> Out:
        return Out(self.id, slot, self.definition.outputs[slot])


@dataclass
class Graph:
    """Nodes added in execution order; ``notes`` become a Note node (UI) and ``extra`` data (both)."""

    notes: list[str] = field(default_factory=list)
    nodes: list[Node] = field(default_factory=list)
    extra: dict[str, Any] = field(default_factory=dict)

    def add(self, class_type: str, group: str, title: str = "", mode: int = 0, **inputs: Any) -> Node:
        definition = node_defs.get(class_type)
        if definition.import_only:
            raise WorkflowError(f"{class_type} is known for import only; an export never writes it")
        values: dict[str, Any] = {}
        for spec in definition.inputs:
            if spec.name in inputs:
                value = inputs.pop(spec.name)
                if value is None:
                    continue
                if isinstance(value, Out):
                    if spec.is_widget or not node_defs.types_match(spec.type, value.type):
                        raise WorkflowError(f"{class_type}.{spec.name} ({spec.type}) cannot take a {value.type} link")
                else:
                    value = self._fit(definition, spec, value, title or definition.title)
                values[spec.name] = value
            elif spec.is_widget:
                values[spec.name] = spec.default  # the frontend saves every widget, optional ones included
        if inputs:
            raise WorkflowError(f"{class_type} has no input {sorted(inputs)[0]!r}")
        missing = [s.name for s in definition.inputs if s.required and s.name not in values]
        if missing:
            raise WorkflowError(f"{class_type} needs its input {missing[0]!r}")
        node = Node(len(self.nodes) + 1, definition, title or definition.title, group, values, mode)
        self.nodes.append(node)
        return node

    def _fit(self, definition: node_defs.NodeDef, spec: node_defs.InputDef, value: Any, title: str) -> Any:
        """A request value the node cannot hold: a number outside the node's range is clamped (and the notes
        say so); anything else is a builder bug, raised."""
        problem = node_defs.check_value(definition, spec, value)
        if problem is None:
            return value
        lo, hi = spec.options.get("min"), spec.options.get("max")
        if spec.type in ("INT", "FLOAT") and isinstance(value, (int, float)) and not isinstance(value, bool):
            fitted = min(max(value, lo if lo is not None else value), hi if hi is not None else value)
            self.notes.append(f"{title}: {spec.name} {value} is outside the node's range {lo}..{hi}; "
                              f"written as {fitted}.")
            return fitted
        raise WorkflowError(f"{title}: {spec.name} {problem}")

    def _through(self, value: Out) -> Out | None:
        """The socket behind ``value`` once bypassed nodes pass their matching input through."""
        node = self.nodes[value.node - 1]
        if node.mode != 4:
            return value
        links = [v for v in node.inputs.values() if isinstance(v, Out) and v.type == value.type]
        return self._through(links[0]) if links else None

    # ------------------------------------------------------------ API format
    def to_api(self) -> dict[str, Any]:
        api: dict[str, Any] = {}
        for node in self.nodes:
            if node.mode == 4:
                continue
            inputs = {}
            for name, v in node.inputs.items():
                if isinstance(v, Out):
                    v = self._through(v)
                    if v is None:
                        continue
                    inputs[name] = [str(v.node), v.slot]
                else:
                    inputs[name] = v
            api[str(node.id)] = {"inputs": inputs, "class_type": node.class_type, "_meta": {"title": node.title}}
        return api

    # ------------------------------------------------------------ UI format
    def _layout(self) -> tuple[dict[int, list[float]], dict[int, list[float]], list[dict]]:
        stages = list(dict.fromkeys(n.group for n in self.nodes))
        pos: dict[int, list[float]] = {}
        size: dict[int, list[float]] = {}
        heights = [0.0] * len(stages)
        for node in self.nodes:
            col = stages.index(node.group)
            rows = max(len(node.definition.links), len(node.definition.outputs)) + len(node.definition.widgets)
            size[node.id] = [NODE_W, 46.0 + 26.0 * rows]
            pos[node.id] = [col * COLUMN_W + PAD, 80.0 + heights[col]]
            heights[col] += size[node.id][1] + GAP_Y
        groups = []
        for col, stage in enumerate(stages):
            members = [n.id for n in self.nodes if n.group == stage]
            top = min(pos[i][1] for i in members) - 40
            bottom = max(pos[i][1] + size[i][1] for i in members) + 10
            groups.append({"id": col + 1, "title": stage, "bounding": [col * COLUMN_W + 10, top, NODE_W + 40,
                                                                      bottom - top],
                           "color": "#3f789e", "font_size": 24, "flags": {}})
        return pos, size, groups

    def to_workflow(self) -> dict[str, Any]:
        pos, size, groups = self._layout()
        links: list[list] = []
        out_links: dict[tuple[int, int], list[int]] = {}
        ui_nodes = []
        for order, node in enumerate(self.nodes):
            ui_inputs = []
            for spec in node.definition.links:
                value = node.inputs.get(spec.name)
                link_id = None
                if isinstance(value, Out):
                    link_id = len(links) + 1
                    links.append([link_id, value.node, value.slot, node.id, len(ui_inputs), value.type])
                    out_links.setdefault((value.node, value.slot), []).append(link_id)
                entry = {"name": spec.name, "type": spec.type, "link": link_id}
                if not spec.required:
                    entry["shape"] = 7  # the frontend draws optional sockets hollow
                ui_inputs.append(entry)
            widgets = []
            for spec in node.definition.widgets:
                widgets.append(node.inputs[spec.name])
                widgets += [extra for key, extra in UI_EXTRA.items() if spec.options.get(key)]
            cnr_id, aux_id = PACK_IDS.get(node.definition.pack, ("", ""))
            properties: dict[str, Any] = {"Node name for S&R": node.class_type}
            if cnr_id:
                properties["cnr_id"] = cnr_id
            if aux_id:
                properties["aux_id"] = aux_id
            ui_nodes.append({
                "id": node.id, "type": node.class_type, "pos": pos[node.id], "size": size[node.id], "flags": {},
                "order": order, "mode": node.mode, "inputs": ui_inputs, "outputs": [], "properties": properties,
                "widgets_values": widgets, "title": node.title,
            })
        for ui_node, node in zip(ui_nodes, self.nodes):
            ui_node["outputs"] = [
                {"name": name, "type": kind, "links": out_links.get((node.id, slot)) or None, "slot_index": slot}
                for slot, (name, kind) in enumerate(zip(node.definition.output_names, node.definition.outputs))]
        last_id = len(self.nodes)
        if self.notes:
            last_id += 1
            ui_nodes.append({"id": last_id, "type": "Note", "pos": [PAD, -260], "size": [NODE_W * 2, 220],
                             "flags": {}, "order": len(ui_nodes), "mode": 0, "inputs": [], "outputs": [],
                             "properties": {"text": ""}, "widgets_values": ["\n".join(self.notes)],
                             "title": "Exported by Diffusion Studio", "color": "#432", "bgcolor": "#653"})
        return {
            "last_node_id": last_id, "last_link_id": len(links), "nodes": ui_nodes, "links": links,
            "groups": groups, "config": {}, "extra": {"ds": {"scale": 0.8, "offset": [0, 0]}, **self.extra},
            "version": 0.4,
        }
