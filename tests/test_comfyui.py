"""Layers 2 and 3 of the ComfyUI node pack, run under the interpreter that can run ComfyUI.

ComfyUI needs torchvision, which the project's venv must not carry, so
.ci/comfyui_env.sh builds a thin venv layered on it (.venv-comfy) and unpacks
ComfyUI 0.3.75 (.comfyui). Each check file runs there in its own pytest
process; its output is shown when it fails. Locally these skip when that
interpreter is missing; in CI they fail.
"""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import require

sys.path.insert(0, str(Path(__file__).resolve().parent / "comfyui"))
from comfy_env import COMFY, COMFY_PYTHON, HOW, ROOT, can_run_comfy  # noqa: E402

CHECKS = ["comfy_inprocess_checks.py", "comfy_server_checks.py"]


@pytest.mark.parametrize("checks", CHECKS)
def test_comfyui_layer(checks):
    if can_run_comfy():
        pytest.skip(f"this interpreter runs ComfyUI: collect tests/comfyui/{checks} directly")
    require(COMFY_PYTHON.exists() and (COMFY / "main.py").is_file(), "the ComfyUI test interpreter", HOW)
    env = {**os.environ, "COMFYUI_PATH": str(COMFY), "PYTHONPATH": str(ROOT)}
    r = subprocess.run([str(COMFY_PYTHON), "-m", "pytest", "-q", "-rfEs", "-p", "no:cacheprovider",
                        f"tests/comfyui/{checks}"], cwd=ROOT, env=env, capture_output=True, text=True, timeout=900)
    print(r.stdout[-3000:])
    assert r.returncode == 0, f"{checks} failed under {COMFY_PYTHON}:\n{r.stdout[-12000:]}\n{r.stderr[-3000:]}"
    assert " passed" in r.stdout.splitlines()[-1] and "skipped" not in r.stdout.splitlines()[-1], r.stdout[-2000:]
