"""A ComfyUI server for the checks: a --base-directory with this pack and tiny models, and HTTP calls.

Used by comfy_server_checks.py and by make_ui_workflows.py (which writes the
UI-format examples from the API ones through the real frontend).
"""
from __future__ import annotations

import io
import json
import shutil
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

from PIL import Image

from comfy_env import COMFY, ROOT
from comfy_pack import builtin_student, plain_safetensors, sd3_student, truncated_copy
from ports import free_port

PACK_DIR = "dp-dmd-studio"
PACK_FILES = ["__init__.py", "pyproject.toml", "requirements.txt", "nodes", "web", "distill_core", "examples",
              "example_workflows"]
STARTUP_S = 180
RUN_S = 300


class ServerError(AssertionError):
    """The server did not start or a prompt did not finish; carries the log tail."""


class Comfy:
    """A ComfyUI server process and the few HTTP calls the checks need."""

    def __init__(self, base: Path):
        self.base = base
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log = base / "comfyui.log"
        self.proc = subprocess.Popen(
            [sys.executable, "main.py", "--cpu", "--listen", "127.0.0.1", "--port", str(self.port),
             "--base-directory", str(base), "--database-url", "sqlite:///:memory:", "--disable-auto-launch"],
            cwd=COMFY, stdout=self.log.open("w"), stderr=subprocess.STDOUT)

    def log_tail(self, n: int = 4000) -> str:
        return self.log.read_text(errors="replace")[-n:]

    def get(self, path: str) -> tuple[int, bytes, str]:
        try:
            with urllib.request.urlopen(self.url + path, timeout=30) as r:
                return r.status, r.read(), r.headers.get("Content-Type", "")
        except urllib.error.HTTPError as e:
            return e.code, e.read(), e.headers.get("Content-Type", "")

    def get_json(self, path: str):
        status, body, _ = self.get(path)
        return status, json.loads(body)

    def post(self, prompt: dict, client_id: str = "dpdmd-tests") -> tuple[int, dict]:
        data = json.dumps({"prompt": prompt, "client_id": client_id}).encode()
        req = urllib.request.Request(self.url + "/prompt", data=data, headers={"Content-Type": "application/json"})
        try:
            with urllib.request.urlopen(req, timeout=30) as r:
                return r.status, json.loads(r.read())
        except urllib.error.HTTPError as e:
            return e.code, json.loads(e.read())

    def wait_started(self) -> None:
        deadline = time.time() + STARTUP_S
        while time.time() < deadline:
            if self.proc.poll() is not None:
                raise ServerError(f"ComfyUI exited ({self.proc.returncode}):\n{self.log_tail()}")
            try:
                if self.get("/system_stats")[0] == 200:
                    return
            except OSError:
                pass
            time.sleep(0.5)
        raise ServerError(f"ComfyUI did not answer within {STARTUP_S} s:\n{self.log_tail()}")

    def run(self, prompt: dict) -> dict:
        """POST a prompt and wait for its history entry."""
        status, body = self.post(prompt)
        assert status == 200, body
        prompt_id = body["prompt_id"]
        deadline = time.time() + RUN_S
        while time.time() < deadline:
            _, hist = self.get_json(f"/history/{prompt_id}")
            if prompt_id in hist and hist[prompt_id]["status"].get("completed") is not None:
                entry = hist[prompt_id]
                if entry["status"]["status_str"] != "error" or entry["status"]["messages"]:
                    return entry
            time.sleep(0.3)
        raise ServerError(f"prompt {prompt_id} did not finish within {RUN_S} s:\n{self.log_tail()}")

    def image(self, ref: dict) -> Image.Image:
        q = f"/view?filename={ref['filename']}&subfolder={ref['subfolder']}&type={ref['type']}"
        status, body, ctype = self.get(q.replace(" ", "%20"))
        assert status == 200 and body[:8] == b"\x89PNG\r\n\x1a\n", (status, ctype)
        return Image.open(io.BytesIO(body)).convert("RGB")

    def stop(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


def prepare_base(base: Path) -> Path:
    """A ComfyUI --base-directory: this pack in custom_nodes, tiny models where users put real ones."""
    from comfy_fixtures import sd3_checkpoint

    pack = base / "custom_nodes" / PACK_DIR
    pack.mkdir(parents=True)
    ignore = shutil.ignore_patterns("__pycache__", "*.pyc")
    for name in PACK_FILES:
        src = ROOT / name
        if src.is_dir():
            shutil.copytree(src, pack / name, ignore=ignore)
        elif src.exists():
            shutil.copy2(src, pack / name)
    # a returning user: no first-run template browser over the canvas, no minimap over the graph's corner;
    # no workflow restored from an earlier page load (it could replace the one a check loads)
    settings = base / "user" / "default" / "comfy.settings.json"
    settings.parent.mkdir(parents=True)
    settings.write_text(json.dumps({"Comfy.TutorialCompleted": True, "Comfy.Minimap.Visible": False,
                                    "Comfy.Workflow.Persist": False}))
    models = base / "models"
    builtin_student(models / "dpdmd" / "dpdmd_shapes_student.safetensors")  # what the examples load
    builtin_student(models / "dpdmd" / "dpdmd_digits_student.safetensors", kind="digits")
    sd3 = sd3_student(models / "dpdmd" / "dpdmd_sd3.5_medium_student.safetensors")
    plain_safetensors(models / "dpdmd" / "not_a_student.safetensors")
    truncated_copy(sd3, models / "dpdmd" / "truncated_student.safetensors")
    sd3_checkpoint(models / "checkpoints" / "sd3.5_medium_incl_clips_t5xxlfp8scaled.safetensors")
    return base
