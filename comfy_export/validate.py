"""Checks of an API-format prompt against the node definitions, as ComfyUI's ``validate_prompt`` makes them, plus
what offline validators skip: every class exists; at least one output node; for the nodes that feed an output
(the only ones ComfyUI validates) every required input is there, every link points at an existing node and output
of the right type, every literal fits its type, range and combo options, and the graph has no cycle."""

from __future__ import annotations

from typing import Any

from . import limits, node_defs
from .errors import WorkflowError


def is_link(value: Any) -> bool:
    return (isinstance(value, list) and len(value) == 2 and isinstance(value[0], str)
            and isinstance(value[1], int) and not isinstance(value[1], bool))


def _shape(api: Any) -> list[str]:
    if not isinstance(api, dict) or not api:
        return ["an API workflow is a non-empty object of node id -> node"]
    if len(api) > limits.MAX_NODES:
        return [limits.too_many_nodes(len(api))]
    problems = []
    for nid, node in api.items():
        if not isinstance(node, dict) or not isinstance(node.get("class_type"), str):
            problems.append(f"node {nid}: no class_type")
        elif not isinstance(node.get("inputs", {}), dict):
            problems.append(f"node {nid} ({node['class_type']}): inputs must be an object")
    return problems


def feeding_outputs(api: dict) -> list[str]:
    """Ids of the output nodes and of every node they depend on (an iterative walk with a set: linear in the
    graph, whatever its depth)."""
    defs = node_defs.all_defs()
    outputs = [nid for nid, n in api.items() if defs.get(n["class_type"]) is not None
               and defs[n["class_type"]].output_node]
    seen: set[str] = set()
    order: list[str] = []
    stack = list(outputs)
    while stack:
        nid = stack.pop()
        if nid in seen or nid not in api:
            continue
        seen.add(nid)
        order.append(nid)
        stack.extend(v[0] for v in api[nid].get("inputs", {}).values() if is_link(v))
    return order


def _cycle(api: dict, ids: list[str]) -> list[str] | None:
    """A cycle among the links of ``ids`` (the node path, first node repeated at the end), or None. Depth-first
    with an explicit stack, so a chain of any length neither recurses nor slows down."""
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    for root in ids:
        if root in state:
            continue
        path: list[str] = [root]
        on_path: dict[str, int] = {root: 0}
        state[root] = 1
        pending = [iter(api[root].get("inputs", {}).values())]
        while pending:
            child = next((v[0] for v in pending[-1] if is_link(v) and v[0] in api and state.get(v[0]) != 2), None)
            if child is None:
                done = path.pop()
                on_path.pop(done)
                state[done] = 2
                pending.pop()
                continue
            if state.get(child) == 1:
                return path[on_path[child]:] + [child]
            state[child] = 1
            on_path[child] = len(path)
            path.append(child)
            pending.append(iter(api[child].get("inputs", {}).values()))
    return None


def problems(api: Any, strict: bool = True) -> list[str]:
    """Everything wrong with ``api``; ``strict`` also flags inputs a node does not have (our exports never
    write any; ComfyUI itself ignores them)."""
    found = _shape(api)
    if found:
        return found
    defs = node_defs.all_defs()
    for nid, node in api.items():
        if node["class_type"] not in defs:
            try:
                node_defs.get(node["class_type"], nid)
            except WorkflowError as exc:  # its message names the node and the packs we know
                found.append(str(exc))
    if found:
        return found
    reachable = feeding_outputs(api)
    if not reachable:
        return ["no output node (SaveImage, PreviewImage, a save-video node…): ComfyUI would run nothing"]
    cycle = _cycle(api, reachable)
    if cycle:
        return ["the links form a cycle: " + " -> ".join(f"{n} ({api[n]['class_type']})" for n in cycle)]
    for nid in reachable:
        node = api[nid]
        definition = defs[node["class_type"]]
        inputs = node.get("inputs", {})
        where = f"node {nid} ({definition.name})"
        for spec in definition.inputs:
            if spec.name not in inputs:
                if spec.required:
                    found.append(f"{where}: required input {spec.name!r} is missing")
                continue
            value = inputs[spec.name]
            if is_link(value):
                src = api.get(value[0])
                if src is None:
                    found.append(f"{where}: {spec.name} links to node {value[0]}, which does not exist")
                    continue
                outputs = defs[src["class_type"]].outputs
                if not 0 <= value[1] < len(outputs):
                    found.append(f"{where}: {spec.name} links to output {value[1]} of node {value[0]} "
                                 f"({src['class_type']}), which has {len(outputs)} outputs")
                elif not node_defs.types_match(spec.type if not spec.is_widget else _widget_type(spec),
                                               outputs[value[1]]):
                    found.append(f"{where}: {spec.name} wants {spec.type} but node {value[0]} output {value[1]} is "
                                 f"{outputs[value[1]]}")
                continue
            if isinstance(value, list) and len(value) == 2:
                found.append(f"{where}: {spec.name} is a malformed link {value!r} (node id must be a string)")
                continue
            problem = node_defs.check_value(definition, spec, value)
            if problem:
                found.append(f"{where}: {spec.name} {problem}")
        if strict:
            known = {s.name for s in definition.inputs}
            found.extend(f"{where}: has no input {name!r}" for name in inputs if name not in known)
    return found


def _widget_type(spec: node_defs.InputDef) -> str:
    return "*" if spec.type == "COMBO" else spec.type  # a linked combo takes any COMBO/STRING source


def check(api: Any, strict: bool = True) -> None:
    found = problems(api, strict)
    if found:
        more = f" (and {len(found) - 1} more)" if len(found) > 1 else ""
        raise WorkflowError(found[0] + more, found)
