"""Issue 11 part 3 / issue 15 part 2: the full-size random-weight exports in a real ComfyUI, through native nodes.

    COMFYUI_PATH=.comfyui-0.33.0 PYTHONPATH=. .venv-comfy-0.33.0/bin/python bench/fullsize_comfy.py --arch sdxl

Run under a ComfyUI venv (.ci/comfyui_env.sh) after bench/fullsize_cpu.py wrote WORK's teacher folder and
exports. ComfyUI runs on the CPU with --bf16-unet (its CPU default would upcast the 2.5 B weights to float32).
UNETLoader reads the student's comfy file; the check records which model ComfyUI detected; the pack's Student
Sigmas node gives the 4-step sigmas, compared with the file's own; SamplerCustom with the pack's Student
Sampler samples 4 steps at a small size on fixed random conditioning of ComfyUI's shapes. Then UNETLoader reads
the teacher (its diffusers transformer / unet file), LoraLoaderModelOnly applies the student LoRA export, and the
same sampling is set against the merged student's (and the bare teacher's, to show the LoRA matters).
Writes WORK/comfy_ARCH_VERSION.json.
"""
from __future__ import annotations

import argparse
import gc
import json
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests" / "comfyui"))
from comfy_env import comfy_version, setup_comfy  # noqa: E402

setup_comfy()
from comfy.cli_args import args as comfy_args  # noqa: E402

comfy_args.bf16_unet = True  # before comfy.model_management is imported

import comfy.model_management  # noqa: E402
import folder_paths  # noqa: E402
import nodes  # noqa: E402
import torch  # noqa: E402
from comfy_inprocess_checks import comfy_samples, nodes_by_id, run  # noqa: E402
from comfy_pack import load_pack  # noqa: E402

from distill_core.export.student_file import read_student_info  # noqa: E402

SEEDS = [3]
FAMILY = {"sd3.5-medium": "sd3", "sdxl": "sdxl"}


def condition(family: str, px: int) -> list:
    """Fixed random conditioning in ComfyUI's form: SD3 context 4096 + pooled 2048; SDXL 2048 + pooled 1280."""
    g = torch.Generator().manual_seed(0)
    if family == "sd3":
        return [[torch.randn(1, 77, 4096, generator=g), {"pooled_output": torch.randn(1, 2048, generator=g)}]]
    size = {"width": px, "height": px, "crop_w": 0, "crop_h": 0, "target_width": px, "target_height": px}
    return [[torch.randn(1, 77, 2048, generator=g), {"pooled_output": torch.randn(1, 1280, generator=g), **size}]]


def link(folder: Path, target: Path, name: str) -> str:
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / name
    if path.is_symlink() or path.exists():
        path.unlink()
    path.symlink_to(target)
    return name


def free(*models) -> None:
    del models
    comfy.model_management.unload_all_models()
    gc.collect()


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--arch", required=True, choices=sorted(FAMILY))
    ap.add_argument("--work", type=Path, default=Path("/tmp/dpdmd_fullsize"))
    ap.add_argument("--px", type=int, default=128)
    ap.add_argument("--tiny", action="store_true")
    a = ap.parse_args()
    family, tag = FAMILY[a.arch], f"{a.arch}{'_tiny' if a.tiny else ''}"
    student_file = a.work / f"run_{tag}_256_comfy.safetensors"
    lora_file = a.work / f"run_{tag}_256_lora.safetensors"
    net = "transformer" if family == "sd3" else "unet"
    teacher_file = a.work / f"teacher_{tag}" / net / "diffusion_pytorch_model.safetensors"
    models = a.work / f"comfy_models_{comfy_version()}"
    folder_paths.folder_names_and_paths["diffusion_models"] = ([str(models / "diffusion_models")], {".safetensors"})
    folder_paths.folder_names_and_paths["loras"] = ([str(models / "loras")], {".safetensors"})
    student_name = link(models / "diffusion_models", student_file, f"student_{tag}.safetensors")
    teacher_name = link(models / "diffusion_models", teacher_file, f"teacher_{tag}.safetensors")
    lora_name = link(models / "loras", lora_file, f"student_{tag}_lora.safetensors")

    import asyncio

    ids = nodes_by_id(asyncio.run(load_pack().comfy_entrypoint()))
    sigmas = run(ids["DPDMDStudentSigmas"], source=family, steps=4, shift=0.0).result[0]
    file_sigmas = read_student_info(student_file).sigmas
    sampler = run(ids["DPDMDStudentSampler"]).result[0]
    positive = condition(family, a.px)
    out: dict = {"comfyui": comfy_version(), "arch": a.arch, "px": a.px, "steps": len(sigmas) - 1,
                 "sigmas_node": [round(float(s), 6) for s in sigmas], "sigmas_file": file_sigmas,
                 "sigmas_agree": bool(torch.allclose(sigmas, torch.tensor(file_sigmas, dtype=sigmas.dtype), atol=1e-4))}

    t0 = time.perf_counter()
    (student,) = nodes.UNETLoader().load_unet(student_name, "default")
    latent_shape = (student.get_model_object("latent_format").latent_channels, a.px // 8, a.px // 8)
    out["detected"] = {"model": type(student.model).__name__, "config": type(student.model.model_config).__name__,
                       "sampling": [c.__name__ for c in type(student.get_model_object("model_sampling")).__mro__[1:3]],
                       "dtype": str(student.model.get_dtype()), "latent": list(latent_shape)}
    merged = comfy_samples(student, sampler, sigmas, positive, SEEDS, latent_shape)
    out["student_seconds"] = time.perf_counter() - t0
    out["student_finite"], out["student_std"] = bool(merged.isfinite().all()), float(merged.std())
    free(student)

    t0 = time.perf_counter()
    (teacher,) = nodes.UNETLoader().load_unet(teacher_name, "default")
    bare = comfy_samples(teacher, sampler, sigmas, positive, SEEDS, latent_shape)
    (patched,) = nodes.LoraLoaderModelOnly().load_lora_model_only(teacher, lora_name, 1.0)
    with_lora = comfy_samples(patched, sampler, sigmas, positive, SEEDS, latent_shape)
    out["lora_seconds"] = time.perf_counter() - t0
    scale = float(merged.abs().max())
    out["lora_vs_merged_max_rel"] = float((with_lora - merged).abs().max()) / scale
    out["teacher_vs_merged_max_rel"] = float((bare - merged).abs().max()) / scale
    free(teacher, patched)
    (a.work / f"comfy_{tag}_{comfy_version()}.json").write_text(json.dumps(out, indent=1))
    print(json.dumps(out, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
