"""Student Sigmas, Student Sampler and the all-in-one DP-DMD Sample."""
from __future__ import annotations

import torch
from comfy_api.v0_0_2 import io

from distill_core.errors import ConfigError
from distill_core.families import FAMILIES

from . import student as students
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
                     tooltip="built-in students: upscale their small images (shapes 16x16, digits 8x8) to this size"),
    ]


class StudentSigmas(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="DPDMDStudentSigmas",
            display_name="DP-DMD Student Sigmas",
            category=CATEGORY,
            description="The sigmas a student was trained on, for SamplerCustom: read from its metadata ('from "
                        "student'), or the default student schedule of a family and step count. A few-step student "
                        "only knows its training levels, so ComfyUI's schedulers are wrong for it: 'simple' gives "
                        "SD3 at 4 steps 1, .9, .75, .5 instead of 1, .858, .602, .009.",
            inputs=[
                io.Combo.Input("source", options=["from student", *FAMILIES], default="from student",
                               tooltip="'from student': the connected student's own sigmas; a family: that "
                                       "family's default student schedule"),
                io.Int.Input("steps", default=4, min=1, max=50, tooltip="ignored when reading the student"),
                io.Float.Input("shift", default=0.0, min=0.0, max=100.0, step=0.01,
                               tooltip="flow shift; 0 = the family's default ("
                                       + ", ".join(f"{n} {f.shift:g}" for n, f in FAMILIES.items() if f.shift)
                                       + "); ignored for VP (epsilon) families and when reading the student"),
                STUDENT.Input("student", optional=True, tooltip="the loader's 'student' (for 'from student')"),
            ],
            outputs=[io.Sigmas.Output(tooltip="for SamplerCustom / SamplerCustomAdvanced")],
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
                        "Use it in SamplerCustom with the loader's SIGMAS and cfg 1: the teacher's guidance is "
                        "already distilled into the student.",
            inputs=[],
            outputs=[io.Sampler.Output(tooltip="for SamplerCustom / SamplerCustomAdvanced (cfg 1)")],
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
                        "seed gives alone). Built-in students read 'prompt' (it names a class of their teacher, "
                        "e.g. a shape or a digit); SD3 / SDXL students need 'positive' and a 'vae'.",
            inputs=[
                STUDENT.Input("student", tooltip="a student from the loader, or the built-in teacher"),
                io.Int.Input("seed", default=0, min=0, max=SEED_MAX, control_after_generate=True,
                             tooltip="image i uses seed + i"),
                io.Int.Input("batch_size", default=4, min=1, max=256, tooltip="images (consecutive seeds)"),
                io.String.Input("prompt", default=students.DEFAULT_PROMPT,
                                tooltip="built-in students only: the class to draw (shapes: 'a red square', "
                                        "'a green circle', 'a blue triangle'; digits: 'a handwritten 7')"),
                *size_inputs(),
                io.Conditioning.Input("positive", optional=True, tooltip="SD3 / SDXL students: CLIP Text Encode "
                                      "with the teacher's text encoders (no negative: cfg is 1)"),
                io.Vae.Input("vae", optional=True, tooltip="SD3 / SDXL students: the teacher's VAE"),
            ],
            outputs=[io.Image.Output(tooltip="decoded images, prompt-major"),
                     io.Latent.Output(tooltip="the samples before decoding")],
        )

    @classmethod
    def execute(cls, student, seed: int, batch_size: int, prompt: str, width: int, height: int,
                display_size: int, positive=None, vae=None) -> io.NodeOutput:
        prompts = prompt_lines(prompt)[:1]
        images, latent = draw(student, prompts=prompts, seeds=seed_list(seed, batch_size), positive=positive,
                              vae=vae, width=width, height=height, size=display_size)
        return io.NodeOutput(images, latent)


class HybridSampler(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="DPDMDHybridSampler",
            display_name="DP-DMD Hybrid Sampler",
            category=CATEGORY,
            description="The teacher's first k steps with its CFG (the anchor a DP-DMD student is trained to "
                        "follow), then the student from the level they reach for its remaining steps. Each seed "
                        "keeps the teacher's layout for 2k teacher network evaluations; for a plain DMD or turbo "
                        "student, whose seeds look alike, this buys the variety back. Connect the result to a "
                        "Seed Grid or DP-DMD Sample; the node shows the evaluations per image.",
            inputs=[
                STUDENT.Input("teacher", tooltip="DP-DMD Built-in Teacher (its steps and cfg set its schedule)"),
                STUDENT.Input("student", tooltip="a built-in student from the loader"),
                io.Int.Input("k", default=0, min=0, max=200,
                             tooltip="teacher steps before the hand-over; 0 = the student's own anchor step"),
                io.Float.Input("handover", default=0.0, min=0.0, max=1.0, step=0.001,
                               tooltip="the level the student takes over at; 0 = where the teacher's k steps end"),
            ],
            outputs=[STUDENT.Output(display_name="hybrid", tooltip="for DP-DMD Sample / Seed Grid")],
        )

    @classmethod
    def execute(cls, teacher, student, k: int, handover: float) -> io.NodeOutput:
        hybrid = students.hybrid(teacher, student, k, handover or None)
        first, second = hybrid.legs
        text = (f"teacher {first.steps} steps at cfg {first.guidance:g}: {first.nfe} NFE, then student "
                f"{second.steps} steps from level {second.levels[0]:.3f}: {second.nfe} NFE; {hybrid.nfe} per image")
        return io.NodeOutput(hybrid, ui={"text": [text]})


class TeacherStudentSampler(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="DPDMDTeacherStudentSampler",
            display_name="DP-DMD Hybrid Sampler (SAMPLER)",
            category=CATEGORY,
            description="The hybrid for SD3 / SDXL models, as a SAMPLER for SamplerCustom / SamplerCustomAdvanced: "
                        "the teacher MODEL does the student's first interval (sigmas[0] to sigmas[handover]) in k "
                        "Euler steps with its CFG on the positive / negative here, then the student MODEL "
                        "connected to SamplerCustom takes Euler steps on the remaining sigmas. Use SamplerCustom "
                        "with the student, cfg 1 and the Student Sigmas; teacher and student must share a latent "
                        "space. k = 0: the plain Student Sampler.",
            inputs=[
                io.Model.Input("teacher", tooltip="the teacher MODEL (e.g. UNETLoader / Load Checkpoint)"),
                io.Conditioning.Input("positive", tooltip="the teacher's positive (CLIP Text Encode)"),
                io.Conditioning.Input("negative", tooltip="the teacher's negative (CLIP Text Encode)"),
                io.Float.Input("cfg", default=4.0, min=0.0, max=100.0, step=0.1, tooltip="the teacher's cfg"),
                io.Int.Input("k", default=4, min=0, max=200,
                             tooltip="teacher steps before the hand-over; 0 = the student alone"),
                io.Int.Input("handover", default=1, min=1, max=50,
                             tooltip="the student takes over at sigmas[handover] (1 = its second sigma)"),
            ],
            outputs=[io.Sampler.Output(tooltip="for SamplerCustom / SamplerCustomAdvanced with the student, cfg 1")],
        )

    @classmethod
    def execute(cls, teacher, positive, negative, cfg: float, k: int, handover: int) -> io.NodeOutput:
        from .teacher_student import nfe_text, teacher_student_sampler

        return io.NodeOutput(teacher_student_sampler(teacher, positive, negative, cfg, k, handover),
                             ui={"text": [nfe_text(k, cfg)]})
