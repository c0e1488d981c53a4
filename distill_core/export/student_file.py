"""The exported student file: a safetensors state dict whose metadata says how to sample it.

Sampling a student with any schedule other than the one it was trained on is
wrong, so the levels (and ComfyUI sigmas) travel in the file, next to the
method's settings and ModelSpec keys. Files without our metadata are refused.
This module needs only the standard library to read metadata, so ComfyUI nodes
and UIs can list students cheaply.
"""
from __future__ import annotations

import datetime
import json
import struct
from dataclasses import asdict, dataclass, field
from pathlib import Path

from ..errors import CheckpointError

FORMAT_VERSION = "1"
PREFIX = "dpdmd."
CHECKSUM = f"{PREFIX}tensors_sha256"  # integrity.tensors_sha256 of the file's tensors, checked on load
@dataclass
class StudentInfo:
    """Everything needed to sample a student correctly, as stored in its metadata."""
    family: str  # builtin | sd3 | sdxl
    prediction_type: str  # flow | epsilon
    levels: list[float]  # the schedule's levels, ending at the clean level
    sigmas: list[float]  # the same levels as ComfyUI sigmas (ending at 0)
    schedule: dict  # NoiseSchedule.describe()
    network_config: dict  # constructor config of the network
    method: str = "dpdmd"
    anchor_step: int = 5
    diversity_weight: float = 0.05
    renoise_shift: str = "shifted"  # the training options of config.py (files without them used these)
    fake_t_shift: str = "shifted"
    refine: str = "dmd"  # the objective of the steps the DMD loss trains (config.OBJECTIVES)
    teacher_timestep_spacing: str = "trailing"
    teacher_guidance: float = 1.0
    teacher: str = ""
    steps_trained: int = 0
    title: str = "DP-DMD student"
    extra: dict = field(default_factory=dict)

    @property
    def num_steps(self) -> int:
        return len(self.levels) - 1

    def to_metadata(self) -> dict[str, str]:
        from ..teachers.base import family_teacher  # (the teachers import torch; reading metadata needs none)

        meta = {f"{PREFIX}{k}": json.dumps(v) for k, v in asdict(self).items()}
        meta[f"{PREFIX}format_version"] = FORMAT_VERSION
        meta.update({
            "modelspec.sai_model_spec": "1.0.0",
            "modelspec.architecture": family_teacher(self.family).modelspec_architecture(self.network_config)
            + ("/lora" if self.extra.get("kind") == "lora" else ""),
            "modelspec.implementation": "diffusers",
            "modelspec.title": self.title,
            "modelspec.description": (f"{self.num_steps}-step {self.method} student of {self.teacher or self.family}"
                                      f" (k={self.anchor_step}, lambda={self.diversity_weight}); sample with guidance 1"
                                      " on the stored schedule"),
            "modelspec.date": datetime.date.today().isoformat(),
            "modelspec.prediction_type": "flow" if self.prediction_type == "flow" else "epsilon",
        })
        return meta

    @classmethod
    def from_metadata(cls, meta: dict[str, str] | None, source: str = "file") -> StudentInfo:
        meta = meta or {}
        if f"{PREFIX}format_version" not in meta:
            raise CheckpointError(f"{source} has no DP-DMD student metadata (dpdmd.format_version); it was not "
                                  "exported by `dpdmd export` / a DP-DMD run, so its sampling schedule is unknown")
        known = set(cls.__dataclass_fields__)
        try:
            values = {k[len(PREFIX):]: json.loads(v) for k, v in meta.items()
                      if k.startswith(PREFIX) and k[len(PREFIX):] in known}
            return cls(**values)
        except (TypeError, json.JSONDecodeError) as e:
            raise CheckpointError(f"{source} has damaged DP-DMD metadata ({e})") from None


def _read_header(path: Path) -> tuple[int, dict]:
    """(header length, header JSON) of a safetensors file; no tensors are read."""
    if path.is_dir():
        raise CheckpointError(f"student file {str(path)!r} is a folder; give the .safetensors file a run exported")
    if not path.is_file():
        raise CheckpointError(f"student file {str(path)!r} does not exist")
    if path.suffix not in (".safetensors", ".sft"):
        raise CheckpointError(f"{path.name} is not a .safetensors file; only safetensors students are loaded "
                              "(pickled .pt/.ckpt files can run code and are refused)")
    try:
        with open(path, "rb") as f:
            (n,) = struct.unpack("<Q", f.read(8))
            if n > 100_000_000 or n > path.stat().st_size - 8:
                raise ValueError("header length out of range")
            header = json.loads(f.read(n))
    except (OSError, ValueError, struct.error) as e:
        raise CheckpointError(f"{path.name} is not a readable safetensors file ({e}); is it truncated?") from None
    return n, header


def read_metadata(path: str | Path) -> dict[str, str]:
    """The __metadata__ of a safetensors file, read from its header only (no tensors, no torch)."""
    return _read_header(Path(path))[1].get("__metadata__", {}) or {}


def check_complete(path: str | Path) -> None:
    """Refuse a file whose size differs from what its header promises (a cut-off copy or download).

    Costs one header read, so loaders can say "truncated" before torch meets the file.
    """
    path = Path(path)
    n, header = _read_header(path)
    ends = [int(t["data_offsets"][1]) for k, t in header.items() if k != "__metadata__"]
    expected, actual = 8 + n + max(ends, default=0), path.stat().st_size
    if actual != expected:
        raise CheckpointError(f"{path.name} is {'truncated' if actual < expected else 'damaged'}: its header "
                              f"describes {expected:,} bytes but the file has {actual:,}; copy or export it again")


def read_student_info(path: str | Path) -> StudentInfo:
    return StudentInfo.from_metadata(read_metadata(path), source=Path(path).name)
