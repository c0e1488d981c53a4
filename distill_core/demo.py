"""The built-in default: DMD and DP-DMD students of the shipped teacher, side by side, on a CPU.

``dpdmd demo`` trains both students with the same budget, data and noises (same
config and seed, only method.name differs) into two normal run folders
(<out>/dmd, <out>/dpdmd: resumable, the trainer UI opens them), measures the
teacher once for both, and writes <out>/metrics.json and <out>/report.html.
Run again, it skips finished runs and resumes an interrupted one.
"""
from __future__ import annotations

import json
import time
from collections.abc import Callable
from pathlib import Path

from .config import Config, load_run_config, resolve
from .runfolder import RunFolder, atomic_write_text

STUDENTS = {"dmd": "DMD", "dpdmd": "DP-DMD"}


def demo_config(output_dir: str | Path = "runs/demo", quick: bool = False, method: str = "dpdmd") -> Config:
    """One student's config: the built-in family's defaults (its measured setting, families.py), which are also
    what the trainer UI's wizard and `dpdmd config` start from.

    ``quick`` is a smoke run: same pipeline, few steps, fewer samples.
    """
    cfg = Config()
    cfg.run.output_dir = str(output_dir)
    cfg.method.name = method
    if quick:
        cfg.run.max_steps = 12
        cfg.run.checkpoint_every = 6
        cfg.eval.diversity_every = 6
        cfg.eval.grid_every = 6
        cfg.eval.fd_samples_per_prompt = 20
        cfg.data.batch_size = 32
    return cfg


def finished_metrics(cfg: Config) -> dict | None:
    """The metrics of a run folder that finished exactly this config, else None (train or resume it)."""
    run = RunFolder(Path(cfg.run.output_dir))
    status, metrics = run.read_status(), run.read_json(run.metrics_path)
    if status.get("state") != "finished" or "student" not in metrics or not run.config_path.is_file():
        return None
    old, new = resolve(load_run_config(run.config_path)), resolve(cfg)
    old.run.output_dir = new.run.output_dir  # the same folder, however it was spelt
    if old.to_toml() != new.to_toml() or status.get("step") != new.run.max_steps:
        return None
    return metrics


def _device(cfg: Config):
    import torch

    use_cuda = cfg.run.device == "cuda" or (cfg.run.device == "auto" and torch.cuda.is_available())
    return torch.device("cuda" if use_cuda else "cpu")


def _say(line: str) -> None:
    print(line, flush=True)  # each phase shows when it starts, also through a pipe (| tee)


def run_demo(out: str | Path = "runs/demo", quick: bool = False, *, progress: bool = True,
             log: Callable[[str], None] = _say) -> dict | None:
    """Train (or reuse) both students, measure the teacher once, write metrics.json and report.html.

    Returns the demo's metrics: {"teacher": ..., "dmd": ..., "dpdmd": ...}; None when a student was
    stopped (Ctrl-C, a UI's Stop): its checkpoint is written, and the same command continues it.
    """
    from .evaluation.compare import measure_teacher
    from .evaluation.demo_report import setting_line, write_demo_report
    from .teachers import load_teacher
    from .training.trainer import Trainer, run_trainer

    out = Path(out)
    cfgs = {method: demo_config(out / method, quick=quick, method=method) for method in STUDENTS}
    done = {method: finished_metrics(cfg) for method, cfg in cfgs.items()}
    first = resolve(cfgs["dmd"])
    reference = None
    if all(done.values()):
        log("demo 1/4 teacher: measured in the finished runs, reused")
    else:
        start = time.perf_counter()
        log(f"demo 1/4 teacher: sampling the {first.teacher.num_steps}-step CFG {first.teacher.guidance_scale:g} "
            "teacher once, for both students")
        device = _device(first)
        reference = measure_teacher(first, load_teacher(first, device), device)
        log(f"         done in {time.perf_counter() - start:.0f} s")
    for phase, (method, label) in enumerate(STUDENTS.items(), 2):
        cfg, folder = cfgs[method], Path(cfgs[method].run.output_dir)
        if done[method]:
            log(f"demo {phase}/4 {label} student: {folder} finished already, reused")
            continue
        start = time.perf_counter()
        log(f"demo {phase}/4 {label} student: {resolve(cfg).run.max_steps} steps in {folder} (resumes from its newest "
            "checkpoint), then its evaluation")
        trainer = Trainer(cfg, progress=progress)
        trainer.reference = reference
        run_trainer(trainer)
        run = RunFolder(folder)
        if run.read_status().get("state") != "finished":
            log(f"demo: the {label} student {run.read_status().get('message') or 'stopped'}")
            return None
        log(f"         done in {time.perf_counter() - start:.0f} s")
        done[method] = run.read_json(run.metrics_path)
    metrics = {"teacher": done["dmd"]["teacher"], **{method: done[method]["student"] for method in STUDENTS}}
    atomic_write_text(out / "metrics.json", json.dumps(metrics, indent=1))
    report = write_demo_report(out, {m: Path(c.run.output_dir) for m, c in cfgs.items()}, metrics,
                               first.eval.prompts, setting_line(resolve(cfgs["dpdmd"])))
    log(f"demo 4/4 report: {report}")
    return metrics
