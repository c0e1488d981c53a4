"""What the monitor shows, read from run folders only (never from a training process).

Everything here is recomputed from files on each refresh, so a reloaded page or
a restarted UI shows exactly what a running one would. Files are read only through
``RunFolder.file``: one that resolves outside its run folder (a planted symlink) is
shown as missing.
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path

from distill_core.config import METHODS, effective_diversity_weight, parse_toml
from distill_core.errors import ConfigError
from distill_core.run_queue import QueueError, RunQueue
from distill_core.runfolder import ACTIVE_STATES, TRAINING_STATES, RunFolder, atomic_write_text

from .launcher import LOG, run_state
from .paths import Roots

LOSSES = {"loss_dmd": "DMD loss (student)", "loss_div": "diversity loss (first step)", "loss_fake": "fake-score loss"}


def _config(run: RunFolder) -> dict:
    path = run.file(run.config_path)
    try:
        return parse_toml(path.read_text(encoding="utf-8"), str(path)) if path else {}
    except (OSError, ConfigError):
        return {}


@dataclass
class RunSummary:
    name: str
    state: str
    step: int
    max_steps: int
    method: str
    k: int | None
    lam: float | None
    updated: float
    comparable: bool  # Compare can sample it (comparable())
    queued: tuple[str, int] | None = None  # (device, place in its queue)

    def row(self) -> list:
        state = f"queued #{self.queued[1]} ({self.queued[0]})" if self.queued else self.state
        return [self.name, state, f"{self.step} / {self.max_steps}", self.method,
                "" if self.k is None else self.k, "" if self.lam is None else self.lam,
                time.strftime("%Y-%m-%d %H:%M", time.localtime(self.updated)) if self.updated else ""]


SUMMARY_HEADERS = ["run", "state", "step", "method", "k", "lambda", "updated"]


def queue_positions(runs_dir: Path) -> dict[str, tuple[str, int]]:
    """Each queued run's device and place; none when the queue file is unreadable (the UI's log says why)."""
    try:
        return RunQueue(runs_dir).positions()
    except QueueError:
        return {}


def state_of(run: RunFolder, queued: tuple[str, int] | None) -> str:
    """A queued run is 'queued' (its folder holds only its config until it starts)."""
    return "queued" if queued else run_state(run)


def summarize(run_dir: Path, queued: tuple[str, int] | None = None) -> RunSummary:
    run = RunFolder(run_dir)
    status, cfg = run.read_status(), _config(run)
    method = cfg.get("method", {})
    name = method.get("name", "?")
    config = run.file(run.config_path)
    updated = status.get("updated") or (config.stat().st_mtime if config else 0.0)
    return RunSummary(name=run.root.name, state=state_of(run, queued), queued=queued, step=int(status.get("step") or 0),
                      max_steps=int(status.get("max_steps") or cfg.get("run", {}).get("max_steps", 0)),
                      method=name,  # a method without the diversity loss has no anchor
                      k=None if name in METHODS and not METHODS[name].diversity else method.get("anchor_step"),
                      lam=effective_diversity_weight(name, method.get("diversity_weight")), updated=float(updated),
                      comparable=comparable(run))


def newest_checkpoint(run: RunFolder) -> int | None:
    """The step of the run's newest complete checkpoint (None: none yet); the step is in the folder's name."""
    from distill_core.training import checkpoint as ckpt

    done = ckpt.list_complete(run.checkpoints)
    return int(done[-1].name.removeprefix(ckpt.PREFIX)) if done else None


def comparable(run: RunFolder) -> bool:
    """A run Compare can sample: its exported student, or (running, stopped) its newest checkpoint's."""
    return run.file(run.student_path) is not None or newest_checkpoint(run) is not None


def list_runs(roots: Roots) -> list[RunSummary]:
    """Every run folder directly under the runs folder, newest first."""
    queued = queue_positions(roots.runs)
    runs = [summarize(d, queued.get(d.name)) for d in roots.run_folders()
            if (d / "config.toml").exists() or (d / "status.json").exists()]
    return sorted(runs, key=lambda r: r.updated, reverse=True)


def default_run(runs: list[RunSummary]) -> str | None:
    """The run a fresh page shows: the newest active one, else the newest."""
    pick = [r for r in runs if r.state in ACTIVE_STATES] or runs
    return pick[0].name if pick else None


def log_tail(path: Path | None, lines: int = 25, max_bytes: int = 32_768) -> str:
    """The last lines of a training log as a terminal shows them: a progress bar redrawn with carriage returns
    is its last drawing, once (a line repeated right after itself, as tqdm's closing redraw, is shown once)."""
    if path is None:
        return ""
    with open(path, "rb") as f:
        f.seek(max(0, path.stat().st_size - max_bytes))
        text = f.read().decode("utf-8", errors="replace")
    shown: list[str] = []
    for line in text.split("\n"):
        drawn = next((part for part in reversed(line.split("\r")) if part.strip()), "")
        if drawn.strip() and (not shown or drawn.strip() != shown[-1].strip()):
            shown.append(drawn)
    return "\n".join(shown[-lines:])


@dataclass
class RunView:
    """One run as the monitor shows it."""
    name: str
    state: str
    step: int
    max_steps: int
    message: str
    sec_per_step: float | None  # the trainer's running median (distill_core.progress.StepClock)
    eta: float | None = None  # seconds of training left, by the trainer's clock
    phase: dict | None = None  # what a working process does now: {"name", "done", "total"} (status.json)
    losses: list[tuple[int, float, str]] = field(default_factory=list)  # (step, value, series)
    diversity: list[tuple[int, float, str]] = field(default_factory=list)
    teacher_grid: Path | None = None
    student_grid: Path | None = None
    checkpoint_step: int | None = None
    report: Path | None = None
    student: Path | None = None
    metrics: dict = field(default_factory=dict)
    log: str = ""
    log_file: Path | None = None
    queued: tuple[str, int] | None = None  # (device, place in its queue)
    exports: list[Path] = field(default_factory=list)  # files `dpdmd export` (or Compare) wrote into the run

    @property
    def eta_seconds(self) -> float | None:
        return self.eta if self.state in TRAINING_STATES else None  # 'finishing' has no steps left


# Eval fields that change only when or how often it is drawn, not what the teacher's diversity is measured on.
SCHEDULE_FIELDS = ("diversity_every", "grid_every", "grid_prompts", "grid_seeds")


def _teacher_eval_key(cfg: dict) -> tuple:
    e = {k: v for k, v in cfg.get("eval", {}).items() if k not in SCHEDULE_FIELDS}
    return repr(sorted(cfg.get("teacher", {}).items())), repr(sorted(e.items()))


def plot_span(steps: list[int]) -> int:
    """The last step the plots show: the newest, at least 10 (so early on the axis has whole steps)."""
    return max([10, *steps])


def known_teacher_diversity(run: RunFolder) -> float | None:
    """The teacher's diversity a finished run of the same runs folder measured with this run's teacher and
    evaluation (e.g. its DMD baseline), so the Monitor can draw it from the start; None when none did."""
    want = _teacher_eval_key(_config(run))
    for d in sorted(run.root.parent.iterdir()):
        other = RunFolder(d)
        if d == run.root or not d.is_dir() or other.file(other.metrics_path) is None:
            continue
        value = other.read_json(other.metrics_path).get("teacher", {}).get("diversity")
        if value is not None and _teacher_eval_key(_config(other)) == want:
            return float(value)
    return None


def signature(run_dir: Path) -> tuple:
    """Changes whenever anything the monitor shows may have changed (cheap: stats, no reads)."""
    run = RunFolder(run_dir)
    stats = []
    for p in (run.status_path, run.events_path, run.report_path, run.root / LOG):
        try:
            st = p.stat()
            stats.append((st.st_mtime_ns, st.st_size))
        except FileNotFoundError:
            stats.append(None)
    return (str(run_dir), run_state(run), *stats)


def view(run_dir: Path) -> RunView:
    run = RunFolder(run_dir)
    status, events = run.read_status(), run.read_events()
    steps = [e for e in events if e.get("event") == "step"]
    metrics = run.read_json(run.metrics_path)
    diversity = [(e["step"], e["diversity"], "student") for e in events
                 if e.get("event") == "eval" and "diversity" in e]
    measured = [e["diversity"] for e in events if e.get("event") == "teacher_eval"]  # the collapse guard's
    teacher_div = metrics.get("teacher", {}).get("diversity", measured[-1] if measured else None)
    teacher_div = known_teacher_diversity(run) if teacher_div is None else teacher_div
    warnings = [e for e in events if e.get("event") == "collapse_warning"]
    diversity += [(e["step"], e["diversity"], "collapse warning") for e in warnings]
    max_steps = int(status.get("max_steps") or 0)
    if teacher_div is not None:  # a level from step 0 (when another run measured it) to the newest step, as dots
        span = plot_span([int(status.get("step") or 0), *(d[0] for d in diversity)])
        level = {*range(0, span + 1, max(1, span // 20)), span, *(d[0] for d in diversity)}
        diversity += [(s, teacher_div, "teacher") for s in sorted(level)]
    grids, log = run.student_grids(), run.file(LOG)
    queued = queue_positions(run.root.parent).get(run.root.name)
    state = state_of(run, queued)
    return RunView(
        name=run.root.name, state=state, queued=queued, step=int(status.get("step") or 0),
        max_steps=max_steps, message=str(status.get("message") or (warnings[-1]["message"] if warnings else "")), sec_per_step=status.get("sec_per_step"),
        eta=status.get("eta_seconds"), phase=status.get("phase") if state in ACTIVE_STATES else None,
        losses=[(e["step"], e[key], label) for e in steps for key, label in LOSSES.items() if key in e],
        diversity=diversity,
        teacher_grid=run.file(run.samples / "teacher.png"), student_grid=grids[-1] if grids else None,
        checkpoint_step=newest_checkpoint(run),
        report=run.file(run.report_path), student=run.file(run.student_path), metrics=metrics,
        log=log_tail(log), log_file=log, exports=exports(run))


NOTES = "notes.md"  # a run's notes, written by the Monitor's notes box


def exports(run: RunFolder) -> list[Path]:
    """The student files exported from checkpoints (student_stepNNNNNNNN + a format's suffix; a diffusers export
    is a folder, which a browser cannot download), oldest first."""
    from distill_core.export.formats import FORMATS

    files = [run.file(p) for p in sorted(run.root.glob("student_step*"))
             if any(p.name.endswith(f.suffix) for f in FORMATS.values())]
    return [p for p in files if p is not None]


def read_notes(run_dir: Path) -> str:
    path = RunFolder(run_dir).file(run_dir / NOTES)
    return path.read_text(encoding="utf-8", errors="replace") if path else ""


def write_notes(run_dir: Path, text: str) -> None:
    atomic_write_text(run_dir / NOTES, text)
