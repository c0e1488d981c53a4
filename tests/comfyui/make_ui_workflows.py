"""Write examples/comfyui/<name>.json (UI format, drag and drop) from <name>.api.json via the real frontend.

    COMFYUI_PATH=.comfyui-0.33.0 .venv-comfy-0.33.0/bin/python tests/comfyui/make_ui_workflows.py

Starts ComfyUI with this pack and tiny models in a temporary base directory,
loads each API workflow into ComfyUI's frontend in headless Chromium and saves
the graph it builds, so widget order and links are exactly the frontend's.
"""
from __future__ import annotations

import json
import sys
import tempfile
from pathlib import Path

sys.path[:0] = [str(Path(__file__).resolve().parent), str(Path(__file__).resolve().parents[1])]

from comfy_env import ROOT, setup_comfy  # noqa: E402

setup_comfy()

from comfy_server import Comfy, prepare_base  # noqa: E402
from frontend import frontend, ui_from_api  # noqa: E402

EXAMPLES = ROOT / "examples" / "comfyui"
NOTES = {
    "builtin_seed_grid": (
        "Built-in student seed grid. Copy the student that `dpdmd demo` exports (runs/demo/student.safetensors) "
        "to ComfyUI/models/dpdmd/dpdmd_digits_student.safetensors, or pick yours in the loader. Rows are prompts "
        "(each names a digit), columns are seeds. DP-DMD Diversity shows the paper's Eq. 9 over each row's seeds "
        "(built-in digits classifier features)."),
    "sd3_student_samplercustom": (
        "SD3.5 Medium DP-DMD student with ComfyUI's own SamplerCustom. Put the student in ComfyUI/models/dpdmd "
        "(or diffusion_models); text encoders and VAE come from the teacher's checkpoint. Sample with cfg 1, the "
        "loader's SIGMAS (the student's training timesteps: 1, .858, .602, .009, 0) and the DP-DMD Student "
        "Sampler. ComfyUI's 'simple' scheduler is NOT the student's schedule. LoRAs: put LoraLoaderModelOnly "
        "between the loader's MODEL and SamplerCustom."),
    "teacher_vs_student_grid": (
        "Teacher vs student on the same prompts and seeds: the built-in teacher (30 steps, cfg 2) on the left, "
        "the 4-step DP-DMD student on the right. The two DP-DMD Diversity nodes show Eq. 9 for each: a DP-DMD "
        "student keeps much of the teacher's diversity where a plain DMD student collapses to one look per prompt."),
}


def main() -> None:
    with tempfile.TemporaryDirectory() as tmp:
        server = Comfy(prepare_base(Path(tmp)))
        try:
            server.wait_started()
            with frontend(server.url) as page:
                for api_file in sorted(EXAMPLES.glob("*.api.json")):
                    name = api_file.name.removesuffix(".api.json")
                    workflow = ui_from_api(page, json.loads(api_file.read_text()), name, NOTES.get(name, ""))
                    (EXAMPLES / f"{name}.json").write_text(json.dumps(workflow, indent=1) + "\n")
                    print(f"wrote {name}.json ({len(workflow['nodes'])} nodes, {len(workflow['links'])} links)")
        finally:
            server.stop()


if __name__ == "__main__":
    main()
