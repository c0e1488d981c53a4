"""The run folder: one trainer at a time, no leftovers from a kill, movable, and never read through a link out."""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

from distill_core.errors import RunRefused
from distill_core.runfolder import LOCK, RunFolder
from distill_core.training.trainer import train
from distill_core.training import checkpoint as ckpt

ROOT = Path(__file__).resolve().parent.parent
HOLD = ("import sys\nfrom distill_core.runfolder import RunFolder\n"
        "with RunFolder(sys.argv[1]).locked():\n    print('locked', flush=True)\n    sys.stdin.read()\n")


def test_a_second_trainer_is_refused_naming_the_pid_and_a_dead_ones_lock_is_taken_over(tiny):
    cfg = tiny(run__max_steps=2)
    train(cfg, progress=False, finish=False)
    run = RunFolder(Path(cfg.run.output_dir))
    status, events = run.status_path.read_bytes(), run.events_path.read_bytes()
    holder = subprocess.Popen([sys.executable, "-c", HOLD, str(run.root)], stdin=subprocess.PIPE,
                              stdout=subprocess.PIPE, text=True, env={**os.environ, "PYTHONPATH": str(ROOT)})
    try:
        assert holder.stdout.readline().strip() == "locked"
        cfg.run.max_steps = 4
        with pytest.raises(RunRefused, match=f"in use by another training process \\(pid {holder.pid} on "):
            train(cfg, progress=False, finish=False)
        assert run.status_path.read_bytes() == status and run.events_path.read_bytes() == events  # untouched
    finally:
        holder.kill()  # kill -9: the lock file stays behind, naming a dead pid
        holder.wait()
    assert json.loads((run.root / LOCK).read_text())["pid"] == holder.pid
    train(cfg, progress=False, finish=False)  # a stale lock is taken over
    assert run.read_status()["state"] == "stopped" and run.read_status()["step"] == 4
    assert json.loads((run.root / LOCK).read_text())["pid"] == os.getpid()


def test_a_refused_start_with_another_config_leaves_the_status(tiny):
    cfg = tiny(run__max_steps=2)
    train(cfg, progress=False, finish=False)
    run = RunFolder(Path(cfg.run.output_dir))
    status = run.status_path.read_bytes()
    cfg.method.anchor_step = 2
    with pytest.raises(RunRefused, match="differs in method.anchor_step"):
        train(cfg, progress=False, finish=False)
    assert run.status_path.read_bytes() == status and run.read_status()["state"] == "stopped"


def test_checkpoints_hold_only_their_files_and_leftovers_of_a_kill_are_removed(tiny):
    cfg = tiny(run__max_steps=2)
    run = RunFolder(Path(cfg.run.output_dir))
    run.create()
    staged = ckpt.staging_dir(run.checkpoints, 2)  # an attempt killed while writing step 2
    (staged / "rng_rank3.safetensors").write_bytes(b"from a 4-process attempt")
    (staged / ".tmpAbC123").write_bytes(b"safetensors' own temporary")
    old = time.time() - 3600
    leftovers = [run.root / ".student.safetensors.k1ll3d.tmp", run.root / ".tmpXyZ789"]
    for path in leftovers:
        path.write_bytes(b"x" * 1000)
        os.utime(path, (old, old))
    young = run.root / ".report.html.wr1t1ng.tmp"  # another process may be writing this one right now
    young.write_bytes(b"x")
    train(cfg, progress=False, finish=False)
    step2 = run.checkpoints / "step_00000002"
    names = {"student", "fake", "optim_student", "optim_fake", "rng_rank0"}
    assert {p.name for p in step2.iterdir()} == {f"{n}.safetensors" for n in names} | {"state.json", ckpt.MARKER}
    assert set(json.loads((step2 / ckpt.MARKER).read_text())["files"]) == {p.name for p in step2.iterdir()} - {
        ckpt.MARKER}
    assert not any(p.exists() for p in leftovers) and young.exists()
    assert not [p for p in run.checkpoints.iterdir() if p.name.startswith(".")]

    staged = ckpt.staging_dir(run.checkpoints, 8)  # finalize lists what the layout names, nothing else
    shutil.copy(step2 / "student.safetensors", staged / "student.safetensors")
    (staged / ".tmpQwErTy").write_bytes(b"interrupted")
    final = ckpt.finalize(run.checkpoints, 8, {"step": 8}, keep=5)
    assert sorted(p.name for p in final.iterdir()) == [ckpt.MARKER, "state.json", "student.safetensors"]


def test_a_moved_or_copied_run_folder_resumes_where_it_is(tiny, tmp_path, capsys):
    from distill_core.cli import main

    cfg = tiny("original", run__max_steps=2)
    train(cfg, progress=False, finish=False)
    original = Path(cfg.run.output_dir)
    copied = Path(shutil.copytree(original, tmp_path / "elsewhere" / "copied"))
    assert main(["train", str(copied / "config.toml"), "--max-steps", "4", "--no-finish"]) == 0
    assert "is the config of the run folder" in capsys.readouterr().err
    assert ckpt.latest(copied / "checkpoints").name == "step_00000004"
    assert ckpt.latest(original / "checkpoints").name == "step_00000002"  # the original is left alone
    events = [json.loads(line) for line in (copied / "events.jsonl").read_text().splitlines()]
    assert [e["step"] for e in events if e["event"] == "resume"] == [2]
    assert f'output_dir = "{copied}"' in (copied / "config.toml").read_text()

    moved = original.rename(tmp_path / "moved")
    cfg.run.output_dir, cfg.run.max_steps = str(moved), 4  # a config naming the new place (--output-dir)
    train(cfg, progress=False, finish=False)
    assert ckpt.latest(moved / "checkpoints").name == "step_00000004"


def test_run_files_are_read_only_inside_the_run_folder(tmp_path):
    from distill_core.evaluation.report import write_report

    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "status.json").write_text(json.dumps({"state": "running", "message": "SECRET"}))
    (outside / "events.jsonl").write_text(json.dumps({"event": "step", "step": 1, "loss_dmd": 0.5}) + "\n")
    (outside / "metrics.json").write_text(json.dumps({"teacher": {"diversity": 0.5}}))
    (outside / "config.toml").write_text("# SECRET\n")
    run = RunFolder(tmp_path / "run")
    run.create()
    for name in ("status.json", "events.jsonl", "metrics.json", "config.toml"):
        (run.root / name).symlink_to(outside / name)
    (run.samples / "step_00000002.png").symlink_to(outside / "metrics.json")
    (run.samples / "inside.png").write_bytes(b"png")
    (run.samples / "step_00000004.png").symlink_to(run.samples / "inside.png")  # a link within the run is fine
    assert run.read_status() == {} and run.read_events() == [] and run.read_json(run.metrics_path) == {}
    assert run.file("config.toml") is None and run.file("missing") is None
    assert run.student_grids() == [(run.samples / "inside.png").resolve()]
    report = write_report(run.root).read_text()
    assert "SECRET" not in report and "state: <b>unknown</b>" in report
