"""Reading an API-format graph for import: values through primitive, switch and math nodes (the official
templates wire their settings that way), the nodes that really feed an output, and walks up a chain of inputs."""

from __future__ import annotations

import ast
import math
from typing import Any

from .errors import WorkflowError
from .validate import is_link

PRIMITIVES = ("PrimitiveInt", "PrimitiveFloat", "PrimitiveBoolean", "PrimitiveString", "PrimitiveStringMultiline")
SWITCH, MATH = "ComfySwitchNode", "ComfyMathExpression"
MATH_FUNCS = {"floor": math.floor, "ceil": math.ceil, "round": round, "min": min, "max": max, "abs": abs, "int": int,
              "float": float}
_OPS = (ast.Add, ast.Sub, ast.Mult, ast.Div, ast.FloorDiv, ast.Mod, ast.Pow, ast.USub, ast.UAdd)


def _math(expression: str, names: dict[str, Any]) -> Any:
    """A ComfyMathExpression value: arithmetic on a, b, c and a few functions, nothing else evaluated."""
    try:
        tree = ast.parse(str(expression), mode="eval")
    except SyntaxError:
        return None

    def ev(node):
        if isinstance(node, ast.Expression):
            return ev(node.body)
        if isinstance(node, ast.Constant) and isinstance(node.value, (int, float)):
            return node.value
        if isinstance(node, ast.Name) and node.id in names:
            return names[node.id]
        if isinstance(node, ast.BinOp) and isinstance(node.op, _OPS):
            return _binop(node.op, ev(node.left), ev(node.right))
        if isinstance(node, ast.UnaryOp) and isinstance(node.op, _OPS):
            v = ev(node.operand)
            return -v if isinstance(node.op, ast.USub) else v
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id in MATH_FUNCS:
            return MATH_FUNCS[node.func.id](*[ev(a) for a in node.args])
        raise ValueError("unsupported expression")

    try:
        return ev(tree)
    except (ValueError, TypeError, ZeroDivisionError, OverflowError):
        return None


def _binop(op, a, b):
    if isinstance(op, ast.Pow) and abs(b) > 64:
        raise ValueError("exponent too large")
    return {ast.Add: lambda: a + b, ast.Sub: lambda: a - b, ast.Mult: lambda: a * b, ast.Div: lambda: a / b,
            ast.FloorDiv: lambda: a // b, ast.Mod: lambda: a % b, ast.Pow: lambda: a ** b}[type(op)]()


class ReadGraph:
    def __init__(self, api: dict[str, Any]):
        self.api = api
        self.reachable = self._reachable()

    def type(self, nid: str) -> str:
        return self.api[nid]["class_type"]

    def raw(self, nid: str, name: str) -> Any:
        return self.api[nid].get("inputs", {}).get(name)

    def source(self, nid: str, name: str, depth: int = 0) -> tuple[str, int] | None:
        """The node and output feeding an input, through switches (their chosen branch)."""
        value = self.raw(nid, name)
        if not is_link(value) or value[0] not in self.api or depth > 100:
            return None
        src, slot = value[0], value[1]
        if self.type(src) == SWITCH:
            return self.source(src, "on_true" if self.value(src, "switch") else "on_false", depth + 1)
        return src, slot

    def node(self, nid: str, name: str) -> str | None:
        found = self.source(nid, name)
        return found[0] if found else None

    def value(self, nid: str, name: str, default: Any = None, depth: int = 0) -> Any:
        """A literal input, or the value a primitive / switch / math node gives it."""
        value = self.raw(nid, name)
        if not is_link(value):
            return default if value is None else value
        if depth > 100:
            raise WorkflowError("the value links loop (a cycle)")
        found = self.source(nid, name)
        if not found:
            return default
        src, slot = found
        kind = self.type(src)
        if kind in PRIMITIVES:
            return self.value(src, "value", default, depth + 1)
        if kind == MATH:
            names = {k: self.value(src, f"values.{k}", None, depth + 1) for k in "abc"}
            result = _math(self.value(src, "expression", "", depth + 1), {k: v for k, v in names.items()
                                                                        if v is not None})
            if result is None:
                return default
            return [float, int, bool][slot](result) if slot < 3 else result
        return default

    def _reachable(self) -> list[str]:
        from . import node_defs

        defs = node_defs.all_defs()
        outputs = [n for n, v in self.api.items() if v["class_type"] in defs and defs[v["class_type"]].output_node]
        seen: set[str] = set()  # a set: the walk stays linear on a graph of thousands of nodes
        order: list[str] = []
        stack = list(outputs)
        while stack:
            nid = stack.pop()
            if nid in seen:
                continue
            seen.add(nid)
            order.append(nid)
            for name in self.api[nid].get("inputs", {}):
                found = self.source(nid, name)
                if found:
                    stack.append(found[0])
                    if self.type(found[0]) in PRIMITIVES + (MATH,):
                        continue
                raw = self.raw(nid, name)
                if is_link(raw) and raw[0] in self.api and self.type(raw[0]) == SWITCH:
                    stack.append(raw[0])  # the switch itself, for its own inputs (the chosen side only)
        return order

    def of_type(self, *types: str) -> list[str]:
        return [n for n in self.reachable if self.type(n) in types]

    def up(self, nid: str | None, name: str, through: dict[str, str]) -> tuple[str | None, list[str]]:
        """Walk up ``name`` while the node is one of ``through`` (type -> its input to follow); returns the first
        other node and the passed nodes, nearest first."""
        passed: list[str] = []
        current = self.node(nid, name) if nid else None
        while current is not None and self.type(current) in through and len(passed) < 500:
            passed.append(current)
            current = self.node(current, through[self.type(current)])
        return current, passed
