"""Does the hybrid sampler buy a collapsed student's modes back? Student, hybrid and teacher on the shapes teacher.

    python bench/hybrid_shapes.py RUN_FOLDER [--k 5]

RUN_FOLDER is a built-in (shapes) run with a checkpoint, e.g. a DMD run of
bench/paper_table.py or bench/shapes_setting.py. Samples the eval prompts from the
same noises with the student alone (4 steps), the hybrid (the teacher's first k CFG
steps, then the student from t_k: distill_core.hybrid, what the ComfyUI Hybrid
Sampler runs) and the teacher (30 CFG steps), and prints the decoder-counted mode
coverage, Eq. 9 diversity, validity and NFE of each.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from distill_core.builtin import shape_modes  # noqa: E402
from distill_core.config import load_run_config, resolve  # noqa: E402
from distill_core.evaluation.compare import prompt_labels  # noqa: E402
from distill_core.evaluation.evaluate import evaluate_images, load_extractor  # noqa: E402
from distill_core.hybrid import Leg, hybrid_legs, sample_legs  # noqa: E402
from distill_core.training.trainer import Trainer  # noqa: E402

KEYS = ("mode_coverage", "diversity", "validity")


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("run", type=Path)
    parser.add_argument("--k", type=int, default=0, help="teacher steps before the hand-over (0: the run's k)")
    args = parser.parse_args(argv)
    cfg = resolve(load_run_config(args.run / "config.toml"))
    trainer = Trainer(cfg, progress=False)
    if not trainer.try_resume():
        raise SystemExit(f"{args.run}: no usable checkpoint to sample")
    teacher, student = trainer.teacher, trainer.sampling_student()
    k = args.k or cfg.method.anchor_step
    t_levels = teacher.teacher_levels(cfg.teacher.num_steps)
    s_levels = teacher.student_levels(cfg.student.num_steps, cfg.student.shift)
    models = {"student": [Leg(student, s_levels)],
              f"hybrid k={k}": hybrid_legs(teacher.network, t_levels, cfg.teacher.guidance_scale, k, student, s_levels),
              "teacher": [Leg(teacher.network, t_levels, cfg.teacher.guidance_scale)]}
    e = cfg.eval
    per_prompt = max(e.seeds, e.fd_samples_per_prompt)
    extractor = load_extractor(e.features, cfg.teacher.builtin)
    labels = prompt_labels(teacher, e.prompts, per_prompt)
    images = {name: teacher.decode(sample_legs(teacher, legs, e.prompts, list(range(per_prompt))))
              for name, legs in models.items()}
    out = {}
    for name, legs in models.items():
        metrics = evaluate_images(images[name], per_prompt, extractor, labels, diversity_seeds=e.seeds)
        _, counted = shape_modes.mode_metrics(images["teacher"], images[name], labels, per_prompt)
        out[name] = {**metrics, **counted, "nfe": sum(leg.nfe for leg in legs)}
        print(f"{name:12s} " + "  ".join(f"{key} {out[name][key]:.3f}" for key in KEYS) + f"  nfe {out[name]['nfe']}",
              flush=True)
    return out


if __name__ == "__main__":
    main()
