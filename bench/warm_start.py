"""What a warm start buys: DP-DMD from a DMD student's extracted delta vs from scratch, on the shapes teacher.

    python bench/warm_start.py --work /tmp/warm [--rank 16] [--steps 100] [--every 25] [--per-prompt 24]
                               [--turbo-steps 200]

1. the "turbo": a DMD student of the demo setting (200 steps; plain DMD loses modes there), a full fine-tune or
   (--turbo-rank R) a rank-R LoRA;
2. ``dpdmd extract-lora`` of (turbo - teacher) at --rank on the student's adapter layers;
3. two DP-DMD LoRA runs of --rank with the same config, seed and budget (--steps): one whose student and fake
   score start from the extraction (student.init_lora, fake.init_lora), one from the teacher (scratch).
Every --every steps (and at step 0) each student is sampled from the same noises and measured as
docs/results.md measures: decoder-counted mode coverage, Eq. 9 diversity, validity. Prints a markdown table.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import torch  # noqa: E402

from distill_core.builtin import shape_modes  # noqa: E402
from distill_core.builtin.kinds import KINDS  # noqa: E402
from distill_core.demo import demo_config  # noqa: E402
from distill_core.evaluation.compare import prompt_labels  # noqa: E402
from distill_core.evaluation.evaluate import evaluate_images, load_extractor  # noqa: E402
from distill_core.export.extract import extract_lora  # noqa: E402
from distill_core.sampling import sample_grid  # noqa: E402
from distill_core.teachers.builtin import WEIGHTS_DIR  # noqa: E402
from distill_core.training.trainer import Trainer, train  # noqa: E402

KEYS = ("mode_coverage", "diversity", "validity")


class Meter:
    """The teacher sampled once; a student measured against it from the same noises."""

    def __init__(self, trainer: Trainer, per_prompt: int) -> None:
        cfg, self.teacher = trainer.cfg, trainer.teacher
        self.prompts, self.per_prompt, self.seeds = cfg.eval.prompts, per_prompt, list(range(per_prompt))
        self.diversity_seeds = cfg.eval.seeds
        self.extractor = load_extractor(cfg.eval.features, cfg.teacher.builtin)
        self.labels = prompt_labels(self.teacher, self.prompts, per_prompt)
        self.levels = trainer.student_levels
        t_levels = self.teacher.teacher_levels(cfg.teacher.num_steps)
        self.teacher_images = self.teacher.decode(sample_grid(self.teacher, self.teacher.network, self.prompts,
                                                              self.seeds, t_levels, cfg.teacher.guidance_scale, 256))

    def __call__(self, net) -> dict:
        images = self.teacher.decode(sample_grid(self.teacher, net, self.prompts, self.seeds, self.levels, 1.0, 256))
        metrics = evaluate_images(images, self.per_prompt, self.extractor, self.labels,
                                  diversity_seeds=self.diversity_seeds)
        _, counted = shape_modes.mode_metrics(self.teacher_images, images, self.labels, self.per_prompt)
        return {k: float({**metrics, **counted}[k]) for k in KEYS}


def curve(cfg, steps: int, every: int, per_prompt: int) -> dict[int, dict]:
    trainer = Trainer(cfg, progress=False)
    meter = Meter(trainer, per_prompt)
    out = {0: meter(trainer.sampling_student())}
    for step in range(1, steps + 1):
        trainer.train_step()
        if step % every == 0:
            out[step] = meter(trainer.sampling_student())
            print(f"{cfg.run.output_dir}: step {step} {out[step]}", flush=True)
    return out


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--work", type=Path, required=True)
    p.add_argument("--rank", type=int, default=16)
    p.add_argument("--steps", type=int, default=100)
    p.add_argument("--every", type=int, default=25)
    p.add_argument("--per-prompt", type=int, default=24)
    p.add_argument("--turbo-steps", type=int, default=200, help="the DMD turbo's budget (the demo's: 200)")
    p.add_argument("--turbo-rank", type=int, default=0, help="0: the turbo is a full fine-tune (its delta reaches "
                   "layers a LoRA lacks); R: a rank-R DMD LoRA (extracted exactly at --rank >= R)")
    args = p.parse_args(argv)
    torch.set_num_threads(1)
    start = time.time()
    turbo_cfg = demo_config(args.work / "turbo_dmd", method="dmd")
    turbo_cfg.run.max_steps, turbo_cfg.student.lora_rank = args.turbo_steps, args.turbo_rank
    if not (args.work / "turbo_dmd" / "student.safetensors").is_file():
        train(turbo_cfg, progress=False)
    lora = args.work / f"turbo_r{args.rank}.safetensors"
    teacher_file = WEIGHTS_DIR / KINDS[turbo_cfg.teacher.builtin].teacher_file
    extraction = extract_lora(str(teacher_file), str(args.work / "turbo_dmd" / "student.safetensors"), args.rank,
                              str(lora), family="builtin", progress=False)
    print("\n".join(extraction.lines()), flush=True)
    curves = {}
    for name, init in (("warm", str(lora)), ("scratch", "")):
        cfg = demo_config(args.work / name, method="dpdmd")
        cfg.student.lora_rank, cfg.student.init_lora, cfg.fake.init_lora = args.rank, init, init
        cfg.run.max_steps = args.steps
        curves[name] = curve(cfg, args.steps, args.every, args.per_prompt)
    result = {"rank": args.rank, "extraction_error": extraction.relative_error(),
              "outside_share": extraction.outside_share, "curves": curves, "seconds": round(time.time() - start)}
    (args.work / "warm_start.json").write_text(json.dumps(result, indent=1))
    print(f"\nextraction at rank {args.rank}: relative error {extraction.relative_error():.4f} on the covered layers, "
          f"{100 * extraction.outside_share:.2f} % of the delta's squared norm outside them\n")
    print("| step | " + " | ".join(f"{n} {k}" for n in curves for k in ("coverage", "diversity", "validity")) + " |")
    print("|---|" + "---|" * (3 * len(curves)))
    for step in curves["warm"]:
        print(f"| {step} | " + " | ".join(f"{curves[n][step][k]:.3f}" for n in curves for k in KEYS) + " |")
    print(f"\n{result['seconds']} s wall")


if __name__ == "__main__":
    main()
