"""The memory presets: one table, estimated by ``dpdmd plan`` and offered by the trainer UI's wizard.

A preset is a set of config fields; every preset trains under bf16 autocast
(fp32 master weights) with a bf16 teacher. Torch-free, so the wizard and the
CLI read it without the planner's imports.
"""
from __future__ import annotations

from typing import Any

from .config import Config

BASE: dict[str, Any] = {"run.mixed_precision": "bf16", "teacher.dtype": "bfloat16",
                        "student.gradient_checkpointing": False, "method.backprop": "all", "student.lora_rank": 0,
                        "student.lora_mode": "auto", "teacher.quantize": "none"}
CKPT, ONE_STEP, LORA = ({"student.gradient_checkpointing": True}, {"method.backprop": "one_step"},
                        {"student.lora_rank": 64, "student.lora_mode": "copies"})
SHARED = {**LORA, "student.lora_mode": "shared"}  # one frozen base (the teacher's) for teacher, student and fake
FP8 = {"teacher.quantize": "fp8"}  # that base (and the text encoders) with fp8 linear weights
PRESETS: dict[str, dict[str, Any]] = {  # from the most memory to the least (dpdmd plan picks the first that fits)
    "full": {},
    "full-ckpt": CKPT,
    "full-ckpt-onestep": {**CKPT, **ONE_STEP},
    "lora64-ckpt": {**LORA, **CKPT},
    "shared-lora64-ckpt": {**SHARED, **CKPT},
    "lora64-ckpt-onestep": {**LORA, **CKPT, **ONE_STEP},
    "shared-lora64-ckpt-onestep": {**SHARED, **CKPT, **ONE_STEP},
    "lora64-ckpt-onestep-b1": {**LORA, **CKPT, **ONE_STEP, "data.batch_size": 1},
    "shared-lora64-ckpt-b1": {**SHARED, **CKPT, "data.batch_size": 1},
    "shared-lora64-ckpt-onestep-b1": {**SHARED, **CKPT, **ONE_STEP, "data.batch_size": 1},
    "fp8-shared-lora64-ckpt-b1": {**SHARED, **CKPT, **FP8, "data.batch_size": 1},
    "fp8-shared-lora64-ckpt-onestep-b1": {**SHARED, **CKPT, **ONE_STEP, **FP8, "data.batch_size": 1},
    "fp8-shared-lora32-ckpt-onestep-b1": {**SHARED, **CKPT, **ONE_STEP, **FP8, "student.lora_rank": 32,
                                          "data.batch_size": 1},
}


def settings(name: str) -> dict[str, Any]:
    """Every config field the preset sets, as {"section.field": value}."""
    return {**BASE, **PRESETS[name]}


def apply(cfg: Config, name: str) -> None:
    for key, value in settings(name).items():
        section, field = key.split(".")
        setattr(getattr(cfg, section), field, value)


def describe(values: dict[str, Any]) -> list[str]:
    """Memory settings in words, e.g. ['LoRA rank 64', 'bf16 autocast', 'bfloat16 teacher', ...]."""
    lora = values["student.lora_rank"]
    shared = " on a shared base" if lora and values.get("student.lora_mode") == "shared" else ""
    parts = [f"LoRA rank {lora}{shared}" if lora else "full fine-tune",
             "bf16 autocast" if values["run.mixed_precision"] == "bf16" else "fp32",
             f"{values['teacher.dtype']} teacher"]
    if values["student.gradient_checkpointing"]:
        parts.append("gradient checkpointing")
    if values["method.backprop"] == "one_step":
        parts.append("one-step backprop")
    if values.get("teacher.quantize", "none") != "none":
        parts.append(f"{values['teacher.quantize']} base")
    if "data.batch_size" in values:
        parts.append(f"batch {values['data.batch_size']}")
    return parts
