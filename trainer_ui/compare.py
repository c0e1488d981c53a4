"""Students side by side: the same prompts and seeds drawn by each run's exported student and its teacher.

Each student is sampled in its own schedule (read from its file's metadata),
each teacher in its own steps and CFG, from identical per-seed noise, so the
grids differ only by the model. Diversity (Eq. 9) is measured on exactly these
samples; the runs' full evaluations (metrics.json) are shown next to it.
"""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from distill_core.config import METHODS, Config, load_run_config, resolve
from distill_core.errors import DPDMDError
from distill_core.runfolder import RunFolder

from .runs import newest_checkpoint

MAX_PROMPTS = 8  # a page is reachable over the network: keep one click's work bounded
MAX_SEEDS = 16
PHASES = 3  # per model: loading, sampling, measuring


@dataclass
class Panel:
    label: str
    image: Any  # PIL.Image
    numbers: dict[str, Any]
    evaluation: dict[str, Any]  # the run's own evaluation of this model (metrics.json), {} when none
    eval_prompts: list[str]  # the prompts that evaluation's per-prompt lists follow


WHAT_TO_LOOK_FOR = (
    "**What DP-DMD should change against DMD.** DMD distils the teacher by matching its distribution with a "
    "mode-seeking objective, so a DMD student tends to draw the same few layouts for every seed of a prompt. "
    "DP-DMD changes only the student's first step: it learns to land where the teacher's own first k steps land "
    "from the same noise (the diversity loss, weight lambda), and is then detached, so DMD on the later steps "
    "only sharpens quality. Against a DMD run with the same settings (Wizard: *Same settings as a DMD baseline*), "
    "the DP-DMD student's grids should vary more across seeds, its diversity should sit closer to the teacher's "
    "and its mode coverage higher, at similar quality. **It takes training to show:** a quick test (30 "
    "iterations) checks that everything runs, not the method; on the built-in shapes teacher (8 counted modes "
    "per prompt) about 200 iterations at batch 32 showed it on one training seed and not on another "
    "(docs/investigation.md), and the paper's gap (1.31x DMD's diversity on SD3.5 Medium) "
    "comes after about 6k iterations at batch 4 on 8 GPUs.")


# What a bar's colour says: the data, the teacher, or a student by its method.
KINDS = ("data", "teacher", *METHODS)


def _bar_rows(groups: list[tuple[str, list[tuple[str, float, str]]]]) -> list[tuple[str, float, str]]:
    """(bar, value, kind) rows, bars named 'group · model' so each group's models stand side by side."""
    return [(f"{group} · {model}", float(value), kind) for group, bars in groups for model, value, kind in bars]


def _kind(p: Panel) -> str:
    return p.numbers.get("method", "teacher" if p.label == "teacher" else "dpdmd")


def chart(panels: list[Panel]) -> tuple[list[tuple[str, float, str]], str]:
    """The bar chart Compare shows and its title: the first evaluation prompt's exact mode shares (teacher,
    students, the data) when every model's run evaluation has them, else diversity, mode coverage and
    validity per model."""
    if panels and all(p.evaluation.get("mode_histogram") for p in panels):
        names = panels[0].evaluation["mode_names"][0]
        data = next((p.evaluation["data_histogram"][0] for p in panels if p.evaluation.get("data_histogram")), None)
        groups = []
        for j, mode in enumerate(names):
            bars = [("data", data[j], "data")] if data else []
            groups.append((mode, bars + [(p.label, p.evaluation["mode_histogram"][0][j], _kind(p)) for p in panels]))
        prompt = panels[0].eval_prompts[0] if panels[0].eval_prompts else "the first prompt"
        return _bar_rows(groups), f"Share of samples per mode, prompt {prompt!r} (run evaluations)"
    measures = (("diversity", lambda p: p.numbers.get("diversity (these samples)")),
                ("coverage", lambda p: p.evaluation.get("mode_coverage")),
                ("coverage, valid only", lambda p: p.evaluation.get("mode_coverage_valid")),
                ("validity", lambda p: p.evaluation.get("validity", p.evaluation.get("class_accuracy"))))
    groups = [(name, [(p.label, get(p), _kind(p)) for p in panels if get(p) is not None]) for name, get in measures]
    return (_bar_rows([g for g in groups if g[1]]),
            "Diversity (these samples), mode coverage (all and valid samples) and validity (run evaluations)")


class ModelCache:
    """Teachers and feature extractors loaded once per UI process (loading is the slow part)."""

    def __init__(self) -> None:
        self._teachers: dict[tuple, Any] = {}
        self._extractors: dict[str, Any] = {}

    def teacher(self, cfg: Config, device: str):
        from distill_core.teachers import load_teacher

        t = cfg.teacher
        key = (t.family, t.builtin, t.path, t.shift, t.dtype, t.resolution, device)
        if key not in self._teachers:
            self._teachers[key] = load_teacher(cfg, device)
        return self._teachers[key]

    def extractor(self, spec: str, builtin: str):
        from distill_core.evaluation.evaluate import load_extractor

        if spec and (spec, builtin) not in self._extractors:
            self._extractors[spec, builtin] = load_extractor(spec, builtin)
        return self._extractors.get((spec, builtin))


def _measure(teacher, images, prompts: list[str], seeds: list[int], extractor) -> dict:
    from distill_core.evaluation.evaluate import evaluate_images
    from distill_core.evaluation.compare import prompt_labels

    if extractor is None:
        return {}
    m = evaluate_images(images, len(seeds), extractor, prompt_labels(teacher, prompts, len(seeds)))
    out = {"diversity (these samples)": round(m["diversity"], 4)}
    if "class_accuracy" in m:
        out["class accuracy (these samples)"] = round(m["class_accuracy"], 3)
    return out


def _run_eval(metrics: dict, who: str) -> dict:
    """The run's own end-of-training evaluation (many more samples), when it has one."""
    m = metrics.get(who, {})
    names = {"diversity": "diversity (run eval)", "frechet_distance": "Frechet distance (run eval)",
             "validity": "validity (run eval)", "blank_share": "blank share (run eval)",
             "mode_coverage_valid": "mode coverage, valid samples only (run eval)",
             "diversity_valid": "diversity, valid samples only (run eval)"}
    out = {label: round(m[key], 4) for key, label in names.items() if m.get(key) is not None}
    if m.get("prompts_few_valid"):
        out["prompts with < 2 valid samples (run eval)"] = len(m["prompts_few_valid"])
    return out


def _panel(label: str, title: str, teacher, net, prompts, seeds, levels, guidance, extractor, device,
           numbers: dict, evaluation: dict, eval_prompts: list[str], tick: Callable[[str], None]) -> Panel:
    from distill_core.grids import seed_grid
    from distill_core.sampling import sample_grid

    tick(f"sampling {label}")
    latents = sample_grid(teacher, net, prompts, seeds, levels, guidance, device=device)
    image = seed_grid(teacher.decode(latents), prompts, seeds, title)
    tick(f"measuring {label}")
    numbers = {"model": label, **numbers, **_measure(teacher, teacher.decode(latents), prompts, seeds, extractor)}
    return Panel(label, image, numbers, evaluation, eval_prompts)


def _run_config(run: RunFolder) -> Config:
    path = run.file(run.config_path)
    if path is None:
        raise DPDMDError(f"{run.root.name!r} is not a run folder (no config.toml)")
    return resolve(load_run_config(path))


def default_prompts(run_dirs: list[Path]) -> list[str]:
    """The first grid prompts of the first chosen run (the built-in teacher's if none is chosen)."""
    cfg = _run_config(RunFolder(run_dirs[0])) if run_dirs else resolve(Config())
    return cfg.eval.prompts[: cfg.eval.grid_prompts or 4]


def student_file(run: RunFolder) -> tuple[Path, int | None]:
    """The student Compare samples: the finished run's student.safetensors (step None), else the newest
    checkpoint's, exported once into the run folder as `dpdmd export` names it (student_stepNNNNNNNN.safetensors)."""
    from distill_core.export.exporters import default_out, export

    student = run.file(run.student_path)
    if student is not None:
        return student, None
    step = newest_checkpoint(run)
    if step is None:
        raise DPDMDError(f"run {run.root.name!r} has no checkpoint yet; Compare can sample it after its first "
                         "checkpoint (Monitor: Save a checkpoint now)")
    path = run.file(default_out(run.root, "file", step))
    return (path if path is not None else export(run.root, "file", step=step)[0]), step


def compare(run_dirs: list[Path], include_teacher: bool, prompts: list[str], seeds: list[int], cache: ModelCache,
            device: str = "cpu", progress: Callable[[float, str], None] | None = None) -> list[Panel]:
    """One seed grid per teacher (if asked) and per run's student, same prompts and seeds, with numbers."""
    from distill_core.export.exporters import load_student

    if not run_dirs and not include_teacher:
        raise DPDMDError("pick at least one run, or the teacher")
    if not 1 <= len(prompts) <= MAX_PROMPTS:
        raise DPDMDError(f"give 1 to {MAX_PROMPTS} prompts (one per line); got {len(prompts)}")
    if not 2 <= len(seeds) <= MAX_SEEDS:
        raise DPDMDError(f"use 2 to {MAX_SEEDS} seeds: diversity compares samples of one prompt pairwise")
    runs = [RunFolder(d) for d in run_dirs]
    students = [student_file(run) for run in runs]
    configs = [_run_config(run) for run in runs] or [resolve(Config())]
    metrics = [r.read_json(r.metrics_path) for r in runs] or [{}]
    panels: list[Panel] = []
    total = PHASES * (len(runs) + (1 if include_teacher else 0))  # at most: teachers alike are drawn once
    step = 0

    def tick(what: str) -> None:
        """Progress before each phase (loading, sampling, measuring a model): it moves during a long job."""
        nonlocal step
        if progress:
            progress(min(step / total, 1.0), what)
        step += 1

    if include_teacher:
        seen: set[tuple] = set()
        for cfg, m in zip(configs, metrics):
            t = cfg.teacher
            key = (t.family, t.builtin, t.path, t.shift, t.dtype, t.guidance_scale, t.num_steps)
            if key in seen:
                continue
            seen.add(key)
            tick("loading the teacher")
            teacher = cache.teacher(cfg, device)
            panels.append(_panel(
                "teacher", f"teacher: {t.num_steps} steps, CFG {t.guidance_scale:g}", teacher, teacher.network,
                prompts, seeds, teacher.teacher_levels(t.num_steps), t.guidance_scale, cache.extractor(cfg.eval.features, cfg.teacher.builtin),
                device, {"method": "teacher", "k": "", "lambda": "", "steps": t.num_steps, **_run_eval(m, "teacher")},
                m.get("teacher", {}), cfg.eval.prompts, tick))
    for run, (student, at), cfg, m in zip(runs, students, configs, metrics):
        tick(f"loading {run.root.name}")
        teacher = cache.teacher(cfg, device)
        net, info = load_student(student, teacher, device)
        label = run.root.name if at is None else f"{run.root.name} (checkpoint, step {at})"
        panels.append(_panel(
            label, f"{label}: {info.num_steps} steps", teacher, net, prompts, seeds, info.levels, 1.0,
            cache.extractor(cfg.eval.features, cfg.teacher.builtin), device,
            {"method": info.method, "k": "" if info.method == "dmd" else info.anchor_step, "lambda": info.diversity_weight, "steps": info.num_steps,
             **_run_eval(m, "student")}, m.get("student", {}), cfg.eval.prompts, tick))
    if progress:
        progress(1.0, "done")
    return panels
