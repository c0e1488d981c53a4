"""Export a trained student to a safetensors file that carries its schedule, and load it back."""
from __future__ import annotations

import sys
from collections.abc import Iterable
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file
from torch import nn

from .config import Config
from .errors import CheckpointError
from .integrity import file_tensors, nonfinite_message, scan, tensors_sha256
from .runfolder import atomic_target
from .student_file import CHECKSUM, StudentInfo, check_complete, read_metadata, read_student_info
from .teachers.base import Teacher


def student_info(teacher: Teacher, cfg: Config, steps_trained: int) -> StudentInfo:
    levels = teacher.student_levels(cfg.student.num_steps)
    return StudentInfo(
        family=teacher.family, prediction_type=teacher.schedule.prediction_type, levels=levels,
        sigmas=teacher.schedule.comfy_sigmas(levels), schedule=teacher.schedule.describe(),
        network_config=teacher.network_config(), method=cfg.method.name, anchor_step=cfg.method.anchor_step,
        diversity_weight=cfg.lam, renoise_shift=cfg.method.renoise_shift, fake_t_shift=cfg.method.fake_t_shift,
        teacher_timestep_spacing=cfg.teacher.timestep_spacing, teacher_guidance=float(cfg.teacher.guidance_scale),
        teacher=cfg.teacher.path or teacher.family, steps_trained=steps_trained,
        title=f"DP-DMD {cfg.student.num_steps}-step student ({cfg.method.name})",
        extra={"resolution": cfg.teacher.resolution},  # the image size it was trained at
    )


def save_student(state_dict: dict[str, torch.Tensor], info: StudentInfo, path: str | Path,
                 dtype: torch.dtype | None = None) -> Path:
    """Write the student atomically (temporary file, then rename), with the checksum of its tensors."""
    path = Path(path)
    tensors = {k: (v.to(dtype) if dtype is not None and v.is_floating_point() else v).detach().contiguous().cpu()
               for k, v in state_dict.items()}
    metadata = {**info.to_metadata(), CHECKSUM: tensors_sha256(sorted(tensors.items()))}
    with atomic_target(path) as tmp:
        save_file(tensors, str(tmp), metadata=metadata)
    return path


def check_student_file(path: str | Path, tensors: Iterable[tuple[str, torch.Tensor]] | None = None) -> None:
    """Refuse a student file that is cut short, differs from what was exported, or holds NaN / inf weights.

    ``tensors``: the file's tensors in name order when they are loaded already (else they are read one
    at a time). Students exported before checksums are checked for finite weights only, with a note.
    """
    path = Path(path)
    check_complete(path)
    expected = read_metadata(path).get(CHECKSUM)
    digest, bad = scan(file_tensors(path) if tensors is None else tensors)
    if expected is not None and digest != expected:
        raise CheckpointError(f"{path.name} does not match the checksum in its metadata: it was damaged after it "
                              "was exported; copy or export it again")
    if bad is not None:
        raise CheckpointError(f"{nonfinite_message(path.name, bad)}: it cannot draw images; export a checkpoint "
                              "from before the run diverged (dpdmd export RUN_DIR --step N)")
    if expected is None:
        print(f"note: {path.name} was exported before students carried a checksum; its weights are checked for "
              "finite values only", file=sys.stderr)


def load_student(path: str | Path, teacher: Teacher, device: torch.device | str = "cpu") -> tuple[nn.Module, StudentInfo]:
    """The student network (teacher's architecture, student weights) and its sampling info."""
    info = read_student_info(path)
    if info.family != teacher.family:
        raise CheckpointError(f"{Path(path).name} is a {info.family} student but the teacher is {teacher.family}; "
                              f"load it with a {info.family} teacher")
    check_complete(path)  # before safetensors meets a cut-off file
    tensors = load_file(str(path))
    check_student_file(path, sorted(tensors.items()))
    net = teacher.make_trainable_copy().requires_grad_(False)
    try:
        missing, unexpected = net.load_state_dict(tensors, strict=False)
    except RuntimeError as e:
        raise CheckpointError(f"{Path(path).name} does not fit the teacher's architecture: {str(e)[:300]}") from None
    if missing or unexpected:
        raise CheckpointError(f"{Path(path).name} does not fit the teacher's architecture "
                              f"({len(missing)} missing, {len(unexpected)} unexpected tensors, e.g. "
                              f"{(missing or unexpected)[0]!r})")
    return net.to(device).eval(), info
