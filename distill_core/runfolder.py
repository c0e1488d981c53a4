"""The run folder: the single source of truth about a run.

    config.toml      the resolved config the run uses
    status.json      state, step, pid, message (rewritten atomically)
    events.jsonl     append-only: one JSON object per line (steps, evals, grids, checkpoints)
    checkpoints/     step_XXXXXXXX/ folders (see checkpoint.py)
    samples/         fixed-seed grids: teacher.png, step_XXXXXXXX.png
    control/         files a UI touches to ask the trainer to stop or save now
    student.safetensors, metrics.json, report.html   when the run is done

Anything (CLI, UI, a person) learns about a run by reading these files only.
"""
from __future__ import annotations

import json
import os
import tempfile
import time
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

from .errors import ConfigError

STATES = ("starting", "running", "finishing", "finished", "stopped", "failed")
TRAINING_STATES = ("starting", "running")  # a trainer takes stop / save requests
ACTIVE_STATES = (*TRAINING_STATES, "finishing")  # a process is working on the run (or died doing so)


def _read_umask() -> int:
    mask = os.umask(0)  # the only way to read it; done once, at import
    os.umask(mask)
    return mask


FILE_MODE = 0o666 & ~_read_umask()  # what open() would give a new file


@contextmanager
def atomic_target(path: Path) -> Iterator[Path]:
    """A temporary path in the same folder to write; renamed over ``path`` only if the block succeeds.

    The file gets the usual umask permissions (mkstemp alone would leave it private).
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    try:
        yield Path(tmp)
        os.chmod(tmp, FILE_MODE)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Write, fsync, then rename over ``path``: a reader sees the old file or the whole new one."""
    with atomic_target(path) as tmp, open(tmp, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())


def atomic_write_text(path: Path, text: str) -> None:
    atomic_write_bytes(path, text.encode("utf-8"))


def pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


@dataclass
class RunFolder:
    root: Path

    def __post_init__(self) -> None:
        self.root = Path(self.root)

    # paths
    @property
    def config_path(self) -> Path: return self.root / "config.toml"
    @property
    def status_path(self) -> Path: return self.root / "status.json"
    @property
    def events_path(self) -> Path: return self.root / "events.jsonl"
    @property
    def checkpoints(self) -> Path: return self.root / "checkpoints"
    @property
    def samples(self) -> Path: return self.root / "samples"
    @property
    def control(self) -> Path: return self.root / "control"
    @property
    def student_path(self) -> Path: return self.root / "student.safetensors"
    @property
    def metrics_path(self) -> Path: return self.root / "metrics.json"
    @property
    def report_path(self) -> Path: return self.root / "report.html"

    def create(self) -> None:
        try:
            for d in (self.root, self.checkpoints, self.samples, self.control):
                d.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise ConfigError(f"run.output_dir {str(self.root)!r} cannot be a run folder ({e.strerror}: {e.filename}); "
                              "give a folder you can write to") from None
        if not os.access(self.root, os.W_OK):
            raise ConfigError(f"run.output_dir {str(self.root)!r} is not writable; give a folder you can write to")

    # events
    def append_event(self, kind: str, **fields: Any) -> None:
        record = {"event": kind, "time": round(time.time(), 3), **fields}
        with open(self.events_path, "a", encoding="utf-8") as f:
            f.write(json.dumps(record) + "\n")
            f.flush()

    def read_events(self) -> list[dict]:
        """Events in order, without what a restart superseded; a torn last line is ignored.

        A resume from step S drops the later steps of the attempt that died; a fresh start (the attempt
        before it died without a checkpoint) drops that attempt entirely, so curves never run backwards.
        """
        if not self.events_path.exists():
            return []
        out: list[dict] = []
        for line in self.events_path.read_text(encoding="utf-8").splitlines():
            try:
                ev = json.loads(line)
            except json.JSONDecodeError:
                continue
            if ev.get("event") == "start":
                out = []
            elif ev.get("event") == "resume":
                step = ev.get("step", 0)
                out = [e for e in out if e.get("step") is None or e["step"] <= step]
            out.append(ev)
        return out

    # status
    def write_status(self, state: str, **fields: Any) -> None:
        assert state in STATES, state
        status = {**self.read_status(), "state": state, "updated": round(time.time(), 3), **fields}
        atomic_write_text(self.status_path, json.dumps(status, indent=1))

    def read_status(self) -> dict:
        try:
            return json.loads(self.status_path.read_text(encoding="utf-8"))
        except (FileNotFoundError, json.JSONDecodeError):
            return {}

    def effective_state(self) -> str:
        """The recorded state, or 'died' when a running trainer's process is gone."""
        status = self.read_status()
        state = status.get("state", "unknown")
        if state in ACTIVE_STATES and status.get("pid") and status.get("host") == os.uname().nodename:
            if not pid_alive(int(status["pid"])):
                return "died"
        return state

    # control requests from a UI
    def request(self, what: str) -> None:
        """Ask the trainer to 'stop' or 'save' (it polls between steps)."""
        assert what in ("stop", "save"), what
        self.control.mkdir(parents=True, exist_ok=True)
        (self.control / what).write_text(str(time.time()))

    def take_request(self, what: str) -> bool:
        """True once per request: the trainer consumes the control file."""
        path = self.control / what
        if path.exists():
            path.unlink(missing_ok=True)
            return True
        return False
