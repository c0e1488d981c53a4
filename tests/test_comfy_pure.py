"""Layer 1 of the ComfyUI node pack: its pure logic, no ComfyUI import.

Sigmas per family and from metadata, metadata checks, grid tiling, diversity,
and that importing the pack stays light.
"""
from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from comfy_pack import ROOT, builtin_student, pack_module, plain_safetensors, sd3_student, truncated_copy

from distill_core.errors import CheckpointError, ConfigError
from distill_core.export.student_file import StudentInfo, check_complete, read_student_info

compute = pack_module("nodes.compute")


def test_family_sigmas_are_the_training_schedules():
    # SD3: diffusers' FlowMatchEulerDiscreteScheduler at shift 3, 4 steps
    assert compute.family_sigmas("sd3", 4) == pytest.approx([1.0, 0.857692, 0.602151, 0.008929, 0.0], abs=1e-6)
    # ComfyUI's 'simple' scheduler for the same model is 1, .9, .75, .5, 0: not the student's
    assert compute.family_sigmas("sd3", 4)[1:4] != pytest.approx([0.9, 0.75, 0.5], abs=1e-2)
    # SDXL: sigma = sqrt((1 - abar) / abar) at the trailing timesteps 999, 749, 499, 249
    assert compute.family_sigmas("sdxl", 4) == pytest.approx([14.6146, 4.0817, 1.6129, 0.6932, 0.0], abs=1e-3)
    assert compute.family_sigmas("builtin", 2) == pytest.approx([1.0, 0.001, 0.0])
    with pytest.raises(ConfigError, match="family 'flux'"):
        compute.family_sigmas("flux", 4)
    with pytest.raises(ConfigError, match="at least one step"):
        compute.family_sigmas("sd3", 0)


def test_student_sigmas_from_metadata(tmp_path):
    info = read_student_info(sd3_student(tmp_path / "s.safetensors"))
    assert compute.student_sigmas(info) == compute.family_sigmas("sd3", 4)
    s = compute.summary(info)
    assert s["family"] == "sd3" and s["steps"] == 4 and s["sigmas"][-1] == 0
    json.dumps(s)  # goes to the browser
    assert "sd3 flow student, 4 steps, cfg 1" in compute.describe(info)


@pytest.mark.parametrize("change, message", [
    ({"sigmas": [1.0, 0.9, 0.75, 0.5, 0.0]}, "disagree with its levels"),  # sigmas edited away from levels
    ({"sigmas": [1.0, 0.6, 0.8, 0.01, 0.0]}, "do not decrease to 0"),
    ({"sigmas": [1.0, 0.0]}, "stores 2 sigmas for 5 levels"),
    ({"schedule": {"type": "cosine"}}, "unreadable schedule"),
])
def test_student_sigmas_refuse_damaged_metadata(tmp_path, change, message):
    info = read_student_info(sd3_student(tmp_path / "s.safetensors"))
    bad = StudentInfo(**{**info.__dict__, **change})
    with pytest.raises(CheckpointError, match=message):
        compute.student_sigmas(bad)


def test_metadata_parsing_and_file_checks(tmp_path):
    student = builtin_student(tmp_path / "b.safetensors")
    info = read_student_info(student)
    assert (info.family, info.prediction_type, info.num_steps) == ("builtin", "flow", 4)
    check_complete(student)
    with pytest.raises(CheckpointError, match="no DP-DMD student metadata"):
        read_student_info(plain_safetensors(tmp_path / "plain.safetensors"))
    cut = truncated_copy(student, tmp_path / "cut.safetensors")
    assert read_student_info(cut).family == "builtin"  # the header survives a cut ...
    with pytest.raises(CheckpointError, match="is truncated"):  # ... the size check does not
        check_complete(cut)
    with pytest.raises(CheckpointError, match="not a readable safetensors"):
        read_student_info(truncated_copy(student, tmp_path / "stub.safetensors", keep=0.0001))


def test_grid_tiles_rows_and_columns():
    images = torch.zeros(6, 16, 16, 3)
    images[4] = 1.0  # row 1, column 1 is white
    grid = compute.grid_image(images, 3, row_labels=["a", "b"], col_labels=["s0", "s1", "s2"], title="t")
    assert grid.dim() == 4 and grid.shape[0] == 1 and grid.shape[-1] == 3
    top, left, pad = 16 + 18, 8 + 7 * 1, 2  # col labels + title bands, one-character row labels
    cell = grid[0, top + pad + 16 + pad: top + pad + 32 + pad, left + pad + 16 + pad: left + pad + 32 + pad]
    assert float(cell.min()) == 1.0  # the white image landed in row 1, column 1
    other = grid[0, top + pad: top + pad + 16, left + pad: left + pad + 16]
    assert float(other.max()) == 0.0
    grey = compute.grid_image(torch.rand(2, 8, 8, 1), 2)  # grey images are repeated to RGB
    assert grey.shape[-1] == 3


def test_upscale_and_back_to_the_teacher_size():
    x = torch.rand(2, 3, 16, 16)
    up = compute.upscale(x, 64)
    assert up.shape == (2, 3, 64, 64) and torch.equal(up[..., ::4, ::4], x)
    assert torch.allclose(compute.to_teacher_size(up, 16), x)
    assert compute.to_teacher_size(up, 8).shape == (2, 3, 8, 8)


def test_batch_diversity_is_eq9():
    f = torch.tensor([[1.0, 0.0], [0.0, 1.0], [1.0, 0.0], [1.0, 0.0]])
    out = compute.batch_diversity(f, 2)
    assert out["diversity"] == pytest.approx(0.5)  # prompt 1: orthogonal (1); prompt 2: identical (0)
    assert compute.batch_diversity(f, 0)["per_prompt"] == 4
    assert compute.batch_diversity(f, 0)["diversity"] == pytest.approx(1 - (0 + 1 + 1 + 0 + 0 + 1) / 6)
    with pytest.raises(ConfigError, match="divide the batch"):
        compute.batch_diversity(f, 3)


def test_prompts_and_seeds():
    assert compute.prompt_lines(" 7 \n\nthree\n") == ["7", "three"]
    assert compute.seed_list(5, 3) == [5, 6, 7]
    with pytest.raises(ConfigError):
        compute.prompt_lines("  \n")


def test_pack_import_is_light():
    """Importing the pack (as ComfyUI or pytest would) loads no ComfyUI, Gradio, trainer or torch."""
    code = ("import importlib.util, sys; "
            f"spec = importlib.util.spec_from_file_location('pack', {str(ROOT / '__init__.py')!r}, "
            f"submodule_search_locations=[{str(ROOT)!r}]); m = importlib.util.module_from_spec(spec); "
            "sys.modules['pack'] = m; spec.loader.exec_module(m); "
            "assert m.WEB_DIRECTORY == './web' and callable(m.comfy_entrypoint); "
            "print([k for k in ('comfy', 'nodes', 'gradio', 'trainer_ui', 'distill_core', 'torch') if k in sys.modules])")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd="/")
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == "[]"


def test_web_extension_is_valid_javascript():
    js = ROOT / "web" / "dpdmd.js"
    assert "DPDMDStudentLoader" in js.read_text() and "/dpdmd/student" in js.read_text()
    node = "/usr/bin/node"
    if Path(node).exists():
        r = subprocess.run([node, "--check", str(js)], capture_output=True, text=True)
        assert r.returncode == 0, r.stderr


def test_examples_are_api_and_ui_pairs_with_previews():
    """examples/comfyui/<name>.api.json (to POST) and example_workflows/<name>.json (UI) + <name>.jpg (preview)."""
    from PIL import Image

    folder, workflows = ROOT / "examples" / "comfyui", ROOT / "example_workflows"
    api = sorted(p.name.removesuffix(".api.json") for p in folder.glob("*.api.json"))
    assert len(api) >= 4 and api == sorted(p.stem for p in workflows.glob("*.json"))
    assert all(p.name.endswith(".api.json") for p in folder.glob("*.json"))  # the UI twins live apart
    for name in api:
        prompt = json.loads((folder / f"{name}.api.json").read_text())
        assert all("class_type" in n and "inputs" in n for n in prompt.values())
        workflow = json.loads((workflows / f"{name}.json").read_text())
        assert {n["type"] for n in workflow["nodes"]} - {"Note"} == {n["class_type"] for n in prompt.values()}
        links = sum(isinstance(v, list) for n in prompt.values() for v in n["inputs"].values())
        assert len(workflow["links"]) == links
        with Image.open(workflows / f"{name}.jpg") as preview:
            assert preview.format == "JPEG" and 300 <= preview.width <= 1024 and 200 <= preview.height <= 1024


def _requirements() -> dict[str, str]:
    lines = [ln.split("#")[0].strip() for ln in (ROOT / "requirements.txt").read_text().splitlines()]
    return {re.split(r"[<>=~!]", ln)[0].lower(): ln for ln in lines if ln}


def test_requirements_leave_torch_to_comfyui_and_match_pyproject():
    import tomllib

    reqs = _requirements()
    assert not {"torch", "torchvision", "torchaudio", "xformers"} & set(reqs)
    project = {re.split(r"[<>=~!]", d)[0].lower(): d for d in
               tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"]}
    assert {name: project.get(name) for name in reqs} == reqs  # same floors as the project itself


COMFY_PROVIDED = {"comfy", "comfy_api", "comfy_extras", "folder_paths", "latent_preview", "server", "aiohttp", "torch"}


def _third_party_imports(path: Path) -> set[str]:
    """Top-level third-party modules a file imports anywhere (lazy imports inside functions included)."""
    import ast

    names = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names |= {a.name.split(".")[0] for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names.add(node.module.split(".")[0])
    return {n for n in names if n not in sys.stdlib_module_names and n != "distill_core"}


def test_requirements_cover_what_the_nodes_import():
    """Every third-party module imported by the nodes and the distill_core modules they load is required."""
    code = (f"import sys; sys.path[:0] = [{str(ROOT)!r}, {str(ROOT / 'tests')!r}]\n"
            "from comfy_pack import pack_module; pack_module('nodes.compute')\n"
            "import distill_core.export.exporters, distill_core.sampling, distill_core.teachers.builtin, "
            "distill_core.evaluation.evaluate\n"
            "print('\\n'.join(m.__file__ for k, m in sys.modules.items() if k.startswith('distill_core')))")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd="/")
    assert r.returncode == 0, r.stderr[-2000:]
    files = [Path(f) for f in r.stdout.split()] + sorted((ROOT / "nodes").glob("*.py"))
    assert any(f.name == "builtin.py" for f in files)
    needed = set().union(*map(_third_party_imports, files)) - COMFY_PROVIDED
    dist = {"PIL": "pillow", "sklearn": "scikit-learn"}
    missing = {dist.get(m, m).lower() for m in needed} - set(_requirements())
    assert not missing, f"imported by the pack but not in requirements.txt: {sorted(missing)}"


def test_the_loaders_check_refuses_damaged_and_non_finite_native_students(tmp_path):
    """What the Student Loader runs before ComfyUI's own loader (which checks neither)."""
    from safetensors import safe_open
    from safetensors.torch import load_file, save_file

    from distill_core.export.exporters import check_student_file, save_student

    student = sd3_student(tmp_path / "s.safetensors")
    check_student_file(student)
    with safe_open(str(student), framework="pt") as f:
        meta = f.metadata()
    tensors = load_file(str(student))
    name = sorted(tensors)[0]
    tensors[name] = tensors[name].clone()
    tensors[name].view(-1)[0] = float("nan")  # one NaN: same size, only the checksum or the values tell
    save_file(tensors, str(tmp_path / "nan.safetensors"), metadata=meta)
    with pytest.raises(CheckpointError, match="does not match the checksum"):
        check_student_file(tmp_path / "nan.safetensors")
    save_student(tensors, read_student_info(student), tmp_path / "nan_exported.safetensors")  # exported from a NaN state
    with pytest.raises(CheckpointError, match=f"holds NaN or infinite values \\(first in '{name}'\\)"):
        check_student_file(tmp_path / "nan_exported.safetensors")
