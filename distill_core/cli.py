"""``dpdmd``: the command line of DP-DMD Studio.

  dpdmd demo [--quick] [OUT]      distil the built-in teacher with DMD and with DP-DMD (minutes on a CPU) and
                                  write a report that compares them with the teacher
  dpdmd train CONFIG              run or resume a distillation described by a TOML config
                                  (a run folder's own config.toml continues that run, wherever it now is)
  dpdmd config                    print a commented starting config
  dpdmd sample STUDENT ...        draw a seed grid from an exported student
  dpdmd evaluate STUDENT ...      measure a student against its teacher (diversity, quality, speed)
  dpdmd export RUN_DIR            write the student of a run's newest (or a chosen) checkpoint
                                  (--format file | comfy | diffusers | lora)
  dpdmd extract-lora --base B --tuned T --rank R --out F
                                  an existing fine-tune (a turbo) as a LoRA a run starts from (student.init_lora)
  dpdmd plan CONFIG               estimate the GPU memory of a run; which preset fits 16 / 24 / 48 / 80 GB
  dpdmd report RUN_DIR            (re)build a run's report.html
  dpdmd ui [--runs-dir DIR]       the Gradio trainer UI (wizard, monitor, compare); `dpdmd ui --help`
"""
from __future__ import annotations

import argparse
import importlib.metadata
import json
import sys
from pathlib import Path

from .config import AT_MOST, SEED_LIMIT, TeacherSection, choices
from .errors import ConfigError, DPDMDError, exit_code, shown
from .export.formats import DTYPES, FORMATS
from .reference_configs import REFERENCES

# Commands whose module owns their options: main() hands them the rest of the command line. Other
# packages add commands to the entry-point group (the trainer UI registers `dpdmd ui` in pyproject.toml).
COMMAND_GROUP = "dpdmd.commands"
MAX_GPUS = 4096  # `dpdmd plan --fsdp`: more GPUs than any cluster shards one run over is a typo
TRAIN = importlib.metadata.EntryPoint("train", "distill_core.train:main", COMMAND_GROUP)


def _cmd_demo(args) -> None:
    from .config import resolve
    from .demo import STUDENTS, demo_config, run_demo
    from .evaluation.report import num

    out = Path(args.out_option or args.out)
    metrics = run_demo(out, quick=args.quick)
    if metrics is None:  # a student was stopped; its message says how to continue
        return
    t = metrics["teacher"]
    rows = [(f"teacher ({t['steps']} steps, CFG {t['guidance']:g})", t)]
    rows += [(f"{label} student ({metrics[m]['steps']} steps)", metrics[m]) for m, label in STUDENTS.items()]
    print(f"\n{'':30} {'diversity':>9} {'mode coverage':>13} {'validity':>8} {'blank':>6} {'valid-only: coverage':>20} "
          f"{'diversity':>9} {'NFE':>4}")
    for name, m in rows:
        # n/a: no prompt with 2 valid samples, or a demo run evaluated before the valid-only measures
        cov, div, blank = (num(m.get(k), f) for k, f in (("mode_coverage_valid", "{:.2f}"),
                                                          ("diversity_valid", "{:.4f}"), ("blank_share", "{:.1%}")))
        print(f"{name:30} {m['diversity']:9.4f} {m['mode_coverage']:13.2f} {m['validity']:8.3f} "
              f"{blank:>6} {cov:>20} {div:>9} {m['nfe']:4d}")
    from .evaluation.demo_report import finding, ratio_line

    words = finding(metrics, resolve(demo_config()).eval.prompts)
    print(f"{ratio_line(metrics)}\n{words}\nreport: {out / 'report.html'}\nstudents: "
          + ", ".join(str(out / m / "student.safetensors") for m in STUDENTS))


def _cmd_config(args) -> None:
    from .config import Config, resolve
    from .families import family, native_guidance
    from .presets import apply as apply_preset

    cfg = Config()
    cfg.teacher.family = args.family
    if args.family != "builtin":  # a memory preset of `dpdmd plan` (docs/performance.md)
        cfg.teacher.path = "/path/to/local/diffusers/folder"
        cfg.data.prompts_file = "/path/to/prompts.txt"
        apply_preset(cfg, "full-ckpt")
        cfg.eval.features = ""
        fam = family(args.family)
        note = native_guidance(args.family, fam.guidance_scale)
        comment = "[teacher]\n" + (f"# guidance_scale = {fam.guidance_scale:g} by default: this project's CFG uncond + s "
                                    f"(cond - uncond), {note}\n" if note else "")
        comment += f"# shift: {fam.shift_note}\n" if fam.shift_note else ""
        print(Config.to_toml(cfg).replace("[teacher]\n", comment, 1))
        return
    print(resolve(cfg).to_toml())


def _device() -> str:
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


def _teacher_for(student: Path, teacher_path: str):
    from .config import Config, resolve
    from .export.student_file import read_student_info
    from .teachers import load_teacher

    info = read_student_info(student)
    cfg = Config()
    cfg.teacher.family = info.family
    cfg.teacher.path = teacher_path
    cfg.teacher.shift = info.schedule.get("shift")
    cfg.teacher.resolution = info.extra.get("resolution")
    if info.family == "builtin":  # the student's architecture tells which built-in teacher drew its data
        from .teachers.builtin import kind_of
        cfg.teacher.builtin = kind_of(info.network_config) or cfg.teacher.builtin
    else:
        cfg.data.prompts = ["-"]
    return load_teacher(resolve(cfg), _device()), info


def _image_out(out: str) -> Path:
    """``--out`` of an image, checked before any model loads: a file name Pillow can write, in a folder that exists."""
    from PIL import Image

    if not out.strip():
        raise ConfigError("--out is empty; give an image file name such as samples.png")
    path = Path(out).expanduser()
    if path.is_dir():
        raise ConfigError(f"--out {shown(out)} is a folder; give an image file name such as samples.png")
    if Image.registered_extensions().get(path.suffix.lower()) not in Image.SAVE:
        suffix = shown(path.suffix) if path.suffix else "no extension"
        raise ConfigError(f"--out {shown(out)}: {suffix} is not an image format Pillow writes; end the name in .png "
                          "or .jpg")
    if not path.parent.is_dir():
        why = "is a file, not a folder" if path.parent.exists() else "does not exist; create it first"
        raise ConfigError(f"--out {shown(out)}: {shown(str(path.parent))} {why}")
    return path


def _at_least(flag: str, value: int, least: int, why: str = "", most: int | None = None) -> None:
    if value < least:
        raise ConfigError(f"{flag} {value} must be at least {least}{why}")
    if most is not None and value > most:
        raise ConfigError(f"{flag} {value} is too large: at most {most:,}")


def _cmd_sample(args) -> None:
    from .export.exporters import load_student
    from .grids import seed_grid
    from .sampling import sample_grid

    _at_least("--seeds", args.seeds, 1, " (one column per seed)", most=AT_MOST["eval.grid_seeds"])
    if not -SEED_LIMIT < args.first_seed <= SEED_LIMIT - args.seeds:
        raise ConfigError(f"--first-seed {args.first_seed} is too large; use a whole number below 2**32 in size")
    out = _image_out(args.out)
    teacher, _ = _teacher_for(Path(args.student), args.teacher)
    net, info = load_student(args.student, teacher, _device())
    seeds = list(range(args.first_seed, args.first_seed + args.seeds))
    lat = sample_grid(teacher, net, args.prompt, seeds, info.levels, device=_device())
    grid = seed_grid(teacher.decode(lat), args.prompt, seeds, f"{info.title}: {info.num_steps} steps", max_cell=None)
    try:
        grid.save(out)
    except OSError as e:
        raise DPDMDError(f"--out {shown(args.out)} cannot be written ({e.strerror or e}); give a path you can "
                         "write to") from None
    print(f"wrote {out} ({len(args.prompt)} prompts x {len(seeds)} seeds, {info.num_steps} steps)")


def _cmd_evaluate(args) -> None:
    from .config import Config, resolve
    from .evaluation.compare import compare
    from .export.exporters import load_student

    _at_least("--seeds", args.seeds, 2, ": diversity compares samples pairwise (paper: 9)", most=AT_MOST["eval.seeds"])
    teacher, info = _teacher_for(Path(args.student), args.teacher)
    net, info = load_student(args.student, teacher, _device())
    cfg = Config()
    cfg.teacher.family, cfg.teacher.path = info.family, args.teacher
    cfg.teacher.guidance_scale = info.teacher_guidance
    cfg.student.num_steps = info.num_steps
    cfg.eval.seeds = args.seeds
    if args.prompt:
        cfg.eval.prompts = args.prompt
    if info.family != "builtin":
        if not args.prompt:
            raise ConfigError(f"evaluating an {info.family} student needs prompts: add --prompt \"...\" (repeatable)")
        cfg.data.prompts = args.prompt
    cfg = resolve(cfg)
    if args.features:
        cfg.eval.features = args.features
    metrics = compare(cfg, teacher, net, _device())
    print(json.dumps(metrics, indent=1))


def _cmd_export(args) -> None:
    from .export.exporters import export

    path, student = export(args.run_dir, args.format, out=args.out, step=args.step, dtype=args.dtype, rank=args.rank)
    print(f"wrote {path} (step {student.step}, format {args.format})")
    info = student.info()
    if args.format == "comfy":
        print(f"ComfyUI: put it in models/diffusion_models/, load it with Load Diffusion Model and sample "
              f"{info.num_steps} steps at CFG 1 with these sigmas: {', '.join(f'{s:.4f}' for s in info.sigmas)}")
    elif args.format == "diffusers":
        print(f"diffusers: see {path / 'README.md'}")


def _cmd_extract_lora(args) -> None:
    from .export.extract import extract_lora
    from .export.exporters import DTYPES as TORCH_DTYPES

    result = extract_lora(args.base, args.tuned, args.rank, args.out, family=args.family,
                          dtype=TORCH_DTYPES[args.dtype])
    print(f"wrote {args.out} (rank {args.rank}, {len(result.factors)} layers)")
    print("relative Frobenius error ||D - BA|| / ||D|| of the delta D = tuned - base:")
    print("\n".join(result.lines()))


def _cmd_plan(args) -> None:
    from .config import load_config
    from .plan import plan

    _at_least("--fsdp", args.fsdp, 1, " (1 = one GPU)", most=MAX_GPUS)
    cfg = load_config(args.config) if args.config else None
    report = plan(cfg, architecture=args.architecture, fsdp=args.fsdp)
    print(json.dumps(report.json(), indent=1) if args.json else report.text())


def _cmd_report(args) -> None:
    from .evaluation.report import write_report

    print(f"wrote {write_report(args.run_dir)}")


def registered_commands() -> dict[str, importlib.metadata.EntryPoint]:
    """The commands installed packages register (read from their metadata; nothing is imported)."""
    return {ep.name: ep for ep in importlib.metadata.entry_points(group=COMMAND_GROUP) if ep.name != TRAIN.name}


def build_parser(registered: dict[str, importlib.metadata.EntryPoint] | None = None) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="dpdmd", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")

    d = sub.add_parser("demo", help="DMD and DP-DMD students of the built-in teacher, compared in one report "
                       "(at most 10 min on 2 cores)")
    d.add_argument("--quick", action="store_true", help="a smoke run of about a minute")
    d.add_argument("out", nargs="?", default="runs/demo",
                   help="folder of the demo: its report, metrics.json and the run folders dmd/ and dpdmd/ "
                        "(default: runs/demo)")
    d.add_argument("--out", dest="out_option", metavar="OUT", help="the same as OUT")
    d.set_defaults(func=_cmd_demo)

    # Listed for --help only (as the registered commands below): main() hands `train` to distill_core.train.
    sub.add_parser("train", add_help=False, help="run or resume a distillation from a TOML config")

    c = sub.add_parser("config", help="print a starting config (resolved defaults)")
    c.add_argument("--family", default="builtin", choices=choices(TeacherSection, "family"))
    c.set_defaults(func=_cmd_config)

    s = sub.add_parser("sample", help="draw a seed grid from an exported student")
    s.add_argument("student", help="a student .safetensors exported by a run")
    s.add_argument("--prompt", action="append", required=True, help="repeat for several rows")
    s.add_argument("--seeds", type=int, default=6)
    s.add_argument("--first-seed", type=int, default=0)
    s.add_argument("--teacher", default="", help="the teacher's local folder (needed for students of diffusers teachers)")
    s.add_argument("--out", default="samples.png")
    s.set_defaults(func=_cmd_sample)

    e = sub.add_parser("evaluate", help="diversity, quality and speed of a student vs its teacher")
    e.add_argument("student")
    e.add_argument("--teacher", default="")
    e.add_argument("--prompt", action="append")
    e.add_argument("--seeds", type=int, default=9, help="R samples per prompt (paper: 9)")
    e.add_argument("--features", help="a local DINO / CLIP folder (transformers) for Eq. 9 diversity "
                                      "(default: the built-in classifier for digits, none for sd3 / sdxl)")
    e.set_defaults(func=_cmd_evaluate)

    x = sub.add_parser("export", help=f"export the student of a run's checkpoint ({', '.join(FORMATS)})")
    x.add_argument("run_dir")
    x.add_argument("--format", default="file", choices=list(FORMATS),
                   help="; ".join(f"{name}: {f.help}" for name, f in FORMATS.items()))
    x.add_argument("--step", type=int, help="checkpoint step (default: newest)")
    x.add_argument("--out", help="output path (default: inside the run folder)")
    x.add_argument("--dtype", choices=DTYPES, help="weights dtype (default per format)")
    x.add_argument("--rank", type=int, help="lora: rank (default: the trained LoRA exactly, or 64 by SVD)")
    x.set_defaults(func=_cmd_export)

    xl = sub.add_parser("extract-lora", help="the change of a fine-tune (a turbo) from its base as a LoRA of the "
                        "layers the student trains (truncated SVD), with the error it leaves")
    xl.add_argument("--base", required=True, help="the base: a diffusers folder, its transformer/ or unet/ folder, "
                    "or a .safetensors file")
    xl.add_argument("--tuned", required=True, help="the fine-tune of that base (same forms; e.g. a student file)")
    xl.add_argument("--rank", type=int, required=True, help="the LoRA rank (the student's lora_rank must be at least "
                    "this to start from it)")
    xl.add_argument("--out", required=True, help="the LoRA .safetensors to write")
    xl.add_argument("--family", choices=choices(TeacherSection, "family"),
                    help="default: read from the folder's model_index.json or the file's metadata")
    xl.add_argument("--dtype", choices=DTYPES, default="float32", help="the factors' dtype (default float32)")
    xl.set_defaults(func=_cmd_extract_lora)

    pl = sub.add_parser("plan", help="estimate the GPU memory of a run and the presets that fit 16 / 24 / 48 / 80 GB")
    pl.add_argument("config", nargs="?", help="a run config with a diffusers teacher (its folder's configs are read)")
    pl.add_argument("--architecture", choices=list(REFERENCES),
                    help="plan for a reference architecture (no folder needed; with CONFIG: its options)")
    pl.add_argument("--fsdp", type=int, default=1, metavar="N", help="shard the networks with FSDP over N GPUs")
    pl.add_argument("--json", action="store_true", help="one JSON object: every preset's peak and parts, the best "
                    "preset per budget")
    pl.set_defaults(func=_cmd_plan)

    r = sub.add_parser("report", help="rebuild report.html of a run folder")
    r.add_argument("run_dir")
    r.set_defaults(func=_cmd_report)

    for name, ep in (registered_commands() if registered is None else registered).items():
        sub.add_parser(name, add_help=False, help=f"`dpdmd {name} --help` for its options ({ep.value})")
    return p


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    registered = registered_commands()
    handed_off = {TRAIN.name: TRAIN, **registered}
    if argv[:1] and argv[0] in handed_off:
        return handed_off[argv[0]].load()(argv[1:])  # imported only now: only `dpdmd ui` imports the UI
    args = build_parser(registered).parse_args(argv)
    return exit_code(lambda: args.func(args))


if __name__ == "__main__":
    sys.exit(main())
