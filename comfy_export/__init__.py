"""Requests to ComfyUI workflows and back.

- ``to_api(request)``: the API (``/prompt``) format; ``to_workflow(request)``: the UI (editor) format. Both come
  from one graph builder per request kind and are validated against the node definitions (``node_defs.json``:
  ComfyUI 0.3.64's ``/object_info`` with the six packs, kept as data by ``build_node_defs``).
- ``from_workflow(data)``: an API or UI workflow (a dict, JSON text, or PNG bytes with ComfyUI's metadata) of these
  packs or the matching core graphs, ComfyUI's official templates included, back to a request.
- ``png_text(request)``: the ``prompt`` and ``workflow`` PNG text chunks ComfyUI writes.

Bad input raises ``WorkflowError`` with a message naming the node and input.
"""

from .errors import WorkflowError
from .export import both, to_api, to_workflow
from .importer import from_workflow, load_workflow
from .pngmeta import png_text, read_png_text
from .ui_to_api import ui_to_api

__all__ = ["WorkflowError", "both", "from_workflow", "load_workflow", "png_text", "read_png_text", "to_api",
           "to_workflow", "ui_to_api"]
