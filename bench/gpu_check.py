"""Issue 11 part 4: full-size random-weight DP-DMD at 1024 px on one CUDA GPU, for every preset that fits it.

    python bench/gpu_check.py                       # SD3.5-M and SDXL; under 8 minutes on one H200
    python bench/gpu_check.py --arch sdxl --presets shared-lora64-ckpt-b1 --iterations 3
    python bench/gpu_check.py --arch z-image        # Z-Image 6.15 B (80 GB: the shared-base presets)

The same code as bench/fullsize_cpu.py (bench/fullsize_common.py): a random-weight teacher folder built from
plan.py's public configs, the project's Trainer, per phase torch.cuda.max_memory_allocated and seconds. For each
preset `dpdmd plan` says fits this card (shared-base presets first), 2 iterations (1 fake
update per student update, 8 teacher steps with the anchor at k = 2, 4 student steps); s/iter is the second's.
measured / planned sets max_memory_allocated against the planner's parts (no CUDA context, no fragmentation:
what the allocator hands out) and the planned peak with both. No checkpoints are written (a full fine-tune's
would be ~60 GB). Presets that would pass --budget-s are skipped and listed.
"""
from __future__ import annotations

import argparse
import gc
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from fullsize_common import GB, CudaMeter, bench_config, build_teacher_folder, measure, planned  # noqa: E402

from distill_core import plan as planning  # noqa: E402
from distill_core.presets import PRESETS  # noqa: E402


def fitting(arch: str, card_gb: float, resolution: int) -> list[str]:
    """The presets the planner says fit ``card_gb`` at ``resolution``, batch 4 unless the preset names one; the
    shared-base ones first (what a one-GPU user runs), so a tight --budget-s skips the others."""
    report = planning.plan(architecture=arch)
    report.options.resolution = resolution
    names = [name for name in PRESETS if report.estimate(name).fits(card_gb)]
    return sorted(names, key=lambda n: not n.startswith("shared"))


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--arch", default="sd3.5-medium,sdxl")
    ap.add_argument("--presets", default="", help="comma-separated; default: every preset that fits the card")
    ap.add_argument("--resolution", type=int, default=1024)
    ap.add_argument("--iterations", type=int, default=2)
    ap.add_argument("--work", type=Path, default=Path("/tmp/dpdmd_gpu_check"))
    ap.add_argument("--budget-s", type=float, default=450.0, help="skip presets once this much time has passed")
    args = ap.parse_args(argv)
    if not torch.cuda.is_available():
        print("bench/gpu_check.py needs a CUDA GPU (none is visible); the CPU bench is bench/fullsize_cpu.py")
        return 2
    start, card = time.perf_counter(), torch.cuda.get_device_properties(0)
    card_gb = card.total_memory / GB
    print(f"{card.name}, {card_gb:.0f} GB; {args.resolution} px; torch {torch.__version__}", flush=True)
    rows, skipped = [], []
    for arch in args.arch.split(","):
        folder = build_teacher_folder(arch, args.work / f"teacher_{arch}")
        names = args.presets.split(",") if args.presets else fitting(arch, card_gb, args.resolution)
        for name in names:
            if time.perf_counter() - start > args.budget_s:
                skipped.append(f"{arch}/{name}")
                continue
            cfg = bench_config(folder, arch, args.work / f"run_{arch}_{name}", args.resolution, name, "cuda",
                               batch_size=4)  # the planner's batch unless the preset names one
            plan = planned(cfg, host=False)
            out = measure(cfg, CudaMeter(), iterations=args.iterations, checkpoint=False)
            gc.collect()
            torch.cuda.empty_cache()
            peak = max(ph["peak_gb"] for ph in out["phases"].values() if ph["peak_gb"] is not None)
            rows.append((arch, name, out, plan, peak))
            print(f"{arch:<13}{name:<32}{peak:7.2f} GB measured  {plan['parts_sum_gb']:7.2f} GB planned parts  "
                  f"{peak / plan['parts_sum_gb']:.3f}  planned peak {plan['peak_gb']:6.2f} GB  "
                  f"{out['sec_per_iter']:6.2f} s/iter", flush=True)
    print("\n| architecture | preset | max_memory_allocated GB | planned parts GB | measured / planned | planned peak "
          "(+context, +10 %) GB | s/iter |\n|---|---|---|---|---|---|---|")
    for arch, name, out, plan, peak in rows:
        print(f"| {arch} | {name} | {peak:.2f} | {plan['parts_sum_gb']:.2f} | {peak / plan['parts_sum_gb']:.3f} | "
              f"{plan['peak_gb']:.2f} | {out['sec_per_iter']:.2f} |")
    for arch, name, out, _, _ in rows:
        print(f"{arch} {name}: " + ", ".join(f"{k} {v['seconds']:.1f} s / {v['peak_gb'] or 0:.2f} GB"
                                             for k, v in out["phases"].items()))
    if skipped:
        print(f"skipped (past --budget-s {args.budget_s:.0f}): {', '.join(skipped)}")
    print(f"total {time.perf_counter() - start:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
