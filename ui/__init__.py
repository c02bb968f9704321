"""The Gradio app: builds typed requests, runs them on the engine, shows results. No torch here."""

from .shell import build_app, launch_options

__all__ = ["build_app", "launch_options"]
