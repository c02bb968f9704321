"""How big a workflow the import reads: far above any real one, low enough that no upload can stall the server.
A real ComfyUI workflow has tens to a few hundred nodes and is kilobytes to a few MB of JSON; these limits cost a
valid import nothing and answer a hostile one within a fraction of a second."""

from __future__ import annotations

import re

from .errors import WorkflowError

MAX_NODES = 5_000  # nodes of a workflow, subgraph instances flattened
MAX_LINKS = 4 * MAX_NODES
MAX_JSON_BYTES = 8 * 2**20  # the JSON text of a workflow, a file or a PNG's text chunk
MAX_JSON_DEPTH = 100  # nesting of arrays and objects; ComfyUI's formats nest under 15 deep
# A JSON string, unrolled so that the regex engine runs without backtracking per character.
_STRING = re.compile(rb'"[^"\\]*(?:\\.[^"\\]*)*"', re.S)
_NOT_BRACKETS = bytes(b for b in range(256) if b not in b"[]{}")


def too_many_nodes(count: int) -> str:
    return f"the workflow has {count} nodes; the import reads at most {MAX_NODES} (real workflows have a few hundred)"


def too_many_links(count: int) -> str:
    return f"the workflow has {count} links; the import reads at most {MAX_LINKS}"


def check_text(text: str | bytes) -> None:
    """Refuse JSON text too long or nested too deep before it is parsed (``json.loads`` recurses per level and
    ends in RecursionError on a deep array). The scan is a few passes of C-speed byte operations: strings out,
    everything but brackets out, then innermost pairs removed once per level."""
    data = text.encode("utf-8", "surrogatepass") if isinstance(text, str) else bytes(text)
    if len(data) > MAX_JSON_BYTES:
        raise WorkflowError(f"the workflow text is {len(data) / 2**20:.1f} MB; the import reads at most "
                            f"{MAX_JSON_BYTES >> 20} MB ({MAX_NODES} nodes)")
    brackets = _STRING.sub(b"", data).translate(None, _NOT_BRACKETS)
    for _ in range(MAX_JSON_DEPTH):
        shorter = brackets.replace(b"[]", b"").replace(b"{}", b"")
        if shorter == brackets:  # nothing left to pair: empty when valid
            if len(brackets) > MAX_JSON_DEPTH:  # brackets that never close, the parser would recurse into them
                raise WorkflowError("not valid JSON: its brackets [ ] { } do not pair up")
            return  # the parser now says where anything else is wrong, without deep recursion
        brackets = shorter
    if brackets:
        raise WorkflowError(f"the JSON is nested more than {MAX_JSON_DEPTH} levels deep; a ComfyUI workflow nests "
                            "under 15")

def check_api_size(api: dict) -> None:
    if len(api) > MAX_NODES:
        raise WorkflowError(too_many_nodes(len(api)))
