"""The shape of ``engine/`` from its imports: nodes, edges and layers, a folder counted as one node.

Every direct child of the package (a module, or a sub-package taken whole) is a node; an edge is "some module in
A imports some module in B" (A != B), counted once. Layers are the longest import chain after folding import
cycles into one node (a cycle is one layer). Used for the before/after figures of the engine regroup.

    python bench/import_graph.py [--package engine] [--root DIR] [--json]
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path


def child_of(module: str, package: str) -> str | None:
    parts = module.split(".")
    if parts[0] != package or len(parts) < 2:
        return None
    return parts[1]


def graph_of(package: str) -> tuple[set[str], set[tuple[str, str]]]:
    import grimp

    g = grimp.build_graph(package, include_external_packages=False)
    nodes, edges = set(), set()
    for module in g.modules:
        a = child_of(module, package)
        if a is None:
            continue
        nodes.add(a)
        for imported in g.find_modules_directly_imported_by(module):
            b = child_of(imported, package)
            if b is not None and b != a:
                edges.add((a, b))
    return nodes, edges


def layers(nodes: set[str], edges: set[tuple[str, str]]) -> int:
    """Longest path (in nodes) of the condensation: Tarjan's strongly connected components, then depth."""
    succ = {n: [] for n in nodes}
    for a, b in edges:
        succ[a].append(b)
    index, low, on, stack, comp, counter = {}, {}, set(), [], {}, [0]

    def strong(v: str) -> None:  # iterative Tarjan: the graphs are small, but keep clear of recursion limits
        work = [(v, iter(succ[v]))]
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on.add(v)
        while work:
            node, it = work[-1]
            nxt = next(it, None)
            if nxt is None:
                work.pop()
                if work:
                    low[work[-1][0]] = min(low[work[-1][0]], low[node])
                if low[node] == index[node]:
                    while True:
                        w = stack.pop()
                        on.discard(w)
                        comp[w] = node
                        if w == node:
                            break
            elif nxt not in index:
                index[nxt] = low[nxt] = counter[0]
                counter[0] += 1
                stack.append(nxt)
                on.add(nxt)
                work.append((nxt, iter(succ[nxt])))
            elif nxt in on:
                low[node] = min(low[node], index[nxt])

    for n in sorted(nodes):
        if n not in index:
            strong(n)
    csucc: dict[str, set[str]] = {c: set() for c in set(comp.values())}
    for a, b in edges:
        if comp[a] != comp[b]:
            csucc[comp[a]].add(comp[b])
    depth: dict[str, int] = {}

    def longest(c: str) -> int:  # a condensation is acyclic and small: plain recursion is fine
        if c not in depth:
            depth[c] = 1 + max((longest(s) for s in csucc[c]), default=0)
        return depth[c]

    return max((longest(c) for c in csucc), default=0)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--package", default="engine")
    p.add_argument("--root", type=Path, default=Path(__file__).resolve().parent.parent,
                   help="the checkout to measure (default: this one)")
    p.add_argument("--json", action="store_true")
    args = p.parse_args()
    sys.path.insert(0, str(args.root))
    nodes, edges = graph_of(args.package)
    figures = {"package": args.package, "nodes": len(nodes), "edges": len(edges), "layers": layers(nodes, edges),
               "top_level_modules": sorted(n for n in nodes if (args.root / args.package / f"{n}.py").exists())}
    if args.json:
        print(json.dumps(figures, indent=2))
    else:
        print(f"{args.package}: {figures['nodes']} nodes (files and packages), {figures['layers']} layers, "
              f"{figures['edges']} import edges")
        print("top-level modules: " + ", ".join(figures["top_level_modules"]))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
