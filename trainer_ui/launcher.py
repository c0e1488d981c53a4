"""Start training in its own process (or queue it while its device is busy), and ask it to stop or save; the run
folder is the only channel.

The process is ``python -m distill_core.cli train <run>/config.toml`` (what
``dpdmd train`` runs), in a new session so that it outlives the UI, with its
output in ``<run>/train.log``. A lock file in the run folder (created with
O_EXCL) makes two clicks, tabs or UIs starting the same run start one process.
"""
from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import distill_core
from distill_core.config import Config, config_differences, load_run_config, parse_toml, resolve
from distill_core.errors import ConfigError, DPDMDError
from distill_core.run_queue import Entry, RunQueue, device_of
from distill_core.runfolder import ACTIVE_STATES, TRAINING_STATES, RunFolder, atomic_write_text

from .paths import PathRefused

CODE_ROOT = Path(distill_core.__file__).resolve().parent.parent  # the code the UI runs is the code it launches
LOCK = ".launch.lock"
LOCK_STALE_SECONDS = 120.0  # a lock this old was left by a UI that died while starting a run
LOG = "train.log"


class RunBusy(DPDMDError):
    """The run is already starting or running (or not running, for stop and save)."""


LAUNCH = "launch.json"  # how the UI starts the run: {"processes": N}, read again by a resume and by the queue
MAX_PROCESSES = 64


def train_command(config_path: Path, processes: int = 1) -> list[str]:
    """``dpdmd train`` in this Python; several processes (GPUs of this machine, DDP) through ``accelerate launch``."""
    if processes == 1:
        return [sys.executable, "-m", "distill_core.cli", "train", str(config_path)]
    return [sys.executable, "-m", "accelerate.commands.launch", *_accelerate_args(processes),
            "--main_process_port", str(_free_port()), "-m", "distill_core.cli", "train", str(config_path)]


def _accelerate_args(processes: int) -> list[str]:
    # --multi_gpu: on a machine without GPUs it gives several CPU processes over gloo (--cpu would run one)
    return ["--multi_gpu", "--num_processes", str(processes), "--num_machines", "1", "--dynamo_backend", "no"]


def terminal_command(config_path: Path, processes: int = 1) -> str:
    """The same run from a terminal, as the page shows it."""
    if processes == 1:
        return f"dpdmd train {config_path}"
    return f"accelerate launch {' '.join(_accelerate_args(processes))} -m distill_core.cli train {config_path}"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def check_processes(processes: int) -> int:
    if not 1 <= processes <= MAX_PROCESSES:
        raise ConfigError(f"Processes = {processes}: give 1 to {MAX_PROCESSES} (one per GPU of this machine)")
    return processes


def processes_of(run_dir: Path) -> int:
    """The process count the run was started with (1 for runs started before it was kept)."""
    run = RunFolder(run_dir)
    n = run.read_json(run.root / LAUNCH).get("processes", 1)
    return n if isinstance(n, int) and 1 <= n <= MAX_PROCESSES else 1


def child_env() -> dict[str, str]:
    """The UI's environment, importing the same distill_core, offline, unbuffered."""
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(CODE_ROOT), env.get("PYTHONPATH", "")) if p)
    env.update(HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1", PYTHONUNBUFFERED="1")
    return env


def run_state(run: RunFolder) -> str:
    """RunFolder.effective_state(), plus 'died' for a start whose UI died before it had a process."""
    state, status = run.effective_state(), run.read_status()
    if state == "starting" and not status.get("pid") and time.time() - status.get("updated", 0) > LOCK_STALE_SECONDS:
        return "died"
    return state


@contextmanager
def launch_lock(root: Path) -> Iterator[None]:
    """Exclusive while a run is being started; refuses with RunBusy if another start holds it."""
    path = root / LOCK
    for attempt in range(2):
        try:
            fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
            break
        except FileExistsError:
            try:
                age = time.time() - path.stat().st_mtime
            except FileNotFoundError:
                continue
            if attempt or age < LOCK_STALE_SECONDS:
                raise RunBusy(f"run {root.name!r} is being started right now (another click, tab or UI); "
                              "it appears in the Monitor in a moment") from None
            path.unlink(missing_ok=True)
    else:
        raise RunBusy(f"run {root.name!r} is being started right now")
    try:
        os.write(fd, f"{os.getpid()}\n".encode())
        os.close(fd)
        yield
    finally:
        path.unlink(missing_ok=True)


def existing_run_note(cfg: Config) -> str:
    """'' for a new run; a note when the folder holds this run (starting continues it); refuses otherwise."""
    run = RunFolder(Path(cfg.run.output_dir))
    name, state = run.root.name, run_state(run)
    if state in ACTIVE_STATES:
        pid = run.read_status().get("pid")
        raise RunBusy(f"run {name!r} is already {state} (pid {pid}); watch it in the Monitor, or stop it first")
    config = run.file(run.config_path)
    if config is None:
        return ""
    diff = config_differences(resolve(load_run_config(config)), cfg)
    if diff:
        raise ConfigError(f"run {name!r} already exists with another config (differs in {', '.join(diff)}); "
                          "choose a new run name, or delete that folder to start over")
    step = run.read_status().get("step", 0)
    return (f"run {name!r} already exists ({state}, step {step}); starting it continues from its newest "
            "checkpoint")


@dataclass
class Started:
    run_dir: Path
    pid: int
    note: str


def _write_config(run: RunFolder, cfg: Config, processes: int) -> str:
    """The run's config.toml and launch.json written (refused if the run is active or is another run); the
    existing-run note."""
    note = existing_run_note(cfg)
    log_path = run.root / LOG
    if log_path.is_symlink() and run.file(log_path) is None:  # appending would write outside the run
        raise PathRefused(f"{log_path} is a link that leads outside the run folder; remove it and start again")
    atomic_write_text(run.config_path, cfg.to_toml())
    atomic_write_text(run.root / LAUNCH, json.dumps({"processes": check_processes(processes)}))
    return note


def start(cfg: Config, processes: int = 1) -> Started:
    """Write the run's config and start its training process(es) (refused if it is already active)."""
    run = RunFolder(Path(cfg.run.output_dir))
    run.create()
    with launch_lock(run.root):
        note = _write_config(run, cfg, processes)
        for stale in ("stop", "save"):  # requests left from an earlier process must not stop this one
            (run.control / stale).unlink(missing_ok=True)
        log_path = run.root / LOG
        run.write_status("starting", pid=None, max_steps=cfg.run.max_steps, message="starting the training process")
        command = train_command(run.config_path, processes)
        try:
            with open(log_path, "ab") as log:
                log.write(f"\n--- {time.strftime('%Y-%m-%d %H:%M:%S')} trainer UI: {' '.join(command)}\n".encode())
                log.flush()
                proc = subprocess.Popen(command, cwd=CODE_ROOT, env=child_env(), stdin=subprocess.DEVNULL,
                                        stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        except OSError as e:
            run.write_status("failed", message=f"could not start {command[0]}: {e}")
            raise DPDMDError(f"could not start the training process: {e}") from None
        run.write_status("starting", pid=proc.pid, host=os.uname().nodename, message="loading the teacher")
    # Reap the child when it exits, so a crash reads as 'died' rather than as a live zombie.
    threading.Thread(target=proc.wait, name=f"reap-{proc.pid}", daemon=True).start()
    return Started(run.root, proc.pid, note)


def run_config(run_dir: Path, why: str = "resumed") -> Config:
    """A run folder's own resolved config.toml, with the folder as its output (wherever the folder now is)."""
    run = RunFolder(run_dir)
    config = run.file(run.config_path)
    if config is None:
        raise ConfigError(f"{run.root.name!r} has no config.toml, so it cannot be {why}")
    cfg = resolve(load_run_config(config))
    cfg.run.output_dir = str(run.root)
    return cfg


@dataclass
class Queued:
    run_dir: Path
    device: str
    position: int  # 1: starts next on its device
    working: list[str]  # the runs working on that device now
    note: str


class Devices:
    """The runs folder's devices: at most ``limit`` runs work on each; a start beyond that waits in its queue
    (distill_core.run_queue), and ``dispatch`` starts queued runs as devices free up."""

    def __init__(self, runs_dir: Path, cuda: bool, limit: int = 1) -> None:
        self.queue, self.cuda, self.limit = RunQueue(runs_dir), cuda, limit

    def device(self, run_device: str) -> str:
        return device_of(run_device, self.cuda)

    def working(self) -> dict[str, str]:
        """Each run a process works on now (starting, running, finishing), with its device."""
        out = {}
        for d in self.queue.runs_dir.iterdir() if self.queue.runs_dir.is_dir() else ():
            run = RunFolder(d)
            if d.is_dir() and run_state(run) in ACTIVE_STATES:
                config = run.file(run.config_path)
                try:
                    table = parse_toml(config.read_text(encoding="utf-8"), str(config)) if config else {}
                except (OSError, ConfigError):
                    table = {}
                out[d.name] = self.device(str(table.get("run", {}).get("device", "auto")))
        return out

    def start_or_queue(self, cfg: Config, processes: int = 1) -> Started | Queued:
        """Start ``cfg``'s run now if its device has room and nobody waits for it, else queue it last."""
        run = RunFolder(Path(cfg.run.output_dir))
        name, device = run.root.name, self.device(cfg.run.device)
        with self.queue.locked() as entries:  # held: no dispatch starts a run between the count and the start
            if any(e.run == name for e in entries):
                place = [e.run for e in entries if e.device == device].index(name) + 1
                raise RunBusy(f"run {name!r} is already queued (#{place} on {device}); the Monitor shows the queue")
            working = [n for n, d in self.working().items() if d == device and n != name]
            if len(working) < self.limit and not any(e.device == device for e in entries):
                return start(cfg, processes)
            run.create()
            with launch_lock(run.root):
                note = _write_config(run, cfg, processes)
            entries.append(Entry(name, device, round(time.time(), 3)))
            place = sum(e.device == device for e in entries)
        return Queued(run.root, device, place, working, note)

    def cancel(self, run_dir: Path) -> str:
        """Take a queued run out of the queue; it stays as a stopped run that Start again queues again."""
        self.queue.cancel(run_dir.name)
        RunFolder(run_dir).write_status("stopped", max_steps=run_config(run_dir, "cancelled").run.max_steps,
                                        message="cancelled while queued (it never started)")
        return f"took {run_dir.name!r} out of the queue; Start again queues it again"

    def dispatch(self) -> list[str]:
        """Start the queued runs whose device has room (each UI process calls this every few seconds)."""
        def counts() -> dict[str, int]:
            out: dict[str, int] = {}
            for device in self.working().values():
                out[device] = out.get(device, 0) + 1
            return out

        def begin(name: str) -> Started:
            run_dir = self.queue.runs_dir / name
            return start(run_config(run_dir), processes_of(run_dir))

        return self.queue.dispatch(counts, self.limit, begin)


def dispatch_forever(devices: Devices, every: float = 2.0) -> None:
    """The UI process's queue keeper: a queued run starts when a device frees up, with or without a page open
    (and after a UI restart: the queue is a file)."""
    while True:
        try:
            for name in devices.dispatch():
                print(f"queue: started {name}", flush=True)
        except DPDMDError as e:  # that run left the queue; the others go on
            print(f"queue: a queued run could not start: {e}", file=sys.stderr, flush=True)
        time.sleep(every)


def delete(run_dir: Path, runs_dir: Path) -> str:
    """Delete a run folder and everything in it: only a folder directly inside the runs folder (not a link), and
    never while a process works on it or it waits in the queue."""
    run = RunFolder(run_dir)
    if run_dir.is_symlink() or not run_dir.is_dir() or run_dir.resolve().parent != runs_dir.resolve():
        raise PathRefused(f"{run_dir.name!r} is not a run folder inside the runs folder {runs_dir}; nothing deleted")
    with launch_lock(run.root):  # no Start of this run gets between the checks and the deletion
        state = run_state(run)
        if state in ACTIVE_STATES:
            raise RunBusy(f"run {run.root.name!r} is {state}; stop it first (a working run is never deleted)")
        if any(e.run == run.root.name for e in RunQueue(runs_dir).entries()):
            raise RunBusy(f"run {run.root.name!r} waits in the queue; cancel it first")
        shutil.rmtree(run_dir)
    return f"deleted {run.root.name!r} and all its files"


def request(run_dir: Path, what: str) -> str:
    """Ask a running trainer to 'stop' (checkpoint, then exit) or 'save' (checkpoint now)."""
    run = RunFolder(run_dir)
    state = run_state(run)
    if state not in TRAINING_STATES:
        raise RunBusy(f"run {run.root.name!r} is {state}; only a running run can be asked to {what}")
    run.request(what)
    if what == "stop":
        return f"asked {run.root.name!r} to stop: it finishes the current step, writes a checkpoint and exits"
    return f"asked {run.root.name!r} for a checkpoint: it is written after the current step"
