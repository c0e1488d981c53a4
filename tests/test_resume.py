"""Checkpoints: resume equals an unbroken run, bit for bit; broken checkpoints are skipped."""
import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from distill_core.errors import CheckpointError
from distill_core.training.trainer import Trainer, restore_schedule, train, warmup_schedule
from distill_core.training import checkpoint as ckpt


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
    from distill_core.training.trainer import run_trainer

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


# ---- integrity: checksums, finite states, reported fallbacks -------------------------------------------
def _flip_tensor_bytes(path: Path) -> None:
    """Same-size damage inside the tensor data (the header, and so the size check, stay intact)."""
    data = bytearray(path.read_bytes())
    start = 8 + int.from_bytes(data[:8], "little")
    data[start + 16: start + 48] = bytes(255 - b for b in data[start + 16: start + 48])
    path.write_bytes(bytes(data))


def _poison(folder: Path, name: str) -> str:
    """Rewrite one tensor file with a NaN, as a diverged state would be saved, keeping its marker consistent."""
    from safetensors import safe_open
    from safetensors.torch import save_file

    from distill_core.integrity import sha256_file

    path = folder / name
    with safe_open(str(path), framework="pt") as f:
        meta = f.metadata()
    tensors = load_file(str(path))
    key = sorted(k for k, v in tensors.items() if v.is_floating_point())[0]
    tensors[key] = torch.full_like(tensors[key], float("nan"))
    save_file(tensors, str(path), metadata=meta)
    marker = json.loads((folder / ckpt.MARKER).read_text())
    marker["files"][name] = {"size": path.stat().st_size, "sha256": sha256_file(path)}
    (folder / ckpt.MARKER).write_text(json.dumps(marker))
    return key


def test_same_size_damage_and_nan_states_are_skipped_and_said(tiny, capsys):
    cfg = tiny(run__max_steps=6)
    train(cfg, progress=False, finish=False)
    checkpoints = run_dir(cfg) / "checkpoints"
    assert [d.name for d in ckpt.list_complete(checkpoints)] == ["step_00000002", "step_00000004", "step_00000006"]
    _flip_tensor_bytes(checkpoints / "step_00000006" / "student.safetensors")
    poisoned = _poison(checkpoints / "step_00000004", "optim_fake.safetensors")
    said: list[str] = []
    assert ckpt.latest(checkpoints, said.append).name == "step_00000002"
    assert said == ["skipping checkpoint step_00000006: student.safetensors does not match its checksum (damaged "
                    "after it was written)",
                    "skipping checkpoint step_00000004: optim_fake.safetensors holds NaN or infinite values (first "
                    f"in {poisoned!r})"]
    trainer = Trainer(cfg, progress=False)
    assert trainer.try_resume() and trainer.step == 2
    err = capsys.readouterr().err
    assert "skipping checkpoint step_00000006: student.safetensors" in err and "skipping checkpoint step_00000004" in err


def test_checkpoints_without_checksums_still_resume_and_a_bad_state_json_is_skipped(tiny, capsys):
    cfg = tiny(run__max_steps=4)
    train(cfg, progress=False, finish=False)
    checkpoints = run_dir(cfg) / "checkpoints"
    for folder in ckpt.list_complete(checkpoints):  # the marker as written before checksums
        marker = json.loads((folder / ckpt.MARKER).read_text())
        marker["files"] = {name: entry["size"] for name, entry in marker["files"].items()}
        (folder / ckpt.MARKER).write_text(json.dumps(marker))
    newest = checkpoints / "step_00000004"
    state = newest / "state.json"
    state.write_bytes(b"\xff\xfe" * (state.stat().st_size // 2) + b"\xff" * (state.stat().st_size % 2))
    with pytest.raises(CheckpointError, match="no readable state.json"):
        ckpt.read_state(newest)
    trainer = Trainer(cfg, progress=False)
    assert trainer.try_resume() and trainer.step == 2
    err = capsys.readouterr().err
    assert "skipping checkpoint step_00000004: checkpoint" in err and "state.json" in err
    assert "note: checkpoint step_00000002 was written before checksums were recorded" in err


def test_a_folder_whose_checkpoints_are_all_damaged_stops_and_restart_starts_over(tiny, capsys):
    from distill_core.cli import main

    cfg = tiny(run__max_steps=4)
    train(cfg, progress=False, finish=False)
    run = run_dir(cfg)
    for folder in ckpt.list_complete(run / "checkpoints"):
        _flip_tensor_bytes(folder / "fake.safetensors")
    with pytest.raises(CheckpointError, match="none of the checkpoints .* can be resumed from .*--restart"):
        train(cfg, progress=False, finish=False)  # not a silent restart from step 0
    assert "skipping checkpoint step_00000002: fake.safetensors" in capsys.readouterr().err
    assert main(["train", str(run / "config.toml"), "--restart", "--no-finish"]) == 0
    events = [json.loads(line)["event"] for line in (run / "events.jsonl").read_text().splitlines()]
    assert events.count("start") == 2 and "resume" not in events  # started over, from step 0
    assert ckpt.latest(run / "checkpoints").name == "step_00000004"
    assert ckpt.check(run / "checkpoints" / "step_00000002") is None  # rewritten, checksums and all


def test_a_run_folder_from_before_the_shapes_teacher_resumes_as_the_digits_run_it_is(tiny):
    """Its config.toml has no teacher.builtin (the field came with shapes, now the default): it stays digits."""
    from distill_core.cli import main
    from distill_core.config import load_run_config

    cfg = tiny(run__max_steps=2)
    train(cfg, progress=False, finish=False)
    config = run_dir(cfg) / "config.toml"
    lines = config.read_text().splitlines()
    config.write_text("\n".join(line for line in lines if not line.startswith("builtin = ")) + "\n")
    assert load_run_config(config).teacher.builtin == "digits"
    assert main(["train", str(config), "--max-steps", "4", "--no-finish"]) == 0
    events = [json.loads(line)["event"] for line in (run_dir(cfg) / "events.jsonl").read_text().splitlines()]
    assert events.count("resume") == 1 and ckpt.latest(run_dir(cfg) / "checkpoints").name == "step_00000004"
