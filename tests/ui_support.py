"""Helpers for the trainer UI tests: the tiny wizard form, finished runs, UI processes, waiting."""
from __future__ import annotations

import dataclasses
import json
import os
import shutil
import signal
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable
from pathlib import Path

from conftest import tiny_config
from ports import free_port

from distill_core.config import dumps_toml, resolve
from distill_core.runfolder import RunFolder, pid_alive
from trainer_ui.wizard import NO_PRESET, WizardForm

REPO = Path(__file__).resolve().parent.parent


def tiny_form(name: str, **overrides) -> WizardForm:
    """The wizard filled in with conftest's tiny_config values (eval settings go in the advanced box)."""
    cfg = tiny_config("unused", **overrides)
    e, resolved = cfg.eval, resolve(cfg)
    extra = dumps_toml({"eval": {"prompts": e.prompts, "seeds": e.seeds, "grid_prompts": e.grid_prompts,
                                 "grid_seeds": e.grid_seeds, "fd_samples_per_prompt": e.fd_samples_per_prompt}})
    return WizardForm(family="builtin", teacher_path="", resolution=1024,  # for the tests that switch to sd3 / sdxl
                      builtin=cfg.teacher.builtin,
                      fake_lr=resolved.optim.fake_lr, prompts="", prompts_file="", method=cfg.method.name, anchor_step=cfg.method.anchor_step,
                      diversity_weight=resolved.method.diversity_weight, student_steps=cfg.student.num_steps,
                      guidance_scale=2.0, teacher_steps=cfg.teacher.num_steps, max_steps=cfg.run.max_steps,
                      batch_size=cfg.data.batch_size, memory=NO_PRESET, run_name=name, processes=1,
                      fake_updates=cfg.method.fake_updates, seed=cfg.run.seed,
                      checkpoint_every=cfg.run.checkpoint_every, grid_every=cfg.eval.grid_every,
                      diversity_every=cfg.eval.diversity_every, tensorboard=False, extra_toml=extra)


def diffusers_skeleton(path: Path, family: str) -> Path:
    """A folder laid out as a diffusers teacher of ``family`` (index, component folders, an empty safetensors
    file): what the wizard's folder check reads, without weights anyone could load."""
    from distill_core.teachers.diffusers_base import teacher_class

    kind = teacher_class(family)
    index = {"_class_name": kind.pipeline_class}
    for sub in (kind.net_folder, *kind.required):
        (path / sub).mkdir(parents=True)
        index[sub] = ["diffusers", "Placeholder"]
    (path / kind.net_folder / "diffusion_pytorch_model.safetensors").write_bytes(b"")
    (path / kind.net_folder / "config.json").write_text("{}")  # what the resolution check reads: no limits
    (path / "vae" / "config.json").write_text(json.dumps({"block_out_channels": [1, 1, 1, 1]}))
    (path / "vae" / "diffusion_pytorch_model.safetensors").write_bytes(b"")
    (path / "model_index.json").write_text(json.dumps(index))
    return path


def values(form: WizardForm) -> list:
    """The form as the page passes it to the handlers (positional, in FIELDS order)."""
    return [getattr(form, f.name) for f in dataclasses.fields(form)]


_FINISHED: dict[str, Path] = {}


def finished_runs(tmp_path_factory) -> dict[str, Path]:
    """Two finished tiny runs, DP-DMD and DMD, trained once per test session (in-process)."""
    if not _FINISHED:
        from distill_core.training.trainer import train

        root = tmp_path_factory.mktemp("finished")
        for method in ("dpdmd", "dmd"):
            out = root / f"done-{method}"
            train(tiny_config(out, run__max_steps=2, method__name=method), progress=False)
            _FINISHED[method] = out
    return dict(_FINISHED)


def copy_run(src: Path, runs_dir: Path) -> Path:
    """A finished run's files (not its checkpoints) under another runs folder."""
    return Path(shutil.copytree(src, runs_dir / src.name, ignore=shutil.ignore_patterns("checkpoints")))


def wait_for(predicate: Callable[[], object], timeout: float, what: str, log: Path | None = None):
    """Poll until ``predicate()`` is truthy; fail naming ``what`` (with a log's tail) on timeout."""
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        result = predicate()
        if result:
            return result
        time.sleep(0.25)
    tail = log.read_text(errors="replace")[-3000:] if log and log.exists() else ""
    raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}\n{tail}")


def stop_trainers(runs_dir: Path, timeout: float = 30.0) -> None:
    """End the training processes the UI under test started (SIGTERM is a graceful stop)."""
    if not runs_dir.is_dir():
        return
    pids = []
    for d in runs_dir.iterdir():
        run = RunFolder(d)
        pid = run.read_status().get("pid")
        if run.effective_state() in ("starting", "running") and pid and int(pid) != os.getpid() and pid_alive(int(pid)):
            os.kill(int(pid), signal.SIGTERM)
            pids.append(int(pid))
    end = time.monotonic() + timeout
    for pid in pids:
        while pid_alive(pid) and time.monotonic() < end:
            time.sleep(0.2)
        if pid_alive(pid):
            os.kill(pid, signal.SIGKILL)


class UIProcess:
    """``python -m trainer_ui`` in its own process, as a user starts it."""

    def __init__(self, runs_dir: Path, log: Path, port: int | None = None) -> None:
        self.port = port or free_port()
        self.url = f"http://127.0.0.1:{self.port}/"
        self.log = log
        env = {**os.environ, "PYTHONPATH": str(REPO), "GRADIO_ANALYTICS_ENABLED": "False", "HF_HUB_OFFLINE": "1",
               "TRANSFORMERS_OFFLINE": "1"}
        with open(log, "ab") as out:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "trainer_ui", "--runs-dir", str(runs_dir), "--port", str(self.port),
                 "--refresh", "1"], cwd=REPO, env=env, stdout=out, stderr=subprocess.STDOUT,
                start_new_session=True)  # its own process group, like a UI started from a terminal

    def _ready(self) -> bool:
        if self.proc.poll() is not None:
            raise AssertionError(f"the UI process exited ({self.proc.returncode}):\n{self.log.read_text()[-3000:]}")
        try:
            with urllib.request.urlopen(self.url, timeout=2) as r:
                return r.status == 200
        except OSError:
            return False

    def __enter__(self) -> UIProcess:
        wait_for(self._ready, 120, f"the UI at {self.url}", self.log)
        return self

    def kill(self) -> None:
        """Hang up the UI's whole process group, as closing its terminal does, then make sure it is gone."""
        try:
            os.killpg(self.proc.pid, signal.SIGHUP)
        except ProcessLookupError:
            pass
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(timeout=30)

    def __exit__(self, *exc) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.kill()
