"""Gradio components the pages need that Gradio lacks (Gradio writes a .pyi stub next to this file for each
class here, at import: it is git-ignored)."""
from __future__ import annotations

import gradio as gr

TYPED_SLIDER_CLASS = "typed-slider"

# Gradio's slider clamps its number box into range when the box loses focus, so a refused k = 40 became k = 30 a
# moment later (a click on Check config or Start is such a blur) and the verdict called that run Ready (issue 29).
# Stopping the blur before it reaches the box keeps what was typed, and with it the refusal, until the user changes
# the value; the range input itself still moves only inside its range.
KEEP_TYPED_JS = f"""() => {{
  window.addEventListener('blur', (e) => {{
    const box = e.target;
    if (box instanceof HTMLInputElement && box.type === 'number' && box.closest('.{TYPED_SLIDER_CLASS}'))
      e.stopImmediatePropagation();
  }}, true);
}}"""


class TypedSlider(gr.Slider):
    """A slider whose typed-in value reaches the handler even when out of its range, so that the config check
    refuses it in one line naming the field (gr.Slider raises a bare 'Value 40 is greater than ...' toast and
    logs a traceback), and keeps it there (KEEP_TYPED_JS, run by the page on load, for sliders with the class
    TYPED_SLIDER_CLASS). A class, not a patched
    instance: a session's state rebuilds components from their class."""
    is_template = True  # drawn by the frontend's own slider

    def preprocess(self, payload: float | None) -> float | None:
        return None if payload is None else gr.Number.round_to_precision(payload, self.precision)
