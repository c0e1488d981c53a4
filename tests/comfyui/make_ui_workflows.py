"""Write example_workflows/<name>.json (UI format) and <name>.jpg (its preview) from examples/comfyui/<name>.api.json.

    COMFYUI_PATH=.comfyui-0.33.0 .venv-comfy-0.33.0/bin/python tests/comfyui/make_ui_workflows.py [--student FILE]

Starts ComfyUI with this pack and the tests' tiny models in a temporary base
directory, loads each API workflow into ComfyUI's frontend in headless Chromium,
runs it there and lays it out at the sizes its nodes have after the run (images
shown), then saves the graph the frontend builds, so widget order and links are
exactly the frontend's. ComfyUI's template browser lists the pack's
example_workflows/ with the .jpg of the same name. --student FILE shows a trained
shapes student (e.g. runs/demo/dpdmd/student.safetensors) in the previews instead of
the tests' untrained one. The SD3 example runs on a tiny random model, so its
preview shows the graph without its (noise) image.
"""
from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
from pathlib import Path

sys.path[:0] = [str(Path(__file__).resolve().parent), str(Path(__file__).resolve().parents[1])]

from comfy_env import ROOT, setup_comfy  # noqa: E402

setup_comfy()

import frontend as fe  # noqa: E402
from comfy_server import Comfy, prepare_base  # noqa: E402

EXAMPLES = ROOT / "examples" / "comfyui"
WORKFLOWS = ROOT / "example_workflows"
NOISE_OUTPUT = {"sd3_student_samplercustom"}  # tiny random models: the graph is the preview, not the image
NOTES = {
    "builtin_seed_grid": (
        "Built-in student seed grid. Copy the DP-DMD student that `dpdmd demo` exports "
        "(runs/demo/dpdmd/student.safetensors) to ComfyUI/models/dpdmd/dpdmd_shapes_student.safetensors, or pick "
        "yours in the loader. Rows are prompts (each names a coloured shape), columns are seeds: a DP-DMD student "
        "puts the shape in different corners and sizes, a DMD student (runs/demo/dmd/) mostly in one. DP-DMD "
        "Diversity shows the paper's Eq. 9 over each row's seeds (the shapes decoder's features) after a run. "
        "For a digits student set Diversity's 'builtin' to digits and use digit prompts."),
    "sd3_student_samplercustom": (
        "SD3.5 Medium DP-DMD student with ComfyUI's own SamplerCustom. Put the student in ComfyUI/models/dpdmd "
        "(or diffusion_models); text encoders and VAE come from the teacher's checkpoint. Sample with cfg 1, the "
        "loader's SIGMAS (the student's training timesteps: 1, .858, .602, .009, 0) and the DP-DMD Student "
        "Sampler. ComfyUI's 'simple' scheduler is NOT the student's schedule. LoRAs: put LoraLoaderModelOnly "
        "between the loader's MODEL and SamplerCustom."),
    "hybrid_seed_grid": (
        "DP-DMD Hybrid Sampler on the built-in shapes teacher: the teacher's first k steps with cfg 2 (k 0 = the "
        "student's own anchor step), then the student from the level they reach. Rows of the saved image: "
        "student, hybrid, teacher on the same seeds; the Diversity nodes show Eq. 9 for each, the Hybrid node its "
        "network evaluations per image (student 4, hybrid 14 at k 5, teacher 60)."),
    "teacher_vs_student_grid": (
        "Teacher vs student on the same prompts and seeds: the built-in teacher (30 steps, cfg 2) on the left, "
        "the 4-step DP-DMD student on the right. The two DP-DMD Diversity nodes show Eq. 9 for each after a run: "
        "a DP-DMD student keeps much of the teacher's diversity where a plain DMD student collapses to one look "
        "per prompt."),
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--student", type=Path, help="a trained built-in student for the previews")
    args = parser.parse_args()
    WORKFLOWS.mkdir(exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        base = prepare_base(Path(tmp))
        if args.student:
            shutil.copy2(args.student, base / "models" / "dpdmd" / "dpdmd_shapes_student.safetensors")
        server = Comfy(base)
        try:
            server.wait_started()
            with fe.frontend(server.url) as page:
                for api_file in sorted(EXAMPLES.glob("*.api.json")):
                    name = api_file.name.removesuffix(".api.json")
                    fe.fresh(page)
                    fe.load_api(page, json.loads(api_file.read_text()), name)
                    fe.run(page)
                    fe.layout(page, NOTES.get(name, ""))
                    fe.fit_view(page)
                    workflow = fe.workflow(page)
                    (WORKFLOWS / f"{name}.json").write_text(json.dumps(workflow, indent=1) + "\n")
                    if name in NOISE_OUTPUT:
                        fe.fresh(page)
                        fe.load_ui(page, workflow)
                        page.wait_for_timeout(1000)
                    fe.screenshot(page, WORKFLOWS / f"{name}.jpg")
                    print(f"wrote {name}.json ({len(workflow['nodes'])} nodes, {len(workflow['links'])} links) "
                          f"and {name}.jpg")
        finally:
            server.stop()


if __name__ == "__main__":
    main()
