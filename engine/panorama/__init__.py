"""Panorama perception around the OmniX runner: ``input`` (2:1 checks, pad/crop), ``seam`` (padding and blending
across 0°/360°), ``tasks`` (the OmniX task table), ``maps`` (depth, normal, albedo, PBR, semantic files) and
``mesh`` (the panorama on its depth sphere as .glb)."""
