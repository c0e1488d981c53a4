"""A run's student in the formats people load: one file, a ComfyUI file, a diffusers folder, a LoRA.

    file       student_stepN.safetensors: float32 weights (teacher's layout) + DP-DMD metadata + ModelSpec
    comfy      the same single file in bf16, for ComfyUI's models/diffusion_models (UNETLoader reads
               diffusers-format SD3 / SDXL weights; the sigmas to sample with are in the metadata)
    diffusers  a folder with transformer/ (SD3) or unet/ (SDXL) and a scheduler/ whose
               ``num_inference_steps=N`` reproduces the student's levels exactly; load it over the
               teacher pipeline (see the README.md written next to it)
    lora       the student minus the teacher as a LoRA: the trained adapters exactly (LoRA runs) or a
               rank-r SVD of every linear and convolution layer's change (full fine-tunes), in keys diffusers and
               ComfyUI load (SD3: transformer.X.lora_A/B; SDXL: kohya lora_unet_X.lora_down/up)

Every format carries the student's schedule in its metadata; ``save_student`` / ``load_student`` are the
one place that writes and reads (with checksum and finite weights verified) the single-file student.
"""
from __future__ import annotations

import json
import shutil
import sys
from collections.abc import Iterable
from dataclasses import asdict, dataclass, replace
from functools import partial
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import load_file
from torch import nn

from ..config import Config, load_run_config, resolve
from ..errors import CheckpointError, ConfigError, shown
from ..families import FAMILIES
from ..integrity import file_tensors, nonfinite_message, scan, tensors_sha256
from ..runfolder import RunFolder, atomic_target
from ..teachers import load_teacher
from ..teachers.base import Teacher, family_teacher
from ..training import checkpoint as ckpt
from ..training.adapters import adapter_factors, base_dtype, is_lora_state, merged_state_dict, merged_tensors
from ..training.fp8 import full_precision_base
from ..training.merge import lora_records
from .formats import DTYPES as DTYPE_NAMES
from .formats import FORMATS
from .student_file import CHECKSUM, StudentInfo, check_complete, read_metadata, read_student_info


def student_info(teacher: Teacher, cfg: Config, steps_trained: int) -> StudentInfo:
    levels = teacher.student_levels(cfg.student.num_steps, cfg.student.shift)
    return StudentInfo(
        family=teacher.family, prediction_type=teacher.schedule.prediction_type, levels=levels,
        sigmas=teacher.schedule.comfy_sigmas(levels), schedule=teacher.schedule.describe(),
        network_config=teacher.network_config(), method=cfg.method.name, anchor_step=cfg.method.anchor_step,
        diversity_weight=cfg.lam, renoise_shift=cfg.method.renoise_shift, fake_t_shift=cfg.method.fake_t_shift,
        refine=cfg.objective,
        teacher_timestep_spacing=cfg.teacher.timestep_spacing, teacher_guidance=float(cfg.teacher.guidance_scale),
        teacher=cfg.teacher.path or teacher.family, steps_trained=steps_trained,
        title=f"DP-DMD {cfg.student.num_steps}-step student ({cfg.method.name})",
        # the image size it was trained at; the LoRAs merged into its teacher (its base: load them first, in order)
        extra={"resolution": cfg.teacher.resolution,
               **({"teacher_loras": lora_records(cfg.teacher.loras)} if cfg.teacher.loras else {})},
    )


def save_student(state_dict: dict[str, torch.Tensor], info: StudentInfo, path: str | Path,
                 dtype: torch.dtype | None = None) -> Path:
    """Write the student atomically (temporary file, then rename), with the checksum of its tensors."""
    path = Path(path)
    tensors = {k: (v.to(dtype) if dtype is not None and v.is_floating_point() else v).detach().contiguous().cpu()
               for k, v in state_dict.items()}
    metadata = {**info.to_metadata(), CHECKSUM: tensors_sha256(sorted(tensors.items()))}
    with atomic_target(path) as tmp:
        ckpt.save_tensors(tmp, tensors, metadata)  # a full disk: one line naming the file; the run folder is as it was
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


DTYPES = {name: getattr(torch, name) for name in DTYPE_NAMES}


@dataclass
class RunStudent:
    """A checkpoint's student with what is needed to write it anywhere."""
    cfg: Config
    teacher: Teacher
    step: int
    state: dict[str, torch.Tensor]  # the checkpoint's student tensors (all weights, or a LoRA run's adapters)
    _base: dict[str, torch.Tensor] | None = None

    @property
    def adapters(self) -> dict[str, torch.Tensor] | None:
        return self.state if is_lora_state(self.state) else None

    @property
    def base(self) -> dict[str, torch.Tensor]:
        """The teacher's weights as the student started from them, in the base's dtype (LoRA runs: bf16 where the
        run's base was; never an fp8 base's rounded weights). Taken from the loaded teacher where it holds them exactly:
        a full-size export then keeps no float32 copy of the network."""
        if self._base is None:
            dtype = base_dtype(self.cfg) if self.adapters is not None else torch.float32
            self._base = full_precision_base(self.teacher, dtype)
        return self._base

    def weights(self, dtype: torch.dtype = torch.float32) -> dict[str, torch.Tensor]:
        """The student's weights in the teacher's layout (adapters merged, in ``dtype``; a full run's as stored)."""
        return self.state if self.adapters is None else merged_state_dict({**self.base, **self.adapters}, dtype)

    def info(self, **extra) -> StudentInfo:
        info = student_info(self.teacher, self.cfg, self.step)
        return replace(info, extra={**info.extra, **extra}) if extra else info


def load_run_student(run_dir: str | Path, step: int | None = None) -> RunStudent:
    run = RunFolder(Path(run_dir))
    if not run.config_path.exists():
        raise CheckpointError(f"{run_dir} is not a run folder (no config.toml)")
    cfg = resolve(load_run_config(run.config_path))
    say = partial(print, file=sys.stderr)
    if step is not None:
        folder = run.checkpoints / ckpt.step_dir_name(step)
        if not folder.is_dir():
            steps = [int(ckpt.read_state(d)["step"]) for d in ckpt.list_complete(run.checkpoints)]
            raise CheckpointError(f"--step {step}: {run.checkpoints} has no checkpoint of that step; "
                                  + (f"it has steps {', '.join(map(str, steps))}" if steps else "it has none"))
        try:
            note = ckpt.check(folder)
        except CheckpointError as e:
            raise CheckpointError(f"the checkpoint at step {step} in {run.checkpoints} cannot be used: {e}") from None
        if note:
            say(note)
    else:
        folder = ckpt.latest(run.checkpoints, report=say)
        if folder is None:
            raise CheckpointError(f"no usable checkpoint in {run.checkpoints}")
    weights = folder / ("ema.safetensors" if cfg.student.ema_decay else "student.safetensors")  # as finish_run's
    return RunStudent(cfg, load_teacher(cfg), int(ckpt.read_state(folder)["step"]), load_file(str(weights)))


# ---- single files ----------------------------------------------------------------------------
def export_file(student: RunStudent, out: Path, dtype: torch.dtype | None = None) -> Path:
    return save_student(student.weights(dtype or torch.float32), student.info(), out, dtype=dtype)


def export_comfy(student: RunStudent, out: Path, dtype: torch.dtype | None = None) -> Path:
    """The single file in the key layout ComfyUI detects the family by (the teacher's, or its own: FLUX.2)."""
    weights = student.teacher.comfy_state_dict(student.weights(dtype or torch.float32))
    return save_student(weights, student.info(), out, dtype=dtype)


# ---- diffusers folder -------------------------------------------------------------------------
def diffusers_scheduler(student: RunStudent, levels: list[float]):
    """A diffusers scheduler whose ``set_timesteps(N)`` gives exactly the student's levels (checked here)."""
    import diffusers

    teacher = student.teacher
    sched = teacher.schedule.describe()
    if sched["type"] == "flow":
        source = json.loads((teacher.path / "scheduler" / "scheduler_config.json").read_text())
        schedule = teacher.student_schedule(student.cfg.student.shift)  # the schedule the levels came from
        scheduler = diffusers.FlowMatchEulerDiscreteScheduler.from_config(
            {**source, "shift": schedule.shift, "use_dynamic_shifting": False})
        n = len(levels) - 1
        if sched.get("spacing") == "linear":  # what the FLUX.2 / Z-Image pipelines pass for n steps
            scheduler.set_timesteps(sigmas=np.linspace(1.0, 1 / n, n))
        else:
            scheduler.set_timesteps(n)
        got = [float(s) for s in scheduler.sigmas]
    else:  # DDIM 'trailing' from pure noise (init sigma 1) to x0 (alpha 1): the student's VP DDIM chain
        scheduler = diffusers.DDIMScheduler(
            num_train_timesteps=sched["num_train_timesteps"], beta_start=sched["beta_start"],
            beta_end=sched["beta_end"], beta_schedule=sched["beta_schedule"], prediction_type="epsilon",
            clip_sample=False, set_alpha_to_one=True, steps_offset=0, timestep_spacing="trailing")
        scheduler.set_timesteps(len(levels) - 1)
        got = [float(t) for t in scheduler.timesteps] + [-1.0]
    if len(got) != len(levels) or max(abs(a - b) for a, b in zip(got, levels)) > 1e-5:
        raise CheckpointError(f"no diffusers scheduler reproduces the student's levels {levels} (got {got})")
    return scheduler


USAGE = """# {title}

A {steps}-step DP-DMD student of `{teacher}` ({family}). Load it over the teacher pipeline and
sample without CFG (the teacher's CFG is baked in; {pipeline}'s "no CFG" is guidance_scale={no_cfg:g}) and this
folder's scheduler:

```python
import torch
from diffusers import {pipeline}, {net_class}, {scheduler}

student = {net_class}.from_pretrained("{out}", subfolder="{net_folder}", torch_dtype=torch.bfloat16)
pipe = {pipeline}.from_pretrained("{teacher}", {net_folder}=student, torch_dtype=torch.bfloat16).to("cuda")
pipe.scheduler = {scheduler}.from_pretrained("{out}", subfolder="scheduler")
image = pipe("a photo of a cat", num_inference_steps={steps}, guidance_scale={no_cfg:g}).images[0]
```

The scheduler reproduces the training levels exactly: {levels}.
`dpdmd_student.json` holds the full training record (method, k, lambda, teacher CFG).
"""


def export_diffusers(student: RunStudent, out: Path, dtype: torch.dtype | None = None) -> Path:
    teacher = student.teacher
    if teacher.family == "builtin":
        raise ConfigError("--format diffusers needs a run with a diffusers teacher; this run's teacher is 'builtin'")
    info = student.info()
    no_cfg = 1.0 - FAMILIES[teacher.family].guidance_offset  # CFG 1 in the pipeline's own count (Z-Image: 0)
    scheduler = diffusers_scheduler(student, info.levels)
    tmp = out.with_name(f".{out.name}.tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    net_dir = tmp / teacher.net_folder
    net_dir.mkdir(parents=True)
    shutil.copyfile(teacher.path / teacher.net_folder / "config.json", net_dir / "config.json")
    save_student(student.weights(dtype or torch.float32), info, net_dir / "diffusion_pytorch_model.safetensors",
                 dtype=dtype)
    scheduler.save_pretrained(str(tmp / "scheduler"))
    record = {**asdict(info), "diffusers": {"pipeline": teacher.pipeline_class, "component": teacher.net_folder,
                                              "scheduler": type(scheduler).__name__,
                                              "call": {"num_inference_steps": info.num_steps, "guidance_scale": no_cfg}}}
    (tmp / "dpdmd_student.json").write_text(json.dumps(record, indent=1))
    (tmp / "README.md").write_text(USAGE.format(
        title=info.title, steps=info.num_steps, teacher=teacher.path.resolve(), family=info.family, out=out.resolve(),
        pipeline=teacher.pipeline_class, net_class=teacher.net_class, net_folder=teacher.net_folder,
        scheduler=type(scheduler).__name__, levels=info.levels, no_cfg=no_cfg))
    if out.exists():
        shutil.rmtree(out)
    tmp.rename(out)
    return out


# ---- LoRA -------------------------------------------------------------------------------------------
def svd_factors(delta: torch.Tensor, rank: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(A, B) with B @ A the best rank-``rank`` approximation of ``delta`` (Eckart-Young).

    Convolution kernels (out, in, kh, kw) are factored as (out, in*kh*kw) and
    returned in the LoCon layout: A (r, in, kh, kw), B (out, r, 1, 1).
    """
    u, s, vh = torch.linalg.svd(delta.float().flatten(1), full_matrices=False)
    r = min(rank, s.numel())
    a, b = vh[:r].contiguous(), (u[:, :r] * s[:r]).contiguous()
    if delta.dim() == 4:
        return a.reshape(r, *delta.shape[1:]), b.reshape(delta.shape[0], r, 1, 1)
    return a, b


def product(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """B @ A in the layer's weight shape (linear or LoCon convolution)."""
    w = b.flatten(1) @ a.flatten(1)
    return w.reshape(b.shape[0], *a.shape[1:]) if a.dim() == 4 else w


def lora_keys(family: str, module: str, a: torch.Tensor, b: torch.Tensor) -> dict[str, torch.Tensor]:
    """One layer's factors in the key format diffusers and ComfyUI both load for the family (scale 1)."""
    down, up = family_teacher(family).lora_file_keys(module)
    if down.endswith(".lora_down.weight"):  # kohya keys carry their alpha
        return {down: a, up: b, down.replace(".lora_down.weight", ".alpha"): torch.tensor(float(a.shape[0]))}
    return {down: a, up: b}


def export_lora(student: RunStudent, out: Path, rank: int | None = None, dtype: torch.dtype = torch.bfloat16) -> Path:
    """The student's difference from the teacher as LoRA factors, with the share of the change they capture."""
    family = student.teacher.family
    if family == "builtin":
        raise ConfigError("--format lora needs a run with a diffusers teacher; this run's teacher is 'builtin'")
    base = student.base
    factors = adapter_factors(student.adapters) if student.adapters is not None else {}
    trained_rank = max((a.shape[0] for a, _ in factors.values()), default=0)
    exact = bool(factors) and (rank is None or rank >= trained_rank)
    if exact:  # merged one tensor at a time: the share captured is computed without a full float32 copy
        weights = merged_tensors({**base, **student.adapters})
    else:
        rank = rank or 64
        full = student.weights()
        deltas = {m: full[f"{m}.weight"] - base[f"{m}.weight"] for m in student.teacher.lora_file_modules()}
        factors = {m: svd_factors(d, rank) for m, d in deltas.items() if d.abs().max() > 0}
        weights = iter(full.items())
    covered = {f"{m}.weight": ab for m, ab in factors.items()}
    total = residual = 0.0
    for k, w in weights:
        if k not in base:
            continue
        delta = w - base[k]
        total += float(delta.pow(2).sum())
        residual += float((delta - product(*covered[k]) if k in covered else delta).pow(2).sum())
    captured = 1.0 - residual / total if total > 0 else 1.0
    tensors: dict[str, torch.Tensor] = {}
    for module, (a, b) in factors.items():
        tensors.update(lora_keys(family, module, a, b))
    info = student.info(kind="lora", rank=int(trained_rank if exact else rank), exact=exact,
                        captured=round(captured, 6), base=str(student.teacher.path))
    save_student(tensors, info, out, dtype=dtype)
    return out


# ---- entry --------------------------------------------------------------------------------------------
def default_out(run_dir: Path, fmt: str, step: int) -> Path:
    return run_dir / f"student_step{step:08d}{FORMATS[fmt].suffix}"


def export(run_dir: str | Path, fmt: str = "file", *, out: str | Path | None = None, step: int | None = None,
           dtype: str | None = None, rank: int | None = None) -> tuple[Path, RunStudent]:
    """Write the run's (newest or chosen) checkpoint student in ``fmt``; returns the path written."""
    if fmt not in FORMATS:
        raise ConfigError(f"--format {fmt!r} is not one of {', '.join(FORMATS)}")
    if dtype is not None and dtype not in DTYPES:
        raise ConfigError(f"--dtype {dtype!r} is not one of {', '.join(DTYPES)}")
    if rank is not None and rank < 1:
        raise ConfigError(f"--rank {rank} must be at least 1 (leave it out: the trained LoRA exactly, or 64 by SVD)")
    student = load_run_student(run_dir, step)
    path = Path(out) if out else default_out(Path(run_dir), fmt, student.step)
    torch_dtype = DTYPES[dtype or FORMATS[fmt].dtype]
    write = {"diffusers": export_diffusers, "comfy": export_comfy,
             "lora": partial(export_lora, rank=rank)}.get(fmt, export_file)
    try:
        return write(student, path, dtype=torch_dtype), student
    except OSError as e:
        raise CheckpointError(f"--out {shown(str(path))} cannot be written ({e.strerror or e}: {e.filename}); "
                              "give a path in a folder you can write to") from None
