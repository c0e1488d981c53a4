"""Test helpers for the ComfyUI node pack: import it as ComfyUI does, and build tiny students.

Nothing here imports ComfyUI. The pack is imported under its own module name
(as ComfyUI's load_custom_node does), never as a top-level ``nodes`` package,
which would shadow ComfyUI's own ``nodes`` module.
"""
from __future__ import annotations

import importlib
import importlib.util
import sys
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent.parent
PACK = "dpdmd_pack"

# A tiny SD3.5-shaped transformer (dual attention in layer 0, RMS qk-norm). ComfyUI infers the MMDiT depth
# as hidden // 64, so hidden = 64 * num_layers. Context 4096 / pooled 2048 are what ComfyUI's SD3 text
# encoders produce (CLIP-L alone is padded to them), so the same student runs on real conditioning;
# pos_embed_max_size 64 patches covers 1024 px images (latent 128, patch 2).
TINY_SD3 = dict(sample_size=32, patch_size=2, in_channels=16, out_channels=16, num_layers=2, attention_head_dim=64,
                num_attention_heads=2, joint_attention_dim=4096, caption_projection_dim=128,
                pooled_projection_dim=2048, pos_embed_max_size=64, dual_attention_layers=(0,), qk_norm="rms_norm")


def load_pack():
    """The pack's root module, imported like ComfyUI imports custom nodes (light: no ComfyUI needed)."""
    if PACK not in sys.modules:
        spec = importlib.util.spec_from_file_location(PACK, ROOT / "__init__.py",
                                                      submodule_search_locations=[str(ROOT)])
        module = importlib.util.module_from_spec(spec)
        sys.modules[PACK] = module
        spec.loader.exec_module(module)
    return sys.modules[PACK]


def pack_module(name: str):
    """A submodule of the pack, e.g. pack_module('nodes.compute')."""
    load_pack()
    return importlib.import_module(f"{PACK}.{name}")


def builtin_student(path: Path, kind: str = "shapes") -> Path:
    """A 4-step student file of the built-in teacher ``kind``: that teacher's weights with student metadata.

    Untrained as a student, but a valid one: what the loader, samplers and grids need.
    """
    from distill_core.config import Config, resolve
    from distill_core.export.exporters import save_student, student_info
    from distill_core.teachers.builtin import BuiltinTeacher

    teacher = BuiltinTeacher(kind=kind)
    cfg = Config()
    cfg.teacher.builtin = kind
    info = student_info(teacher, resolve(cfg), steps_trained=0)
    return save_student(teacher.network.state_dict(), info, path)


def tiny_sd3_transformer(seed: int = 0):
    from diffusers import SD3Transformer2DModel

    torch.manual_seed(seed)
    return SD3Transformer2DModel(**TINY_SD3).eval()


def sd3_student(path: Path, seed: int = 0, steps: int = 4) -> Path:
    """A tiny SD3 student in diffusers format with DP-DMD metadata (FlowSchedule(shift=3) levels)."""
    from distill_core.export.exporters import save_student
    from distill_core.export.student_file import StudentInfo
    from distill_core.schedules import FlowSchedule

    net = tiny_sd3_transformer(seed)
    schedule = FlowSchedule(shift=3.0)
    levels = schedule.sampling_levels(steps)
    config = {k: list(v) if isinstance(v, tuple) else v for k, v in TINY_SD3.items()}
    info = StudentInfo(family="sd3", prediction_type="flow", levels=levels, sigmas=schedule.comfy_sigmas(levels),
                       schedule=schedule.describe(), network_config=config, teacher="tiny-sd3",
                       title=f"DP-DMD {steps}-step student (tiny sd3)")
    return save_student(net.state_dict(), info, path)


def plain_safetensors(path: Path) -> Path:
    """A valid safetensors file without DP-DMD metadata (an ordinary model)."""
    from safetensors.torch import save_file

    save_file({"weight": torch.zeros(4, 4)}, str(path))
    return path


def truncated_copy(src: Path, dst: Path, keep: float = 0.6) -> Path:
    """``src`` cut off after a fraction of its bytes (header intact): an interrupted copy."""
    data = src.read_bytes()
    dst.write_bytes(data[: int(len(data) * keep)])
    return dst
