"""Where the ComfyUI test layers find ComfyUI, and the in-process setup of its modules.

COMFYUI_PATH (default: <repo>/.comfyui) is ComfyUI 0.3.75 unpacked by .ci/comfyui_env.sh;
DPDMD_COMFY_PYTHON (default: <repo>/.venv-comfy/bin/python) is the interpreter that can import it.
"""
from __future__ import annotations

import importlib.util
import os
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
COMFY = Path(os.environ.get("COMFYUI_PATH") or ROOT / ".comfyui")
COMFY_PYTHON = Path(os.environ.get("DPDMD_COMFY_PYTHON") or ROOT / ".venv-comfy" / "bin" / "python")
HOW = "build it with `.ci/comfyui_env.sh .venv .venv-comfy .comfyui` (or set COMFYUI_PATH / DPDMD_COMFY_PYTHON)"


def can_run_comfy() -> bool:
    """ComfyUI's tree exists and this interpreter has what ComfyUI needs beyond the project's venv."""
    return ((COMFY / "main.py").is_file() and importlib.util.find_spec("torchvision") is not None
            and importlib.util.find_spec("comfyui_frontend_package") is not None)


def require_comfy() -> None:
    """At module level: skip locally without ComfyUI, fail in CI (CI must run every layer)."""
    import pytest

    if can_run_comfy():
        return
    if os.environ.get("CI"):
        pytest.fail(f"ComfyUI 0.3.75 or its interpreter is missing in CI: {HOW}", pytrace=False)
    pytest.skip(f"ComfyUI 0.3.75 or its interpreter is not available here: {HOW}", allow_module_level=True)


def setup_comfy() -> None:
    """Put ComfyUI first on sys.path (its `nodes` module, not the pack's) and select the CPU."""
    if str(COMFY) not in sys.path:
        sys.path.insert(0, str(COMFY))
    for path in (str(ROOT / "tests"), str(ROOT)):  # test helpers; distill_core for scripts run directly
        if path not in sys.path:
            sys.path.insert(1, path)
    from comfy.cli_args import args

    args.cpu = True  # before comfy.model_management is imported
