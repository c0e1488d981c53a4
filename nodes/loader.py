"""DP-DMD Student Loader: a student by name from ComfyUI's model folders."""
from __future__ import annotations

import torch
from comfy_api.v0_0_2 import io

from distill_core.builtin.kinds import DEFAULT_KIND, KINDS
from distill_core.errors import DPDMDError

from . import library, student
from .compute import describe, student_sigmas, summary

STUDENT = io.Custom("DPDMD_STUDENT")
CATEGORY = "DP-DMD"


class StudentLoader(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="DPDMDStudentLoader",
            display_name="DP-DMD Student Loader",
            category=CATEGORY,
            description="Load a DP-DMD student from models/dpdmd or models/diffusion_models. SD3 / SDXL students "
                        "give a native MODEL (LoRAs and patches apply) and the SIGMAS they were trained on: connect "
                        "both to SamplerCustom with the DP-DMD Student Sampler and cfg 1 (the teacher's guidance is "
                        "distilled in; a higher cfg only burns the image). Every student also gives a 'student' for "
                        "DP-DMD Sample and Seed Grid. The node shows the student's family, steps, sigmas and method.",
            inputs=[
                io.Combo.Input("student_name", options=library.list_students(),
                               tooltip="an exported student (.safetensors with DP-DMD metadata) in models/dpdmd "
                                       "or models/diffusion_models; press R after copying a new one there"),
                io.Combo.Input("weight_dtype", options=list(student.WEIGHT_DTYPES), default="default",
                               tooltip="storage precision of SD3 / SDXL weights, as in Load Diffusion Model"),
            ],
            outputs=[
                io.Model.Output(display_name="MODEL", tooltip="native ComfyUI model (SD3 / SDXL students); for "
                                "SamplerCustom, LoraLoaderModelOnly and other MODEL nodes"),
                io.Sigmas.Output(display_name="SIGMAS", tooltip="the student's training timesteps as sigmas (SD3, 4 "
                                 "steps: 1, .858, .602, .009, 0): use these, not a scheduler; 'simple' gives 1, .9, "
                                 ".75, .5, levels the student never saw"),
                STUDENT.Output(display_name="student", tooltip="for DP-DMD Sample / Seed Grid / Student Sigmas"),
            ],
        )

    @classmethod
    def validate_inputs(cls, student_name: str) -> bool | str:
        """Refuse unknown names, files without DP-DMD metadata and truncated files before anything runs."""
        try:
            library.open_student(student_name)
        except DPDMDError as e:
            return str(e)
        return True

    @classmethod
    def execute(cls, student_name: str, weight_dtype: str = "default") -> io.NodeOutput:
        path, info = library.open_student(student_name)
        sigmas = torch.tensor(student_sigmas(info), dtype=torch.float32)
        loaded = student.load(student_name, path, info, weight_dtype)
        model = loaded.model if loaded.native else student.NotAComfyModel(student_name)
        return io.NodeOutput(model, sigmas, loaded, ui={"dpdmd_student": [summary(info)], "text": [describe(info)]})


class LoadBuiltinTeacher(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="DPDMDBuiltinTeacher",
            display_name="DP-DMD Built-in Teacher",
            category=CATEGORY,
            description="A built-in teacher that ships with DP-DMD Studio (shapes: coloured shapes with 8 exactly "
                        "known modes, what `dpdmd demo` distils; digits: handwritten digits), sampled with its own "
                        "many steps and CFG: connect it to a Seed Grid next to a student's grid to compare them on "
                        "the same seeds, or to the Hybrid Sampler with a student of the same teacher.",
            inputs=[
                io.Int.Input("steps", default=30, min=2, max=200, tooltip="sampling steps (the teacher needs many)"),
                io.Float.Input("cfg", default=2.0, min=1.0, max=20.0, step=0.1,
                               tooltip="classifier-free guidance (2 is what students are distilled from)"),
                io.Combo.Input("teacher", options=list(KINDS), default=DEFAULT_KIND,
                               tooltip="; ".join(f"{name}: {kind.label}" for name, kind in KINDS.items())),
            ],
            outputs=[STUDENT.Output(display_name="teacher", tooltip="for DP-DMD Sample / Seed Grid")],
        )

    @classmethod
    def execute(cls, steps: int, cfg: float, teacher: str = DEFAULT_KIND) -> io.NodeOutput:
        return io.NodeOutput(student.builtin_teacher(steps, cfg, teacher))
