"""Does the paper's claim hold on the built-in teacher? DMD vs DP-DMD vs no-detach, ablations, costs.

    python bench/paper_table.py                  # the full benchmark (hours on 2 CPU cores)
    python bench/paper_table.py --quick          # a smoke run of the same pipeline (minutes)
    python bench/paper_table.py --only cost      # just the cost ratios (a few minutes)

Every model is trained with the same budget, data, CFG and seeds; each student
and the teacher (30 steps, CFG) are sampled from the same noises (R = 9 seeds
per prompt for diversity, more for the Frechet distance and mode statistics).
Runs are resumable: results of finished runs are reused from --work.
Writes docs/results.md, docs/results/*.png and docs/results/results.json, and
prints the ratios measured in this run.
"""
from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import statistics
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from distill_core.config import Config, resolve  # noqa: E402
from distill_core.demo import demo_config  # noqa: E402
from distill_core.evaluation.evaluate import load_extractor  # noqa: E402
from distill_core.grids import seed_grid  # noqa: E402
from distill_core.sampling import sample_grid  # noqa: E402
from distill_core.training.trainer import Trainer  # noqa: E402
from distill_core.evaluation.compare import builtin_mode_metrics, measure, seconds_per_image  # noqa: E402

# The table's rows: a method of config.METHODS, or DP-DMD with another refinement objective (method.refine)
REFINED = {"dpdmd_decoupled": ("dpdmd", "decoupled_dmd")}
METHODS = ("dmd", "decoupled_dmd", "dpdmd", "dpdmd_decoupled", "no_detach")
LABEL = {"dmd": "DMD", "decoupled_dmd": "Decoupled-DMD", "dpdmd": "DP-DMD (DMD refine)",
         "dpdmd_decoupled": "DP-DMD (decoupled refine)", "no_detach": "DP-DMD without detach", "teacher": "teacher"}
KS = (1, 3, 5, 10, 20)
LAMBDAS = (0.05, 0.1, 0.5, 2.0)


def base_config(args, work: Path, name: str, method: str, seed: int) -> Config:
    method, refine = REFINED.get(method, (method, "dmd"))
    cfg = demo_config(work / name, method=method)
    cfg.method.refine = refine
    cfg.run.seed = seed
    cfg.run.max_steps = args.steps or cfg.run.max_steps
    cfg.run.keep_checkpoints = 1
    cfg.data.batch_size = args.batch or cfg.data.batch_size
    cfg.optim.student_lr = args.lr or cfg.optim.student_lr
    cfg.optim.fake_lr = args.fake_lr or cfg.optim.fake_lr or args.lr
    cfg.eval.grid_every = 0
    for assignment in args.set:
        apply_override(cfg, assignment)
    cfg = resolve(cfg)  # the family's defaults (max_steps among them) filled in
    cfg.run.checkpoint_every = cfg.run.max_steps
    cfg.eval.diversity_every = max(1, cfg.run.max_steps // 8)  # diversity over training (the paper's Fig. 5)
    return cfg


def apply_override(cfg: Config, assignment: str) -> None:
    """--set section.field=value, the value read as TOML (so numbers, strings and booleans work)."""
    from distill_core.config import loads_config

    key, _, value = assignment.partition("=")
    section, _, name = key.partition(".")
    try:
        parsed = loads_config(f"[{section}]\n{name} = {value}")
    except Exception:
        parsed = loads_config(f"[{section}]\n{name} = {json.dumps(value)}")
    setattr(getattr(cfg, section), name, getattr(getattr(parsed, section), name))


def train_student(cfg: Config) -> Trainer:
    """Train (or resume / reuse) one run; returns its trainer with the final student."""
    trainer = Trainer(cfg, progress=False)
    trainer.fit()
    return trainer


class Bench:
    def __init__(self, args) -> None:
        self.args = args
        self.work = Path(args.work)
        self.eval_cfg = resolve(base_config(args, self.work, "eval", "dpdmd", 0))
        self.kind = self.eval_cfg.teacher.builtin
        self.extractor = load_extractor("builtin", self.kind)
        self.eval_cfg.eval.fd_samples_per_prompt = args.samples
        from distill_core.teachers import load_teacher
        self.teacher_shift = load_teacher(self.eval_cfg).schedule.shift
        self.results: dict = {"runs": {}, "ablations": {}, "cost": {}}
        self.measured: dict[str, dict] = {}
        self.teacher_images = None
        (self.work / "grids").mkdir(parents=True, exist_ok=True)

    def save_grid(self, trainer: Trainer, net, name: str, levels: list[float], guidance: float) -> None:
        c = trainer.cfg
        prompts, seeds = c.eval.prompts[:5], list(range(8))
        lat = sample_grid(trainer.teacher, net, prompts, seeds, levels, guidance)
        title = f"{LABEL.get(name.split('_s')[0], name)}: {len(levels) - 1} steps" + (
            f", CFG {guidance:g}" if guidance != 1 else "")
        seed_grid(trainer.teacher.decode(lat), prompts, seeds, title).save(self.work / "grids" / f"{name}.png")

    def measure_teacher(self, teacher) -> dict:
        c = self.eval_cfg
        m, self.teacher_images = measure(teacher, teacher.network, c, self.extractor,
                                         levels=teacher.teacher_levels(c.teacher.num_steps),
                                         guidance=c.teacher.guidance_scale, device="cpu")
        return m

    def measure_student(self, trainer: Trainer) -> dict:
        c, teacher = self.eval_cfg, trainer.teacher
        net = trainer.sampling_student()
        m, images = measure(teacher, net, c, self.extractor, levels=trainer.student_levels, guidance=1.0, device="cpu")
        t_modes, s_modes = builtin_mode_metrics(self.extractor, teacher, c.eval.prompts, self.teacher_images, images)
        m.update(s_modes)
        self.results["teacher"].update(t_modes)
        events = trainer.run.read_events()
        m["diversity_over_steps"] = [[e["step"], e["diversity"]] for e in events if e.get("event") == "eval"]
        m["sec_per_step_median"] = statistics.median(e["sec_per_step"] for e in events if e.get("event") == "step")
        return m

    def run_one(self, key: str, cfg: Config, bucket: dict) -> None:
        t0 = time.time()
        name = Path(cfg.run.output_dir).name
        if name in self.measured:  # the ablation's default point is a main-table run
            bucket[key] = self.measured[name]
            return
        trainer = train_student(cfg)
        if "teacher" not in self.results:
            self.results["teacher"] = self.measure_teacher(trainer.teacher)
            self.save_grid(trainer, trainer.teacher.network, "teacher", trainer.teacher_levels,
                           trainer.cfg.teacher.guidance_scale)
        bucket[key] = self.measured[name] = m = self.measure_student(trainer)
        if cfg.run.seed == 0:
            self.save_grid(trainer, trainer.sampling_student(), name, trainer.student_levels, 1.0)
        print(f"  {key}: diversity {m['diversity']:.4f}  FD {m['frechet_distance']:.2f}  coverage "
              f"{m['mode_coverage']:.2f}  agreement {m['mode_agreement_with_teacher']:.2f}  ({time.time() - t0:.0f} s)",
              flush=True)

    def run_all(self, plan: list[tuple[str, str, Config]]) -> None:
        """Train every planned run (in parallel with --jobs), then measure them one by one."""
        if self.args.jobs > 1:
            pretrain([cfg for _, _, cfg in plan], self.work, self.args.jobs)
        for key, bucket, cfg in plan:
            self.run_one(key, cfg, self.results[bucket])

    def cost(self) -> None:
        """Seconds per training step and autograd memory, DP-DMD vs DMD, alternated to cancel host noise."""
        trainers = {m: Trainer(base_config(self.args, self.work, f"cost_{m}", m, 0), progress=False)
                    for m in ("dmd", "dpdmd")}
        times: dict[str, list[float]] = {m: [] for m in trainers}
        for rnd in range(self.args.cost_rounds + 1):
            for m, tr in trainers.items():
                t0 = time.perf_counter()
                for _ in range(tr.cfg.method.fake_updates):
                    tr.fake_update()
                tr.student_update()
                if rnd:  # round 0 is a warm-up
                    times[m].append(time.perf_counter() - t0)
        saved = {m: saved_tensor_bytes(tr) for m, tr in trainers.items()}
        teacher = trainers["dpdmd"].teacher
        c = trainers["dpdmd"].cfg
        t_sec = seconds_per_image(teacher, teacher.network, c.eval.prompts, teacher.teacher_levels(c.teacher.num_steps),
                                  c.teacher.guidance_scale, 64, "cpu")
        s_sec = seconds_per_image(teacher, trainers["dpdmd"].sampling_student(),
                                  c.eval.prompts, trainers["dpdmd"].student_levels, 1.0, 64, "cpu")
        med = {m: statistics.median(v) for m, v in times.items()}
        self.results["cost"] = {
            "sec_per_step": med, "step_time_ratio_dpdmd_over_dmd": med["dpdmd"] / med["dmd"],
            "autograd_bytes": saved, "memory_ratio_dpdmd_over_dmd": saved["dpdmd"] / saved["dmd"],
            "teacher_sec_per_image": t_sec, "student_sec_per_image": s_sec, "sampling_speedup": t_sec / s_sec,
            "rounds": self.args.cost_rounds, "batch": c.data.batch_size, "k": c.method.anchor_step,
        }
        r = self.results["cost"]
        print(f"  DP-DMD / DMD seconds per step: {r['step_time_ratio_dpdmd_over_dmd']:.3f} "
              f"({med['dpdmd']:.3f} s / {med['dmd']:.3f} s, median of {self.args.cost_rounds})")
        print(f"  DP-DMD / DMD autograd memory of a student update: {r['memory_ratio_dpdmd_over_dmd']:.3f}")
        print(f"  teacher (30 steps, CFG) / student (4 steps) sampling time: {r['sampling_speedup']:.1f}x")


def plan_table(args, work: Path) -> list[tuple[str, str, Config]]:
    return [(f"{m}_s{seed}", "runs", base_config(args, work, f"{m}_s{seed}", m, seed))
            for m in args.methods.split(",") for seed in range(args.seeds)]


def plan_ablations(args, work: Path) -> list[tuple[str, str, Config]]:
    """k and lambda sweeps of DP-DMD at training seed 0; the default point is the main table's run."""
    default = base_config(args, work, "x", "dpdmd", 0).method
    out = []
    for k in KS:
        cfg = base_config(args, work, "dpdmd_s0" if k == default.anchor_step else f"k{k}", "dpdmd", 0)
        cfg.method.anchor_step = k
        out.append((f"k={k}", "ablations", cfg))
    for lam in LAMBDAS:
        cfg = base_config(args, work, "dpdmd_s0" if lam == default.diversity_weight else f"lambda{lam}", "dpdmd", 0)
        cfg.method.diversity_weight = lam
        out.append((f"lambda={lam}", "ablations", cfg))
    return out


def cpu_model() -> str:
    """The CPU's model name: training runs are chaotic, so the same seed can end elsewhere on another CPU."""
    try:
        lines = Path("/proc/cpuinfo").read_text().splitlines()
    except OSError:
        return platform.processor() or "unknown CPU"
    return next((line.split(":", 1)[1].strip() for line in lines if line.startswith("model name")), "unknown CPU")


def threads_per_run(jobs: int) -> int:
    """Threads each of ``jobs`` parallel training processes gets (the cores shared out)."""
    return max(1, (os.cpu_count() or 1) // jobs)


def pretrain(configs: list[Config], work: Path, jobs: int) -> None:
    """Train runs in parallel processes (one thread each when the cores are shared); finished runs are skipped."""
    import subprocess

    todo, seen = [], set()
    for cfg in configs:
        if cfg.run.output_dir not in seen:
            seen.add(cfg.run.output_dir)
            todo.append(cfg)
    (work / "configs").mkdir(parents=True, exist_ok=True)
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": str(threads_per_run(jobs))}
    running: list[tuple[subprocess.Popen, Path]] = []
    started = 0
    while todo or running:
        while todo and len(running) < jobs:
            cfg = todo.pop(0)
            name = Path(cfg.run.output_dir).name
            path = work / "configs" / f"{name}.toml"
            path.write_text(cfg.to_toml())
            log = work / "configs" / f"{name}.log"
            with open(log, "w") as out:
                proc = subprocess.Popen([sys.executable, "-m", "distill_core.train", str(path), "--no-finish"],
                                        stdout=out, stderr=subprocess.STDOUT, env=env, cwd=ROOT)
            running.append((proc, log))
            started += 1
            print(f"  training {name} ({started}/{len(seen)})", flush=True)
        time.sleep(2)
        for proc, log in list(running):
            if proc.poll() is not None:
                running.remove((proc, log))
                if proc.returncode:
                    raise SystemExit(f"{log.stem} failed:\n" + log.read_text()[-3000:])


def saved_tensor_bytes(trainer: Trainer) -> int:
    """Bytes kept for backward during one student update (the activation memory the method adds)."""
    seen: dict[int, int] = {}

    def pack(t: torch.Tensor):
        storage = t.untyped_storage()
        seen[storage.data_ptr()] = storage.nbytes()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        trainer.student_update()
    return sum(seen.values())


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--only", choices=["table", "ablations", "cost", "all"], default="all")
    p.add_argument("--seeds", type=int, default=5)
    p.add_argument("--steps", type=int, help="student updates (default: the demo's)")
    p.add_argument("--batch", type=int, help="batch size (default: the demo's)")
    p.add_argument("--lr", type=float, help="student learning rate (default: the demo's)")
    p.add_argument("--fake-lr", type=float, help="fake-score learning rate (default: the demo's, else --lr)")
    p.add_argument("--samples", type=int, default=50, help="samples per prompt for FD and mode statistics")
    p.add_argument("--cost-rounds", type=int, default=10)
    p.add_argument("--jobs", type=int, default=1, help="train this many runs at once (separate processes)")
    p.add_argument("--methods", default=",".join(METHODS), help="methods of the main table, comma-separated")
    p.add_argument("--set", action="append", default=[], metavar="SECTION.FIELD=VALUE",
                   help="override a config field of every run, e.g. --set teacher.shift=3 (repeatable)")
    p.add_argument("--work", default=str(ROOT / "runs" / "bench"))
    p.add_argument("--docs", default=str(ROOT / "docs"))
    p.add_argument("--quick", action="store_true", help="tiny budget: checks the pipeline, not the claim")
    args = p.parse_args()
    if args.quick:
        args.seeds, args.steps, args.batch, args.samples, args.cost_rounds = 1, 6, 16, 12, 2
        args.work = str(Path(args.work).parent / "bench_quick")
    bench = Bench(args)
    started = time.time()
    plan = []
    if args.only in ("table", "all"):
        plan += plan_table(args, bench.work)
    if args.only in ("ablations", "all"):
        plan += plan_ablations(args, bench.work)
    if plan:
        print(f"{len(plan)} measurements (same budget, data, CFG and seeds; ablations at training seed 0):", flush=True)
        bench.run_all(plan)
    if args.only in ("cost", "all"):
        print("cost ratios:", flush=True)
        bench.cost()
    c = bench.eval_cfg
    setting = {"shift": bench.teacher_shift, "student_steps": c.student.num_steps, "fake_updates": c.method.fake_updates,
               "k": c.method.anchor_step, "lambda": c.method.diversity_weight, "prompts": len(c.eval.prompts),
               "seeds": c.eval.seeds, "steps": c.run.max_steps, "batch": c.data.batch_size, "lr": c.optim.student_lr,
               "fake_lr": c.optim.fake_lr}
    bench.results["meta"] = {
        "setting": setting,
        "command": "python bench/paper_table.py " + " ".join(sys.argv[1:]), "date": datetime.date.today().isoformat(),
        "machine": f"{cpu_model()}, {platform.machine()}, {threads_per_run(args.jobs)} thread(s) per run, "
                   f"torch {torch.__version__}",
        "wall_seconds": round(time.time() - started), "args": vars(args),
    }
    from results_page import write_results  # noqa: E402  (bench/results_page.py)

    write_results(bench.results, Path(args.docs), Path(args.work))


if __name__ == "__main__":
    main()
