"""The formats ``dpdmd export`` writes, torch-free so that the CLI offers them without importing torch."""
from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class ExportFormat:
    dtype: str  # the weights dtype unless --dtype says otherwise
    suffix: str  # the name in the run folder: student_stepNNNNNNNN + suffix
    help: str


FORMATS: dict[str, ExportFormat] = {
    "file": ExportFormat("float32", ".safetensors", "float32 .safetensors with metadata (default)"),
    "comfy": ExportFormat("bfloat16", "_comfy.safetensors", "the same in bf16 for ComfyUI"),
    "diffusers": ExportFormat("float32", "_diffusers", "a transformer/ or unet/ + scheduler/ folder"),
    "lora": ExportFormat("bfloat16", "_lora.safetensors", "the change from the teacher as a LoRA"),
}
DTYPES = ("float32", "bfloat16", "float16")  # the weights dtypes an export can be written in
