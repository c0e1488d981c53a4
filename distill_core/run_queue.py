"""Runs waiting for their device: a queue per device, kept in one file of the runs folder.

Two runs training side by side on one device each slow down (16 -> 27 s/step
measured on one GPU), so a run started while its device is busy waits here and
starts when a running one ends. The file (``<runs>/queue.json``) is the whole
state: it is rewritten atomically under an flock, so several UIs (or a
restarted one) share one queue. This module only orders names; starting a run
is the caller's (``dispatch`` asks it to).
"""
from __future__ import annotations

import fcntl
import json
import os
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path

from .errors import DPDMDError
from .runfolder import FILE_MODE, atomic_write_text

QUEUE_FILE = "queue.json"
LOCK_FILE = ".queue.lock"


class QueueError(DPDMDError):
    """A queue operation on a run that is not queued (or a queue file this version cannot read)."""


@dataclass
class Entry:
    run: str  # the run folder's name in the runs folder
    device: str  # "cpu" | "cuda": runs share a queue when they share this
    queued: float  # time.time() when it was queued


def device_of(run_device: str, cuda_available: bool) -> str:
    """The device the trainer takes for a config's run.device (as training.trainer decides 'auto')."""
    if run_device == "auto":
        return "cuda" if cuda_available else "cpu"
    return run_device


class RunQueue:
    """The queued runs of one runs folder, in start order; each device's runs keep their relative order."""

    def __init__(self, runs_dir: Path) -> None:
        self.runs_dir = Path(runs_dir)
        self.path = self.runs_dir / QUEUE_FILE

    @contextmanager
    def locked(self) -> Iterator[list[Entry]]:
        """The entries to read or change; written back (atomically) when the block ends without an error.
        Not re-entrant: call no other method of the queue inside the block (an flock per open file)."""
        self.runs_dir.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.runs_dir / LOCK_FILE, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW, FILE_MODE)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            entries = self._read()
            before = [asdict(e) for e in entries]
            yield entries
            if [asdict(e) for e in entries] != before:
                atomic_write_text(self.path, json.dumps({"version": 1, "queue": [asdict(e) for e in entries]},
                                                        indent=1))
        finally:
            os.close(fd)  # releases the flock

    def _read(self) -> list[Entry]:
        try:
            data = json.loads(self.path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            return []
        except (OSError, ValueError) as e:
            raise QueueError(f"the queue file {self.path} cannot be read ({e}); remove it to empty the queue") from None
        try:
            return [Entry(str(e["run"]), str(e["device"]), float(e["queued"])) for e in data["queue"]]
        except (KeyError, TypeError, ValueError):
            raise QueueError(f"the queue file {self.path} is not a queue; remove it to empty the queue") from None

    def entries(self) -> list[Entry]:
        with self.locked() as entries:
            return list(entries)

    def positions(self) -> dict[str, tuple[str, int]]:
        """Each queued run's device and its place in that device's queue (1 = starts next)."""
        return _positions(self.entries())

    def add(self, run: str, device: str) -> int:
        """Queue ``run`` last on ``device`` (where it is, if already queued); its place."""
        with self.locked() as entries:
            if not any(e.run == run for e in entries):
                entries.append(Entry(run, device, round(time.time(), 3)))
            return _positions(entries)[run][1]

    def cancel(self, run: str) -> None:
        with self.locked() as entries:
            entries.pop(_find(entries, run))

    def move_up(self, run: str) -> int:
        """Swap ``run`` with the run before it on its device; its new place."""
        with self.locked() as entries:
            i = _find(entries, run)
            before = [j for j in range(i) if entries[j].device == entries[i].device]
            if before:
                j = before[-1]
                entries[i], entries[j] = entries[j], entries[i]
            return _positions(entries)[run][1]

    def dispatch(self, active: Callable[[], dict[str, int]], limit: int, start: Callable[[str], object]) -> list[str]:
        """Start the first queued runs of every device with fewer than ``limit`` active runs (``active()``: the
        count per device, asked with the queue held), holding the queue while ``start(run)`` runs, so that two
        UIs start each run once.
        A run whose start raises DPDMDError leaves the queue too (it would fail again); the error is re-raised
        after the others have started."""
        started, failed = [], None
        with self.locked() as entries:
            counts = active() if entries else {}
            for e in list(entries):
                if counts.get(e.device, 0) >= limit:
                    continue
                entries.remove(e)
                try:
                    start(e.run)
                except DPDMDError as err:
                    failed = failed or err
                    continue
                counts[e.device] = counts.get(e.device, 0) + 1
                started.append(e.run)
        if failed is not None:
            raise failed
        return started


def _find(entries: list[Entry], run: str) -> int:
    for i, e in enumerate(entries):
        if e.run == run:
            return i
    raise QueueError(f"run {run!r} is not queued (it started, or was cancelled)")


def _positions(entries: list[Entry]) -> dict[str, tuple[str, int]]:
    seen: dict[str, int] = {}
    out = {}
    for e in entries:
        seen[e.device] = seen.get(e.device, 0) + 1
        out[e.run] = (e.device, seen[e.device])
    return out
