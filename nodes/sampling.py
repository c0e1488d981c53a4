"""Student Sigmas, Student Sampler and the all-in-one DP-DMD Sample."""
from __future__ import annotations

import torch
from comfy_api.v0_0_2 import io

from distill_core.errors import ConfigError
from distill_core.families import FAMILIES

from .compute import family_sigmas, prompt_lines, seed_list, student_sigmas
from .draw import draw, student_sampler
from .loader import CATEGORY, STUDENT

SEED_MAX = 0xFFFFFFFFFFFFFFFF


def size_inputs() -> list:
    """Image size widgets shared by the sampling nodes (SD3 / SDXL latent size; built-in display size)."""
    return [
        io.Int.Input("width", default=1024, min=64, max=8192, step=8, tooltip="SD3 / SDXL only"),
        io.Int.Input("height", default=1024, min=64, max=8192, step=8, tooltip="SD3 / SDXL only"),
        io.Int.Input("display_size", default=64, min=8, max=1024, step=8,
                     tooltip="built-in students: upscale the 8x8 digits to this size"),
    ]


class StudentSigmas(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="DPDMDStudentSigmas",
            display_name="DP-DMD Student Sigmas",
            category=CATEGORY,
            description="The sigmas a student was trained on: read from its metadata ('from student'), or the "
                        "default student schedule of a family and step count. ComfyUI's 'simple' scheduler is "
                        "NOT a student's schedule (SD3, 4 steps: 1, .9, .75, .5 instead of 1, .858, .602, .009).",
            inputs=[
                io.Combo.Input("source", options=["from student", *FAMILIES], default="from student"),
                io.Int.Input("steps", default=4, min=1, max=50, tooltip="ignored when reading the student"),
                io.Float.Input("shift", default=0.0, min=0.0, max=100.0, step=0.01,
                               tooltip="flow shift; 0 = the family's default ("
                                       + ", ".join(f"{n} {f.shift:g}" for n, f in FAMILIES.items() if f.shift)
                                       + "); ignored for VP (epsilon) families and when reading the student"),
                STUDENT.Input("student", optional=True),
            ],
            outputs=[io.Sigmas.Output()],
        )

    @classmethod
    def execute(cls, source: str, steps: int, shift: float, student=None) -> io.NodeOutput:
        if source == "from student":
            if student is None:
                raise ConfigError("source is 'from student' but no student is connected: connect a DP-DMD "
                                  "Student Loader, or pick a family")
            sigmas = student_sigmas(student.info)
        else:
            sigmas = family_sigmas(source, steps, shift if shift > 0 else None)
        return io.NodeOutput(torch.tensor(sigmas, dtype=torch.float32))


class StudentSampler(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="DPDMDStudentSampler",
            display_name="DP-DMD Student Sampler",
            category=CATEGORY,
            description="Steps a student exactly as it was trained: deterministic Euler on the given sigmas "
                        "(for flow and epsilon models this is the DDIM step; no noise is added between steps). "
                        "Use cfg 1: the teacher's guidance is already distilled into the student.",
            inputs=[],
            outputs=[io.Sampler.Output()],
        )

    @classmethod
    def execute(cls) -> io.NodeOutput:
        return io.NodeOutput(student_sampler())


class Sample(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="DPDMDSample",
            display_name="DP-DMD Sample",
            category=CATEGORY,
            description="Sample a student on its own schedule, cfg 1. Image i uses seed + i (the same image that "
                        "seed gives alone). Built-in students read 'prompt' (it names a digit); SD3 / SDXL students "
                        "need 'positive' and a 'vae'.",
            inputs=[
                STUDENT.Input("student"),
                io.Int.Input("seed", default=0, min=0, max=SEED_MAX, control_after_generate=True),
                io.Int.Input("batch_size", default=4, min=1, max=256),
                io.String.Input("prompt", default="a handwritten 7", tooltip="built-in students only"),
                *size_inputs(),
                io.Conditioning.Input("positive", optional=True),
                io.Vae.Input("vae", optional=True),
            ],
            outputs=[io.Image.Output(), io.Latent.Output()],
        )

    @classmethod
    def execute(cls, student, seed: int, batch_size: int, prompt: str, width: int, height: int,
                display_size: int, positive=None, vae=None) -> io.NodeOutput:
        prompts = prompt_lines(prompt)[:1]
        images, latent = draw(student, prompts=prompts, seeds=seed_list(seed, batch_size), positive=positive,
                              vae=vae, width=width, height=height, size=display_size)
        return io.NodeOutput(images, latent)
