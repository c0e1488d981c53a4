"""Issue 29.5: every long phase shows its name and progress, in the terminal (tqdm) and in status.json (the
Monitor reads it); the time left comes from a running median of step times, without the warm-up step."""
from __future__ import annotations

from pathlib import Path

from distill_core import progress
from distill_core.runfolder import RunFolder
from trainer_ui import app, runs
from trainer_ui.paths import Roots


def _phase(run: RunFolder):
    return run.read_status().get("phase")


def test_a_phase_is_in_the_status_while_it_runs_and_nests(tmp_path, capsys):
    run = RunFolder(tmp_path / "run")
    run.create()
    run.write_status("starting", step=0, max_steps=10)
    with progress.reporting(run, show=True):
        with progress.phase("evaluation", 2) as outer:
            assert _phase(run) == {"name": "evaluation", "done": 0, "total": 2}
            with progress.phase("sampling the teacher", 4, "img") as inner:
                for _ in range(4):
                    inner.advance()
                assert _phase(run) == {"name": "sampling the teacher", "done": 4, "total": 4}
            assert _phase(run)["name"] == "evaluation"  # the outer phase shows again
            outer.advance(2)
        assert _phase(run) is None
    assert "sampling the teacher" in capsys.readouterr().err  # the tqdm bar
    run.write_status("finished")
    with progress.reporting(run, show=False), progress.phase("late"):
        assert "phase" not in run.read_status()  # a finished run's status is left alone


def test_a_new_state_drops_the_old_states_progress(tmp_path):
    run = RunFolder(tmp_path / "run")
    run.create()
    run.write_status("running", step=3, sec_per_step=0.5, eta_seconds=10.0, phase={"name": "x", "done": 0})
    run.write_status("stopped", step=3)
    assert not {"phase", "sec_per_step", "eta_seconds"} & set(run.read_status())


def test_the_clock_leaves_out_the_warm_up_step():
    clock = progress.StepClock()
    clock.add(300.0)  # step 1: allocations, the first grid
    assert clock.left(100) is None
    clock.add(1.0)
    assert clock.left(100) is None  # one step is no median yet
    clock.add(3.0)
    clock.add(2.0)
    assert clock.sec_per_step == 2.0 and clock.left(100) == 200.0


def test_the_monitor_shows_the_trainers_phase_and_time_left(tmp_path):
    settings = app.Settings(Roots(tmp_path / "runs", []))
    run = RunFolder(settings.roots.runs / "r")
    run.create()
    (run.root / "config.toml").write_text("[run]\nmax_steps = 10\n")
    run.write_status("running", step=2, max_steps=10, sec_per_step=1.5, eta_seconds=12.0,
                     phase={"name": "encoding the prompts", "done": 3, "total": 8})
    status = app.refresh(settings, "r", None).status
    assert "encoding the prompts</b>: 3 / 8" in status and "<progress value='3' max='8'>" in status
    assert "0.2 min left" in status and "1.50 s/step" in status
    run.write_status("running", step=2, max_steps=10, phase=None, sec_per_step=None, eta_seconds=None)
    status = app.refresh(settings, "r", None).status
    assert "measuring the first steps" in status and "min left" not in status
    assert runs.view(run.root).phase is None


def test_a_training_run_names_its_phases_in_the_terminal(tiny, capfd):
    from distill_core.training.trainer import train

    cfg = tiny("dmd", method__name="dmd", run__max_steps=3)
    train(cfg, progress=True)
    err = capfd.readouterr().err
    for name in ("loading the builtin teacher", "sampling the teacher's seed grid",
                 "evaluation: sampling the teacher's reference images", "evaluation: sampling the student",
                 "exporting the student", "writing the report"):
        assert name in err, name
    assert "left=measuring" in err and "div_loss" not in err and "diversity=" not in err  # DMD, nothing measured
    status = RunFolder(Path(cfg.run.output_dir)).read_status()
    assert status["state"] == "finished" and "phase" not in status

