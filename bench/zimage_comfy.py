"""Z-Image exports in a real ComfyUI (issue 26 part 5), on a full-width random-weight network.

    COMFYUI_PATH=.comfyui-0.33.0 PYTHONPATH=. .venv-comfy-0.33.0/bin/python bench/zimage_comfy.py

ComfyUI detects a Z-Image file only at the real width (model_detection: dim 3840 gives 30 heads, the rope axes
and Z-Image's modulation; any other width is read as a Lumina 2 it cannot run), so the tiny CI folders cannot
reach it. This builds the real block shape (dim 3840, 30 heads, ComfyUI's 2 + 2 refiner blocks) with one main
layer (0.9 B parameters instead of 6.15 B), a random rank-8 LoRA over the layers the project trains
(the Z-Image teacher's lora_targets) written by the project's LoRA key writer, and the merged student written by
the project's student-file writer in bfloat16 (what `dpdmd export --format comfy` writes). Then, in ComfyUI:
the pack's Student Loader must detect supported_models.ZImage with flow sampling; the pack's Student Sigmas
(source 'zimage') must equal the file's sigmas; SamplerCustom with the Student Sampler samples 4 steps, set
against the project's own 4-step sample of the same weights (the teacher's call_network on fixed random
conditioning); the teacher file through UNETLoader + LoraLoaderModelOnly must leave no LoRA key unloaded
(ComfyUI's own 'lora key not loaded' log) and reproduce the merged student. Writes WORK/comfy_zimage_VERSION.json.
Needs about 8 GB of RAM (everything float32 on the CPU, one model at a time).
"""
from __future__ import annotations

import argparse
import asyncio
import gc
import json
import logging
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests" / "comfyui"))
sys.path.insert(0, str(ROOT / "tests"))
from comfy_env import comfy_version, setup_comfy  # noqa: E402

setup_comfy()
import comfy.model_management  # noqa: E402
import comfy.model_sampling  # noqa: E402
import comfy.supported_models  # noqa: E402
import folder_paths  # noqa: E402
import nodes  # noqa: E402
import torch  # noqa: E402
from comfy_inprocess_checks import comfy_samples, nodes_by_id, run  # noqa: E402
from comfy_pack import load_pack  # noqa: E402

from distill_core.export.exporters import lora_keys, save_student  # noqa: E402
from distill_core.export.student_file import StudentInfo, read_student_info  # noqa: E402
from distill_core.sampling import sample_grid  # noqa: E402
from distill_core.schedules import FlowSchedule  # noqa: E402
from distill_core.training.lora import target_modules  # noqa: E402

SEEDS, TOKENS, CAP = [3], 12, 64
NETWORK = dict(all_patch_size=(2,), all_f_patch_size=(1,), in_channels=16, dim=3840, n_layers=1, n_refiner_layers=2,
               n_heads=30, n_kv_heads=30, cap_feat_dim=CAP, rope_theta=256.0, t_scale=1000.0, axes_dims=[32, 48, 48],
               axes_lens=[1536, 512, 512])


def network(seed: int = 0):
    from diffusers import ZImageTransformer2DModel

    torch.manual_seed(seed)
    return ZImageTransformer2DModel(**NETWORK).eval().requires_grad_(False)


class FixedCondZImage:
    """The project's Z-Image teacher on fixed conditioning: its own call_network, schedule and sampler."""

    family = "zimage"
    max_sample_batch = None

    def __init__(self, net, cond):
        from distill_core.teachers.zimage import ZImageTeacher

        self.network, self.schedule, self.cond = net, FlowSchedule(3.0, spacing="linear"), cond
        self.call_network = lambda n, x, levels, c: ZImageTeacher.call_network(self, n, x, levels, c)
        self.predict_cfg = lambda n, x, levels, c, null, s: self.call_network(n, x, torch.as_tensor(levels).expand(
            x.shape[0]).float(), c)

    @staticmethod
    def _net_dtype(net):
        return next(net.parameters()).dtype

    def encode_prompts(self, prompts):
        return {k: v.expand(len(prompts), *v.shape[1:]) for k, v in self.cond.items()}

    def null_condition(self):
        return self.cond

    def latent_shape(self):
        return (16, 8, 8)


def free() -> None:
    comfy.model_management.unload_all_models()
    gc.collect()


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--work", type=Path, default=Path("/tmp/dpdmd_zimage_comfy"))
    a = ap.parse_args()
    work = a.work
    (work / "diffusion_models").mkdir(parents=True, exist_ok=True)
    (work / "loras").mkdir(parents=True, exist_ok=True)
    folder_paths.folder_names_and_paths["diffusion_models"] = ([str(work / "diffusion_models")], {".safetensors"})
    folder_paths.folder_names_and_paths["loras"] = ([str(work / "loras")], {".safetensors"})
    folder_paths.folder_names_and_paths["dpdmd"] = ([str(work / "diffusion_models")], {".safetensors"})
    out: dict = {"comfyui": comfy_version(), "network": {k: list(v) if isinstance(v, tuple) else v
                                                          for k, v in NETWORK.items()}}
    g = torch.Generator().manual_seed(0)
    cap = torch.randn(1, TOKENS, CAP, generator=g)

    # the teacher file, the LoRA file, the merged student file (all from the project's writers)
    t0 = time.perf_counter()
    net = network()
    out["parameters"] = sum(p.numel() for p in net.parameters())
    base = {k: v.to(torch.bfloat16) for k, v in net.state_dict().items()}
    from safetensors.torch import save_file

    save_file(base, str(work / "diffusion_models" / "teacher_zimage.safetensors"))
    lora, merged = {}, dict(base)
    for module in target_modules(net, "zimage"):
        w = base[f"{module}.weight"]
        la = torch.randn(8, w.shape[1], generator=g) * 0.02
        lb = torch.randn(w.shape[0], 8, generator=g) * 0.02
        lora.update(lora_keys("zimage", module, la, lb))
        merged[f"{module}.weight"] = (w.float() + lb @ la).to(torch.bfloat16)
    out["lora_tensors"] = len(lora)
    save_file(lora, str(work / "loras" / "student_zimage_lora.safetensors"))
    schedule = FlowSchedule(3.0, spacing="linear")
    levels = schedule.sampling_levels(4)
    info = StudentInfo(family="zimage", prediction_type="flow", levels=levels, sigmas=schedule.comfy_sigmas(levels),
                       schedule=schedule.describe(), network_config=out["network"], teacher="random full-width z-image",
                       title="DP-DMD 4-step student (random full-width z-image)")
    student_file = work / "diffusion_models" / "student_zimage.safetensors"
    save_student(merged, info, student_file, dtype=torch.bfloat16)
    out["write_seconds"] = time.perf_counter() - t0

    # the project's own 4-step sample of the merged (bf16-rounded) weights, float32
    net.load_state_dict({k: v.float() for k, v in merged.items()})
    teacher = FixedCondZImage(net, {"prompt_embeds": cap, "prompt_mask": torch.ones(1, TOKENS, dtype=torch.bool)})
    ours = sample_grid(teacher, net, ["p"], SEEDS, levels)
    del net, teacher, base, merged
    gc.collect()

    ids = nodes_by_id(asyncio.run(load_pack().comfy_entrypoint()))
    t0 = time.perf_counter()
    model, sigmas, student = run(ids["DPDMDStudentLoader"], student_name=student_file.name).result
    out["detected"] = {"model": type(model.model).__name__, "config": type(model.model.model_config).__name__,
                       "sampling": type(model.get_model_object("model_sampling")).__mro__[1].__name__}
    out["detected_as_zimage"] = isinstance(model.model.model_config, comfy.supported_models.ZImage)
    node_sigmas = run(ids["DPDMDStudentSigmas"], source="zimage", steps=4, shift=0.0).result[0]
    out["sigmas_node"] = [round(float(s), 6) for s in node_sigmas]
    out["sigmas_file"] = read_student_info(student_file).sigmas
    out["sigmas_agree"] = bool(torch.allclose(node_sigmas, torch.tensor(out["sigmas_file"]), atol=1e-6)
                               and torch.allclose(sigmas, node_sigmas, atol=1e-6))
    positive = [[cap, {}]]
    sampler = run(ids["DPDMDStudentSampler"]).result[0]
    theirs = comfy_samples(model, sampler, sigmas, positive, SEEDS, (16, 8, 8))
    out["student_seconds"] = time.perf_counter() - t0
    scale = float(ours.abs().max())
    out["comfy_vs_project_max_rel"] = float((theirs - ours).abs().max()) / scale
    del model, student
    free()

    t0 = time.perf_counter()
    not_loaded: list[str] = []

    class Catch(logging.Handler):
        def emit(self, record):
            if "lora key not loaded" in record.getMessage():
                not_loaded.append(record.getMessage())

    handler = Catch()
    logging.getLogger().addHandler(handler)
    try:
        (base_model,) = nodes.UNETLoader().load_unet("teacher_zimage.safetensors", "default")
        bare = comfy_samples(base_model, sampler, sigmas, positive, SEEDS, (16, 8, 8))
        (patched,) = nodes.LoraLoaderModelOnly().load_lora_model_only(base_model, "student_zimage_lora.safetensors", 1.0)
        with_lora = comfy_samples(patched, sampler, sigmas, positive, SEEDS, (16, 8, 8))
    finally:
        logging.getLogger().removeHandler(handler)
    out["lora_seconds"] = time.perf_counter() - t0
    out["lora_keys_not_loaded"] = not_loaded
    out["lora_vs_merged_max_rel"] = float((with_lora - theirs).abs().max()) / scale
    out["teacher_vs_merged_max_rel"] = float((bare - theirs).abs().max()) / scale
    free()
    (work / f"comfy_zimage_{comfy_version()}.json").write_text(json.dumps(out, indent=1))
    print(json.dumps(out, indent=1))
    ok = (out["detected_as_zimage"] and out["sigmas_agree"] and not not_loaded
          and out["comfy_vs_project_max_rel"] < 1e-3 and out["lora_vs_merged_max_rel"] < 1e-3
          and out["teacher_vs_merged_max_rel"] > 1e-3)
    print("PASS" if ok else "FAIL")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
