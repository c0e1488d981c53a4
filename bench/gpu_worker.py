"""The process bench/gpu_check.py starts to measure its queue of presets (one process: one CUDA context).

It never decides what to run or how long: the queue, the budgets and the overall deadline come in a spec file
from gpu_check.py, which watches this process and kills it when a step overruns. Each step writes JSON lines to
the progress file as it goes: 'start' (what and until when), 'partial' (after each iteration), 'done' (its
record), so a killed step still leaves what it measured. Per preset: the run's Trainer (the project's own), then
DP-DMD and DMD iterations interleaved on the same networks and optimisers (DMD: the same method object with
the config's DMD settings, so the ratio of their seconds comes from one run), a deadline checked before each
iteration, and on the first preset of an architecture the student's and the teacher's sampling time.
"""
from __future__ import annotations

import copy
import dataclasses
import gc
import json
import os
import shutil
import sys
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # every folder is local: never wait on a hub
import torch  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent))
from fullsize_common import GB, CudaMeter, HostMeter, Phases, bench_config, build_teacher_folder, timed_trainer  # noqa: E402

from distill_core.config import resolve  # noqa: E402
from distill_core.evaluation.compare import seconds_per_image  # noqa: E402
from distill_core.families import FAMILIES  # noqa: E402

# What makes a run plain DMD: no diversity loss, no detach, hence no one-step backprop (the config refuses it).
DMD_SETTINGS = {"method.name": "dmd", "method.backprop": "all"}
# --fp32: float32 throughout instead of the presets' bf16 (a CPU without bf16 units emulates it, 3-5x slower).
FP32_SETTINGS = {"run.mixed_precision": "no", "teacher.dtype": "float32"}
SUB_PHASES = {"fake update": "fake_update_s", "student update": "student_update_s",
              "anchor rollout (in student update)": "anchor_rollout_s"}


class Progress:
    """JSON lines appended and flushed one by one: what the supervising process reads while this one runs."""

    def __init__(self, path: Path) -> None:
        self.file = path.open("a", encoding="utf-8")

    def emit(self, event: str, **fields) -> None:
        self.file.write(json.dumps({"event": event, "time": time.time(), **fields}, default=str) + "\n")
        self.file.flush()


class Overrun(Exception):
    """The next step would pass the preset's deadline."""


def with_settings(cfg, settings: dict):
    """A resolved copy of ``cfg`` with {"section.field": value} applied."""
    cfg = copy.deepcopy(cfg)
    for key, value in settings.items():
        section, name = key.split(".")
        setattr(getattr(cfg, section), name, value)
    return resolve(cfg)


def dmd_method(trainer, dmd_cfg):
    """The trainer's method object as plain DMD (its config's lambda, detach and backprop; everything else equal)."""
    return dataclasses.replace(trainer.method, diversity_weight=dmd_cfg.lam, detach_first=dmd_cfg.detach_first,
                               backprop=dmd_cfg.method.backprop)


def iteration_row(method: str, warmup: bool, rows: dict, logs: dict) -> dict:
    it = rows["iteration"]
    row = {"method": method, "warmup": warmup, "seconds": it["seconds"], "peak_gb": it["peak_gb"],
           "reserved_gb": it.get("reserved_gb"), "loss_div": logs["loss_div"], "loss_dmd": logs["loss_dmd"]}
    row.update({key: rows[name]["seconds"] if name in rows else 0.0 for name, key in SUB_PHASES.items()})
    return row


def sampling_times(trainer, cfg, spec: dict, stop_at: float) -> dict:
    """Seconds per image at the run's resolution, batch 1: the student (its steps, no CFG) and the teacher (its
    family's own sampling steps, or spec['teacher_steps'], with CFG), each the best of its timed samples after a
    warm-up."""
    teacher, prompts, device = trainer.teacher, cfg.eval.prompts[:1], spec["device"]
    steps = spec["teacher_steps"] or FAMILIES[cfg.teacher.family].num_steps
    out = {"resolution": cfg.teacher.resolution, "student_steps": len(trainer.student_levels) - 1,
           "teacher_steps": steps, "teacher_guidance": cfg.teacher.guidance_scale}
    out["student_s"] = seconds_per_image(teacher, trainer.sampling_student(), prompts, trainer.student_levels, 1.0, 1,
                                         device)
    nfe_ratio = 2 * steps / out["student_steps"]  # CFG: two network passes per teacher step
    if time.time() + 2 * nfe_ratio * out["student_s"] > stop_at:  # its warm-up and one timed sample
        raise Overrun(f"teacher sampling (~{2 * nfe_ratio * out['student_s']:.0f} s) would pass the deadline")
    out["teacher_s"] = seconds_per_image(teacher, teacher.network, prompts, teacher.teacher_levels(steps),
                                         cfg.teacher.guidance_scale, 1, device, repeats=1)
    out["teacher_over_student"] = out["teacher_s"] / out["student_s"]
    return out


def run_preset(index: int, spec: dict, folder: Path, meter, stop_at: float, progress: Progress) -> dict:
    """One preset: load, interleaved DP-DMD / DMD iterations until ``spec['iterations']`` each or the deadline,
    then (job['sample']) the sampling times. Failures and overruns are recorded, not raised."""
    job, work, device = spec["jobs"][index], Path(spec["work"]), spec["device"]
    rec = {"arch": job["arch"], "preset": job["preset"], "status": "ok", "note": "", "iterations": [],
           "baseline_gb": meter.baseline / GB, "meter": meter.kind}
    run = work / f"run_{job['arch']}_{job['preset']}"
    cfg = bench_config(folder, job["arch"], run, spec["resolution"], job["preset"], device, batch_size=4)
    if spec["fp32"]:
        cfg = with_settings(cfg, FP32_SETTINGS)
    dmd_cfg = with_settings(cfg, DMD_SETTINGS)
    phases, step, trainer = Phases(meter), "load", None
    try:
        with timed_trainer(cfg, phases) as trainer:
            rec["load"] = phases.take()["load + prompts"]
            methods = {"dpdmd": trainer.method, "dmd": dmd_method(trainer, dmd_cfg)}
            longest = 0.0
            for i in range(spec["iterations"]):
                for name, method in methods.items():
                    step = f"{name} iteration {i + 1}"
                    if time.time() + longest > stop_at:
                        raise Overrun(f"{step} (~{longest:.0f} s) would pass the deadline")
                    trainer.method = method
                    with phases.phase("iteration"):
                        logs = trainer.train_step()
                    rec["iterations"].append(iteration_row(name, i == 0, phases.take(), logs))
                    longest = max(longest, rec["iterations"][-1]["seconds"])
                    progress.emit("partial", job=index, record=rec)
            if job["sample"]:
                step = "sampling"
                rec["sampling"] = sampling_times(trainer, cfg, spec, stop_at)
    except Overrun as e:
        rec.update(status="stopped", note=f"stopped before the preset's {spec['preset_budget_s']:.0f} s budget ran "
                                          f"out: {e}")
    except torch.cuda.OutOfMemoryError as e:
        rec.update(status="out of memory", note=f"in {step}: {str(e).splitlines()[0]}")
    except Exception as e:  # recorded and the queue goes on: one broken preset must not hide the others
        rec.update(status="failed", note=f"in {step}: {type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}")
    finally:
        trainer = None  # its memory back to the allocator, and the allocator's cache back to the card
        gc.collect()
        if device == "cuda":
            torch.cuda.empty_cache()
        shutil.rmtree(run, ignore_errors=True)
    return rec


def teacher_folder(arch: str, spec: dict, progress: Progress, failed: set[str]) -> Path | None:
    """The architecture's random-weight teacher folder, built now if this queue has not built it yet."""
    folder = Path(spec["work"]) / f"teacher_{arch}{'_tiny' if spec['tiny'] else ''}"
    if (folder / "model_index.json").is_file():
        return folder
    if arch in failed:
        return None
    progress.emit("start", step=f"build {arch}", budget_s=spec["build_budget_s"])
    t0 = time.perf_counter()
    try:
        build_teacher_folder(arch, folder, tiny=spec["tiny"], device=spec["device"])
        status, note = "ok", ""
    except Exception as e:  # e.g. a family with no builder in fullsize_common yet
        status, note = "failed", f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"
    gc.collect()
    if spec["device"] == "cuda":
        torch.cuda.empty_cache()
    progress.emit("build", arch=arch, status=status, note=note, seconds=time.perf_counter() - t0)
    if status != "ok":
        failed.add(arch)
        return None
    return folder


def main(spec_path: Path) -> int:
    from diffusers.utils import logging as diffusers_logging
    from transformers.utils import logging as transformers_logging

    diffusers_logging.disable_progress_bar()  # a bar per loaded component would bury the check's own lines
    transformers_logging.disable_progress_bar()
    spec = json.loads(spec_path.read_text())
    progress = Progress(Path(spec["progress"]))
    meter = CudaMeter() if spec["device"] == "cuda" else HostMeter()
    if spec["device"] == "cuda":
        card = torch.cuda.get_device_properties(0)
        progress.emit("device", name=card.name, total_gb=card.total_memory / GB, torch=torch.__version__,
                      cuda=torch.version.cuda)
    jobs, queue, failed = spec["jobs"], spec["queue"], set()
    for n, index in enumerate(queue):
        job = jobs[index]
        left = spec["deadline"] - time.time()
        if left < spec["min_preset_s"]:
            progress.emit("done", job=index, record={**job, "status": "not run", "note": f"{left:.0f} s of the "
                                                     "check's budget left, less than --min-preset-s"})
            continue
        folder = teacher_folder(job["arch"], spec, progress, failed)
        if folder is None:
            record = {**job, "status": "not run", "note": "its teacher folder could not be built (see builds)"}
        else:
            budget = min(spec["preset_budget_s"], spec["deadline"] - time.time())
            progress.emit("start", step=f"preset {index}", job=index, budget_s=budget)
            record = run_preset(index, spec, folder, meter, time.time() + budget, progress)
        progress.emit("done", job=index, record=record)
        if folder is not None and all(jobs[i]["arch"] != job["arch"] for i in queue[n + 1:]):
            shutil.rmtree(folder, ignore_errors=True)  # the disk holds a few full-size teachers, not all of them
    meter.close()
    return 0


if __name__ == "__main__":
    sys.exit(main(Path(sys.argv[1])))
