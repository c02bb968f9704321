"""Requests to ComfyUI workflow JSON (API and UI formats).

Not built yet: the package exists so the layout and its import contract (no torch, no gradio)
are in place before the exporter lands. The engine already saves every run's request JSON,
which is what the exporter will read.
"""
