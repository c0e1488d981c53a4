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
import errno
import functools
import json
import math
import stat
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
    objective: str | None = None  # what trains the steps DMD trains: one of OBJECTIVES, None = method.refine's


METHODS: dict[str, Method] = {
    "dpdmd": Method("DP-DMD", "DP-DMD (paper): diversity loss on step 1, detach, DMD on the rest", diversity=True, detach=True),
    "dmd": Method("DMD", "DMD (baseline): DMD on every step, no diversity loss", diversity=False, detach=False,
                  objective="dmd"),
    "decoupled_dmd": Method("Decoupled-DMD", "Decoupled-DMD (Z-Image-Turbo's): CFG augmentation and distribution "
                            "matching at their own noise levels, every step", diversity=False, detach=False,
                            objective="decoupled_dmd"),
    "no_detach": Method("No-detach", "No-detach ablation: diversity loss, DMD through every step", diversity=True, detach=False),
}
# The objectives that refine the steps after DP-DMD's first (method.refine): CFG-DMD's one gradient (DMD, DMD2)
# or Decoupled-DMD's two terms (arXiv 2511.22677; docs/method.md)
OBJECTIVES = ("dmd", "decoupled_dmd")
MethodName = Literal[tuple(METHODS)]  # type: ignore[valid-type]


def effective_diversity_weight(method: str, weight: float | None) -> float | None:
    """The lambda a run trains with: methods without the diversity loss (plain DMD) have none."""
    return 0.0 if method in METHODS and not METHODS[method].diversity else weight


class _Reads:
    """The mark of a field that names a file or folder the run reads ("" or "builtin" name none)."""

    def __repr__(self) -> str:
        return "reads a file or folder"


READS = _Reads()
ReadPath = typing.Annotated[str, READS]  # a str to TOML and the checks; the mark is for read_path_fields()
ReadPathTables = typing.Annotated[list[dict], READS]  # a list of tables, each naming a file by its ``path`` key


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
    branch_from: ReadPath = ""  # another run's checkpoints/step_XXXXXXXX: a new run continues from it under this config
    tensorboard: bool = False  # also log the losses and diversity to <run>/tensorboard (accelerate's tracker)


@dataclass
class TeacherSection:
    family: FamilyName = "builtin"
    path: ReadPath = ""  # sd3 / sdxl / zimage / flux2: a local diffusers folder; builtin: "" = the shipped weights
    builtin: BuiltinName = DEFAULT_KIND  # builtin family: shapes (generated, exactly known modes) | digits
    guidance_scale: float | None = None  # teacher ("real score") CFG
    num_steps: int | None = None  # the teacher's own multi-step schedule (anchor rollout, reference samples)
    shift: float | None = None  # flow-time shift; None = the teacher scheduler's
    dtype: Literal["float32", "bfloat16"] = "float32"  # the frozen teacher's weights
    resolution: int | None = None  # image size in pixels (diffusers teachers)
    timestep_spacing: Literal["trailing", "leading"] = "trailing"  # sdxl teacher's levels: trailing (from pure noise) | leading (its folder's)
    # zimage (its pipeline's arguments of the same names): CFG only where its time 1 - level is at most
    # cfg_truncation (1: everywhere), and the CFG output's norm capped at cfg_normalization x the cond one's (0: off)
    cfg_truncation: float = 1.0
    cfg_normalization: float = 0.0
    # the frozen base's linear weights (teacher, LoRA bases, text encoders): as teacher.dtype | fp8 (float8_e4m3fn,
    # a scale per output channel, upcast layer by layer to teacher.dtype / the autocast dtype). Exports always merge
    # into the full-precision base
    quantize: Literal["none", "fp8"] = "none"
    # LoRAs merged into the teacher at load, in order: [{ path = "style.safetensors", weight = 0.8 }] (kohya,
    # diffusers / PEFT keys); the student trains on (and its LoRA applies on top of) the merged base
    loras: ReadPathTables = field(default_factory=list)


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
    init_lora: ReadPath = ""  # a LoRA file the student adapter starts from (as `dpdmd export --format lora` writes)


@dataclass
class FakeSection:
    """The fake score (the student's distribution's score network)."""
    # a LoRA file its adapter starts from (needs student.lora_rank; e.g. the `dpdmd extract-lora` delta the student
    # starts from, so the fake score starts at the student's distribution instead of the teacher's)
    init_lora: ReadPath = ""


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
    # dpdmd / no_detach: the objective of the steps after the first: dmd (the paper's) | decoupled_dmd (CA + DM at
    # their own levels); dmd and decoupled_dmd are their own objective
    refine: Literal[OBJECTIVES] = "dmd"  # type: ignore[valid-type]


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
    prompts_file: ReadPath = ""  # one prompt per line (added to `prompts`)
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
    features: ReadPath = "builtin"  # builtin | a local DINO / CLIP folder (transformers)
    fd_samples_per_prompt: int = 50  # samples per prompt for the final Frechet distance (built-in)
    # > 0: the collapse guard (training/collapse.py): warn when the student's diversity is below this fraction of
    # the teacher's (measured once at the start, same prompts and seeds) at two evaluations in a row
    collapse_fraction: float = 0.0
    collapse_stop: bool = False  # and then stop the run with a checkpoint


@dataclass
class Config:
    run: RunSection = field(default_factory=RunSection)
    teacher: TeacherSection = field(default_factory=TeacherSection)
    student: StudentSection = field(default_factory=StudentSection)
    fake: FakeSection = field(default_factory=FakeSection)
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
    def objective(self) -> str:
        """What trains the steps the DMD loss reaches: the method's own objective, or DP-DMD's method.refine."""
        return METHODS[self.method.name].objective or self.method.refine

    @property
    def detach_first(self) -> bool:
        return METHODS[self.method.name].detach

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    def to_toml(self) -> str:
        return dumps_toml(self.to_dict())


def _read_path_hints() -> dict[str, Any]:
    """"section.field" -> annotation of every field marked as naming files a run reads."""
    out = {}
    for section in dataclasses.fields(Config):
        hints = typing.get_type_hints(type(getattr(Config(), section.name)), include_extras=True)
        out.update({f"{section.name}.{name}": hint for name, hint in hints.items() if READS in typing.get_args(hint)})
    return out


def read_path_fields() -> tuple[str, ...]:
    """Every "section.field" that names a file or folder a run reads, from the annotations (``ReadPath``, and
    ``ReadPathTables`` for a list of tables with a ``path`` each): what a UI checks against its allowed roots
    (through read_path_places), so a new path field is checked the day it is added."""
    return tuple(_read_path_hints())


def read_path_places(data: dict) -> list[tuple[str, dict, str]]:
    """Where config tables (as TOML reads them, before any check) name a file or folder a run reads: (the name
    errors show, the table holding the value, its key), for each ``ReadPath`` field and each entry's ``path`` of a
    ``ReadPathTables`` field (``teacher.loras[0].path``). Values of the wrong type are left to the type check."""
    places = []
    for key, hint in _read_path_hints().items():
        section, name = key.split(".")
        table = data.get(section)
        value = table.get(name) if isinstance(table, dict) else None
        if hint == ReadPathTables:
            entries = value if isinstance(value, list) else []
            places += [(f"{key}[{i}].path", entry, "path") for i, entry in enumerate(entries)
                       if isinstance(entry, dict) and "path" in entry]
        elif value is not None:
            places.append((key, table, name))
    return places


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
    if isinstance(v, dict):  # an inline table (teacher.loras entries)
        return "{ " + ", ".join(f"{k} = {_toml_value(x)}" for k, x in v.items()) + " }"
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
    if annotation == list[dict]:
        return [_lora_entry(f"{name}[{i}]", x) for i, x in enumerate(_check_type(name, value, list))]
    if annotation is list:
        if not isinstance(value, list):
            raise ConfigError(f"{name} must be a list, e.g. {name.split('.')[-1]} = [{{ path = \"a.safetensors\", "
                              "weight = 1.0 }]")
        return list(value)
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


def _lora_entry(name: str, value: Any) -> dict:
    """One teacher.loras entry: { path = "...", weight = 1.0 } (weight optional)."""
    if not isinstance(value, dict) or "path" not in value or set(value) - {"path", "weight"}:
        raise ConfigError(f"{name} must be a table {{ path = \"file.safetensors\", weight = 1.0 }} (weight "
                          f"optional), not {shown(value)}")
    return {"path": _check_type(f"{name}.path", value["path"], str),
            "weight": _check_type(f"{name}.weight", value.get("weight", 1.0), float)}


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


def path_problem(path: Path, folder_ok: bool = False) -> str | None:
    """Why ``path`` is not a regular file (or, with ``folder_ok``, a folder), in words; None when it is one.

    "does not exist" only when nothing is there: a FIFO, a device or a symlink loop is named as what it is."""
    try:
        mode = path.stat().st_mode
    except OSError as e:
        if e.errno == errno.ELOOP:
            return "is a symlink loop"
        if e.errno == errno.ENOENT:
            return "is a symlink to a missing target" if path.is_symlink() else "does not exist"
        return f"cannot be read ({e.strerror})"
    if stat.S_ISDIR(mode):
        return None if folder_ok else "is a folder, not a file"
    if not stat.S_ISREG(mode):
        return "is not a regular file (a device, FIFO or socket)"
    return None


def load_config(path: str | Path) -> Config:
    """Read a TOML run config; errors name the file, line or field."""
    path = Path(path)
    problem = path_problem(path)
    if problem == "is a folder, not a file":
        raise ConfigError(f"config file {shown(str(path))} is a folder, not a file; give a run's TOML config (a run "
                          "folder's own config.toml continues that run)")
    if problem:
        raise ConfigError(f"config file {shown(str(path))} {problem}; write one (see examples/) "
                          "or run `dpdmd demo` to get a working config.toml")
    return from_dict(_config_table(path))


def _config_table(path: Path) -> dict:
    text = read_text(path, "config file", "save it as UTF-8 (TOML files are UTF-8)")
    return parse_toml(text.removeprefix("\ufeff"), str(path))  # a BOM, as some Windows editors write


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

# Upper bounds: far above any real run, low enough that nothing is allocated for an absurd value (a typo's
# 1e12 samples would exhaust memory before any check) and that a count means what it says.
LOOP_LIMIT = 10 ** 9  # step counts and cadences
AT_MOST: dict[str, int] = {
    "teacher.num_steps": 1000, "student.num_steps": 64, "student.lora_rank": 4096, "method.fake_updates": 100,
    "data.batch_size": 4096, "eval.seeds": 256, "eval.fd_samples_per_prompt": 10_000, "eval.max_prompts": 10_000,
    "eval.grid_prompts": 64, "eval.grid_seeds": 64, "run.keep_checkpoints": 10_000, "teacher.resolution": 8192,
    **{name: LOOP_LIMIT for name in ("run.max_steps", "run.checkpoint_every", "run.log_every", "optim.warmup_steps",
                                     "eval.diversity_every", "eval.grid_every")},
}
LR_RANGE = (1e-10, 10.0)  # a learning rate outside it is a typo (5e-324 trains nothing; 50 diverges at once)
PROMPT_CHARS = 4096  # text encoders read a few hundred tokens; a longer line is a wrong file, not a prompt

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
    problem = path_problem(p)
    if problem:
        raise ConfigError(f"data.prompts_file {shown(path)} {problem}; {fix}")
    lines = [line.strip() for line in read_text(p, "data.prompts_file", fix).splitlines()]
    for number, line in enumerate(lines, 1):
        if "\0" in line or len(line) > PROMPT_CHARS:
            raise ConfigError(f"data.prompts_file {shown(path)} line {number} "
                              + ("contains a NUL byte" if "\0" in line else f"is {len(line):,} characters long, more "
                                 f"than {PROMPT_CHARS:,}") + f"; {fix}")
    prompts = [line for line in lines if line and not line.startswith("#")]
    if not prompts:
        raise ConfigError(f"data.prompts_file {shown(path)} holds no prompts (only blank or # lines); {fix}")
    return prompts


def resolve(cfg: Config) -> Config:
    """A validated copy with every family default filled in (what the run folder records)."""
    cfg = dataclasses.replace(cfg, **{f.name: dataclasses.replace(getattr(cfg, f.name))
                                      for f in dataclasses.fields(Config)})
    _check_choices(cfg)
    _check_text(cfg)
    _fill_defaults(cfg)
    _check_teacher(cfg.teacher)
    _check_simple_fields(cfg)
    _check_method(cfg.method, cfg.teacher)
    _check_student(cfg.student, cfg.teacher)
    _check_init_lora("fake.init_lora", cfg.fake.init_lora, cfg.student)
    _check_optim(cfg.optim)
    _check_eval(cfg.eval)
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
        value = field_value(cfg, name)
        if not (value.strip() if isinstance(value, str) else value):
            raise ConfigError(f"{name} is empty: {fix}")
    for name, (least, why) in AT_LEAST.items():
        if field_value(cfg, name) < least:
            raise ConfigError(f"{name} = {field_value(cfg, name)} must be at least {least}{why}")
    for name, most in AT_MOST.items():
        if field_value(cfg, name) > most:
            raise ConfigError(f"{name} = {field_value(cfg, name)} is too large: at most {most:,}")
    if not -SEED_LIMIT < cfg.run.seed < SEED_LIMIT:
        raise ConfigError(f"run.seed = {shown(cfg.run.seed)} is too large; use a whole number below 2**32 in size "
                          "(e.g. 0)")


# How far from its family's default a value may lie before a divergence is blamed on it rather than on the
# learning rates: (field, the default's source, factor).
EXTREME = (("teacher.guidance_scale", "guidance_scale", 4.0), ("teacher.shift", "shift", 4.0),
           ("optim.student_lr", "lr", 10.0), ("optim.fake_lr", "lr", 10.0))
EXTREME_LAMBDA = 5.0  # lambda beyond this outweighs DMD by far (paper: 0.05)


def extreme_values(cfg: Config) -> list[str]:
    """The resolved config's values far from their family's defaults, in words ("teacher.guidance_scale = 40
    (default 3.5)"): what a divergence message names before it blames the learning rates."""
    fam = builtin_family(cfg.teacher.builtin) if cfg.teacher.family == "builtin" else FAMILIES[cfg.teacher.family]
    out = []
    for key, default_name, factor in EXTREME:
        value, default = field_value(cfg, key), getattr(fam, default_name)
        if value is not None and default and not default / factor <= value <= default * factor:
            out.append(f"{key} = {value:g} (default {default:g})")
    if cfg.lam > EXTREME_LAMBDA:
        out.append(f"method.diversity_weight (lambda) = {cfg.lam:g} (paper: 0.05)")
    return out


def _check_text(cfg: Config) -> None:
    """No string field holds a NUL byte (no path or prompt can), and no prompt is longer than PROMPT_CHARS."""
    for section in dataclasses.fields(Config):
        for f in dataclasses.fields(getattr(cfg, section.name)):
            value, name = getattr(getattr(cfg, section.name), f.name), f"{section.name}.{f.name}"
            for i, text in enumerate(value if isinstance(value, list) else [value]):
                where = f"{name}[{i}]" if isinstance(value, list) else name
                if isinstance(text, str) and "\0" in text:
                    raise ConfigError(f"{where} contains a NUL byte; remove it")
                if isinstance(text, str) and name.endswith("prompts") and len(text) > PROMPT_CHARS:
                    raise ConfigError(f"{where} is {len(text):,} characters long, more than {PROMPT_CHARS:,}; one "
                                      "prompt per line (is data.prompts_file the right file?)")


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
    problem = path_problem(Path(t.path).expanduser(), folder_ok=True) if t.path else None
    if problem:
        raise ConfigError(f"teacher.path {shown(t.path)} {problem}; give the local folder (or file) of the teacher")
    if t.guidance_scale < 1.0:
        raise ConfigError(f"teacher.guidance_scale = {t.guidance_scale} must be >= 1 (1 = no CFG)")
    if t.shift is not None and t.shift <= 0:
        raise ConfigError(f"teacher.shift = {t.shift} must be positive")
    builtin = KINDS[t.builtin].image_size
    if t.family == "builtin" and t.resolution != builtin:
        raise ConfigError(f"teacher.resolution = {t.resolution} applies to sd3 / sdxl teachers; the built-in "
                          f"{t.builtin} teacher draws {builtin} x {builtin} images only, remove the field")
    if (t.cfg_truncation != 1.0 or t.cfg_normalization) and not FAMILIES[t.family].cfg_extras:
        raise ConfigError(f"teacher.cfg_truncation / cfg_normalization apply to teachers whose pipeline has them "
                          f"({', '.join(n for n, f in FAMILIES.items() if f.cfg_extras)}); remove them for a "
                          f"{t.family} teacher")
    if t.cfg_truncation < 0 or t.cfg_normalization < 0:
        raise ConfigError(f"teacher.cfg_truncation / cfg_normalization = {t.cfg_truncation} / {t.cfg_normalization} "
                          "must be >= 0 (defaults 1.0 / 0.0: off)")
    if t.resolution <= 0 or (t.family != "builtin" and t.resolution % 16):
        raise ConfigError(f"teacher.resolution = {t.resolution} must be a positive multiple of 16")
    for i, lora in enumerate(t.loras):
        problem = path_problem(Path(lora["path"]).expanduser())
        if problem:
            raise ConfigError(f"teacher.loras[{i}].path {shown(lora['path'])} {problem}; give a LoRA .safetensors file")
    if t.loras and t.family == "builtin":
        raise ConfigError("teacher.loras merges LoRAs into a diffusers teacher; remove it for the built-in one")
    if t.quantize != "none" and t.family == "builtin":
        raise ConfigError(f"teacher.quantize = {t.quantize!r} shrinks a large teacher's frozen weights; the built-in "
                          "teacher is a few MB, remove the field")



def _check_method(m: MethodSection, t: TeacherSection) -> None:
    if not 1 <= m.anchor_step <= t.num_steps:
        raise ConfigError(f"method.anchor_step (k) = {m.anchor_step} must be between 1 and teacher.num_steps "
                          f"= {t.num_steps}: the anchor is the teacher's state after k of its {t.num_steps} steps")
    if m.diversity_weight < 0:
        raise ConfigError(f"method.diversity_weight (lambda) = {m.diversity_weight} must be >= 0 (paper: 0.05)")
    if m.backprop == "one_step" and not METHODS[m.name].detach:
        raise ConfigError(f"method.backprop = 'one_step' trains one step after the detach, so it needs method.name = "
                          f"'dpdmd' (got {m.name!r}); use backprop = 'all' for {m.name!r}")
    own = METHODS[m.name].objective
    if own is not None and m.refine != "dmd":
        raise ConfigError(f"method.refine = {m.refine!r} chooses what refines DP-DMD's later steps; method.name = "
                          f"{m.name!r} is its own objective: remove method.refine, or use method.name = 'dpdmd'")
    if m.anchor_target == "velocity" and FAMILIES[t.family].prediction_type != "flow":
        raise ConfigError(f"method.anchor_target = 'velocity' (Eq. 6) needs a flow teacher; the {t.family} teacher "
                          "predicts noise, use 'x0' (Appendix C) or 'auto'")
    if not 0.0 <= m.renoise_min < m.renoise_max <= 1.0:
        raise ConfigError(f"method.renoise_min / renoise_max = {m.renoise_min} / {m.renoise_max} must satisfy "
                          "0 <= min < max <= 1 (DMD2: 0.02 / 0.98)")
    if t.timestep_spacing != "trailing" and FAMILIES[t.family].prediction_type == "flow":
        raise ConfigError(f"teacher.timestep_spacing = {t.timestep_spacing!r} applies to sdxl teachers (discrete "
                          f"timesteps); a {t.family} teacher samples on its flow sigmas, remove the field")


def _check_student(s: StudentSection, t: TeacherSection) -> None:
    if s.shift is not None and (s.shift <= 0 or FAMILIES[t.family].prediction_type != "flow"):
        raise ConfigError(f"student.shift = {s.shift} must be positive and applies to flow (builtin / sd3) "
                          "teachers only; remove it for an sdxl teacher")
    if not 0.0 <= s.ema_decay < 1.0:
        raise ConfigError(f"student.ema_decay = {s.ema_decay} must lie in [0, 1) (0 = no EMA; e.g. 0.99)")
    _check_init_lora("student.init_lora", s.init_lora, s)


def _check_init_lora(name: str, path: str, s: StudentSection) -> None:
    if path and not s.lora_rank:
        raise ConfigError(f"{name} starts a LoRA adapter from a file, so it needs student.lora_rank > 0 (at least "
                          "the file's rank)")
    problem = path_problem(Path(path).expanduser()) if path else None
    if problem:
        raise ConfigError(f"{name} {shown(path)} {problem}; give a LoRA .safetensors file")


def _check_eval(e: EvalSection) -> None:
    if not 0.0 <= e.collapse_fraction <= 1.0:
        raise ConfigError(f"eval.collapse_fraction = {e.collapse_fraction} must lie in [0, 1] (0 = no collapse guard; "
                          "e.g. 0.6: warn below 60 % of the teacher's diversity)")
    if e.collapse_fraction and not e.diversity_every:
        raise ConfigError("eval.collapse_fraction watches the diversity measured during training; set "
                          "eval.diversity_every > 0 (e.g. 25) or remove it")
    if e.collapse_stop and not e.collapse_fraction:
        raise ConfigError("eval.collapse_stop stops a run the collapse guard warns about; set eval.collapse_fraction "
                          "(e.g. 0.6) as well")


def tensorboard_installed() -> bool:
    """TensorBoard logging is optional: the package is not a dependency (it is large)."""
    import importlib.util

    return importlib.util.find_spec("tensorboard") is not None


def _check_optim(o: OptimSection) -> None:
    if o.grad_clip <= 0:
        raise ConfigError(f"optim.grad_clip = {o.grad_clip} must be positive")
    for name in ("student_lr", "fake_lr"):
        if not LR_RANGE[0] <= getattr(o, name) <= LR_RANGE[1]:
            raise ConfigError(f"optim.{name} = {getattr(o, name)} must lie in [{LR_RANGE[0]:g}, {LR_RANGE[1]:g}] "
                              "(the family's default is in `dpdmd config`)")
    if o.weight_decay < 0:
        raise ConfigError(f"optim.weight_decay = {o.weight_decay} must be >= 0")
    if not (0 <= o.beta1 < 1 and 0 <= o.beta2 < 1):
        raise ConfigError(f"optim.beta1 / beta2 = {o.beta1} / {o.beta2} must lie in [0, 1)")
