"""The end of a run: export the student, measure teacher and student the same way, write the report."""
from __future__ import annotations

import json

from ..evaluation.compare import compare
from ..export.exporters import save_student, student_info
from ..progress import phase
from ..runfolder import atomic_write_text


def finish_run(trainer) -> dict:
    """Export, evaluate and report a finished run (main process)."""
    cfg, teacher, run = trainer.cfg, trainer.teacher, trainer.run
    info = student_info(teacher, cfg, trainer.step)
    with phase("exporting the student"):
        save_student(trainer.student_state_dict(), info, run.student_path)
    run.append_event("export", step=trainer.step, path=run.student_path.name)
    student = trainer.sampling_student()
    metrics = compare(cfg, teacher, student, trainer.acc.device, trainer.reference)  # its phases: evaluation
    events = run.read_events()
    train_seconds = sum(e.get("sec_per_step", 0.0) for e in events if e.get("event") == "step")
    metrics["run"] = {"method": cfg.method.name, "refine": cfg.objective, "anchor_step": cfg.method.anchor_step,
                      "diversity_weight": cfg.lam, "steps": trainer.step, "train_seconds": round(train_seconds, 1),
                      "batch_size": cfg.data.batch_size, "fake_updates": cfg.method.fake_updates,
                      "teacher_guidance": cfg.teacher.guidance_scale, "student_levels": info.levels,
                      "teacher_loras": info.extra.get("teacher_loras", [])}
    atomic_write_text(run.metrics_path, json.dumps(metrics, indent=1))
    run.append_event("metrics", step=trainer.step, **{k: v for k, v in metrics.items() if k != "run"})
    from ..evaluation.report import write_report
    with phase("writing the report"):
        write_report(run.root)
    run.append_event("report", step=trainer.step, path=run.report_path.name)
    return metrics
