"""How a run ends when it does not simply finish: a signal, --no-finish, a full disk, a killed writer, a
divergence caused by an extreme setting. Each says what happened and what to do, in the status and the exit code."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from conftest import tiny_config
from distill_core.cli import main
from distill_core.errors import DiskFull
from distill_core.runfolder import RunFolder
from distill_core.training import checkpoint as ckpt
from distill_core.training.trainer import Trainer

ROOT = Path(__file__).resolve().parent.parent


def test_sigterm_checkpoints_records_stopped_and_exits_143_then_the_same_command_finishes(tmp_path):
    cfg = tiny_config(tmp_path / "run", run__max_steps=200, run__checkpoint_every=1000)
    config = tmp_path / "c.toml"
    config.write_text(cfg.to_toml())
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen([sys.executable, "-m", "distill_core", "train", str(config), "--no-finish"], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    run = RunFolder(cfg.run.output_dir)
    deadline = time.monotonic() + 300
    while run.read_status().get("step", 0) < 1 and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.2)
    proc.send_signal(signal.SIGTERM)
    out, err = proc.communicate(timeout=300)
    assert proc.returncode == 128 + signal.SIGTERM, err[-2000:]
    status = run.read_status()
    assert status["state"] == "stopped" and "run the same command again" in status["message"]
    assert ckpt.latest(run.checkpoints).name == ckpt.step_dir_name(status["step"])  # the step it stopped at
    assert "Traceback" not in err


def test_no_finish_is_not_finished_until_the_same_command_finishes_it(tmp_path, capsys):
    cfg = tiny_config(tmp_path / "run", run__max_steps=2)
    config = tmp_path / "c.toml"
    config.write_text(cfg.to_toml())
    assert main(["train", str(config), "--no-finish"]) == 0
    run = RunFolder(cfg.run.output_dir)
    status = run.read_status()
    assert status["state"] == "stopped" and "--no-finish" in status["message"] and not run.student_path.exists()
    assert main(["train", str(config)]) == 0
    assert run.read_status()["state"] == "finished" and run.student_path.is_file() and run.report_path.is_file()


def test_a_killed_writers_temporary_goes_at_the_next_start_not_ten_minutes_later(tmp_path):
    run = RunFolder(tmp_path / "run")
    run.create()
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    killed = run.root / f".report.html.{dead.pid}-abc123.tmp"  # what atomic_target names its temporaries
    alive = run.root / f".metrics.json.{os.getpid()}-def456.tmp"  # a live writer's: kept
    for path in (killed, alive):
        path.write_text("partial")
    with run.locked():
        pass
    assert not killed.exists() and alive.exists()


@pytest.fixture
def full_disk(tmp_path):
    """A file on a real, tiny file system (a 64 KiB tmpfs): writing more than that fails with ENOSPC."""
    from conftest import require

    mount = tmp_path / "tiny_fs"
    mount.mkdir()
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=64k", "tmpfs", str(mount)],
                             capture_output=True).returncode == 0
    require(mounted, "a 64 KiB tmpfs (mount as root)", "run the tests as root, as CI does")
    yield mount / "checkpoint.safetensors"
    subprocess.run(["umount", str(mount)], check=True)


def test_a_full_disk_is_one_line_naming_the_file_the_space_and_the_intact_checkpoint(tmp_path, capsys, monkeypatch,
                                                                                      full_disk):
    # The checkpoint's files are written to the full file system while "on": safetensors meets a real ENOSPC.
    full = {"on": False}

    def to_a_full_disk(tensors, path, metadata=None):
        save_file(tensors, str(full_disk) if full["on"] else path, metadata=metadata)

    with pytest.raises(DiskFull, match=r"no space left on the disk writing .*checkpoint.safetensors \(it needs 4.0 MB"):
        ckpt.save_tensors(full_disk, {"w": torch.ones(2 ** 20)})  # the translation itself, no redirection
    monkeypatch.setattr(ckpt, "save_file", to_a_full_disk)
    cfg = tiny_config(tmp_path / "run", run__max_steps=4, run__checkpoint_every=2)
    config = tmp_path / "c.toml"
    config.write_text(cfg.to_toml())
    assert main(["train", str(config), "--no-finish", "--max-steps", "2"]) == 0
    capsys.readouterr()
    full["on"] = True
    assert main(["train", str(config), "--no-finish"]) == 2
    err = [line for line in capsys.readouterr().err.splitlines() if line.startswith("error")]
    assert len(err) == 1 and "no space left on the disk writing" in err[0] and "MB are free" in err[0], err
    assert "the previous checkpoint step_00000002 is intact" in err[0] and "run the same command again" in err[0]
    run = RunFolder(cfg.run.output_dir)
    assert [p.name for p in ckpt.list_complete(run.checkpoints)] == ["step_00000002"]
    assert not list(run.checkpoints.glob(".*.tmp"))  # the partial checkpoint is gone
    full["on"] = False
    assert main(["train", str(config), "--no-finish"]) == 0  # space freed: the same command resumes
    assert ckpt.latest(run.checkpoints).name == "step_00000004"


def test_a_divergence_under_an_extreme_setting_names_that_setting_not_the_learning_rates(tmp_path):
    sane = Trainer(tiny_config(tmp_path / "a"), progress=False)
    assert "Lower optim.student_lr" in sane._diverged("the DMD loss became nan")
    wild = Trainer(tiny_config(tmp_path / "b", teacher__guidance_scale=60.0, method__diversity_weight=50.0),
                   progress=False)
    message = wild._diverged("the DMD loss became nan")
    assert "teacher.guidance_scale = 60 (default" in message and "lambda) = 50" in message
    assert "Lower optim.student_lr" not in message and "run.branch_from" in message

