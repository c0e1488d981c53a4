"""The run config: one dataclass tree, read from and written to TOML.

Defaults follow the paper (k = 5, 4 student steps, 5 fake-score updates per
student update); lambda, the learning rates, the budget and the teacher's CFG
are the family's (families.py). Fields left at ``None`` take their family's
default when the config is resolved; the run folder keeps
the resolved config, so a run can always be repeated exactly. Every problem is
reported as a ConfigError naming the field and the fix. Fields with a fixed set
of values are ``Literal`` annotations: the checks, the CLI and the wizard read
their choices from there (``choices``).
"""
from __future__ import annotations

import dataclasses
import difflib
import functools
import json
import math
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

try:  # Python 3.11+; ComfyUI installs on 3.10 use the tomli backport
    import tomllib
except ImportError:  # pragma: no cover
    import tomli as tomllib

from .builtin.kinds import DEFAULT_KIND, KINDS, BuiltinName, data_module
from .errors import ConfigError, shown
from .families import FAMILIES, Family, FamilyName


@dataclass(frozen=True)
class Method:
    name: str  # how reports and titles name it
    label: str  # how the wizard names it
    diversity: bool  # the first step trains on the diversity loss (lambda counts)
    detach: bool  # the gradient stops after the first step (DMD trains the later steps only)


METHODS: dict[str, Method] = {
    "dpdmd": Method("DP-DMD", "DP-DMD (paper): diversity loss on step 1, detach, DMD on the rest", diversity=True, detach=True),
    "dmd": Method("DMD", "DMD (baseline): DMD on every step, no diversity loss", diversity=False, detach=False),
    "no_detach": Method("No-detach", "No-detach ablation: diversity loss, DMD through every step", diversity=True, detach=False),
}
MethodName = Literal[tuple(METHODS)]  # type: ignore[valid-type]


def effective_diversity_weight(method: str, weight: float | None) -> float | None:
    """The lambda a run trains with: methods without the diversity loss (plain DMD) have none."""
    return 0.0 if method in METHODS and not METHODS[method].diversity else weight


@dataclass
class RunSection:
    """Where the run lives and how often it saves."""
    output_dir: str = "runs/dpdmd"
    seed: int = 0
    max_steps: int | None = None  # student updates (each preceded by method.fake_updates fake-score updates)
    checkpoint_every: int = 100
    keep_checkpoints: int = 3
    log_every: int = 1
    device: Literal["auto", "cpu", "cuda"] = "auto"
    mixed_precision: Literal["no", "bf16"] = "no"
    branch_from: str = ""  # another run's checkpoints/step_XXXXXXXX: a new run continues from it under this config
    tensorboard: bool = False  # also log the losses and diversity to <run>/tensorboard (accelerate's tracker)


@dataclass
class TeacherSection:
    family: FamilyName = "builtin"
    path: str = ""  # sd3 / sdxl: a local diffusers folder; builtin: "" = the shipped weights
    builtin: BuiltinName = DEFAULT_KIND  # builtin family: shapes (generated, exactly known modes) | digits
    guidance_scale: float | None = None  # teacher ("real score") CFG
    num_steps: int | None = None  # the teacher's own multi-step schedule (anchor rollout, reference samples)
    shift: float | None = None  # flow-time shift; None = the teacher scheduler's
    dtype: Literal["float32", "bfloat16"] = "float32"  # the frozen teacher's weights
    resolution: int | None = None  # image size in pixels (sd3 / sdxl)
    timestep_spacing: Literal["trailing", "leading"] = "trailing"  # sdxl teacher's levels: trailing (from pure noise) | leading (its folder's)


@dataclass
class StudentSection:
    num_steps: int = 4
    # flow teachers: the student's own schedule shift (None: the teacher's). Below the teacher's, steps 2-N start
    # at lower noise, so the first step (the one DP-DMD anchors) decides more of the layout
    shift: float | None = None
    gradient_checkpointing: bool = False
    lora_rank: int = 0  # 0 = full fine-tune
    # LoRA's frozen base: shared (the teacher's, with a student and a fake adapter) | copies (one per network) |
    # auto: shared for sd3 / sdxl where it can be (no EMA, no FSDP, bf16 autocast for a bf16 teacher)
    lora_mode: Literal["auto", "shared", "copies"] = "auto"
    ema_decay: float = 0.0  # > 0: keep an exponential moving average of the student and export it
    init_lora: str = ""  # a LoRA file the student adapter starts from (as `dpdmd export --format lora` writes)


@dataclass
class MethodSection:
    name: MethodName = "dpdmd"  # see METHODS
    anchor_step: int = 5  # k: teacher steps of the anchor rollout (k = teacher.num_steps: its full sample)
    diversity_weight: float | None = None  # lambda (the family's: paper 0.05)
    anchor_target: Literal["auto", "velocity", "x0"] = "auto"  # velocity (Eq. 6, flow) | x0 (Eq. 39, epsilon)
    backprop: Literal["all", "one_step"] = "all"  # all: DMD through every step after the detach | one_step: DMD2
    fake_updates: int = 5  # fake-score updates per student update
    dmd_normalizer: Literal["x0", "xt"] = "x0"  # x0 (DMD2: mean |x0 - real|) | xt (authors' script: |x_t - real|)
    renoise_per: Literal["sample", "batch"] = "sample"  # sample (DMD2) | batch (authors' script)
    renoise_min: float = 0.02
    renoise_max: float = 0.98
    renoise_shift: Literal["shifted", "unshifted"] = "shifted"  # shifted (through the teacher's flow shift) | unshifted (DMD2: t ~ U[min, max])
    fake_t_shift: Literal["shifted", "unshifted"] = "shifted"  # the fake score's t ~ U[0, 1]: shifted (authors' script) | unshifted (DMD2)


@dataclass
class OptimSection:
    student_lr: float | None = None
    fake_lr: float | None = None
    weight_decay: float = 0.0
    beta1: float = 0.9
    beta2: float = 0.999
    grad_clip: float = 1.0
    warmup_steps: int = 0


@dataclass
class DataSection:
    prompts: list[str] = field(default_factory=list)  # inline prompts
    prompts_file: str = ""  # one prompt per line (added to `prompts`)
    batch_size: int | None = None  # per process


@dataclass
class EvalSection:
    prompts: list[str] = field(default_factory=list)  # fixed evaluation prompts; [] = first training prompts
    max_prompts: int = 10
    seeds: int = 9  # R samples per prompt (paper: 9)
    diversity_every: int = 100  # diversity (Eq. 9) during training every N steps (0 = only at the end)
    grid_every: int = 50  # fixed-seed sample grid every N steps (0 = only at the end)
    grid_prompts: int = 4
    grid_seeds: int = 6
    features: str = "builtin"  # builtin | a local DINO / CLIP folder (transformers)
    fd_samples_per_prompt: int = 50  # samples per prompt for the final Frechet distance (built-in)


@dataclass
class Config:
    run: RunSection = field(default_factory=RunSection)
    teacher: TeacherSection = field(default_factory=TeacherSection)
    student: StudentSection = field(default_factory=StudentSection)
    method: MethodSection = field(default_factory=MethodSection)
    optim: OptimSection = field(default_factory=OptimSection)
    data: DataSection = field(default_factory=DataSection)
    eval: EvalSection = field(default_factory=EvalSection)

    # ---- derived values ----------------------------------------------------------------
    @property
    def lam(self) -> float:
        """The effective diversity weight (plain DMD has none)."""
        return effective_diversity_weight(self.method.name, self.method.diversity_weight)

    @property
    def detach_first(self) -> bool:
        return METHODS[self.method.name].detach

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    def to_toml(self) -> str:
        return dumps_toml(self.to_dict())


def field_value(cfg: Config, key: str) -> Any:
    """The value of the field called "section.field"."""
    section, name = key.split(".")
    return getattr(getattr(cfg, section), name)


# ---- TOML ---------------------------------------------------------------------------------
def _toml_value(v: Any) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, (int, float)):
        return repr(v)
    if isinstance(v, str):
        return json.dumps(v)  # JSON string escapes are valid TOML basic-string escapes
    if isinstance(v, list):
        return "[" + ", ".join(_toml_value(x) for x in v) + "]"
    raise TypeError(f"cannot write {type(v).__name__} to TOML")


def dumps_toml(data: dict) -> str:
    """Write a two-level dict (sections of scalars and lists) as TOML; None values are omitted."""
    lines: list[str] = []
    for section, values in data.items():
        lines.append(f"[{section}]")
        lines += [f"{k} = {_toml_value(v)}" for k, v in values.items() if v is not None]
        lines.append("")
    return "\n".join(lines)


# Fields that may change when a run is resumed; any other difference (outside [eval]) means another run.
RESUMABLE_CHANGES = {"run.max_steps", "run.checkpoint_every", "run.keep_checkpoints", "run.log_every", "run.device",
                     "run.tensorboard",
                     "run.output_dir",  # a moved or copied run folder resumes where it now is
                     "run.branch_from", "optim.student_lr", "optim.fake_lr",
                     "student.lora_mode"}  # both LoRA modes write the same checkpoints


def config_differences(a: Config, b: Config) -> list[str]:
    """The fields in which two resolved configs describe different runs."""
    da, db = a.to_dict(), b.to_dict()
    return [f"{s}.{k}" for s in da for k in da[s] if da[s][k] != db[s][k] and not s == "eval"
            and f"{s}.{k}" not in RESUMABLE_CHANGES]


# ---- loading and checking types -----------------------------------------------------------------
@functools.cache
def choices(section: type, name: str) -> tuple[str, ...]:
    """The values a ``Literal`` field allows, from its annotation (e.g. choices(MethodSection, "name")); () for
    other fields."""
    annotation = typing.get_type_hints(section)[name]
    return typing.get_args(annotation) if typing.get_origin(annotation) is Literal else ()


def _check_type(name: str, value: Any, annotation: Any) -> Any:
    """Coerce ``value`` to the field's annotated type or raise ConfigError naming the field."""
    args = typing.get_args(annotation)
    if isinstance(annotation, types.UnionType):  # X | None
        if value is None:
            return None
        inner = [a for a in args if a is not type(None)][0]
        return _check_type(name, value, inner)
    if typing.get_origin(annotation) is Literal:  # a string here; which one is checked by resolve()
        return _check_type(name, value, str)
    if typing.get_origin(annotation) is list:
        if not isinstance(value, list) or not all(isinstance(x, str) for x in value):
            raise ConfigError(f"{name} must be a list of strings, e.g. {name.split('.')[-1]} = [\"a\", \"b\"]")
        return list(value)
    if annotation is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"{name} must be true or false, not {shown(value)}")
        return value
    if annotation is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"{name} must be a whole number, not {shown(value)}")
        return value
    if annotation is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"{name} must be a number, not {shown(value)}")
        if not math.isfinite(value):  # TOML reads nan and inf; no field means either
            raise ConfigError(f"{name} = {value} must be a finite number; nan and inf are not values of any field")
        return float(value)
    if annotation is str:
        if not isinstance(value, str):
            raise ConfigError(f"{name} must be a string, not {shown(value)}")
        return value
    raise TypeError(annotation)


def _unknown(name: str, known: list[str]) -> ConfigError:
    close = difflib.get_close_matches(name.split(".")[-1], known, n=1)
    hint = f" (did you mean '{close[0]}'?)" if close else f"; known fields: {', '.join(known)}"
    return ConfigError(f"unknown field '{name}'{hint}")


RENAMED = {("eval", "every"): "diversity_every"}  # old names still read, so older configs and run folders load


def from_dict(data: dict) -> Config:
    """Build a Config from nested dicts, refusing unknown sections and fields."""
    cfg = Config()
    sections = {f.name: f for f in dataclasses.fields(Config)}
    for sec_name, values in data.items():
        if sec_name not in sections:
            raise _unknown(sec_name, list(sections))
        if not isinstance(values, dict):
            raise ConfigError(f"[{sec_name}] must be a table of fields, not {shown(values)}")
        section = getattr(cfg, sec_name)
        hints = typing.get_type_hints(type(section))
        known = [f.name for f in dataclasses.fields(section)]
        for key, value in values.items():
            key = RENAMED.get((sec_name, key), key)
            if key not in known:
                raise _unknown(f"{sec_name}.{key}", known)
            setattr(section, key, _check_type(f"{sec_name}.{key}", value, hints[key]))
    return cfg


def parse_toml(text: str, where: str) -> dict:
    """TOML text as dicts (tomllib, or its backport on Python 3.10); a ConfigError names ``where``."""
    try:
        return tomllib.loads(text)
    except tomllib.TOMLDecodeError as e:
        raise ConfigError(f"{where} is not valid TOML: {e}") from None


def load_config(path: str | Path) -> Config:
    """Read a TOML run config; errors name the file, line or field."""
    path = Path(path)
    if path.is_dir():
        raise ConfigError(f"config file {shown(str(path))} is a folder, not a file; give a run's TOML config (a run "
                          "folder's own config.toml continues that run)")
    if not path.is_file():
        raise ConfigError(f"config file {shown(str(path))} does not exist; write one (see examples/) "
                          "or run `dpdmd demo` to get a working config.toml")
    return from_dict(_config_table(path))


def _config_table(path: Path) -> dict:
    return parse_toml(read_text(path, "config file", "save it as UTF-8 (TOML files are UTF-8)"), str(path))


def loads_config(text: str) -> Config:
    return from_dict(parse_toml(text, "the config"))


def load_run_config(path: str | Path) -> Config:
    """A run folder's own config.toml, read as the run that wrote it meant it.

    A run writes every field of its config, so a field its config.toml lacks is
    one that did not exist yet: such a run trained with that field's old default
    (``teacher.builtin`` arrived with the shapes teacher; runs before it are digits runs).
    """
    data = _config_table(Path(path))
    teacher = data.get("teacher")
    if isinstance(teacher, dict) and teacher.get("family", "builtin") == "builtin" and "builtin" not in teacher:
        teacher["builtin"] = "digits"
    return from_dict(data)


# ---- resolution and validation ------------------------------------------------------------
# A value refused with its reason rather than with the list of choices.
REFUSED = {("run.mixed_precision", "fp16"): "run.mixed_precision = 'fp16' is refused: DMD is known to diverge in "
                                            "fp16 (DMD2); use 'bf16' (fp32 master weights, bf16 autocast) or 'no'"}
# Fields that must not be empty, and how to fill them.
REQUIRED = {"data.prompts": "no training prompts; set data.prompts = [\"...\"] or data.prompts_file (one per line)",
            "run.output_dir": "give the folder the run writes to"}
# Whole-number fields with a least value, and why where it helps.
AT_LEAST: dict[str, tuple[int, str]] = {
    "teacher.num_steps": (2, ""),
    "student.num_steps": (2, ": DP-DMD trains the first step with the diversity loss and the others with DMD"),
    "student.lora_rank": (0, " (0 = full fine-tune)"),
    "method.fake_updates": (1, " (paper: 5)"),
    "optim.warmup_steps": (0, ""),
    "data.batch_size": (1, ""),
    "eval.seeds": (2, ": diversity compares samples pairwise (paper: 9)"),
    **{f"eval.{name}": (0, "") for name in ("diversity_every", "grid_every", "fd_samples_per_prompt")},
    "eval.max_prompts": (1, ": the run evaluates at least one prompt"),
    **{f"eval.{name}": (1, ": every run draws a seed grid at the end (grid_every = 0: only then)")
       for name in ("grid_prompts", "grid_seeds")},
    "run.max_steps": (1, ""), "run.checkpoint_every": (0, ""), "run.keep_checkpoints": (1, ""), "run.log_every": (1, ""),
}


SEED_LIMIT = 2 ** 32  # the trainer derives each step's seeds from run.seed; torch takes 64-bit seeds


def read_text(path: Path, what: str, fix: str) -> str:
    """A UTF-8 text file's contents; a ConfigError names ``what`` (the field or file) and ``fix`` otherwise."""
    try:
        return path.read_text(encoding="utf-8")
    except UnicodeDecodeError as e:
        raise ConfigError(f"{what} {shown(str(path))} is not UTF-8 text (byte 0x{e.object[e.start]:02x} at "
                          f"offset {e.start}); {fix}") from None
    except OSError as e:
        raise ConfigError(f"{what} {shown(str(path))} cannot be read ({e.strerror}); {fix}") from None


def read_prompts_file(path: str) -> list[str]:
    p, fix = Path(path).expanduser(), "give a UTF-8 text file with one prompt per line"
    if p.is_dir():
        raise ConfigError(f"data.prompts_file {shown(path)} is a folder, not a file; {fix}")
    if not p.is_file():
        raise ConfigError(f"data.prompts_file {shown(path)} does not exist; {fix}")
    lines = [line.strip() for line in read_text(p, "data.prompts_file", fix).splitlines()]
    prompts = [line for line in lines if line and not line.startswith("#")]
    if not prompts:
        raise ConfigError(f"data.prompts_file {shown(path)} holds no prompts (only blank or # lines); {fix}")
    return prompts


def resolve(cfg: Config) -> Config:
    """A validated copy with every family default filled in (what the run folder records)."""
    cfg = dataclasses.replace(cfg, **{f.name: dataclasses.replace(getattr(cfg, f.name))
                                      for f in dataclasses.fields(Config)})
    _check_choices(cfg)
    _fill_defaults(cfg)
    _check_teacher(cfg.teacher)
    _check_simple_fields(cfg)
    _check_method(cfg.method, cfg.teacher)
    _check_student(cfg.student, cfg.teacher)
    _check_optim(cfg.optim)
    if cfg.run.tensorboard and not tensorboard_installed():
        raise ConfigError("run.tensorboard = true needs the tensorboard package, which is not installed; "
                          "`pip install tensorboard`, or set run.tensorboard = false")
    cfg.method.diversity_weight = cfg.lam  # what the run trains with (plain DMD: none)
    return cfg


def _check_choices(cfg: Config) -> None:
    """Every ``Literal`` field holds one of its annotation's values."""
    for section in dataclasses.fields(Config):
        values = getattr(cfg, section.name)
        for f in dataclasses.fields(values):
            allowed, value, name = choices(type(values), f.name), getattr(values, f.name), f"{section.name}.{f.name}"
            if allowed and value not in allowed:
                raise ConfigError(REFUSED.get((name, value))
                                  or f"{name} = {shown(value)} is not one of {', '.join(repr(a) for a in allowed)}")


def _check_simple_fields(cfg: Config) -> None:
    """The fields that must be filled in, and the whole numbers with a least value (tables above)."""
    for name, fix in REQUIRED.items():
        if not field_value(cfg, name):
            raise ConfigError(f"{name} is empty: {fix}")
    for name, (least, why) in AT_LEAST.items():
        if field_value(cfg, name) < least:
            raise ConfigError(f"{name} = {field_value(cfg, name)} must be at least {least}{why}")
    if not -SEED_LIMIT < cfg.run.seed < SEED_LIMIT:
        raise ConfigError(f"run.seed = {shown(cfg.run.seed)} is too large; use a whole number below 2**32 in size "
                          "(e.g. 0)")


def _fill_defaults(cfg: Config) -> None:
    """Fields left at None take the family's value; the prompts file is read (builtin: the ten digits by
    default); evaluation defaults to the first training prompts."""
    t, o, d, e = cfg.teacher, cfg.optim, cfg.data, cfg.eval
    fam = builtin_family(t.builtin) if t.family == "builtin" else FAMILIES[t.family]
    t.guidance_scale = fam.guidance_scale if t.guidance_scale is None else t.guidance_scale
    t.num_steps = fam.num_steps if t.num_steps is None else t.num_steps
    t.resolution = fam.resolution if t.resolution is None else t.resolution
    o.student_lr = fam.lr if o.student_lr is None else o.student_lr
    o.fake_lr = (fam.fake_lr or fam.lr) if o.fake_lr is None else o.fake_lr
    m = cfg.method
    m.diversity_weight = fam.diversity_weight if m.diversity_weight is None else m.diversity_weight
    cfg.run.max_steps = fam.max_steps if cfg.run.max_steps is None else cfg.run.max_steps
    d.batch_size = fam.batch_size if d.batch_size is None else d.batch_size
    prompts = list(d.prompts) + (read_prompts_file(d.prompts_file) if d.prompts_file else [])
    if t.family == "builtin" and not prompts:
        data = data_module(t.builtin)
        prompts = [data.canonical_prompt(i) for i in range(data.NUM_CLASSES)]
    d.prompts, d.prompts_file = prompts, ""
    if not e.prompts:
        e.prompts = prompts[: e.max_prompts]
    if t.family != "builtin" and e.features == "builtin":
        e.features = ""  # the digits classifier only knows digits; real teachers measure with a DINO / CLIP folder


def builtin_family(kind: str) -> Family:
    """The built-in family's defaults for one built-in teacher (its image size, its own CFG and budget)."""
    k = KINDS[kind]
    return dataclasses.replace(FAMILIES["builtin"], resolution=k.image_size, **k.defaults)


def _check_teacher(t: TeacherSection) -> None:
    if t.family != "builtin" and not t.path:
        raise ConfigError(f"teacher.path is empty; a {t.family} teacher is loaded from a local diffusers folder "
                          "(the one with model_index.json), e.g. path = \"/models/stable-diffusion-3.5-medium\"")
    if t.path and not Path(t.path).expanduser().exists():
        raise ConfigError(f"teacher.path {shown(t.path)} does not exist; give the local folder (or file) of the "
                          "teacher")
    if t.guidance_scale < 1.0:
        raise ConfigError(f"teacher.guidance_scale = {t.guidance_scale} must be >= 1 (1 = no CFG)")
    if t.shift is not None and t.shift <= 0:
        raise ConfigError(f"teacher.shift = {t.shift} must be positive")
    builtin = KINDS[t.builtin].image_size
    if t.family == "builtin" and t.resolution != builtin:
        raise ConfigError(f"teacher.resolution = {t.resolution} applies to sd3 / sdxl teachers; the built-in "
                          f"{t.builtin} teacher draws {builtin} x {builtin} images only, remove the field")
    if t.resolution <= 0 or (t.family != "builtin" and t.resolution % 16):
        raise ConfigError(f"teacher.resolution = {t.resolution} must be a positive multiple of 16")



def _check_method(m: MethodSection, t: TeacherSection) -> None:
    if not 1 <= m.anchor_step <= t.num_steps:
        raise ConfigError(f"method.anchor_step (k) = {m.anchor_step} must be between 1 and teacher.num_steps "
                          f"= {t.num_steps}: the anchor is the teacher's state after k of its {t.num_steps} steps")
    if m.diversity_weight < 0:
        raise ConfigError(f"method.diversity_weight (lambda) = {m.diversity_weight} must be >= 0 (paper: 0.05)")
    if m.backprop == "one_step" and not METHODS[m.name].detach:
        raise ConfigError(f"method.backprop = 'one_step' trains one step after the detach, so it needs method.name = "
                          f"'dpdmd' (got {m.name!r}); use backprop = 'all' for {m.name!r}")
    if m.anchor_target == "velocity" and FAMILIES[t.family].prediction_type != "flow":
        raise ConfigError(f"method.anchor_target = 'velocity' (Eq. 6) needs a flow teacher; the {t.family} teacher "
                          "predicts noise, use 'x0' (Appendix C) or 'auto'")
    if not 0.0 <= m.renoise_min < m.renoise_max <= 1.0:
        raise ConfigError(f"method.renoise_min / renoise_max = {m.renoise_min} / {m.renoise_max} must satisfy "
                          "0 <= min < max <= 1 (DMD2: 0.02 / 0.98)")
    if t.timestep_spacing != "trailing" and t.family != "sdxl":
        raise ConfigError(f"teacher.timestep_spacing = {t.timestep_spacing!r} applies to sdxl teachers (discrete "
                          f"timesteps); a {t.family} teacher samples on its flow sigmas, remove the field")


def _check_student(s: StudentSection, t: TeacherSection) -> None:
    if s.shift is not None and (s.shift <= 0 or FAMILIES[t.family].prediction_type != "flow"):
        raise ConfigError(f"student.shift = {s.shift} must be positive and applies to flow (builtin / sd3) "
                          "teachers only; remove it for an sdxl teacher")
    if not 0.0 <= s.ema_decay < 1.0:
        raise ConfigError(f"student.ema_decay = {s.ema_decay} must lie in [0, 1) (0 = no EMA; e.g. 0.99)")
    if s.init_lora and not s.lora_rank:
        raise ConfigError("student.init_lora starts the student's LoRA adapter from a file, so it needs "
                          "student.lora_rank > 0 (at least the file's rank)")
    if s.init_lora and not Path(s.init_lora).expanduser().is_file():
        raise ConfigError(f"student.init_lora {s.init_lora!r} does not exist; give a LoRA .safetensors file")


def tensorboard_installed() -> bool:
    """TensorBoard logging is optional: the package is not a dependency (it is large)."""
    import importlib.util

    return importlib.util.find_spec("tensorboard") is not None


def _check_optim(o: OptimSection) -> None:
    for name in ("student_lr", "fake_lr", "grad_clip"):
        if getattr(o, name) <= 0:
            raise ConfigError(f"optim.{name} = {getattr(o, name)} must be positive")
    if o.weight_decay < 0:
        raise ConfigError(f"optim.weight_decay = {o.weight_decay} must be >= 0")
    if not (0 <= o.beta1 < 1 and 0 <= o.beta2 < 1):
        raise ConfigError(f"optim.beta1 / beta2 = {o.beta1} / {o.beta2} must lie in [0, 1)")
