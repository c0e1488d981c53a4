"""The loaded student that travels on a DPDMD_STUDENT wire, and how each family is loaded.

SD3 / SDXL students become ComfyUI's own MODEL (comfy.sd.load_diffusion_model
reads diffusers-format transformers / UNets), so native samplers, LoRAs and
patches apply. Built-in-teacher students are a small diffusers DiT that ComfyUI
has no model class for: they are loaded by distill_core and sampled by this pack.
"""
from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import comfy.model_sampling
import comfy.sd
import torch

from distill_core.builtin.kinds import DEFAULT_KIND, data_module
from distill_core.errors import CheckpointError, ConfigError, DPDMDError
from distill_core.export.student_file import StudentInfo
from distill_core.families import COMFY_NATIVE, FAMILIES
from distill_core.hybrid import Leg, hybrid_legs

WEIGHT_DTYPES = {"default": {}, "fp8_e4m3fn": {"dtype": torch.float8_e4m3fn},
                 "fp8_e4m3fn_fast": {"dtype": torch.float8_e4m3fn, "fp8_optimizations": True},
                 "fp8_e5m2": {"dtype": torch.float8_e5m2}}
PARAMETRIZATION = {"flow": comfy.model_sampling.CONST, "epsilon": comfy.model_sampling.EPS}  # by prediction type
DEFAULT_PROMPT = data_module(DEFAULT_KIND).canonical_prompt(0)  # the built-in sampling nodes' default


@dataclass
class Student:
    """A loaded student: its file name, metadata and network (a ComfyUI MODEL, or the built-in pair)."""
    name: str
    info: StudentInfo
    model: Any = None  # ComfyUI ModelPatcher (sd3 / sdxl)
    teacher: Any = None  # distill_core BuiltinTeacher: architecture, prompt encoding, decoding (builtin)
    net: torch.nn.Module | None = None  # the student network (builtin)
    guidance: float = 1.0  # CFG when sampling (1 for students; the built-in teacher handle uses its own)
    hybrid: list[Leg] | None = None  # a hybrid's teacher and student parts (builtin)

    @property
    def native(self) -> bool:
        return self.info.family in COMFY_NATIVE

    @property
    def legs(self) -> list[Leg]:
        """How a built-in handle samples: its network through its levels, or a hybrid's parts in turn."""
        return self.hybrid or [Leg(self.net, self.info.levels, self.guidance)]

    @property
    def nfe(self) -> int:
        """Network evaluations per image."""
        return sum(leg.nfe for leg in self.legs)


class NotAComfyModelError(DPDMDError, AttributeError):
    """Raised when a built-in student's MODEL output reaches one of ComfyUI's own nodes."""


class NotAComfyModel:
    """Stands on the MODEL output of a built-in-teacher student, so misuse gets a clear message."""

    def __init__(self, name: str) -> None:
        self._name = name

    def __getattr__(self, attr: str):
        raise NotAComfyModelError(
            f"{self._name} is a built-in-teacher student: ComfyUI's own samplers cannot run it. Connect the "
            "loader's 'student' output to 'DP-DMD Sample' or 'DP-DMD Seed Grid' instead of its MODEL output")


def builtin_teacher(steps: int, cfg: float, kind: str = DEFAULT_KIND) -> Student:
    """A shipped built-in teacher as a handle the pack's samplers understand (multi-step, with CFG)."""
    from distill_core.teachers.builtin import BuiltinTeacher

    teacher = BuiltinTeacher(kind=kind)
    levels = teacher.teacher_levels(steps)
    info = StudentInfo(family="builtin", prediction_type="flow", levels=levels,
                       sigmas=teacher.schedule.comfy_sigmas(levels), schedule=teacher.schedule.describe(),
                       network_config=teacher.network_config(), method="teacher", teacher_guidance=cfg,
                       teacher="builtin", title=f"built-in {kind} teacher: {steps} steps, cfg {cfg:g}")
    return Student(f"built-in {kind} teacher", info, teacher=teacher, net=teacher.network, guidance=cfg)


def hybrid(teacher: Student, student: Student, k: int, handover: float | None) -> Student:
    """A handle that samples the teacher's first k steps with its CFG, then ``student`` (distill_core.hybrid).

    k = 0 takes the student's own anchor step (the k it was distilled with).
    """
    if teacher.native or student.native:
        raise ConfigError("the hybrid sampler runs built-in students and the built-in teacher; connect DP-DMD "
                          "Built-in Teacher and a built-in student")
    if teacher.teacher.kind != student.teacher.kind:
        raise ConfigError(f"{student.name} was distilled from the built-in {student.teacher.kind} teacher but the "
                          f"connected teacher is {teacher.teacher.kind}: set the Built-in Teacher's 'teacher' to "
                          f"{student.teacher.kind}")
    k = k or student.info.anchor_step
    legs = hybrid_legs(teacher.net, teacher.info.levels, teacher.guidance, k, student.net, student.info.levels,
                       handover)
    first, second = legs
    title = (f"hybrid: teacher {first.steps} steps (cfg {first.guidance:g}) to level {second.levels[0]:.3g}, "
             f"then {student.info.title}")
    return Student(f"hybrid of {student.name}", replace(student.info, title=title), teacher=student.teacher,
                   net=student.net, hybrid=legs)


def load(name: str, path: Path, info: StudentInfo, weight_dtype: str = "default") -> Student:
    """Load the network of a student whose metadata has been read and checked."""
    if info.family == "builtin":
        from distill_core.export.exporters import load_student
        from distill_core.teachers.builtin import BuiltinTeacher, kind_of

        teacher = BuiltinTeacher(shift=info.schedule.get("shift"), kind=kind_of(info.network_config) or "digits")
        net, _ = load_student(path, teacher)
        return Student(name, info, teacher=teacher, net=net)
    if info.family not in COMFY_NATIVE:
        raise CheckpointError(f"{name} is a {info.family!r} student; this pack samples {', '.join(FAMILIES)} students")
    from distill_core.export.exporters import check_student_file

    check_student_file(path)  # checksum and finite weights, which ComfyUI's loader does not look at
    try:
        model = comfy.sd.load_diffusion_model(str(path), model_options=dict(WEIGHT_DTYPES[weight_dtype]))
    except Exception as e:  # ComfyUI raises RuntimeError / safetensors errors with long hints
        raise CheckpointError(f"ComfyUI could not load {name} as a {info.family} diffusion model: "
                              f"{str(e).splitlines()[0][:300]}") from None
    sampling = model.get_model_object("model_sampling")
    expected = PARAMETRIZATION[FAMILIES[info.family].prediction_type]
    if not isinstance(sampling, expected):
        raise CheckpointError(f"{name}'s metadata says {info.family} ({info.prediction_type}) but ComfyUI detected "
                              f"a {type(model.model).__name__} model with {type(sampling).__name__} sampling; "
                              "the file and its metadata disagree, export it again")
    return Student(name, info, model=model)
