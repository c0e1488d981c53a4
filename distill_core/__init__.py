"""DP-DMD Studio core: distil a multi-step teacher into a few-step student that keeps its diversity.

The package imports nothing heavy at top level; see DESIGN.md for the parts:
config, schedules, teachers, method, train, checkpoint, export, evaluate, cli.
"""
__version__ = "0.1.0"
