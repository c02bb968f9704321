"""Make ``import gradio`` cheaper for a server. Imports nothing heavy itself: it must run before gradio loads.

Gradio's ``ComponentMeta`` regenerates the ``.pyi`` type stub of every component class each time gradio is
imported (``gradio.component_meta.create_or_modify_pyi``: read the class's source, parse it with ``ast``, render a
template, compare with the ``.pyi`` on disk). The stubs ship in Gradio's wheel and only matter to an editor, yet
this is about half of ``import gradio`` (1.0 of 2.2 s on 2 cores, Gradio 6.31) and it writes into site-packages
when the files differ. Gradio has no switch for it, so the module is patched as it loads: the stub step becomes a
no-op and everything else in it is untouched. If a later Gradio drops or renames the function, nothing is patched.
"""

from __future__ import annotations

import importlib.abc
import importlib.machinery
import sys

STUB_MODULE = "gradio.component_meta"
STUB_FUNCTION = "create_or_modify_pyi"


def _keep_stubs_as_shipped(*_args, **_kwargs) -> None:
    """Stands in for gradio's stub regeneration: the shipped ``.pyi`` files stay as they are."""


class _StubSkipper(importlib.abc.MetaPathFinder):
    """Finds ``gradio.component_meta`` the normal way and wraps its loader, once; then steps aside."""

    def find_spec(self, name, path, target=None):
        if name != STUB_MODULE:
            return None
        sys.meta_path.remove(self)
        spec = importlib.machinery.PathFinder.find_spec(name, path, target)
        if spec is None or spec.loader is None or not hasattr(spec.loader, "exec_module"):
            return spec
        exec_module = spec.loader.exec_module

        def exec_then_patch(module):
            exec_module(module)
            if callable(getattr(module, STUB_FUNCTION, None)):
                setattr(module, STUB_FUNCTION, _keep_stubs_as_shipped)

        spec.loader.exec_module = exec_then_patch  # this one loader instance, for this one module
        return spec


def skip_stub_regeneration() -> bool:
    """Install the patch if gradio has not been imported yet; True when it will apply."""
    if STUB_MODULE in sys.modules:
        return getattr(sys.modules[STUB_MODULE], STUB_FUNCTION, None) is _keep_stubs_as_shipped
    if not any(isinstance(finder, _StubSkipper) for finder in sys.meta_path):
        sys.meta_path.insert(0, _StubSkipper())
    return True
