"""The ComfyUI nodes of DP-DMD Studio (thin V3 classes over distill_core).

This package file imports nothing from ComfyUI: ``compute`` is usable (and
tested) without it; ``extension`` builds the node list when ComfyUI loads the pack.
"""
