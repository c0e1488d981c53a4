"""The run folder: the single source of truth about a run.

    config.toml      the resolved config the run uses
    status.json      state, step, pid, message; phase, sec_per_step, eta_seconds (rewritten atomically)
    events.jsonl     append-only: one JSON object per line (steps, evals, grids, checkpoints)
    checkpoints/     step_XXXXXXXX/ folders (see training/checkpoint.py)
    samples/         fixed-seed grids: teacher.png, step_XXXXXXXX.png
    control/         files a UI touches to ask the trainer to stop or save now
    .trainer.lock    held (flock) by the one process training in the folder; names its pid and host
    student.safetensors, metrics.json, report.html   when the run is done

Anything (CLI, UI, a person) learns about a run by reading these files only, and only
where they resolve inside the run folder: a symlink planted in it reads as a missing file.
"""
from __future__ import annotations

import fcntl
import json
import os
import re
import shutil
import tempfile
import time
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .errors import ConfigError, RunRefused

STATES = ("starting", "running", "finishing", "finished", "stopped", "failed")
TRAINING_STATES = ("starting", "running")  # a trainer takes stop / save requests
ACTIVE_STATES = (*TRAINING_STATES, "finishing")  # a process is working on the run (or died doing so)
# status.json fields about what a process is doing now: the phase ({"name", "done", "total"}) and the training
# loop's speed and time left (distill_core.progress); they belong to one state and go when it changes
PROGRESS_FIELDS = ("phase", "sec_per_step", "eta_seconds")
LOCK = ".trainer.lock"
# Temporaries a killed process leaves: atomic_target files and checkpoint staging folders (.NAME.tmp),
# and safetensors' own .tmpXXXXXX next to the file it was writing.
TEMPORARIES = (".*.tmp", ".tmp*")
LEFTOVER_SECONDS = 600.0  # a temporary in the run folder untouched this long belongs to no live writer


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
    # the writer's pid in the name: a temporary whose writer is gone is a leftover at once (writer_gone)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.{os.getpid()}-", suffix=".tmp")
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


def within(path: Path | str, roots: Iterable[Path | str]) -> Path | None:
    """``path`` with ``~``, ``..`` and every symlink resolved, if that lies inside one of ``roots``; else None.

    The one containment rule for files that are read on someone else's behalf (the UI, reports): a
    caller reads the returned path, so a link planted in a folder cannot lead it out.
    """
    try:
        resolved = Path(path).expanduser().resolve()
        return resolved if any(resolved.is_relative_to(Path(r).resolve()) for r in roots) else None
    except (OSError, RuntimeError):  # a symlink loop
        return None


def writer_gone(temporary: Path) -> bool:
    """True when an atomic_target temporary names its writer's pid (".NAME.PID-XXXX.tmp") and that process is
    gone (pids are of this host: a run folder is written by one machine)."""
    match = re.fullmatch(r"\..+\.(\d+)-[^.]+\.tmp", temporary.name)
    return match is not None and not pid_alive(int(match.group(1)))


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
        # One absolute root, fixed at construction: every path below is built from it, so a relative
        # run.output_dir means the same folder to every reader, whatever the working directory is later.
        if "\0" in str(self.root):
            raise ConfigError(f"run.output_dir {str(self.root)!r} contains a NUL byte; give a plain folder path")
        self.root = Path(os.path.abspath(os.path.expanduser(self.root)))

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

    def file(self, path: Path | str) -> Path | None:
        """The resolved path of an existing file of this run (absolute, or relative to the run folder), or None
        when it is missing or resolves outside the run folder (a planted symlink reads as missing)."""
        found = within(self.root / path, [self.root])  # an absolute ``path`` replaces the root in the join
        return found if found is not None and found.is_file() else None

    def student_grids(self) -> list[Path]:
        """The student's seed grids (samples/step_*.png), oldest first; only files inside the run folder."""
        found = sorted(self.samples.glob("step_*.png")) if self.samples.is_dir() else []
        return [g for g in map(self.file, found) if g is not None]

    # ownership
    @contextmanager
    def locked(self) -> Iterator[None]:
        """Hold the folder for this process; RunRefused naming the holder if another process has it.

        An flock, which the kernel drops when its process dies, so a stale lock (a killed trainer) is
        simply free. Once the folder is ours, the temporaries a killed holder left are removed.
        """
        self.create()
        try:
            fd = os.open(self.root / LOCK, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW, FILE_MODE)
        except OSError as e:
            raise RunRefused(f"cannot create the lock file {self.root / LOCK} ({e.strerror}); if it is a symlink, "
                             "remove it") from None
        try:
            self._lock(fd)
            os.ftruncate(fd, 0)
            os.pwrite(fd, json.dumps({"pid": os.getpid(), "host": os.uname().nodename,
                                      "since": round(time.time(), 3)}).encode(), 0)
            self.remove_leftovers()
            yield
        finally:
            os.close(fd)  # releases the flock

    def _lock(self, fd: int) -> None:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            return
        except BlockingIOError:
            owner = self._lock_owner(fd)
        except OSError:  # a file system without flock: the recorded owner holds the folder while it lives
            owner = self._lock_owner(fd)
            pid, here = owner.get("pid"), owner.get("host") == os.uname().nodename
            if not isinstance(pid, int) or pid == os.getpid() or (here and not pid_alive(pid)):
                return
        since = owner.get("since")
        since = time.strftime("%Y-%m-%d %H:%M", time.localtime(since)) if isinstance(since, (int, float)) else "?"
        raise RunRefused(f"run.output_dir {str(self.root)!r} is in use by another training process (pid "
                         f"{owner.get('pid', '?')} on {owner.get('host', '?')}, since {since}); wait for it to end "
                         "or stop it, or choose another run.output_dir")

    @staticmethod
    def _lock_owner(fd: int) -> dict:
        try:
            owner = json.loads(os.pread(fd, 4096, 0) or b"{}")
            return owner if isinstance(owner, dict) else {}
        except ValueError:
            return {}

    def remove_leftovers(self) -> list[Path]:
        """Delete the temporaries of interrupted writes; call it holding the lock.

        Staging folders go at once (only the lock holder writes checkpoints); other temporaries in the
        run folder (an export or a UI may be writing one) once their writer's process is gone, or, where the
        name does not say who wrote it, once untouched for LEFTOVER_SECONDS.
        """
        removed = []
        for folder, min_age in ((self.checkpoints, 0.0), (self.root, LEFTOVER_SECONDS)):
            found = {p for pattern in TEMPORARIES for p in folder.glob(pattern)} if folder.is_dir() else set()
            for path in sorted(found):
                try:
                    if time.time() - path.lstat().st_mtime < min_age and not writer_gone(path):
                        continue
                    if path.is_dir() and not path.is_symlink():
                        shutil.rmtree(path)
                    else:
                        path.unlink()
                except FileNotFoundError:  # gone meanwhile
                    continue
                removed.append(path)
        return removed

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
        path = self.file(self.events_path)
        if path is None:
            return []
        out: list[dict] = []
        for line in path.read_text(encoding="utf-8", errors="replace").splitlines():
            try:
                ev = json.loads(line)
            except json.JSONDecodeError:
                continue
            if not isinstance(ev, dict):
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
        """The run's state and fields; a new state drops the progress of the old one (PROGRESS_FIELDS)."""
        assert state in STATES, state
        old = self.read_status()
        if old.get("state") != state:
            old = {k: v for k, v in old.items() if k not in PROGRESS_FIELDS}
        status = {**old, "state": state, "updated": round(time.time(), 3), **fields}
        atomic_write_text(self.status_path, json.dumps(status, indent=1))

    def update_status(self, **fields: Any) -> None:
        """Fields of status.json rewritten, its state kept (a phase's progress: distill_core.progress)."""
        status = {**self.read_status(), "updated": round(time.time(), 3), **fields}
        atomic_write_text(self.status_path, json.dumps(status, indent=1))

    def read_status(self) -> dict:
        return self.read_json(self.status_path)

    def read_json(self, path: Path | str) -> dict:
        """A JSON object file of the run (status.json, metrics.json); {} when missing, unreadable or outside."""
        found = self.file(path)
        try:
            data = json.loads(found.read_text(encoding="utf-8")) if found else {}
        except (OSError, ValueError):  # JSONDecodeError and UnicodeDecodeError are ValueErrors
            return {}
        return data if isinstance(data, dict) else {}

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
