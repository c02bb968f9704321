"""Adapters that change how a base model computes: the InstantX Flux IP-Adapter (Flux and Chroma), and LoRA
stacks (file formats, composition, Nunchaku)."""
