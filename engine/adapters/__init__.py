"""Adapters that change how a base model computes: the InstantX Flux IP-Adapter (Flux and Chroma), LoRA
stacks (file formats, composition, Nunchaku), and OmniX's task adapter pairs (attached for one run, then removed)."""
