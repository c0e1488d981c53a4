"""The run-folder side of the training loop: events, status, seed grids and the evaluation cadence.

Only the main process writes a run folder, so the loop holds a ``RunRecorder``
there and a silent ``Recorder`` on every other process; the loop itself never
asks which process it is on for bookkeeping.
"""
from __future__ import annotations

import os
import sys
from collections.abc import Callable

from torch import nn

from ..config import Config
from ..progress import StepClock
from ..runfolder import RunFolder, atomic_write_text
from .collapse import CollapseGuard, advice


class Recorder:
    """What the loop tells the run folder; this base records nothing (non-main processes)."""

    diversity: float | None = None  # the student's newest measured diversity (None: not measured yet)

    def open(self, step: int, resumed: bool, start_info: dict) -> None: ...
    def after_step(self, step: int, logs: dict[str, float], clock: StepClock) -> None: ...
    def checkpoint(self, step: int, path: str) -> None: ...
    def close(self, state: str, step: int) -> None: ...

    def requested(self, what: str) -> bool:
        """A 'stop' or 'save' request from a UI (control files)."""
        return False


class RunRecorder(Recorder):
    """Writes the run folder of the main process; samples grids and diversity at the configured steps."""

    def __init__(self, cfg: Config, run: RunFolder, snapshots, network: Callable[[], nn.Module],
                 can_sample: bool, processes: int) -> None:
        self.cfg, self.run, self.snaps = cfg, run, snapshots
        self.network, self.can_sample, self.processes = network, can_sample, processes
        self.guard: CollapseGuard | None = None
        self.collapse_stop = ""  # the warning that stops the run (eval.collapse_stop)

    def open(self, step: int, resumed: bool, start_info: dict) -> None:
        c, run = self.cfg, self.run
        atomic_write_text(run.config_path, c.to_toml())
        run.write_status("running", pid=os.getpid(), host=os.uname().nodename, step=step,
                         max_steps=c.run.max_steps, message="", processes=self.processes)
        if resumed:
            run.append_event("resume", step=step)
        else:
            run.append_event("start", step=0, **start_info)
        if not (run.samples / "teacher.png").exists():
            self.snaps.teacher_grid(run.samples / "teacher.png")
            run.append_event("grid", step=0, who="teacher", path="samples/teacher.png")
        self._start_guard(step)
        if not resumed:
            self.snapshot(step, grid=True, metrics=bool(c.eval.diversity_every))

    def after_step(self, step: int, logs: dict[str, float], clock: StepClock) -> None:
        e, last = self.cfg.eval, step == self.cfg.run.max_steps
        if step % self.cfg.run.log_every == 0 or last:
            self.run.append_event("step", step=step, **{k: round(v, 6) for k, v in logs.items()})
        self.snapshot(step, grid=_due(step, e.grid_every), metrics=_due(step, e.diversity_every))
        self.run.write_status("running", step=step, sec_per_step=clock.sec_per_step,
                              eta_seconds=clock.left(self.cfg.run.max_steps - step))

    def _start_guard(self, step: int) -> None:
        """The collapse guard's teacher diversity (measured once per run, kept in the events) and, on a resume,
        its count of low evaluations so far."""
        fraction = self.cfg.eval.collapse_fraction
        if not fraction or not self.can_sample:
            return
        events = self.run.read_events()
        known = [e["diversity"] for e in events if e.get("event") == "teacher_eval"]
        if not known:
            measured = self.snaps.teacher_metrics().get("diversity")
            if measured is None:  # no feature extractor: no diversity to watch
                return
            known = [measured]
            self.run.append_event("teacher_eval", step=step, diversity=measured)
        self.guard = CollapseGuard(fraction, known[-1])
        for e in events:
            if e.get("event") == "eval" and "diversity" in e:
                self.guard.observe(e["diversity"])

    def _watch(self, step: int, diversity: float) -> None:
        if self.guard is None or not self.guard.observe(diversity):
            return
        line = self.guard.warning(step, diversity, self.cfg)
        print(line, file=sys.stderr, flush=True)
        self.run.append_event("collapse_warning", step=step, diversity=diversity,
                              teacher_diversity=self.guard.teacher_diversity, fraction=self.guard.fraction,
                              advice=advice(self.cfg), message=line)
        if self.cfg.eval.collapse_stop:
            self.collapse_stop = line

    def checkpoint(self, step: int, path: str) -> None:
        self.run.append_event("checkpoint", step=step, path=path)

    def close(self, state: str, step: int) -> None:
        if step == self.cfg.run.max_steps and not _due(step, self.cfg.eval.grid_every):
            self.snapshot(step, grid=True, metrics=False)  # the final grid is always drawn
        if self.collapse_stop:
            stopped = (f"stopped at step {step} by the collapse guard (eval.collapse_stop): {self.collapse_stop} To "
                       "continue with a change, start a new run with run.branch_from set to this run's last checkpoint")
        elif step == self.cfg.run.max_steps:  # trained with --no-finish: the finish is what is left
            stopped = (f"trained to step {step}, not exported (--no-finish); run the same command without "
                       "--no-finish (or Resume) to export, evaluate and report")
        else:
            stopped = f"stopped at step {step}; run the same command again (or Resume) to continue"
        messages = {"stopped": stopped,
                    "finishing": "exporting the student, evaluating it and the teacher, writing the report"}
        self.run.write_status(state, step=step, message=messages.get(state, ""))

    def requested(self, what: str) -> bool:
        return self.run.take_request(what) or (what == "stop" and bool(self.collapse_stop))

    def snapshot(self, step: int, grid: bool, metrics: bool) -> None:
        if not self.can_sample or not (grid or metrics):  # an FSDP student only runs with every process
            return
        net = self.network()
        if grid:
            path = self.run.samples / f"step_{step:08d}.png"
            self.snaps.student_grid(net, path, step)
            self.run.append_event("grid", step=step, who="student", path=str(path.relative_to(self.run.root)))
        if metrics and (m := self.snaps.student_metrics(net)):
            self.run.append_event("eval", step=step, **m)
            self.diversity = m.get("diversity", self.diversity)
            self._watch(step, m["diversity"])


def _due(step: int, every: int) -> bool:
    """True at multiples of ``every``; 0 means never (only at the end)."""
    return bool(every) and step % every == 0
