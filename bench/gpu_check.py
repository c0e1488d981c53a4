"""One command that measures every family's fitting presets on a bare GPU machine, within a hard time budget.

Here (a machine with pip and a registry), once: the wheels the GPU machine's image lacks, into .whl/:
    bash bench/gpu_wheels.sh
There (Python 3.12, torch 2.11 + CUDA, transformers, accelerate, peft, safetensors; no registry), from the repo root:
    python3 -m pip install -q --no-index --find-links .whl diffusers \\
      && python3 -m pip install -q --no-deps --no-build-isolation --no-index . && python3 bench/gpu_check.py
In CI, the same code on few-layer networks on the CPU (tests/test_gpu_check.py):
    python bench/gpu_check.py --device cpu --tiny --fp32 --resolution 32 --teacher-steps 4 --presets PRESET

For every architecture in `dpdmd plan`'s table (distill_core/plan.py REFERENCES: a family added there is measured
without a change here) and every memory preset the planner says fits the card, a random-weight teacher folder
built from the public configs (bench/fullsize_common.py) is trained by the project's own Trainer at 1024 px:
DP-DMD and DMD iterations interleaved on the same networks (the first of each a warm-up), each with its seconds
(and those of its fake update, student update and anchor rollout) and its peak torch.cuda.max_memory_allocated
and max_memory_reserved, set against the planner's parts; on the first preset of each architecture, the
student's and the teacher's sampling time per image. The work per iteration is reduced to fit the budget
(1 fake update per student update, 8 teacher steps with the anchor at k = 2; the paper's 5 fake updates cost 5
times the fake update's seconds). Order: the presets `dpdmd plan` recommends for 16 / 24 GB first, then those for
48 / 80 GB, then the rest. A worker process (bench/gpu_worker.py) runs the queue; this one watches it and kills it
when a step passes its budget by --grace-s (a hard watchdog; the worker itself stops a preset before an iteration
that would pass it), records the step as such and starts a new worker on what is left. Teacher folders are built
only for architectures that have a queued preset and deleted after their last one. The JSON file is rewritten
after every step, so a run cut short still leaves what it measured.
"""
from __future__ import annotations

import argparse
import json
import os
import signal
import statistics
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from fullsize_common import GB, plan_summary, reference_report  # noqa: E402
from gpu_worker import DMD_SETTINGS, FP32_SETTINGS, SUB_PHASES  # noqa: E402

from distill_core import plan as planning  # noqa: E402
from distill_core.presets import PRESETS  # noqa: E402

WORKER = [sys.executable, str(HERE / "gpu_worker.py")]
POLL_S = 0.5


def parse(argv: list[str] | None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--arch", default="", help=f"comma-separated; default: all of {', '.join(planning.REFERENCES)}")
    ap.add_argument("--presets", default="", help="comma-separated; default: every preset that fits the card")
    ap.add_argument("--device", choices=("cuda", "cpu"), default="cuda")
    ap.add_argument("--card-gb", type=float, help="memory the presets must fit (default: the GPU's; on a CPU 24)")
    ap.add_argument("--tiny", action="store_true", help="few-layer networks of the same classes: the same code path")
    ap.add_argument("--resolution", type=int, default=1024)
    ap.add_argument("--iterations", type=int, default=2, help="per method, the first a warm-up (default 2)")
    ap.add_argument("--fp32", action="store_true", help="float32 instead of the presets' bf16 (CPUs emulate bf16)")
    ap.add_argument("--teacher-steps", type=int, help="the teacher's sampling steps (default: its family's)")
    ap.add_argument("--budget-s", type=float, default=480.0, help="the whole check, planning and builds included")
    ap.add_argument("--preset-budget-s", type=float, default=150.0, help="one preset: load, iterations, sampling")
    ap.add_argument("--build-budget-s", type=float, default=180.0, help="one teacher folder")
    ap.add_argument("--min-preset-s", type=float, default=45.0, help="start no preset with less of the budget left")
    ap.add_argument("--grace-s", type=float, default=30.0, help="the watchdog kills a step this long past its budget")
    ap.add_argument("--work", type=Path, default=Path("/tmp/dpdmd_gpu_check"))
    ap.add_argument("--out", type=Path, help="the JSON file (default: $OUT/gpu_check.json, else WORK/gpu_check.json)")
    args = ap.parse_args(argv)
    args.arch = [a for a in args.arch.split(",") if a] or list(planning.REFERENCES)
    args.presets = [p for p in args.presets.split(",") if p]
    bad = [a for a in args.arch if a not in planning.REFERENCES] + [p for p in args.presets if p not in PRESETS]
    if bad:
        ap.exit(2, f"gpu_check: {bad[0]!r} is not an architecture ({', '.join(planning.REFERENCES)}) or a preset "
                   f"({', '.join(PRESETS)}); fix --arch / --presets\n")
    if args.iterations < 1:
        ap.exit(2, "gpu_check: --iterations must be at least 1\n")
    if args.out is None:
        args.out = Path(os.environ["OUT"]) / "gpu_check.json" if os.environ.get("OUT") else args.work / "gpu_check.json"
    return args


def card(args: argparse.Namespace) -> dict | None:
    """The GPU's name and memory from nvidia-smi (this process never touches CUDA: its context would take memory
    from the presets); on a CPU, --card-gb or 24 GB. None: no GPU to be seen."""
    if args.device == "cpu":
        return {"name": "CPU", "total_gb": args.card_gb or 24.0}
    try:
        line = subprocess.run(["nvidia-smi", "--query-gpu=name,memory.total", "--format=csv,noheader,nounits"],
                              capture_output=True, text=True, check=True, timeout=60).stdout.splitlines()[0]
    except (OSError, subprocess.SubprocessError, IndexError):
        return None
    name, mib = line.rsplit(",", 1)
    return {"name": name.strip(), "total_gb": args.card_gb or float(mib) * 2**20 / GB}


# ---- what to run, in which order ------------------------------------------------------------------------------------
def schedule(args: argparse.Namespace, card_gb: float) -> tuple[list[dict], dict]:
    """The queue (presets that fit, most informative first) and, per architecture, what the planner said."""
    dmd_options = {k: v for k, v in DMD_SETTINGS.items() if k in planning.OPTION_FIELDS}
    dtype_options = FP32_SETTINGS if args.fp32 else {}
    jobs, archs = [], {}
    for order, arch in enumerate(args.arch):
        try:
            report = reference_report(arch, args.resolution, args.tiny)
            options = {n: planning.preset_options(report.options, n).with_settings(dtype_options) for n in PRESETS}
            estimates = {n: report.planner.estimate(o) for n, o in options.items()}
            picks = [report.best(b) for b in planning.BUDGETS]
        except Exception as e:  # a family the planner cannot count yet: recorded, the others still run
            archs[arch] = {"error": f"{type(e).__name__}: {e}"}
            continue
        fitting = [n for n in PRESETS if estimates[n].fits(card_gb)]
        archs[arch] = {"family": planning.REFERENCES[arch]["family"], "fitting": fitting,
                       "best": dict(zip(map(str, planning.BUDGETS), picks))}
        for name in fitting:
            if args.presets and name not in args.presets:
                continue
            rank = picks.index(name) if name in picks else len(picks)
            dmd = report.planner.estimate(options[name].with_settings(dmd_options))
            jobs.append({"arch": arch, "preset": name, "tier": rank // 2, "order": (order, -list(PRESETS).index(name)),
                         "planned_peak_gb": estimates[name].peak / GB,  # dpdmd plan's: context and fragmentation in
                         "planned": {"dpdmd": plan_summary(estimates[name], host=args.device == "cpu"),
                                     "dmd": plan_summary(dmd, host=args.device == "cpu")}})
    jobs.sort(key=lambda j: (j["tier"], j["order"]))
    seen: set[str] = set()
    for job in jobs:  # the sampling times once per architecture, on its first preset
        job["sample"] = job["arch"] not in seen
        seen.add(job["arch"])
        del job["order"]
    for arch, entry in archs.items():
        entry["queued"] = [j["preset"] for j in jobs if j["arch"] == arch]
    return jobs, archs


# ---- the watched worker ---------------------------------------------------------------------------------------------
def read_events(path: Path, offset: int) -> tuple[list[dict], int]:
    """Whole JSON lines written since ``offset`` (a line cut by a kill is left out)."""
    if not path.is_file():
        return [], offset
    with path.open("rb") as f:
        f.seek(offset)
        data = f.read()
    end = data.rfind(b"\n") + 1
    return [json.loads(line) for line in data[:end].splitlines() if line.strip()], offset + end


class Supervisor:
    """Runs the queue in worker processes, kills one whose step passes its budget by ``grace_s``, records it."""

    def __init__(self, args: argparse.Namespace, jobs: list[dict], state: dict, save, worker: list[str] = WORKER):
        self.args, self.jobs, self.state, self.save, self.worker = args, jobs, state, save, worker
        self.deadline = state["started"] + args.budget_s
        self.pending = list(range(len(jobs)))
        self.partial: dict[int, dict] = {}

    def spec(self, progress: Path) -> dict:
        a = self.args
        return {"jobs": [{k: j[k] for k in ("arch", "preset", "sample")} for j in self.jobs], "queue": self.pending,
                "progress": str(progress), "deadline": self.deadline, "device": a.device, "tiny": a.tiny,
                "resolution": a.resolution, "iterations": a.iterations, "work": str(a.work), "fp32": a.fp32,
                "teacher_steps": a.teacher_steps,
                "preset_budget_s": a.preset_budget_s, "build_budget_s": a.build_budget_s,
                "min_preset_s": a.min_preset_s}

    def run(self) -> None:
        attempt = 0
        while self.pending and time.time() < self.deadline:
            attempt += 1
            progress = self.args.work / f"progress_{attempt}.jsonl"
            progress.unlink(missing_ok=True)  # an earlier check's, in the same --work: not this one's events
            spec_path = self.args.work / f"spec_{attempt}.json"
            spec_path.write_text(json.dumps(self.spec(progress)))
            proc = subprocess.Popen([*self.worker, str(spec_path)], start_new_session=True)
            try:
                self.attempt(proc, progress)
            finally:  # this process failing must not leave a worker holding the GPU
                if proc.poll() is None:
                    os.killpg(proc.pid, signal.SIGKILL)
                    proc.wait()
        for index in list(self.pending):
            self.finish(index, {"status": "not run", "note": f"past the check's {self.args.budget_s:.0f} s budget"})

    def attempt(self, proc: subprocess.Popen, progress: Path) -> None:
        offset, current, why = 0, None, ""
        while True:
            code = proc.poll()
            events, offset = read_events(progress, offset)
            for event in events:
                current = self.handle(event, current)
            if code is not None:
                break
            now, grace = time.time(), self.args.grace_s
            if current and now > current["time"] + current["budget_s"] + grace:
                why = f"killed by the watchdog {grace:.0f} s past its {current['budget_s']:.0f} s budget"
            elif now > self.deadline + grace:
                why = f"killed by the watchdog {grace:.0f} s past the check's {self.args.budget_s:.0f} s budget"
            if why:
                break
            time.sleep(POLL_S)
        if why or code:
            self.lost(current, why or f"the worker exited with code {code}", failed=not why)

    def handle(self, event: dict, current: dict | None) -> dict | None:
        kind = event["event"]
        if kind == "start":
            return event
        if kind == "partial":
            self.partial[event["job"]] = event["record"]
        elif kind == "device":
            self.state["device"].update({k: v for k, v in event.items() if k not in ("event", "time")})
        elif kind == "build":
            self.state["builds"][event["arch"]] = {k: event[k] for k in ("status", "note", "seconds")}
            say(f"build {event['arch']}: {event['status']} in {event['seconds']:.1f} s {event['note']}")
            self.save()
        elif kind == "done":
            self.finish(event["job"], event["record"])
            return None
        return current

    def lost(self, current: dict | None, why: str, failed: bool) -> None:
        """The step the worker was in when it was killed or died; a worker that dies between steps ends the run."""
        status = "failed" if failed else "killed"
        if current is None:
            for index in list(self.pending):
                self.finish(index, {"status": status, "note": why})
        elif "job" in current:
            self.finish(current["job"], {**self.partial.get(current["job"], {}), "status": status, "note": why})
        else:  # a teacher build: its architecture's presets cannot run
            arch = current["step"].split(" ", 1)[1]
            self.state["builds"][arch] = {"status": status, "note": why, "seconds": time.time() - current["time"]}
            for index in [i for i in self.pending if self.jobs[i]["arch"] == arch]:
                self.finish(index, {"status": "not run", "note": f"its teacher build was {status}: {why}"})

    def finish(self, index: int, record: dict) -> None:
        if index not in self.pending:  # recorded already (a kill racing the step's own end)
            return
        job = self.jobs[index]
        record = {**job, **record}
        record["summary"] = summary(record)
        self.state["presets"][index] = record
        self.pending.remove(index)
        say(row_text(record))
        self.save()


# ---- the numbers ----------------------------------------------------------------------------------------------------
def summary(rec: dict) -> dict:
    """Per method: median seconds per iteration and per part after the warm-up; peak memory over every iteration,
    and measured / planned: max_memory_allocated (less the process's baseline on a CPU) over the planner's parts,
    max_memory_reserved over the parts with the planner's fragmentation factor."""
    out = {}
    for method in ("dpdmd", "dmd"):
        rows = [r for r in rec.get("iterations", []) if r["method"] == method]
        if not rows:
            continue
        timed = [r for r in rows if not r["warmup"]] or rows
        med = {k: statistics.median(r[k] for r in timed) for k in ("seconds", *SUB_PHASES.values())}
        parts = rec["planned"][method]["parts_sum_gb"]
        peak = max(r["peak_gb"] for r in rows)
        reserved = max((r["reserved_gb"] for r in rows if r.get("reserved_gb") is not None), default=None)
        out[method] = {"iterations": len(rows), "timed": len(timed), "sec_per_iter": med.pop("seconds"), **med,
                       "peak_gb": peak, "reserved_gb": reserved, "planned_parts_gb": parts,
                       "measured_over_planned": (peak - rec.get("baseline_gb", 0.0)) / parts,
                       "reserved_over_planned": reserved / (parts * planning.FRAGMENTATION) if reserved else None}
    if "dpdmd" in out and "dmd" in out:
        out["dpdmd_over_dmd"] = out["dpdmd"]["sec_per_iter"] / out["dmd"]["sec_per_iter"]
    return out


def _f(value, fmt: str = ".2f") -> str:
    return "" if value is None else format(value, fmt)


def row_text(rec: dict) -> str:
    s = rec["summary"]
    dp, dmd = s.get("dpdmd", {}), s.get("dmd", {})
    return (f"{rec['arch']} {rec['preset']}: {rec['status']} {rec.get('note', '')} | DP-DMD "
            f"{_f(dp.get('sec_per_iter'))} s/iter {_f(dp.get('peak_gb'))} GB | DMD {_f(dmd.get('sec_per_iter'))} "
            f"s/iter {_f(dmd.get('peak_gb'))} GB").replace("  ", " ")


def table(state: dict) -> str:
    mem = "max_memory_allocated" if state["device"]["kind"] == "cuda" else "peak RSS"
    lines = [f"| architecture | preset | status | planned peak GB | planned parts GB | DP-DMD {mem} GB | DP-DMD "
             "reserved GB | measured / planned | DMD planned parts GB | DMD peak GB | DMD measured / planned | "
             "s / DP-DMD iter | s / DMD iter | DP-DMD / DMD |", "|" + "---|" * 14]
    for rec in state["presets"]:
        s, p = rec.get("summary", {}), rec["planned"]
        dp, dmd = s.get("dpdmd", {}), s.get("dmd", {})
        lines.append(
            f"| {rec['arch']} | {rec['preset']} | {rec['status']} | {_f(rec['planned_peak_gb'])} | "
            f"{p['dpdmd']['parts_sum_gb']:.2f} | {_f(dp.get('peak_gb'))} | {_f(dp.get('reserved_gb'))} | "
            f"{_f(dp.get('measured_over_planned'), '.3f')} | {p['dmd']['parts_sum_gb']:.2f} | {_f(dmd.get('peak_gb'))} | "
            f"{_f(dmd.get('measured_over_planned'), '.3f')} | {_f(dp.get('sec_per_iter'))} | "
            f"{_f(dmd.get('sec_per_iter'))} | {_f(s.get('dpdmd_over_dmd'), '.3f')} |")
    lines += ["", "| architecture | px | teacher steps (CFG) | teacher s / image | student steps | student s / image | "
              "teacher / student |", "|" + "---|" * 7]
    for rec in state["presets"]:
        if "sampling" in rec:
            t = rec["sampling"]
            lines.append(f"| {rec['arch']} | {t['resolution']} | {t['teacher_steps']} ({t['teacher_guidance']:g}) | "
                         f"{_f(t.get('teacher_s'), '.3f')} | {t['student_steps']} | {t['student_s']:.3f} | "
                         f"{_f(t.get('teacher_over_student'), '.1f')} |")
    notes = [f"{r['arch']} {r['preset']}: {r['status']}: {r['note']}" for r in state["presets"] if r.get("note")]
    notes += [f"{a}: planner: {e['error']}" for a, e in state["architectures"].items() if "error" in e]
    notes += [f"{a}: fits no preset on {state['card_gb']:.0f} GB" for a, e in state["architectures"].items()
              if "fitting" in e and not e["fitting"]]
    notes += [f"build {a}: {b['status']} in {b['seconds']:.1f} s {b['note']}" for a, b in state["builds"].items()]
    return "\n".join(lines + [""] + notes)


def say(text: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {text}", flush=True)


def main(argv: list[str] | None = None) -> int:
    args = parse(argv)
    started = time.time()
    device = card(args)
    if device is None:
        print("gpu_check: no CUDA GPU is visible (nvidia-smi found none); on a CPU run it as "
              "`--device cpu --tiny` (the CI check) or bench/fullsize_cpu.py")
        return 2
    import torch

    device.update(kind=args.device, torch=torch.__version__, cuda=torch.version.cuda)
    args.work.mkdir(parents=True, exist_ok=True)
    state = {"command": "python bench/gpu_check.py " + " ".join(sys.argv[1:] if argv is None else argv),
             "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime(started)), "started": started,
             "device": device, "card_gb": device["total_gb"], "resolution": args.resolution, "tiny": args.tiny,
             "iterations_per_method": args.iterations, "fp32": args.fp32, "budget_s": args.budget_s,
             "preset_budget_s": args.preset_budget_s, "builds": {}, "presets": []}

    def save() -> None:
        state["seconds"] = time.time() - started
        args.out.parent.mkdir(parents=True, exist_ok=True)
        tmp = args.out.with_name(args.out.name + ".tmp")
        tmp.write_text(json.dumps(state, indent=1, default=str))
        tmp.replace(args.out)

    say(f"{device['name']}, {device['total_gb']:.0f} GB, torch {device['torch']}; {args.resolution} px; planning")
    jobs, state["architectures"] = schedule(args, device["total_gb"])
    state["presets"] = [{**job, "status": "queued"} for job in jobs]
    save()
    say(f"{len(jobs)} presets queued: " + ", ".join(f"{j['arch']}/{j['preset']}" for j in jobs))
    Supervisor(args, jobs, state, save).run()
    save()
    print("\n" + table(state))
    print(f"\n{state['command']}: {state['seconds']:.0f} s, {state['date']}; JSON: {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
