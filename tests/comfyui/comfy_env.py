"""Which ComfyUIs the test layers run against, where they are, and the in-process setup of its modules.

.ci/comfyui_versions lists them (tree folder, venv folder, source); .ci/run builds
each with .ci/comfyui_env.sh. A check process runs against COMFYUI_PATH (default:
the first listed tree) under the interpreter of that tree's venv.
"""
from __future__ import annotations

import importlib.util
import os
import re
import sys
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
VERSIONS_FILE = ROOT / ".ci" / "comfyui_versions"


@dataclass(frozen=True)
class ComfyTarget:
    """One ComfyUI to test against: its tree, the venv that runs it, and where the tree comes from."""
    tree: Path
    venv: Path
    source: str

    @property
    def name(self) -> str:
        """The version the tree folder is named for (.comfyui-0.33.0: 0.33.0), the tests' id."""
        return self.tree.name.removeprefix(".comfyui-")

    @property
    def python(self) -> Path:
        return self.venv / "bin" / "python"

    @property
    def how(self) -> str:
        return (f"build it with `.ci/comfyui_env.sh .venv {self.venv.name} {self.tree.name} {self.source}` "
                f"(see {VERSIONS_FILE.relative_to(ROOT)})")

    def ready(self) -> bool:
        return self.python.exists() and (self.tree / "main.py").is_file()


def targets() -> list[ComfyTarget]:
    lines = VERSIONS_FILE.read_text().splitlines()
    rows = [line.split() for line in lines if line.strip() and not line.startswith("#")]
    return [ComfyTarget(ROOT / tree, ROOT / venv, source) for tree, venv, source in rows]


COMFY = Path(os.environ.get("COMFYUI_PATH") or targets()[0].tree)


def comfy_version() -> str:
    """The version of the ComfyUI at COMFY, as its own comfyui_version.py says ('?' if absent)."""
    path = COMFY / "comfyui_version.py"
    found = re.search(r'__version__\s*=\s*"([^"]+)"', path.read_text()) if path.is_file() else None
    return found.group(1) if found else "?"


def can_run_comfy() -> bool:
    """ComfyUI's tree exists and this interpreter has what ComfyUI needs beyond the project's venv."""
    return ((COMFY / "main.py").is_file() and importlib.util.find_spec("torchvision") is not None
            and importlib.util.find_spec("comfyui_frontend_package") is not None)


def require_comfy() -> None:
    """At module level: skip locally without ComfyUI, fail in CI (CI must run every layer)."""
    import pytest

    if can_run_comfy():
        return
    how = f"run it under a venv that .ci/comfyui_env.sh built for {COMFY}"
    if os.environ.get("CI"):
        pytest.fail(f"ComfyUI at {COMFY} or its interpreter is missing in CI: {how}", pytrace=False)
    pytest.skip(f"ComfyUI at {COMFY} or its interpreter is not available here: {how}", allow_module_level=True)


def setup_comfy() -> None:
    """Put ComfyUI first on sys.path (its `nodes` module, not the pack's) and select the CPU."""
    if str(COMFY) not in sys.path:
        sys.path.insert(0, str(COMFY))
    for path in (str(ROOT / "tests"), str(ROOT)):  # test helpers; distill_core for scripts run directly
        if path not in sys.path:
            sys.path.insert(1, path)
    from comfy.cli_args import args

    args.cpu = True  # before comfy.model_management is imported
