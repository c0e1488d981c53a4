"""Layer 2 for FLUX.2 [klein] students: real ComfyUI modules (0.33.0: comfy/supported_models.py has Flux2).

A tiny klein-base folder is distilled for two LoRA steps with `dpdmd train`, then exported. ComfyUI must
detect the single-file export as its own FLUX.2 model and sample it in 4 steps, through the pack's loader,
Student Sigmas and Student Sampler in SamplerCustom, as distill_core does; the LoRA export must load on
the teacher through LoraLoaderModelOnly with zero keys left unloaded and give the merged student.
Run by tests/test_comfyui.py under the ComfyUI interpreter (or directly with it).
"""
from __future__ import annotations

import asyncio
import logging
import sys
from pathlib import Path

import pytest
import torch

from comfy_env import require_comfy, setup_comfy

require_comfy()
setup_comfy()

import comfy.lora  # noqa: E402
import comfy.model_base  # noqa: E402
import comfy.sd  # noqa: E402
import folder_paths  # noqa: E402
from comfy_extras.nodes_custom_sampler import SamplerCustom  # noqa: E402
from comfy_pack import load_pack  # noqa: E402
from safetensors.torch import load_file, save_file  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # tests/: the tiny builders
from tiny_diffusers import tiny_run_config  # noqa: E402
from tiny_flux2 import RESOLUTION, build_tiny_flux2_pipeline  # noqa: E402

from distill_core.cli import main as cli  # noqa: E402
from distill_core.config import resolve  # noqa: E402
from distill_core.export.exporters import load_student  # noqa: E402
from distill_core.sampling import sample_grid  # noqa: E402
from distill_core.teachers import load_teacher  # noqa: E402

SEEDS = [3, 11]
PROMPT = "a photo of a cat"


@pytest.fixture(scope="module")
def pack():
    return asyncio.run(load_pack().comfy_entrypoint())


@pytest.fixture(scope="module")
def exported(tmp_path_factory, pack):
    """A 2-step LoRA run's exports in models/dpdmd and models/loras, the teacher in models/diffusion_models."""
    root = tmp_path_factory.mktemp("flux2")
    build_tiny_flux2_pipeline(root / "klein")
    cfg = tiny_run_config("flux2", root / "klein", root / "run", teacher__resolution=RESOLUTION, student__lora_rank=2,
                          optim__student_lr=5e-2, optim__fake_lr=1e-2)
    (root / "run.toml").write_text(cfg.to_toml())
    assert cli(["train", str(root / "run.toml")]) == 0
    for sub in ("dpdmd", "loras", "diffusion_models"):
        (root / sub).mkdir()
    run = str(root / "run")
    assert cli(["export", run, "--format", "comfy", "--dtype", "float32",
                "--out", str(root / "dpdmd" / "flux2_student.safetensors")]) == 0
    assert cli(["export", run, "--format", "lora", "--dtype", "float32",
                "--out", str(root / "loras" / "flux2_lora.safetensors")]) == 0
    teacher = load_teacher(resolve(cfg))
    save_file({k: v.contiguous() for k, v in teacher.comfy_state_dict(teacher.network.state_dict()).items()},
              str(root / "diffusion_models" / "flux2_teacher.safetensors"))
    student, info = load_student(root / "run" / "student.safetensors", teacher)
    saved = {k: folder_paths.folder_names_and_paths[k] for k in ("dpdmd", "loras", "diffusion_models")}
    for sub in saved:
        folder_paths.folder_names_and_paths[sub] = ([str(root / sub)], {".safetensors"})
    yield {"root": root, "teacher": teacher, "student": student, "info": info}
    folder_paths.folder_names_and_paths.update(saved)


def nodes_by_id(pack) -> dict:
    return {n.GET_SCHEMA().node_id: n for n in asyncio.run(pack.get_node_list())}


def positive(teacher) -> list:
    """The teacher's own prompt embedding as ComfyUI conditioning (what its Qwen3 encoder node would give)."""
    return [[teacher.encode_prompts([PROMPT])["encoder_hidden_states"].float(), {}]]


def comfy_samples(model, sampler, sigmas, cond, latent) -> torch.Tensor:
    """SamplerCustom (noise from each seed, cfg 1), one seed at a time."""
    out = [SamplerCustom.execute(model, True, seed, 1.0, cond, cond, sampler, sigmas,
                                 {"samples": torch.zeros(1, *latent)}).result[0]["samples"] for seed in SEEDS]
    return model.get_model_object("latent_format").process_in(torch.cat(out))


def close(a: torch.Tensor, b: torch.Tensor, rel: float) -> float:
    err = float((a - b).abs().max())
    assert err <= rel * max(float(b.abs().max()), 1.0), f"max diff {err}"
    return err


def test_single_file_is_native_flux2_and_samples_as_distill_core(pack, exported):
    ids = nodes_by_id(pack)
    model, sigmas, student = ids["DPDMDStudentLoader"].execute(student_name="flux2_student.safetensors").result
    assert isinstance(model.model, comfy.model_base.Flux2) and student.info.family == "flux2"
    info, teacher = exported["info"], exported["teacher"]
    assert sigmas.tolist() == pytest.approx(info.levels, abs=1e-6)  # flow: ComfyUI's sigma is the level
    node = ids["DPDMDStudentSigmas"]
    assert torch.equal(node.execute(source="from student", steps=9, shift=0.0, student=student).result[0], sigmas)
    family = node.execute(source="flux2", steps=4, shift=0.0).result[0].tolist()  # 1024 px, 50 teacher steps
    assert family == pytest.approx([1.0, 7.56 * .75 / (1 + 6.56 * .75), 7.56 * .5 / (1 + 6.56 * .5),
                                    7.56 * .25 / (1 + 6.56 * .25), 0.0], abs=1e-6)
    sampler = ids["DPDMDStudentSampler"].execute().result[0]
    theirs = comfy_samples(model, sampler, sigmas, positive(teacher), teacher.latent_shape())
    ours = sample_grid(teacher, exported["student"], [PROMPT], SEEDS, info.levels)
    print(f"max |ComfyUI - distill_core| = {close(theirs, ours, 1e-4):.2e}")


def test_lora_export_loads_on_the_teacher_with_no_key_left(pack, exported, caplog):
    import nodes as comfy_nodes

    teacher_model = comfy.sd.load_diffusion_model(
        str(exported["root"] / "diffusion_models" / "flux2_teacher.safetensors"))
    with caplog.at_level(logging.WARNING):
        patched = comfy_nodes.LoraLoaderModelOnly().load_lora_model_only(teacher_model, "flux2_lora.safetensors",
                                                                         1.0)[0]
    assert not [r for r in caplog.records if "lora key not loaded" in r.getMessage()]
    lora = load_file(str(exported["root"] / "loras" / "flux2_lora.safetensors"))
    key_map = comfy.lora.model_lora_keys_unet(teacher_model.model, {})
    layers = {k.rsplit(".lora_", 1)[0] for k in lora}
    assert layers and layers <= set(key_map)  # every layer of the file is one ComfyUI patches
    ids = nodes_by_id(pack)
    _, sigmas, _ = ids["DPDMDStudentLoader"].execute(student_name="flux2_student.safetensors").result
    sampler = ids["DPDMDStudentSampler"].execute().result[0]
    teacher, info = exported["teacher"], exported["info"]
    theirs = comfy_samples(patched, sampler, sigmas, positive(teacher), teacher.latent_shape())
    ours = sample_grid(teacher, exported["student"], [PROMPT], SEEDS, info.levels)
    print(f"max |ComfyUI LoRA on teacher - merged student| = {close(theirs, ours, 1e-4):.2e}")
    plain = comfy_samples(teacher_model, sampler, sigmas, positive(teacher), teacher.latent_shape())
    assert float((plain - ours).abs().max()) > 1e-2  # the LoRA matters (100x the tolerance)


def test_every_layer_a_full_run_lora_may_carry_is_placed(exported, caplog):
    """A full fine-tune's LoRA export (SVD of each layer's change) covers teacher.lora_file_modules(): ComfyUI
    must place every one of them (it maps no diffusers key to the modulations or the timestep embedding)."""
    teacher = exported["teacher"]
    model = comfy.sd.load_diffusion_model(str(exported["root"] / "diffusion_models" / "flux2_teacher.safetensors"))
    layers = dict(teacher.network.named_modules())
    lora = {}
    for name in teacher.lora_file_modules():
        w = layers[name].weight
        lora[f"transformer.{name}.lora_A.weight"] = torch.zeros(2, w.shape[1])
        lora[f"transformer.{name}.lora_B.weight"] = torch.zeros(w.shape[0], 2)
    assert {"x_embedder", "context_embedder", "proj_out"} <= set(teacher.lora_file_modules())
    with caplog.at_level(logging.WARNING):
        patches = comfy.lora.load_lora(lora, comfy.lora.model_lora_keys_unet(model.model, {}))
    assert not [r for r in caplog.records if "lora key not loaded" in r.getMessage()]
    assert len(patches) == len(teacher.lora_file_modules())


@pytest.mark.parametrize("name, heads, depths, context", [("flux2-klein-4b", 24, (5, 20), 7680),
                                                          ("flux2-klein-9b", 32, (8, 24), 12288)])
def test_full_size_klein_exports_are_detected_as_flux2(name, heads, depths, context):
    """The comfy export of the real 4B / 9B shapes (meta tensors: no weights) is ComfyUI's FLUX.2 of that size."""
    import comfy.model_detection

    from distill_core.plan import architecture_from_reference, build_meta_network
    from distill_core.teachers.flux2 import bfl_state_dict

    net = build_meta_network(architecture_from_reference(name))
    sd = bfl_state_dict(net.state_dict())  # what Flux2Teacher.comfy_state_dict writes
    config = comfy.model_detection.detect_unet_config(sd, "")
    assert (config["image_model"], config["hidden_size"], config["num_heads"]) == ("flux2", heads * 128, heads)
    assert (config["depth"], config["depth_single_blocks"], config["context_in_dim"]) == (*depths, context)
    model_config = comfy.model_detection.model_config_from_unet(sd, "")
    assert type(model_config).__name__ == "Flux2"
