"""Layer 3: a real ComfyUI 0.3.75 server on the CPU with this pack in custom_nodes.

The pack is copied into a temporary --base-directory, tiny models are put where a
user puts real ones, and every example API workflow in examples/comfyui/ is POSTed
as it is; the PNGs are fetched from /view and checked. Bad inputs must give node
errors with clear messages and leave the server running.
"""
from __future__ import annotations

import asyncio
import io
import json
import shutil
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
import uuid
from pathlib import Path

import pytest

from comfy_env import COMFY, ROOT, require_comfy, setup_comfy

require_comfy()
setup_comfy()

from PIL import Image  # noqa: E402

from comfy_pack import builtin_student, plain_safetensors, sd3_student, truncated_copy  # noqa: E402

EXAMPLES = ROOT / "examples" / "comfyui"
PACK_DIR = "dp-dmd-studio"
PACK_FILES = ["__init__.py", "pyproject.toml", "requirements.txt", "nodes", "web", "distill_core", "examples"]
STARTUP_S = 180
RUN_S = 300


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


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
                pytest.fail(f"ComfyUI exited ({self.proc.returncode}):\n{self.log_tail()}")
            try:
                if self.get("/system_stats")[0] == 200:
                    return
            except OSError:
                pass
            time.sleep(0.5)
        pytest.fail(f"ComfyUI did not answer within {STARTUP_S} s:\n{self.log_tail()}")

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
        pytest.fail(f"prompt {prompt_id} did not finish within {RUN_S} s:\n{self.log_tail()}")

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


@pytest.fixture(scope="module")
def comfy(tmp_path_factory):
    from comfy_fixtures import sd3_checkpoint

    base = tmp_path_factory.mktemp("comfy_base")
    pack = base / "custom_nodes" / PACK_DIR
    pack.mkdir(parents=True)
    ignore = shutil.ignore_patterns("__pycache__", "*.pyc")
    for name in PACK_FILES:
        src = ROOT / name
        if src.is_dir():
            shutil.copytree(src, pack / name, ignore=ignore)
        elif src.exists():
            shutil.copy2(src, pack / name)
    models = base / "models"
    builtin_student(models / "dpdmd" / "dpdmd_digits_student.safetensors")
    sd3 = sd3_student(models / "dpdmd" / "dpdmd_sd3.5_medium_student.safetensors")
    plain_safetensors(models / "dpdmd" / "not_a_student.safetensors")
    truncated_copy(sd3, models / "dpdmd" / "truncated_student.safetensors")
    sd3_checkpoint(models / "checkpoints" / "sd3.5_medium_incl_clips_t5xxlfp8scaled.safetensors")
    server = Comfy(base)
    try:
        server.wait_started()
        yield server
    finally:
        server.stop()


def example(name: str) -> dict:
    return json.loads((EXAMPLES / f"{name}.api.json").read_text())


def saved_images(comfy: Comfy, entry: dict, node: str) -> list[Image.Image]:
    return [comfy.image(ref) for ref in entry["outputs"][node]["images"]]


def assert_success(comfy: Comfy, entry: dict) -> None:
    status = entry["status"]
    assert status["status_str"] == "success", json.dumps(status["messages"])[-3000:] + comfy.log_tail(2000)


def diversity_text(entry: dict, node: str) -> float:
    text = entry["outputs"][node]["text"][0]
    assert text.startswith("diversity "), text
    return float(text.split()[1])


def varied(img: Image.Image) -> bool:
    lo, hi = zip(*img.getextrema())
    return max(hi) - min(lo) > 32


def test_nodes_registered_js_served_and_metadata_route(comfy):
    _, info = comfy.get_json("/object_info")
    ours = {k: v for k, v in info.items() if v["category"] == "DP-DMD"}
    assert set(ours) == {"DPDMDStudentLoader", "DPDMDBuiltinTeacher", "DPDMDStudentSigmas", "DPDMDStudentSampler",
                         "DPDMDSample", "DPDMDSeedGrid", "DPDMDDiversity"}
    names = ours["DPDMDStudentLoader"]["input"]["required"]["student_name"][1]["options"]
    assert {"dpdmd_digits_student.safetensors", "dpdmd_sd3.5_medium_student.safetensors"} <= set(names)
    assert "sd3.5_medium_incl_clips_t5xxlfp8scaled.safetensors" not in names
    _, extensions = comfy.get_json("/extensions")
    js = f"/extensions/{PACK_DIR}/dpdmd.js"
    assert js in extensions
    status, body, ctype = comfy.get(js)
    assert status == 200 and "javascript" in ctype and b"DPDMDStudentLoader" in body
    status, meta = comfy.get_json("/dpdmd/student?name=dpdmd_sd3.5_medium_student.safetensors")
    assert status == 200 and meta["summary"]["family"] == "sd3" and meta["summary"]["steps"] == 4
    assert meta["summary"]["sigmas"] == pytest.approx([1.0, 0.857692, 0.602151, 0.008929, 0.0], abs=1e-6)
    status, meta = comfy.get_json("/dpdmd/student?name=../../../etc/passwd")
    assert status == 404 and "no student named" in meta["error"]


def test_example_builtin_seed_grid(comfy):
    entry = comfy.run(example("builtin_seed_grid"))
    assert_success(comfy, entry)
    (grid,) = saved_images(comfy, entry, "3")
    assert grid.width > 8 * 64 and grid.height > 3 * 64 and varied(grid)
    assert 0.0 < diversity_text(entry, "4") < 2.0


def test_example_sd3_student_samplercustom(comfy):
    entry = comfy.run(example("sd3_student_samplercustom"))
    assert_success(comfy, entry)
    (img,) = saved_images(comfy, entry, "8")
    assert img.size == (1024, 1024) and varied(img)


def test_example_teacher_vs_student_grid(comfy):
    entry = comfy.run(example("teacher_vs_student_grid"))
    assert_success(comfy, entry)
    (both,) = saved_images(comfy, entry, "6")
    assert both.width > 2 * 6 * 64 and varied(both)
    teacher, student = diversity_text(entry, "7"), diversity_text(entry, "8")
    assert 0.0 < teacher < 2.0 and 0.0 < student < 2.0 and teacher != student


def loader_graph(name: str) -> dict:
    return {"1": {"class_type": "DPDMDStudentLoader", "inputs": {"student_name": name, "weight_dtype": "default"}},
            "2": {"class_type": "DPDMDSeedGrid", "inputs": {"prompts": "7", "seeds": 2, "first_seed": 0, "title": "",
                                                             "width": 64, "height": 64, "display_size": 32,
                                                             "student": ["1", 2]}},
            "3": {"class_type": "PreviewImage", "inputs": {"images": ["2", 0]}}}


@pytest.mark.parametrize("name, message", [
    ("no_such_student.safetensors", "no student named 'no_such_student.safetensors'"),
    ("not_a_student.safetensors", "no DP-DMD student metadata"),
    ("truncated_student.safetensors", "is truncated"),
])
def test_bad_student_gives_a_node_error(comfy, name, message):
    status, body = comfy.post(loader_graph(name))
    assert status == 400, body
    details = body["node_errors"]["1"]["errors"][0]["details"]
    assert message in details, details
    assert comfy.get("/system_stats")[0] == 200


def test_misuse_at_run_time_is_reported_and_the_server_keeps_serving(comfy):
    graph = loader_graph("dpdmd_digits_student.safetensors")
    graph.update({
        "4": {"class_type": "EmptySD3LatentImage", "inputs": {"width": 64, "height": 64, "batch_size": 1}},
        "5": {"class_type": "DPDMDStudentSampler", "inputs": {}},
        "6": {"class_type": "SamplerCustom", "inputs": {"model": ["1", 0], "add_noise": True, "noise_seed": 0,
                                                         "cfg": 1.0, "positive": ["7", 0], "negative": ["7", 0],
                                                         "sampler": ["5", 0], "sigmas": ["1", 1],
                                                         "latent_image": ["4", 0]}},
        "7": {"class_type": "ConditioningZeroOut", "inputs": {"conditioning": ["8", 0]}},
        "8": {"class_type": "CLIPTextEncode", "inputs": {"text": "x", "clip": ["9", 1]}},
        "9": {"class_type": "CheckpointLoaderSimple",
              "inputs": {"ckpt_name": "sd3.5_medium_incl_clips_t5xxlfp8scaled.safetensors"}},
        "10": {"class_type": "PreviewAny", "inputs": {"source": ["6", 0]}},
    })
    entry = comfy.run(graph)
    assert entry["status"]["status_str"] == "error"
    errors = [m[1] for m in entry["status"]["messages"] if m[0] == "execution_error"]
    assert errors and errors[0]["node_id"] == "6"
    assert "built-in-teacher student" in errors[0]["exception_message"]
    status, body = comfy.post({"1": {"class_type": "NoSuchNode", "inputs": {}}})
    assert status == 400 and body["error"]["type"] == "invalid_prompt"
    assert_success(comfy, comfy.run(loader_graph("dpdmd_digits_student.safetensors")))


def test_progress_and_previews_over_websocket(comfy):
    import aiohttp

    client_id = uuid.uuid4().hex
    graph = {"1": {"class_type": "DPDMDStudentLoader",
                   "inputs": {"student_name": "dpdmd_digits_student.safetensors", "weight_dtype": "default"}},
             "2": {"class_type": "DPDMDSample", "inputs": {"student": ["1", 2], "seed": 123, "batch_size": 4,
                                                            "prompt": "nine", "width": 64, "height": 64,
                                                            "display_size": 64}},
             "3": {"class_type": "PreviewImage", "inputs": {"images": ["2", 0]}}}

    async def listen() -> tuple[list[dict], int]:
        events, previews = [], 0
        async with aiohttp.ClientSession() as session:
            async with session.ws_connect(f"{comfy.url}/ws?clientId={client_id}") as ws:
                status, body = await asyncio.to_thread(comfy.post, graph, client_id)
                assert status == 200, body
                deadline = time.time() + RUN_S
                while time.time() < deadline:
                    msg = await ws.receive(timeout=RUN_S)
                    if msg.type == aiohttp.WSMsgType.BINARY:
                        previews += 1
                        continue
                    event = json.loads(msg.data)
                    events.append(event)
                    if event["type"] in ("execution_success", "execution_error"):
                        break
        return events, previews

    events, previews = asyncio.run(listen())
    assert events[-1]["type"] == "execution_success", events[-1]
    steps = [e["data"]["value"] for e in events if e["type"] == "progress" and e["data"]["node"] == "2"]
    assert steps == [1, 2, 3, 4] and all(e["data"]["max"] == 4 for e in events if e["type"] == "progress")
    assert previews >= 4  # a latent preview per step
