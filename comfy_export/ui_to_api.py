"""UI (editor) format -> API format, as the ComfyUI frontend's graph-to-prompt does it: virtual nodes (notes,
reroutes, legacy primitives) are dropped, bypassed nodes (mode 4) pass a matching input through, muted nodes
(mode 2) are dropped, subgraphs are flattened (inner ids become ``outer:inner``), and ``widgets_values`` map onto
the widget inputs in definition order, skipping the UI-only values after seed and upload widgets."""

from __future__ import annotations

from typing import Any

from . import limits, node_defs
from .errors import WorkflowError

SUBGRAPH_IN, SUBGRAPH_OUT = -10, -20
MAX_DEPTH = 8
MAX_HOPS = 1000
_REAL = object()  # _step's "this socket is a real node's output"
BYPASS, MUTED = 4, 2


def _link_tuple(link: Any) -> tuple:
    if isinstance(link, dict):  # schema 1 and subgraph links
        return (link.get("id"), link.get("origin_id"), link.get("origin_slot"), link.get("target_id"),
                link.get("target_slot"), link.get("type"))
    if isinstance(link, (list, tuple)) and len(link) >= 6:
        return tuple(link[:6])
    raise WorkflowError(f"a link entry is malformed: {str(link)[:80]}")


class _Flat:
    """Every real node of every (sub)graph level, and for each (node, input name) the socket feeding it."""

    def __init__(self, workflow: dict):
        self.subgraphs = {s.get("id"): s for s in (workflow.get("definitions") or {}).get("subgraphs") or []
                          if isinstance(s, dict)}
        self.nodes: dict[str, dict] = {}
        self.kind: dict[str, str] = {}  # id -> "real" | "virtual" | "instance" | "in" | "out"
        self.feeds: dict[tuple[str, str], tuple[str, int]] = {}  # (target id, input name) -> (source id, slot)
        self.first_feed: dict[str, tuple[str, int]] = {}  # target id -> its first feed (a reroute's one input)
        self.instance_of: dict[str, dict] = {}
        self.link_count = 0
        self._level(workflow, "", 0)

    def _level(self, graph: dict, prefix: str, depth: int) -> None:
        if depth > MAX_DEPTH:
            raise WorkflowError(f"subgraphs nested deeper than {MAX_DEPTH} levels")
        nodes = graph.get("nodes")
        if not isinstance(nodes, list):
            raise WorkflowError("a UI workflow needs a 'nodes' list")
        level: dict[str, dict] = {}
        instances: list[str] = []
        if len(self.nodes) + len(nodes) > limits.MAX_NODES:  # subgraph instances multiply: count as we flatten
            raise WorkflowError(limits.too_many_nodes(len(self.nodes) + len(nodes)))
        links = graph.get("links") or []
        self.link_count += len(links) if isinstance(links, list) else 0
        if self.link_count > limits.MAX_LINKS:
            raise WorkflowError(limits.too_many_links(self.link_count))
        for node in nodes:
            if not isinstance(node, dict) or "id" not in node or not isinstance(node.get("type"), str):
                raise WorkflowError(f"a node entry is malformed: {str(node)[:80]}")
            nid = prefix + str(node["id"])
            if nid in self.nodes:
                raise WorkflowError(f"node id {node['id']} is used twice")
            level[str(node["id"])] = node
            self.nodes[nid] = node
            if node["type"] in self.subgraphs:
                self.kind[nid] = "instance"
                self.instance_of[nid] = self.subgraphs[node["type"]]
                instances.append(nid)
            elif node["type"] in node_defs.virtual_types():
                self.kind[nid] = "virtual"
            else:
                self.kind[nid] = "real"
        if prefix:
            self.kind[prefix + "in"] = "in"
            self.kind[prefix + "out"] = "out"
        for raw in graph.get("links") or []:
            if raw is None:
                continue
            _, origin, origin_slot, target, target_slot, _ = _link_tuple(raw)
            if origin is None or target is None:
                continue
            src = prefix + ("in" if origin == SUBGRAPH_IN else str(origin))
            if origin != SUBGRAPH_IN and str(origin) not in level:
                raise WorkflowError(f"a link starts at node {origin}, which does not exist")
            if target == SUBGRAPH_OUT:
                self.feeds[(prefix + "out", str(target_slot))] = (src, int(origin_slot))
                continue
            if str(target) not in level:
                raise WorkflowError(f"a link ends at node {target}, which does not exist")
            node = level[str(target)]
            inputs = node.get("inputs") or []
            if not isinstance(target_slot, int) or not 0 <= target_slot < len(inputs):
                raise WorkflowError(f"a link ends at input {target_slot} of node {target} ({node['type']}), "
                                    "which has no such input")
            self.feeds[(prefix + str(target), inputs[target_slot].get("name"))] = (src, int(origin_slot))
            self.first_feed.setdefault(prefix + str(target), (src, int(origin_slot)))
        for nid in instances:
            self._level(self.instance_of[nid], nid + ":", depth + 1)

    def source(self, nid: str, slot: int) -> tuple[str, int] | None:
        """The real node output behind a socket, through reroutes, bypassed nodes and subgraph borders (a loop,
        not recursion: a long chain of reroutes must neither overflow the stack nor slow the import)."""
        for _ in range(MAX_HOPS):
            feed = self._step(nid, slot)
            if feed is None or feed[0] is None:
                return None
            if feed[0] is _REAL:
                return nid, slot
            nid, slot = feed
        raise WorkflowError(f"the links pass through more than {MAX_HOPS} reroutes, bypassed nodes or subgraph "
                            "borders (a cycle?)")

    def _step(self, nid: str, slot: int) -> tuple[Any, int] | None:
        """One hop back: the socket feeding (nid, slot), ``(_REAL, slot)`` when nid is a real node, None if none."""
        kind = self.kind.get(nid)
        if kind == "in":  # a subgraph input: what feeds the instance's input of that name
            instance = nid[: -len(":in")]
            names = [i.get("name") for i in self.instance_of[instance].get("inputs") or []]
            if not 0 <= slot < len(names):
                return None
            return self.feeds.get((instance, names[slot]))
        if kind == "instance":
            return self.feeds.get((nid + ":out", str(slot)))
        node = self.nodes.get(nid)
        if node is None:
            return None
        if kind == "virtual":
            if node["type"] == "Reroute":
                return self.first_feed.get(nid)
            return None  # notes; legacy PrimitiveNode values already sit in their targets' widgets
        mode = node.get("mode", 0)
        if mode == MUTED:
            return None
        if mode == BYPASS:
            outputs = node.get("outputs") or []
            kind_out = outputs[slot].get("type") if slot < len(outputs) else None
            candidates = [(i, inp) for i, inp in enumerate(node.get("inputs") or []) if inp.get("type") == kind_out]
            candidates.sort(key=lambda c: c[0] != slot)  # the same slot first, as the frontend does
            for _, inp in candidates:
                feed = self.feeds.get((nid, inp.get("name")))
                if feed:
                    return feed
            return None
        return _REAL, slot


def widget_inputs(definition: node_defs.NodeDef, values: Any, nid: str, newer: bool = False) -> dict[str, Any]:
    """``widgets_values`` (a list, or a dict keyed by name) as input values, counted strictly; ``newer``: the node
    was saved by a ComfyUI newer than the definitions, whose extra trailing widgets are ignored."""
    widgets = definition.widgets
    if isinstance(values, dict):
        return {w.name: values[w.name] for w in widgets if w.name in values}
    values = list(values or [])
    expected = sum(1 + w.ui_extras() for w in widgets)
    if len(values) != expected and not (newer and len(values) > expected):
        names = ", ".join(w.name + (" (+1 UI value)" if w.ui_extras() else "") for w in widgets) or "none"
        raise WorkflowError(f"node {nid} ({definition.name}) has {len(values)} widget values; its definition has "
                            f"{expected} ({names})")
    out, i = {}, 0
    for w in widgets:
        out[w.name] = values[i]
        i += 1 + w.ui_extras()
    return out


def ui_to_api(workflow: dict) -> dict[str, Any]:
    """The API-format prompt of a UI-format workflow."""
    flat = _Flat(workflow)
    api: dict[str, Any] = {}
    frontend = str(((workflow.get("extra") or {}).get("frontendVersion")) or "")
    for nid, node in flat.nodes.items():
        if flat.kind[nid] != "real" or node.get("mode", 0) in (BYPASS, MUTED):
            continue
        definition = node_defs.get(node["type"], nid)
        saved_by = str((node.get("properties") or {}).get("ver") or "")
        newer = bool(frontend) and saved_by not in ("", node_defs.COMFY_VERSION)
        inputs = widget_inputs(definition, node.get("widgets_values"), nid, newer)
        for inp in node.get("inputs") or []:
            feed = flat.feeds.get((nid, inp.get("name")))
            src = flat.source(*feed) if feed else None
            if src is not None:
                inputs[inp["name"]] = [src[0], src[1]]
        title = node.get("title") or definition.title
        api[nid] = {"inputs": inputs, "class_type": node["type"], "_meta": {"title": title}}
    return api
