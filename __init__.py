"""DP-DMD Studio as a ComfyUI node pack: load 4-step students, sample them as trained, seed grids, diversity.

ComfyUI imports this file and awaits ``comfy_entrypoint`` (V3 API). The nodes
are imported only then, so importing the repository anywhere else (pytest, the
trainer, the CLI) needs no ComfyUI and stays light.
"""
from __future__ import annotations

import os
import sys

WEB_DIRECTORY = "./web"
_ROOT = os.path.dirname(os.path.abspath(__file__))


def _bundled_core_on_path() -> None:
    """ComfyUI does not put packs on sys.path; append ours so `import distill_core` finds this copy."""
    if _ROOT not in sys.path:
        sys.path.append(_ROOT)


async def comfy_entrypoint():
    _bundled_core_on_path()
    from .nodes.extension import create

    return create()
