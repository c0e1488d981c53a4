"""Shared-base LoRA: one frozen teacher network with a student and a fake adapter trains exactly like three copies."""
from __future__ import annotations

import pytest
import torch
from safetensors.torch import load_file
from tiny_diffusers import tiny_run_config

from distill_core.errors import ConfigError
from distill_core.training import checkpoint as ckpt
from distill_core.training.lora import AdapterView
from distill_core.training.trainer import Trainer, train

STATES = ("student", "fake", "optim_student", "optim_fake")


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def lora_config(family, folders, out, mode, **kw):
    return tiny_run_config(family, folders[family], out, student__lora_rank=2, student__lora_mode=mode,
                           optim__student_lr=1e-2, optim__fake_lr=1e-2, **kw)


def checkpoint_states(run_dir) -> dict[str, dict[str, torch.Tensor]]:
    last = ckpt.latest(run_dir / "checkpoints")
    return {name: load_file(str(last / f"{name}.safetensors")) for name in STATES}


def assert_same(a: dict, b: dict) -> None:
    for name in STATES:
        assert a[name].keys() == b[name].keys(), name
        for key in a[name]:
            assert torch.equal(a[name][key], b[name][key]), f"{name}: {key} differs"


# bf16 autocast on a bf16 teacher with gradient checkpointing is the lora64-ckpt preset's combination
@pytest.mark.parametrize("family, extra", [
    ("sd3", {}), ("sdxl", {}),
    ("sd3", {"run__mixed_precision": "bf16", "teacher__dtype": "bfloat16", "student__gradient_checkpointing": True})])
def test_shared_base_trains_exactly_like_three_copies(tiny_pipelines, tmp_path, family, extra):
    runs = {}
    for mode in ("copies", "shared"):
        cfg = lora_config(family, tiny_pipelines, tmp_path / mode, mode, **extra)
        trainer = Trainer(cfg, progress=False)
        shared = isinstance(trainer.student, AdapterView)
        assert shared is (mode == "shared")
        if shared:  # one frozen network: the teacher's, with both adapters on it
            assert trainer.student.base is trainer.fake.base is trainer.teacher.network
        trainer.fit()
        runs[mode] = checkpoint_states(tmp_path / mode)
    assert_same(runs["copies"], runs["shared"])
    assert runs["shared"]["student"] and all(".lora_" in k for k in runs["shared"]["student"])
    assert any(not torch.equal(runs["shared"]["student"][k], runs["shared"]["fake"][k])
               for k in runs["shared"]["student"])  # two adapters, trained apart


def test_teacher_predicts_with_the_adapters_off(tiny_pipelines, tmp_path):
    trainer = Trainer(lora_config("sd3", tiny_pipelines, tmp_path / "run", "shared"), progress=False)
    cond, _, z = trainer._batch()
    levels = torch.full((z.shape[0],), 0.7)
    before = trainer.teacher.predict(trainer.teacher.network, z, levels, cond)
    for _ in range(2):
        trainer.train_step()
    student = trainer.teacher.predict(trainer.student, z, levels, cond)
    assert torch.equal(trainer.teacher.predict(trainer.teacher.network, z, levels, cond), before)
    assert not torch.allclose(student, before)


def test_shared_base_resumes_exactly_and_continues_a_copies_checkpoint(tiny_pipelines, tmp_path):
    straight = lora_config("sd3", tiny_pipelines, tmp_path / "straight", "shared", run__max_steps=3)
    train(straight, progress=False, finish=False)
    for first in ("shared", "copies"):  # the two modes write the same checkpoint files
        broken = lora_config("sd3", tiny_pipelines, tmp_path / first, first, run__max_steps=1)
        train(broken, progress=False, finish=False)
        broken.run.max_steps, broken.student.lora_mode = 3, "shared"
        train(broken, progress=False, finish=False)
        assert_same(checkpoint_states(tmp_path / "straight"), checkpoint_states(tmp_path / first))


def test_shared_base_refuses_what_it_cannot_do(tiny_pipelines, tmp_path):
    with pytest.raises(ConfigError, match="student.ema_decay"):
        Trainer(lora_config("sd3", tiny_pipelines, tmp_path / "a", "shared", student__ema_decay=0.9), progress=False)
    with pytest.raises(ConfigError, match="mixed_precision"):
        Trainer(lora_config("sd3", tiny_pipelines, tmp_path / "b", "shared", teacher__dtype="bfloat16"),
                progress=False)
    ema = Trainer(lora_config("sd3", tiny_pipelines, tmp_path / "c", "auto", student__ema_decay=0.9), progress=False)
    assert not isinstance(ema.student, AdapterView)  # auto: copies where an EMA is kept
