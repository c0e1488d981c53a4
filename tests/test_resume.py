"""Checkpoints: resume equals an unbroken run, bit for bit; broken checkpoints are skipped."""
import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from distill_core import checkpoint as ckpt
from distill_core.train import Trainer, restore_schedule, train, warmup_schedule


def _weights(run_dir):
    last = ckpt.latest(run_dir / "checkpoints")
    names = ("student", "fake", "optim_student", "optim_fake", "ema")
    return {n: load_file(str(last / f"{n}.safetensors")) for n in names if (last / f"{n}.safetensors").exists()}


@pytest.mark.parametrize("ema, warmup", [(0.0, 0), (0.9, 3)])
def test_resume_equals_uninterrupted_run(tiny, ema, warmup):
    """The resume lands mid warm-up in the second case: the LR schedule's state travels with the checkpoint."""
    straight = tiny("straight", run__max_steps=4, student__ema_decay=ema, optim__warmup_steps=warmup)
    train(straight, progress=False, finish=False)

    broken = tiny("broken", run__max_steps=2, student__ema_decay=ema, optim__warmup_steps=warmup)
    train(broken, progress=False, finish=False)  # stops after 2 steps with a checkpoint
    broken.run.max_steps = 4
    train(broken, progress=False, finish=False)  # resumes from step 2

    a, b = _weights(run_dir(straight)), _weights(run_dir(broken))
    assert ("ema" in a) is bool(ema)
    for name in a:
        assert a[name].keys() == b[name].keys()
        for key in a[name]:
            assert torch.equal(a[name][key], b[name][key]), f"{name}:{key} differs after resume"
    events = [json.loads(line) for line in (run_dir(broken) / "events.jsonl").read_text().splitlines()]
    assert [e["event"] for e in events].count("resume") == 1


def test_schedule_restored_from_its_step_alone_matches_a_stepped_one():
    """Checkpoints written before the LR schedule was saved resume with the same learning rates."""
    def schedule():
        opt = torch.optim.AdamW([torch.nn.Parameter(torch.zeros(1))], lr=1e-3)
        return warmup_schedule(opt, 5)

    stepped, restored = schedule(), schedule()
    for _ in range(3):
        stepped.optimizer.step()
        stepped.step()
    restore_schedule(restored, None, 3, 1e-3)
    assert restored.optimizer.param_groups[0]["lr"] == stepped.optimizer.param_groups[0]["lr"] == 1e-3 * 4 / 5
    assert restored.last_epoch == stepped.last_epoch


def run_dir(cfg) -> Path:
    return Path(cfg.run.output_dir)


def test_truncated_newest_checkpoint_is_skipped(tiny):
    cfg = tiny(run__max_steps=4)
    train(cfg, progress=False, finish=False)
    checkpoints = run_dir(cfg) / "checkpoints"
    newest = ckpt.latest(checkpoints)
    assert newest.name == "step_00000004"
    data = (newest / "student.safetensors").read_bytes()
    (newest / "student.safetensors").write_bytes(data[: len(data) // 2])
    assert ckpt.latest(checkpoints).name == "step_00000002"
    trainer = Trainer(cfg, progress=False)
    assert trainer.try_resume() and trainer.step == 2


def test_interrupted_write_leaves_previous_checkpoint(tiny):
    cfg = tiny(run__max_steps=2)
    train(cfg, progress=False, finish=False)
    checkpoints = run_dir(cfg) / "checkpoints"
    staged = ckpt.staging_dir(checkpoints, 99)  # a crash mid-write leaves only a staging folder
    (staged / "student.safetensors").write_bytes(b"partial")
    assert ckpt.latest(checkpoints).name == "step_00000002"


def test_nan_loss_stops_with_a_clear_message_and_keeps_the_last_checkpoint(tiny):
    from distill_core.errors import TrainingDiverged
    from distill_core.runfolder import RunFolder
    from distill_core.train import run_trainer

    cfg = tiny(run__max_steps=2)
    train(cfg, progress=False, finish=False)
    cfg.run.max_steps = 4
    trainer = Trainer(cfg, progress=False)
    with torch.no_grad():  # a poisoned teacher weight: its predictions, and so the losses, become NaN
        next(trainer.teacher.network.parameters()).fill_(float("nan"))
    with pytest.raises(TrainingDiverged, match="loss became nan at step 3; step_00000002 is the newest checkpoint and is kept"):
        run_trainer(trainer, finish=False)
    run = RunFolder(run_dir(cfg))
    assert run.read_status()["state"] == "failed" and "step_00000002" in run.read_status()["message"]
    assert ckpt.latest(run.checkpoints).name == "step_00000002"
    assert not any(p.name.startswith(".") for p in run.checkpoints.iterdir())  # no half-written checkpoint


def test_events_after_a_restart_read_as_one_timeline(tmp_path):
    """Curves in the report, the UI and the benchmark must not run backwards after a crash and restart."""
    from distill_core.runfolder import RunFolder

    run = RunFolder(tmp_path)
    run.append_event("start", step=0)
    for s in (1, 2, 3):  # died before its first checkpoint: the next attempt starts over
        run.append_event("step", step=s)
    run.append_event("start", step=0)
    for s in (1, 2, 3, 4):  # checkpoint at 2, died at 4
        run.append_event("step", step=s)
    run.append_event("resume", step=2)
    run.append_event("step", step=3)
    with open(run.events_path, "a") as f:
        f.write('{"event": "step", "st')  # torn last line of a kill
    assert [(e["event"], e["step"]) for e in run.read_events()] == [
        ("start", 0), ("step", 1), ("step", 2), ("resume", 2), ("step", 3)]
