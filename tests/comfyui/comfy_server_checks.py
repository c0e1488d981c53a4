"""Layer 3: a real ComfyUI server (the one at COMFYUI_PATH) on the CPU with this pack in custom_nodes.

The pack is copied into a temporary --base-directory, tiny models are put where a
user puts real ones, and every example API workflow in examples/comfyui/ is POSTed
as it is; the PNGs are fetched from /view and checked. Their UI-format twins in
example_workflows/ are loaded and run in ComfyUI's own frontend. Bad inputs must give node
errors with clear messages and leave the server running.
"""
from __future__ import annotations

import asyncio
import json
import time
import uuid

import pytest

from comfy_env import ROOT, require_comfy, setup_comfy

require_comfy()
setup_comfy()

from PIL import Image  # noqa: E402

from comfy_server import PACK_DIR, RUN_S, Comfy, prepare_base  # noqa: E402
from conftest import require  # noqa: E402
import frontend as fe  # noqa: E402
from frontend import CHROMIUM, frontend  # noqa: E402

EXAMPLES = ROOT / "examples" / "comfyui"  # API format: POSTed as they are
WORKFLOWS = ROOT / "example_workflows"  # their UI-format twins
PREVIEWING = {"DPDMDSeedGrid", "DPDMDSample"}  # nodes that show a sampling preview on themselves


@pytest.fixture(scope="module")
def comfy(tmp_path_factory):
    server = Comfy(prepare_base(tmp_path_factory.mktemp("comfy_base")))
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
    outputs = {node: {k: (v if k == "text" else [i["filename"] for i in v]) for k, v in out.items() if k in ("images", "text")}
               for node, out in entry["outputs"].items()}
    print(f"\n{entry['prompt'][1][:8]}: {status['status_str']}, outputs {outputs}")


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
                         "DPDMDSample", "DPDMDSeedGrid", "DPDMDDiversity", "DPDMDHybridSampler",
                         "DPDMDTeacherStudentSampler"}
    names = ours["DPDMDStudentLoader"]["input"]["required"]["student_name"][1]["options"]
    assert {"dpdmd_shapes_student.safetensors", "dpdmd_digits_student.safetensors",
            "dpdmd_sd3.5_medium_student.safetensors"} <= set(names)
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


def test_example_hybrid_seed_grid(comfy):
    """Student, hybrid (the teacher's first k steps, then the student) and teacher on the same seeds."""
    entry = comfy.run(example("hybrid_seed_grid"))
    assert_success(comfy, entry)
    (grids,) = saved_images(comfy, entry, "9")
    assert grids.height > 3 * 2 * 64 and varied(grids)
    student, hybrid, teacher = (diversity_text(entry, node) for node in ("10", "11", "12"))
    assert all(0.0 < d < 2.0 for d in (student, hybrid, teacher)) and len({student, hybrid, teacher}) == 3
    (nfe,) = entry["outputs"]["3"]["text"]
    assert nfe.endswith("; 14 per image"), nfe  # k = 5 at cfg 2 (10) + the student's 4 steps below t_5
    print(f"diversity: student {student:.4f} (4 NFE), hybrid {hybrid:.4f} (14 NFE), teacher {teacher:.4f} (60 NFE)")


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
    # 0.3.75 says invalid_prompt, later versions missing_node_type: both name the node type
    assert status == 400 and "NoSuchNode" in body["error"]["message"], body
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


def test_ui_workflows_queue_their_api_twins_and_show_their_outputs_in_the_frontend(comfy):
    """Each example_workflows/ file, loaded by ComfyUI's own frontend (drag and drop), queues its API twin. Run
    there from a cold cache, no node covers another once the outputs are shown, and the loader's metadata and
    each Diversity node's number (the one /history holds) are visible on the nodes."""
    require(CHROMIUM is not None, "Chromium", "apt-get install -y chromium")
    with frontend(comfy.url) as page:
        for api_file in sorted(EXAMPLES.glob("*.api.json")):
            name = api_file.name.removesuffix(".api.json")
            fe.fresh(page)
            prompt, alerts = fe.api_from_ui(page, json.loads((WORKFLOWS / f"{name}.json").read_text()))
            assert not alerts, (name, alerts)
            api = json.loads(api_file.read_text())
            assert ({k: (v["class_type"], v["inputs"]) for k, v in prompt.items()}
                    == {k: (v["class_type"], v["inputs"]) for k, v in api.items()}), name
            # nodes that draw sampling previews on themselves must run again to show them; others may be cached
            fe.run(page, free_cache=any(v["class_type"] in PREVIEWING for v in api.values()))
            assert not fe.overlaps(page), (name, fe.overlaps(page))
            texts = fe.node_texts(page)
            assert "student, 4 steps, cfg 1" in texts.get("DP-DMD Student Loader", ""), (name, texts)
            _, history = comfy.get_json("/history?max_items=1")
            (entry,) = history.values()
            for node_id, node in api.items():
                if node["class_type"] == "DPDMDDiversity":
                    shown = texts.get(node["_meta"]["title"], "")
                    assert shown == entry["outputs"][node_id]["text"][0] and shown.startswith("diversity "), \
                        (name, node_id, texts)


def test_example_workflows_are_in_the_template_browser(comfy):
    """ComfyUI lists example_workflows/ as the pack's templates; the frontend shows each with its preview (the
    .jpg of the same name), and a click opens that workflow."""
    require(CHROMIUM is not None, "Chromium", "apt-get install -y chromium")
    names = sorted(p.stem for p in WORKFLOWS.glob("*.json"))
    _, listed = comfy.get_json("/workflow_templates")
    assert sorted(listed[PACK_DIR]) == names
    assert names == sorted(p.name.removesuffix(".api.json") for p in EXAMPLES.glob("*.api.json"))
    previews = {name: Image.open(WORKFLOWS / f"{name}.jpg").size for name in names}
    with frontend(comfy.url) as page:
        assert fe.template_browser(page, names) == previews
        fe.open_template(page, names[0], json.loads((WORKFLOWS / f"{names[0]}.json").read_text()))
