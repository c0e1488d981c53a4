"""A run whose run.output_dir is relative (the default config's is) reads its own folder, from any directory.

Through the real CLI in subprocesses: train in one working directory, report from another, and read the
run as the UI does; the demo with a relative OUT; a relative folder moved and resumed.
"""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

from conftest import tiny_config
from distill_core.runfolder import RunFolder

ROOT = Path(__file__).resolve().parent.parent


def dpdmd(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    done = subprocess.run([sys.executable, "-m", "distill_core", *args], cwd=cwd, env=env, capture_output=True,
                          text=True, timeout=600)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    return done


def _relative_run(work: Path) -> Path:
    """`dpdmd train c.toml` in ``work`` with run.output_dir = "runs/rel"; the run folder."""
    work.mkdir()
    cfg = tiny_config("runs/rel")
    cfg.eval.diversity_every = cfg.eval.grid_every = 2
    (work / "c.toml").write_text(cfg.to_toml())
    dpdmd("train", "c.toml", cwd=work)
    return work / "runs" / "rel"


def test_a_relative_run_folder_reads_its_status_events_and_metrics(tmp_path):
    run_dir = _relative_run(tmp_path / "work")
    status = json.loads((run_dir / "status.json").read_text())
    assert status["state"] == "finished"
    # every status write kept what the earlier ones recorded (a dropped pid reads `running` forever)
    assert {"pid", "host", "step", "max_steps"} <= status.keys() and status["step"] == status["max_steps"] == 4
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert metrics["run"]["train_seconds"] > 0  # summed from the run's own events
    report = (run_dir / "report.html").read_text()
    assert "state: unknown" not in report and "step ? of ?" not in report
    assert "<img" in report  # the grids and curves, read from the run folder

    # The same report rebuilt from another working directory, through a relative path and an absolute one.
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    dpdmd("report", os.path.relpath(run_dir, elsewhere), cwd=elsewhere)
    relative = (run_dir / "report.html").read_text()
    dpdmd("report", str(run_dir), cwd=elsewhere)
    assert len(relative) == len((run_dir / "report.html").read_text()) > 20_000

    # What the Monitor reads: a RunFolder made from a relative path, in another working directory.
    cwd = Path.cwd()
    try:
        os.chdir(tmp_path)
        run = RunFolder(Path("work/runs/rel"))
        assert run.root.is_absolute()
        assert run.read_status()["step"] == 4 and run.effective_state() == "finished"
        assert any(e["event"] == "step" for e in run.read_events())
        assert run.read_json(run.metrics_path)["run"]["train_seconds"] > 0
        assert run.file("samples/teacher.png") is not None and run.student_grids()
        os.chdir(tmp_path / "work")
        assert RunFolder(Path("runs/rel")).read_status() == run.read_status()
    finally:
        os.chdir(cwd)


def test_a_relative_run_folder_moved_elsewhere_resumes_there(tmp_path):
    run_dir = _relative_run(tmp_path / "work")
    moved = tmp_path / "other" / "moved"
    moved.parent.mkdir()
    shutil.move(str(run_dir), moved)
    text = (moved / "config.toml").read_text().replace("max_steps = 4", "max_steps = 6")
    (moved / "config.toml").write_text(text)
    dpdmd("train", "moved/config.toml", cwd=moved.parent)
    status = json.loads((moved / "status.json").read_text())
    assert status["state"] == "finished" and status["step"] == 6
    assert not (tmp_path / "work" / "runs" / "rel").exists()  # nothing written back where it came from
