"""Issue 11 part 3: the full-size SD3.5-Medium and SDXL architectures through the whole pipeline, on a CPU.

    nice -n 10 python bench/fullsize_cpu.py                 # both, 256 and 512 px (about 50 min on 2 cores)
    python bench/fullsize_cpu.py --tiny                     # the same code path on few-layer networks (minutes)
    python bench/fullsize_cpu.py --arch sdxl --resolutions 256
    python bench/fullsize_cpu.py --arch z-image --tiny --resolutions 256   # Z-Image's path (6.15 B at full size)

Per architecture, each stage in its own process (so one stage's freed memory does not count in the next's peak,
and never two full-size models at once): build a random-weight teacher folder (bench/fullsize_common.py), train
one DP-DMD iteration of the shared-base LoRA mode (preset shared-lora64-ckpt-onestep-b1: batch 1, gradient
checkpointing) per resolution with peak RSS and seconds per phase next to `dpdmd plan`'s parts (host mode: no
CUDA context or fragmentation, no preview VAE), then export the 256 px run's student (comfy file, diffusers
folder, LoRA) and load the diffusers export with diffusers' own classes and pipeline. The work per iteration is
reduced to keep the bench under an hour: 1 fake update per student update, 8 teacher steps with the anchor at
k = 2, student.num_steps 4; optim rates 1e-2 so the one step's LoRA is far from zero. Results: WORK/*.json and a
markdown table on stdout. ComfyUI checks of the exports: bench/fullsize_comfy.py.
"""
from __future__ import annotations

import argparse
import gc
import json
import os
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from fullsize_common import (GB, HostMeter, bench_config, build_teacher_folder, measure, plan_summary,  # noqa: E402
                             planned, write_json)

PRESET = "shared-lora64-ckpt-onestep-b1"
ARCHS = ("sd3.5-medium", "sdxl")
DIFFUSERS_PX = 128  # the diffusers pipeline call on the export: 4 steps at a small size


def folder_of(work: Path, arch: str, tiny: bool) -> Path:
    return work / f"teacher_{arch}{'_tiny' if tiny else ''}"


def preset_tag(preset: str) -> str:
    """Runs and results of another preset than the default live beside its, not over them."""
    return "" if preset == PRESET else f"_{preset}"


def run_of(args, resolution: int) -> Path:
    return args.work / f"run_{args.arch}{'_tiny' if args.tiny else ''}{preset_tag(args.preset)}_{resolution}"


def export_path(args, fmt: str) -> Path:
    """Where the 256 px run's student is exported (the names dpdmd export gives in a run folder)."""
    from distill_core.export.formats import FORMATS

    return args.work / f"{run_of(args, args.resolution).name}{FORMATS[fmt].suffix}"


def config_of(args, resolution: int):
    cfg = bench_config(folder_of(args.work, args.arch, args.tiny), args.arch,
                       run_of(args, resolution), resolution, args.preset, "cpu")
    cfg.optim.student_lr = cfg.optim.fake_lr = 1e-2
    return cfg


# ---- stages (each in its own process) ---------------------------------------------------------------------------
def stage_build(args) -> dict:
    t0 = time.perf_counter()
    build_teacher_folder(args.arch, folder_of(args.work, args.arch, args.tiny), tiny=args.tiny)
    return {"seconds": time.perf_counter() - t0}


def stage_train(args) -> dict:
    import distill_core.training.trainer  # noqa: F401  (the libraries count in the baseline, not in a phase)

    cfg = config_of(args, args.resolution)
    plan = planned(cfg, host=True)  # meta-device passes only
    meter = HostMeter()
    out = measure(cfg, meter, iterations=1)
    meter.close()
    return {"measured": out, "planned": plan, "preset": args.preset, "resolution": args.resolution}


def stage_export(args) -> dict:
    from distill_core.export.exporters import export

    run = run_of(args, args.resolution)
    meter, rows = HostMeter(), {}
    for fmt, dtype in (("comfy", None), ("diffusers", "bfloat16"), ("lora", None)):
        meter.start()
        t0 = time.perf_counter()
        path, _ = export(run, fmt, out=export_path(args, fmt), dtype=dtype)
        rows[fmt] = {"path": str(path), "seconds": time.perf_counter() - t0, "peak_rss_gb": meter.peak() / GB}
    meter.close()
    return rows


def stage_diffusers(args) -> dict:
    """diffusers' model class loads the exported network, its pipeline runs it 4 steps on the student's scheduler;
    the LoRA export on the teacher through load_lora_weights gives the merged student's output."""
    import diffusers
    import torch

    out = export_path(args, "diffusers")
    record = json.loads((out / "dpdmd_student.json").read_text())
    d = record["diffusers"]
    t0 = time.perf_counter()
    net = getattr(diffusers, json.loads((out / d["component"] / "config.json").read_text())["_class_name"]
                  ).from_pretrained(str(out), subfolder=d["component"], torch_dtype=torch.bfloat16)
    scheduler = getattr(diffusers, d["scheduler"]).from_pretrained(str(out), subfolder="scheduler")
    teacher = folder_of(args.work, args.arch, args.tiny)
    pipe = getattr(diffusers, d["pipeline"]).from_pretrained(str(teacher), **{d["component"]: net}, scheduler=scheduler,
                                                             torch_dtype=torch.bfloat16)
    from distill_core.plan import REFERENCES
    from distill_core.teachers.diffusers_base import teacher_class

    packed = getattr(teacher_class(REFERENCES[args.arch]["family"]), "patch", 1)  # FLUX.2: 2 x 2 patches in channels
    side = DIFFUSERS_PX // (pipe.vae_scale_factor * packed)
    latents = torch.randn(1, net.config.in_channels, side, side, generator=torch.Generator().manual_seed(0))
    call = {**d["call"], "height": DIFFUSERS_PX, "width": DIFFUSERS_PX, "output_type": "latent"}
    student = pipe(prompt="a photo of a cat", latents=latents.to(torch.bfloat16), **call).images.float()
    loaded = time.perf_counter() - t0
    del pipe, net
    gc.collect()
    teacher_pipe = getattr(diffusers, d["pipeline"]).from_pretrained(str(teacher), scheduler=scheduler,
                                                                     torch_dtype=torch.bfloat16)
    plain = teacher_pipe(prompt="a photo of a cat", latents=latents.to(torch.bfloat16), **call).images.float()
    teacher_pipe.load_lora_weights(str(export_path(args, "lora")))
    with_lora = teacher_pipe(prompt="a photo of a cat", latents=latents.to(torch.bfloat16), **call).images.float()
    scale = float(student.abs().max())
    return {"pipeline": d["pipeline"], "network": type(teacher_pipe.components[d["component"]]).__name__,
            "scheduler": d["scheduler"], "call": call | {"output_type": "latent"}, "finite": bool(student.isfinite().all()),
            "seconds": loaded, "lora_vs_merged_max": float((with_lora - student).abs().max()) / scale,
            "teacher_vs_merged_max": float((plain - student).abs().max()) / scale}


STAGES = {"build": stage_build, "train": stage_train, "export": stage_export, "diffusers": stage_diffusers}


# ---- the orchestration -------------------------------------------------------------------------------------------
def result_path(args, stage: str, arch: str, resolution: int | None = None) -> Path:
    suffix = (preset_tag(args.preset) if stage != "build" else "") + (f"_{resolution}" if resolution else "")
    return args.work / f"{stage}_{arch}{'_tiny' if args.tiny else ''}{suffix}.json"


def run_stage(args, stage: str, arch: str, resolution: int | None = None) -> dict:
    path = result_path(args, stage, arch, resolution)
    cmd = [sys.executable, __file__, "--stage", stage, "--arch", arch, "--work", str(args.work),
           "--preset", args.preset, "--resolution", str(resolution or 256)] + (["--tiny"] if args.tiny else [])
    print(f"[{time.strftime('%H:%M:%S')}] {stage} {arch} {resolution or ''}", flush=True)
    subprocess.run(cmd, check=True)
    return json.loads(path.read_text())


def replanned(arch: str, result: dict) -> dict:
    """A measured run's plan by today's planner: the reference network (what the bench's folders hold) with the
    run's preset, resolution and batch 1, as stage_train's config has them."""
    from distill_core import plan as planning

    options = planning.preset_options(planning.Options(resolution=result["resolution"], batch_size=1), result["preset"])
    return plan_summary(planning.Planner(planning.architecture_from_reference(arch)).estimate(options), host=True)


def table(rows: list[tuple[str, int, dict]]) -> str:
    lines = ["| architecture | px | phase | seconds | peak RSS GB | planned GB | measured / planned |",
             "|---|---|---|---|---|---|---|"]
    for arch, px, r in rows:
        m, p = r["measured"], r["planned"]
        base = m["baseline_gb"]
        arch += preset_tag(r.get("preset", PRESET)).replace("_", " ", 1)
        for name, ph in m["phases"].items():
            peak = f"{ph['peak_gb']:.2f}" if ph["peak_gb"] is not None else "(inside)"
            lines.append(f"| {arch} | {px} | {name} | {ph['seconds']:.1f} | {peak} | | |")
        train_peak = max(ph["peak_gb"] for n, ph in m["phases"].items()
                         if ph["peak_gb"] is not None and n in ("fake update", "student update"))
        want = base + p["parts_sum_gb"]
        lines.append(f"| {arch} | {px} | **training peak** (baseline {base:.2f} GB + plan {p['parts_sum_gb']:.2f}) | "
                     f"{m['sec_per_iter']:.1f} s/iter | {train_peak:.2f} | {want:.2f} | {train_peak / want:.3f} |")
        for part, gb in p["parts_gb"].items():
            if gb:
                lines.append(f"| {arch} | {px} | plan: {part} | | | {gb:.3f} | |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--arch", default=",".join(ARCHS))
    ap.add_argument("--resolutions", default="256,512")
    ap.add_argument("--tiny", action="store_true", help="few-layer networks, the same code path")
    ap.add_argument("--work", type=Path, default=Path(os.environ.get("FULLSIZE_WORK", "/tmp/dpdmd_fullsize")))
    ap.add_argument("--preset", default=PRESET)
    ap.add_argument("--skip", default="", help="stages to skip, e.g. export,diffusers")
    ap.add_argument("--report", action="store_true", help="only print the table of the results already in WORK")
    ap.add_argument("--replan", action="store_true",
                    help="with --report: plan the measured runs again with today's planner (teacher folders not needed)")
    ap.add_argument("--stage", choices=sorted(STAGES), help=argparse.SUPPRESS)
    ap.add_argument("--resolution", type=int, default=256, help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    args.work.mkdir(parents=True, exist_ok=True)
    if args.stage:
        res = args.resolution if args.stage == "train" else None
        write_json(result_path(args, args.stage, args.arch, res), STAGES[args.stage](args))
        return 0
    skip, rows = set(filter(None, args.skip.split(","))), []
    resolutions = [int(r) for r in args.resolutions.split(",")]
    if args.report:
        found = [(arch, px, result_path(args, "train", arch, px)) for arch in args.arch.split(",") for px in resolutions]
        rows = [(arch, px, json.loads(path.read_text())) for arch, px, path in found if path.is_file()]
        if args.replan:
            for arch, _, r in rows:
                r["planned"] = replanned(arch, r)
        print(table(rows))
        return 0
    for arch in args.arch.split(","):
        run_stage(args, "build", arch)
        for px in resolutions:
            rows.append((arch, px, run_stage(args, "train", arch, px)))
            print(table(rows[-1:]), flush=True)
        for stage in ("export", "diffusers"):
            if stage not in skip:
                print(json.dumps(run_stage(args, stage, arch), indent=1), flush=True)
    print(f"\n`python bench/fullsize_cpu.py {' '.join(argv or sys.argv[1:])}`, {time.strftime('%Y-%m-%d')}\n")
    print(table(rows))
    return 0


if __name__ == "__main__":
    sys.exit(main())
