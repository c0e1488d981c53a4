"""Layers 2 and 3 of the ComfyUI node pack, run under each interpreter that can run a tested ComfyUI.

ComfyUI needs torchvision, which the project's venv must not carry, so .ci/run
builds, for each ComfyUI in .ci/comfyui_versions (0.3.75 and 0.33.0), a thin venv
layered on it and unpacks that ComfyUI (.ci/comfyui_env.sh). Each check file runs
there in its own pytest process; its output is shown when it fails. Locally these
skip when that interpreter is missing; in CI they fail.
"""
from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from conftest import require

sys.path.insert(0, str(Path(__file__).resolve().parent / "comfyui"))
from comfy_env import ROOT, can_run_comfy, targets  # noqa: E402

CHECKS = ["comfy_inprocess_checks.py", "comfy_server_checks.py", "comfy_flux2_checks.py"]
# checks of models only the newest listed ComfyUI knows: FLUX.2 [klein] (0.3.75 detects FLUX.2 dev's 48 heads only)
NEWEST_ONLY = {"comfy_flux2_checks.py"}
LAYERS = [(checks, target) for checks in CHECKS for target in targets()
          if checks not in NEWEST_ONLY or target == targets()[-1]]


@pytest.mark.parametrize("checks, target", LAYERS, ids=lambda v: getattr(v, "name", v))
def test_comfyui_layer(checks, target):
    if can_run_comfy():
        pytest.skip(f"this interpreter runs ComfyUI: collect tests/comfyui/{checks} directly")
    require(target.ready(), f"the ComfyUI test interpreter for {target.tree.name}", target.how)
    env = {**os.environ, "COMFYUI_PATH": str(target.tree), "PYTHONPATH": str(ROOT)}
    start = time.monotonic()
    r = subprocess.run([str(target.python), "-m", "pytest", "-q", "-rfEs", "-p", "no:cacheprovider",
                        f"tests/comfyui/{checks}"], cwd=ROOT, env=env, capture_output=True, text=True, timeout=900)
    print(f"{checks} on {target.name}: {time.monotonic() - start:.0f} s\n{r.stdout[-3000:]}")
    assert r.returncode == 0, f"{checks} failed under {target.python}:\n{r.stdout[-12000:]}\n{r.stderr[-3000:]}"
    assert " passed" in r.stdout.splitlines()[-1] and "skipped" not in r.stdout.splitlines()[-1], r.stdout[-2000:]
