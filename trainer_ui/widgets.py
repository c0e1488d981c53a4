"""Gradio components the pages need that Gradio lacks (Gradio writes a .pyi stub next to this file for each
class here, at import: it is git-ignored)."""
from __future__ import annotations

import gradio as gr


class TypedSlider(gr.Slider):
    """A slider whose typed-in value reaches the handler even when out of its range, so that the config check
    refuses it in one line naming the field (gr.Slider raises a bare 'Value 40 is greater than ...' toast and
    logs a traceback). A class, not a patched instance: a session's state rebuilds components from their class."""
    is_template = True  # drawn by the frontend's own slider

    def preprocess(self, payload: float | None) -> float | None:
        return None if payload is None else gr.Number.round_to_precision(payload, self.precision)
