"""The wizard's form, turned into a resolved run config by the core's own loader and checks.

The form is a flat set of fields a newcomer understands; it becomes the nested
dict the TOML loader reads, so every check and every error message is the
core's (``from_dict`` and ``resolve``), and the TOML shown is exactly what the
trainer runs. Fields the form does not show go in the "advanced" TOML box,
which overrides the form.
"""
from __future__ import annotations

import dataclasses
import math
import re
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from distill_core import presets
from distill_core.config import METHODS as CORE_METHODS
from distill_core.builtin.kinds import DEFAULT_KIND, KINDS
from distill_core.config import (Config, MethodSection, TeacherSection, builtin_family, choices, dumps_toml,
                                 field_value, from_dict, parse_toml, read_path_places, resolve)
from distill_core.errors import ConfigError
from distill_core.families import FAMILIES as CORE_FAMILIES
from distill_core.families import native_guidance

from .launcher import check_processes
from .paths import Roots

# (label, value) choices, in the config annotations' order.
METHODS = [(CORE_METHODS[name].label, name) for name in choices(MethodSection, "name")]
FAMILIES = [(CORE_FAMILIES[name].label, name) for name in choices(TeacherSection, "family")]
BUILTINS = [(f"{name}: {KINDS[name].label}", name) for name in choices(TeacherSection, "builtin")]

K_HELP = ("k, the diversity anchor: the teacher runs k of its own steps from the student's noise, and the "
          "student's first step learns to land there, which keeps each seed's layout (paper: 5 of 30).")
LAMBDA_HELP = ("lambda, the diversity weight: how much the first-step diversity loss counts next to DMD on the "
               "later steps (paper: 0.05; the shapes teacher's measured setting: 0.5; 0 is plain DMD).")


@dataclass(frozen=True)
class Preset:
    """A memory preset as the page offers it: the config fields it sets, in words."""
    settings: dict[str, Any]
    note: str


def _in_words(settings: dict[str, Any]) -> str:
    return ", ".join(presets.describe(settings))


# The planner's presets (`dpdmd plan` says which fits a GPU), after the config's own defaults for CPUs.
NO_PRESET = "fp32 (no preset)"
_DEFAULTS = {key: field_value(Config(), key) for key in presets.BASE}
PRESETS: dict[str, Preset] = {
    NO_PRESET: Preset({}, f"the config's defaults: {_in_words(_DEFAULTS)}; the built-in teacher on a CPU or any GPU"),
    **{name: Preset(presets.settings(name), _in_words(presets.settings(name))) for name in presets.PRESETS},
}
REAL_TEACHER_PRESET = "lora64-ckpt-onestep"  # the default for sd3 / sdxl
ONE_STEP_NOTE = "one-step backprop needs the detach, so it applies to DP-DMD only"


@dataclass
class WizardForm:
    """The wizard's fields, in the order the page passes them to the handlers (defaults: default_form)."""
    family: str
    teacher_path: str
    resolution: float | None  # sd3 / sdxl only (the built-in teachers have one size)
    builtin: str  # the built-in family only: which built-in teacher
    prompts: str  # one per line
    prompts_file: str
    method: str
    anchor_step: float | None
    diversity_weight: float | None
    student_steps: float | None
    guidance_scale: float | None
    teacher_steps: float | None
    max_steps: float | None
    batch_size: float | None
    memory: str
    run_name: str
    processes: float | None  # training processes (GPUs of this machine); not a config field: how it is launched
    fake_updates: float | None
    fake_lr: float | None
    seed: float | None
    checkpoint_every: float | None
    grid_every: float | None
    diversity_every: float | None
    tensorboard: bool  # offered only where the tensorboard package is installed
    extra_toml: str

    def __post_init__(self) -> None:
        for f in dataclasses.fields(self):  # an emptied Gradio text box sends None
            if f.type == "str" and getattr(self, f.name) is None:
                setattr(self, f.name, "")


FIELDS = [f.name for f in dataclasses.fields(WizardForm)]


@dataclass(frozen=True)
class FormField:
    """How the page names a form field, and what names it in the core's messages (its config key first)."""
    label: str
    names: tuple[str, ...] = ()


FORM_FIELDS: dict[str, FormField] = {
    "family": FormField("Teacher", ("teacher.family",)),
    "teacher_path": FormField("Teacher folder", ("teacher.path",)),
    "resolution": FormField("Resolution", ("teacher.resolution",)),
    "builtin": FormField("Built-in teacher", ("teacher.builtin",)),
    "prompts": FormField("Prompts", ("data.prompts",)),
    "prompts_file": FormField("Prompts file", ("data.prompts_file",)),
    "method": FormField("Method", ("method.name",)),
    "anchor_step": FormField("k (anchor step)", ("method.anchor_step (k)", "method.anchor_step")),
    "diversity_weight": FormField("lambda (diversity weight)",
                                  ("method.diversity_weight (lambda)", "method.diversity_weight")),
    "student_steps": FormField("Student steps", ("student.num_steps",)),
    "guidance_scale": FormField("Teacher CFG", ("teacher.guidance_scale",)),
    "teacher_steps": FormField("Teacher steps", ("teacher.num_steps",)),
    "max_steps": FormField("Iterations", ("run.max_steps",)),
    "batch_size": FormField("Batch size", ("data.batch_size",)),
    "memory": FormField("Memory preset", ("memory preset",)),
    "run_name": FormField("Run name", ("run name",)),
    "processes": FormField("Processes", ("processes",)),
    "fake_updates": FormField("Fake-score updates", ("method.fake_updates",)),
    "fake_lr": FormField("Fake-score lr", ("optim.fake_lr",)),
    "seed": FormField("Seed", ("run.seed",)),
    "checkpoint_every": FormField("Checkpoint every", ("run.checkpoint_every",)),
    "grid_every": FormField("Seed grid every", ("eval.grid_every",)),
    "diversity_every": FormField("Diversity every", ("eval.diversity_every",)),
    "tensorboard": FormField("TensorBoard", ("run.tensorboard",)),
    "extra_toml": FormField("Advanced TOML", ("the advanced TOML box",)),
}


def in_labels(message: str) -> tuple[str, str | None]:
    """``message`` with the form's config keys replaced by the fields' labels, and the form field it is
    about (the one named first; None when it names none, e.g. an advanced-box field)."""
    found: list[tuple[int, int, str]] = []  # (where, -length, field): the first, then the longest name wins
    for name, f in FORM_FIELDS.items():
        for alias in (*f.names, f.label):
            match = re.search(rf"(?<![\w.]){re.escape(alias)}(?![\w.])", message)
            if match:
                found.append((match.start(), -len(alias), name))
    for f in FORM_FIELDS.values():
        for alias in f.names:
            if "." in alias:  # a config key: the page's word for it
                message = re.sub(rf"(?<![\w.]){re.escape(alias)}(?![\w])", f.label, message)
    return message, min(found)[2] if found else None


def guidance_help(family: str) -> str:
    """The CFG field's note: the formula, and the family's own value of the default where its pipeline counts CFG
    another way (Z-Image: 6 here is its guidance_scale 5); where the family's scheduler sets the shift its own
    way (FLUX.2's mu), that too, as the schedule the guided teacher samples with."""
    fam = CORE_FAMILIES[family]
    note = native_guidance(family, fam.guidance_scale)
    default = f"; the default {fam.guidance_scale:g} {note}" if note else ""
    shift = f". Schedule: {fam.shift_note}" if fam.shift_note else ""
    return f"uncond + s (cond - uncond){default}{shift}"


def default_form(family: str = "builtin", builtin: str = DEFAULT_KIND) -> WizardForm:
    """The config's defaults (Config()) with the family's (families.py; a built-in teacher's own: builtin_family):
    what `dpdmd config` prints and `dpdmd demo` trains."""
    c, fam = Config(), builtin_family(builtin) if family == "builtin" else CORE_FAMILIES[family]
    return WizardForm(family=family, teacher_path="", resolution=fam.resolution, builtin=builtin, prompts="",
                      prompts_file="", extra_toml="", method=c.method.name, anchor_step=c.method.anchor_step,
                      diversity_weight=fam.diversity_weight, student_steps=c.student.num_steps,
                      guidance_scale=fam.guidance_scale, teacher_steps=fam.num_steps, fake_lr=fam.fake_lr or fam.lr,
                      max_steps=fam.max_steps, batch_size=fam.batch_size, run_name=default_run_name(c.method.name),
                      processes=1,
                      memory=NO_PRESET if family == "builtin" else REAL_TEACHER_PRESET,
                      fake_updates=c.method.fake_updates, seed=c.run.seed, checkpoint_every=c.run.checkpoint_every,
                      grid_every=c.eval.grid_every, diversity_every=c.eval.diversity_every, tensorboard=False)


QUICK_TEST_NOTE = ("about 30 iterations at a small batch with a seed grid every 5, so a first result (grids, "
                   "diversity, the report) comes in a minute or two on the built-in teacher; then train longer.")


def quick_test(family: str) -> dict[str, Any]:
    """The run-size fields of the quick test: a first look, not a result (a real teacher takes batch 1)."""
    return {"max_steps": 30, "batch_size": 8 if family == "builtin" else 1, "grid_every": 5, "diversity_every": 10,
            "checkpoint_every": 30}


def default_run_name(method: str = "dpdmd") -> str:
    return f"{method}-{time.strftime('%Y%m%d-%H%M%S')}"


def is_default_run_name(name: str) -> bool:
    """A name default_run_name gave (for any method), which a method change may replace."""
    return re.fullmatch(rf"({'|'.join(CORE_METHODS)})-\d{{8}}-\d{{6}}", name.strip()) is not None


def _number(form: WizardForm, name: str) -> float:
    value, label = getattr(form, name), FORM_FIELDS[name].label
    if value is None or value == "":
        raise ConfigError(f"{label} is empty; give a number")
    try:
        number = float(value)
    except (TypeError, ValueError):
        raise ConfigError(f"{label} must be a number, not {value!r}") from None
    if not math.isfinite(number):
        raise ConfigError(f"{label} must be a finite number, not {value!r}")
    return number


def _whole(form: WizardForm, name: str) -> int:
    number = _number(form, name)
    if number != int(number):
        raise ConfigError(f"{FORM_FIELDS[name].label} must be a whole number, not {number:g}")
    return int(number)


def _merge(base: dict, extra: dict) -> dict:
    """``extra`` over ``base``, one level of sections deep (the config's shape)."""
    out = {k: dict(v) for k, v in base.items()}
    for section, values in extra.items():
        if isinstance(values, dict) and isinstance(out.get(section), dict):
            out[section].update(values)
        else:
            out[section] = values
    return out


def processes(form: WizardForm) -> int:
    """How many training processes Start launches (accelerate launch for more than one)."""
    return check_processes(_whole(form, "processes"))


def teacher_path(form: WizardForm) -> str:
    """The teacher folder box's value; '' for the built-in teacher, whose page hides that box (what a user
    cannot see must not refuse a run)."""
    return "" if form.family == "builtin" else form.teacher_path.strip()


def form_to_dict(form: WizardForm, roots: Roots) -> dict:
    """The nested config dict the form describes (typed paths checked against the allowed roots)."""
    if form.memory not in PRESETS:
        raise ConfigError(f"memory preset {form.memory!r} is not one of {', '.join(PRESETS)}")
    prompts = [line.strip() for line in form.prompts.splitlines() if line.strip() and not line.strip().startswith("#")]
    data: dict[str, dict[str, Any]] = {
        "run": {"output_dir": str(roots.run_dir(form.run_name)), "seed": _whole(form, "seed"),
                "max_steps": _whole(form, "max_steps"), "checkpoint_every": _whole(form, "checkpoint_every"),
                "tensorboard": bool(form.tensorboard)},
        "teacher": {"family": form.family, "path": teacher_path(form),
                    "guidance_scale": _number(form, "guidance_scale"), "num_steps": _whole(form, "teacher_steps"),
                    **({"builtin": form.builtin} if form.family == "builtin" else
                       {"resolution": _whole(form, "resolution")})},
        "student": {"num_steps": _whole(form, "student_steps")},
        "method": {"name": form.method, "anchor_step": _whole(form, "anchor_step"),
                   "diversity_weight": _number(form, "diversity_weight"), "fake_updates": _whole(form, "fake_updates")},
        "optim": {"fake_lr": _number(form, "fake_lr")},
        "data": {"prompts": prompts, "batch_size": _whole(form, "batch_size"),
                 "prompts_file": form.prompts_file.strip()},
        "eval": {"grid_every": _whole(form, "grid_every"), "diversity_every": _whole(form, "diversity_every")},
    }
    detach = form.method in CORE_METHODS and CORE_METHODS[form.method].detach
    for key, value in PRESETS[form.memory].settings.items():
        if key == "method.backprop" and not detach:
            continue  # ONE_STEP_NOTE
        section, name = key.split(".")
        data[section][name] = value
    if form.extra_toml.strip():
        extra = parse_toml(form.extra_toml, "the advanced TOML box")
        if isinstance(extra.get("run"), dict) and "output_dir" in extra["run"]:
            raise ConfigError("run.output_dir cannot be set in the advanced TOML box; use the run name field "
                              "(runs are written under the runs folder)")
        data = _merge(data, extra)
    return _check_paths(data, roots)


def _check_paths(data: dict, roots: Roots) -> dict:
    """Resolve every value that names a file or folder to read (the config's ``ReadPath`` fields and the
    ``path`` of each ``ReadPathTables`` entry, from the form or the advanced box) inside the allowed roots; ""
    and "builtin" name none."""
    for name, table, key in read_path_places(data):
        value = table[key]
        if isinstance(value, str) and value.strip() and value != "builtin":
            table[key] = str(roots.inside(value, name))
    return data


def check_prompts(cfg: Config) -> None:
    """Refuse prompts the teacher cannot condition on now, rather than after the run has started."""
    if cfg.teacher.family == "builtin":
        from distill_core.builtin.kinds import data_module

        for prompt in dict.fromkeys(cfg.data.prompts + cfg.eval.prompts):
            data_module(cfg.teacher.builtin).parse_prompt(prompt)


def check_teacher_folder(cfg: Config) -> None:
    """Refuse a folder that is not a diffusers teacher of the chosen family (model_index.json, components,
    safetensors weights), or a resolution its network cannot take, with the trainer's own checks, rather than a
    run that dies while loading it (or at its first step)."""
    if cfg.teacher.family != "builtin":
        from distill_core.teachers.diffusers_base import check_folder, check_resolution, teacher_class

        kind = teacher_class(cfg.teacher.family)
        check_folder(Path(cfg.teacher.path), kind)
        check_resolution(Path(cfg.teacher.path), kind, cfg.teacher.resolution)


def build_config(form: WizardForm, roots: Roots) -> Config:
    """The resolved config the wizard will run; raises the core's errors (DPDMDError) on bad input."""
    cfg = resolve(from_dict(form_to_dict(form, roots)))
    processes(form)
    check_teacher_folder(cfg)
    check_prompts(cfg)
    return cfg


def _preset_of(cfg: Config) -> str:
    """The memory preset whose settings the config has (the one setting most of them), else none."""
    fits = [(len(p.settings), name) for name, p in PRESETS.items()
            if all(field_value(cfg, key) == value for key, value in p.settings.items()
                   if key != "method.backprop" or CORE_METHODS[cfg.method.name].detach)]
    return max(fits)[1] if fits else NO_PRESET


def form_from_config(cfg: Config, run_name: str, roots: Roots) -> WizardForm:
    """The form that describes ``cfg`` again under ``run_name``: its fields from the config, and every other
    field that differs from what the form alone gives in the advanced box (so nothing is lost)."""
    t, m, r, e = cfg.teacher, cfg.method, cfg.run, cfg.eval
    form = WizardForm(family=t.family, teacher_path=t.path, resolution=t.resolution, builtin=t.builtin, prompts="\n".join(cfg.data.prompts), prompts_file="",
                      method=m.name, anchor_step=m.anchor_step, diversity_weight=m.diversity_weight,
                      student_steps=cfg.student.num_steps, guidance_scale=t.guidance_scale, teacher_steps=t.num_steps,
                      max_steps=r.max_steps, batch_size=cfg.data.batch_size, memory=_preset_of(cfg), run_name=run_name,
                      processes=1,
                      fake_updates=m.fake_updates, fake_lr=cfg.optim.fake_lr, seed=r.seed, checkpoint_every=r.checkpoint_every,
                      grid_every=e.grid_every, diversity_every=e.diversity_every, tensorboard=r.tensorboard,
                      extra_toml="")
    wanted, given = cfg.to_dict(), build_config(form, roots).to_dict()
    extra = {section: {key: value for key, value in fields.items()
                       if value != given[section][key] and f"{section}.{key}" != "run.output_dir"}
             for section, fields in wanted.items()}
    form.extra_toml = dumps_toml({section: fields for section, fields in extra.items() if fields})
    return form
