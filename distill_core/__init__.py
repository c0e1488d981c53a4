"""DP-DMD Studio core: distil a multi-step teacher into a few-step student that keeps its diversity.

The package imports nothing heavy at top level. docs/design.md describes the parts (config, schedules,
teachers, method, train, checkpoint, export, evaluate, cli); docs/method.md the equations each implements.
"""
__version__ = "0.1.0"
