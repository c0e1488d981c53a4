"""Long phases made visible: teacher load, prompt encoding, reference sampling, evaluation, export, report.

Each phase is a tqdm bar in the terminal and status.json's ``phase`` field
({"name", "done", "total"}, total None when it cannot be counted), which the
trainer UI's Monitor shows as it is: the core measures, the UI only reads. A
process says once where its phases go (``reporting``: the run folder of the
main process, whether to draw bars); code anywhere below opens a ``phase``
without being handed either. Phases nest: when an inner one ends, the outer one
shows again. ``StepClock`` is the training loop's time left, from a running
median of step times without the first step of a start (which warms up).
"""
from __future__ import annotations

import statistics
import time
from collections import deque
from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass

from .runfolder import ACTIVE_STATES, RunFolder

WRITE_EVERY = 0.5  # seconds between status.json writes of one phase's progress (the Monitor polls every ~2 s)


@dataclass(frozen=True)
class _Sink:
    run: RunFolder | None  # None: the terminal only
    show: bool  # draw tqdm bars


_sink: ContextVar[_Sink] = ContextVar("dpdmd_progress_sink", default=_Sink(None, True))
_current: ContextVar[Phase | None] = ContextVar("dpdmd_progress_phase", default=None)


@contextmanager
def reporting(run: RunFolder | None, show: bool) -> Iterator[None]:
    """Phases opened inside go to ``run``'s status.json (None: nowhere) and, with ``show``, the terminal."""
    token = _sink.set(_Sink(run, show))
    try:
        yield
    finally:
        _sink.reset(token)


class Phase:
    """One running phase: ``advance(n)`` after each piece of work."""

    def __init__(self, name: str, total: int | None, unit: str, sink: _Sink) -> None:
        from tqdm import tqdm

        self.name, self.total, self.done, self.sink = name, total, 0, sink
        self.bar = tqdm(total=total, desc=name, unit=unit, disable=not sink.show, dynamic_ncols=True,
                        bar_format=None if total else "{desc}... [{elapsed}]")  # uncounted: its time so far
        self._written = 0.0

    def advance(self, n: int = 1) -> None:
        self.done += n
        self.bar.update(n)
        if time.monotonic() - self._written >= WRITE_EVERY or self.done == self.total:
            self.show()

    def show(self) -> None:
        """Write this phase into the run's status (a run that is not active keeps its status as it is)."""
        self._written = time.monotonic()
        _write(self.sink.run, {"name": self.name, "done": self.done, "total": self.total})


def _write(run: RunFolder | None, phase: dict | None) -> None:
    if run is None or not run.status_path.exists():
        return  # a run folder not made yet (a fresh `dpdmd train`): the terminal shows the phase
    if run.read_status().get("state") in ACTIVE_STATES:  # never another run's folder, nor a finished run's
        run.update_status(phase=phase)


@contextmanager
def phase(name: str, total: int | None = None, unit: str = "it") -> Iterator[Phase]:
    """A long phase called ``name`` (e.g. 'sampling the teacher's reference images') of ``total`` pieces."""
    sink, outer = _sink.get(), _current.get()
    p = Phase(name, total, unit, sink)
    token = _current.set(p)
    p.show()
    try:
        yield p
    finally:
        p.bar.close()
        _current.reset(token)
        if outer is not None:
            outer.show()
        else:
            _write(sink.run, None)


class StepClock:
    """Seconds per training step as a running median of the last ``window`` steps, leaving out the first step of
    each start (warm-up: one-off allocations, compilation), so time left is not read off a slow first step."""

    def __init__(self, window: int = 20, least: int = 2) -> None:
        self.times: deque[float] = deque(maxlen=window)
        self.least, self.seen = least, 0

    def add(self, seconds: float) -> None:
        self.seen += 1
        if self.seen > 1:
            self.times.append(seconds)

    @property
    def sec_per_step(self) -> float | None:
        return statistics.median(self.times) if len(self.times) >= self.least else None

    def left(self, steps: int) -> float | None:
        """Seconds for ``steps`` more steps; None until enough steps are measured."""
        s = self.sec_per_step
        return None if s is None else s * max(0, steps)
