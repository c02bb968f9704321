"""The Gradio app: builds typed requests, runs them on the engine, shows results. No torch here."""

from .gradio_import import skip_stub_regeneration

skip_stub_regeneration()  # before gradio loads: half of its import time is rewriting type stubs nobody reads here

from .shell import build_app, launch_options  # noqa: E402

__all__ = ["build_app", "launch_options"]
