"""A diverged run keeps only finite checkpoints and can be resumed with a lower rate; branching; 'finishing'."""
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from distill_core.errors import TrainingDiverged
from distill_core.integrity import first_nonfinite
from distill_core.runfolder import RunFolder
from distill_core.training.trainer import train
from distill_core.training import checkpoint as ckpt

ROOT = Path(__file__).resolve().parent.parent


def test_exploding_rates_leave_only_finite_checkpoints_and_a_lower_rate_resumes(tiny):
    cfg = tiny(run__max_steps=4, run__checkpoint_every=1, optim__student_lr=3.0, optim__fake_lr=3.0)
    with pytest.raises(TrainingDiverged, match="Lower optim.student_lr") as err:
        train(cfg, progress=False, finish=False)
    run = RunFolder(Path(cfg.run.output_dir))
    kept = ckpt.list_complete(run.checkpoints)
    for folder in kept:
        for f in folder.glob("*.safetensors"):
            assert first_nonfinite(load_file(str(f)).items()) is None, f"{folder.name}/{f.name} holds NaN or inf"
    newest = ckpt.latest(run.checkpoints)
    named = f"{newest.name} is the newest checkpoint" if newest else "no checkpoint was written yet"
    assert named in str(err.value) and run.read_status()["state"] == "failed"

    cfg.optim.student_lr = cfg.optim.fake_lr = 1e-4  # the advice of the message, followed
    train(cfg, progress=False, finish=False)
    assert run.read_status()["state"] == "stopped" and ckpt.latest(run.checkpoints).name == "step_00000004"
    resumed = [e for e in run.read_events() if e["event"] == "resume"]
    assert bool(resumed) == bool(newest)


def test_branching_from_a_checkpoint_equals_the_unbroken_run(tiny):
    straight = tiny("straight", run__max_steps=4)
    train(straight, progress=False, finish=False)
    source = ckpt.latest(Path(straight.run.output_dir) / "checkpoints").parent / "step_00000002"
    (source / "stranger.html").write_text("<script>alert(1)</script>")  # not the checkpoint's: must not travel
    branch = tiny("branch", run__max_steps=4, run__branch_from=str(source))
    train(branch, progress=False, finish=False)
    copied = Path(branch.run.output_dir) / "checkpoints" / "step_00000002"
    assert not (copied / "stranger.html").exists() and (copied / ckpt.MARKER).is_file()
    a = load_file(str(Path(straight.run.output_dir) / "checkpoints/step_00000004/student.safetensors"))
    b = load_file(str(Path(branch.run.output_dir) / "checkpoints/step_00000004/student.safetensors"))
    assert all(torch.equal(a[k], b[k]) for k in a)
    events = RunFolder(Path(branch.run.output_dir)).read_events()
    assert [e["step"] for e in events if e["event"] == "step"] == [3, 4]


def test_branch_from_a_folder_that_is_not_a_checkpoint_is_refused(tiny, tmp_path):
    from distill_core.errors import ConfigError

    with pytest.raises(ConfigError, match="run.branch_from .* is not a complete checkpoint folder"):
        train(tiny(run__branch_from=str(tmp_path)), progress=False, finish=False)


KILLED_WHILE_FINISHING = """
import os, sys
sys.path[:0] = [{root!r}, {tests!r}]
import distill_core.training.finish as finish
from conftest import tiny_config
from distill_core.runfolder import RunFolder
from distill_core.training.trainer import train

def killed(trainer):
    print("STATE", RunFolder(trainer.run.root).read_status()["state"], flush=True)
    os._exit(9)

finish.finish_run = killed
train(tiny_config({out!r}, run__max_steps=2), progress=False)
"""


def test_a_run_killed_while_finishing_shows_died_and_train_again_completes_it(tmp_path):
    out = tmp_path / "run"
    code = KILLED_WHILE_FINISHING.format(root=str(ROOT), tests=str(ROOT / "tests"), out=str(out))
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300,
                          env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert proc.returncode == 9 and "STATE finishing" in proc.stdout, proc.stderr[-2000:]
    run = RunFolder(out)
    assert run.effective_state() == "died" and not run.student_path.exists()

    sys.path.insert(0, str(ROOT / "tests"))
    from conftest import tiny_config

    train(tiny_config(out, run__max_steps=2), progress=False)
    assert run.read_status()["state"] == "finished"
    assert run.student_path.exists() and run.metrics_path.exists() and run.report_path.exists()


def test_a_refused_start_leaves_the_finished_runs_status_alone(tiny):
    from distill_core.errors import ConfigError

    cfg = tiny(run__max_steps=2)
    train(cfg, progress=False, finish=False)
    run = RunFolder(Path(cfg.run.output_dir))
    before = run.status_path.read_text()
    cfg.method.diversity_weight = 0.5  # another run in the same folder
    with pytest.raises(ConfigError, match="differs in method.diversity_weight"):
        train(cfg, progress=False, finish=False)
    assert run.status_path.read_text() == before


@pytest.mark.parametrize("where", ["a file", "under a file"])
def test_an_output_dir_that_cannot_be_a_folder_names_the_field(tiny, tmp_path, where):
    from distill_core.errors import ConfigError

    (tmp_path / "f").write_text("x")
    out = tmp_path / "f" if where == "a file" else tmp_path / "f" / "run"
    with pytest.raises(ConfigError, match="run.output_dir .* cannot be a run folder"):
        train(tiny(run__output_dir=str(out)), progress=False, finish=False)
