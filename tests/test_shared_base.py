"""Shared-base LoRA: one frozen teacher network with a student and a fake adapter trains exactly like three copies."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from ports import free_port
from safetensors.torch import load_file, save_file
from tiny_diffusers import tiny_run_config

from distill_core.cli import main as cli
from distill_core.errors import ConfigError
from distill_core.export.exporters import load_run_student
from distill_core.training import checkpoint as ckpt
from distill_core.training.lora import AdapterView
from distill_core.training.train_state import network_state
from distill_core.training.trainer import Trainer, train

STATES = ("student", "fake", "optim_student", "optim_fake")
ROOT = Path(__file__).resolve().parent.parent


pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py


def lora_config(family, folders, out, mode, rank=2, **kw):
    return tiny_run_config(family, folders[family], out, student__lora_rank=rank, student__lora_mode=mode,
                           optim__student_lr=1e-2, optim__fake_lr=1e-2, **kw)


def checkpoint_states(run_dir) -> dict[str, dict[str, torch.Tensor]]:
    last = ckpt.latest(run_dir / "checkpoints")
    return {name: load_file(str(last / f"{name}.safetensors")) for name in STATES}


def assert_same(a: dict, b: dict, names=STATES) -> None:
    for name in names:
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


def test_two_processes_train_the_shared_base_exactly_like_ddp_copies(tiny_pipelines, tmp_path):
    """DDP on two CPU processes (gloo): the shared base averages its adapters' gradients as DDP does for copies."""
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1",
           "TRANSFORMERS_OFFLINE": "1"}
    runs = {}
    for mode in ("copies", "shared"):
        cfg = lora_config("sd3", tiny_pipelines, tmp_path / mode, mode, data__batch_size=1)
        config = tmp_path / f"{mode}.toml"
        config.write_text(cfg.to_toml())
        launch = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2",
                  "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no",
                  "--main_process_port", str(free_port()), "-m", "distill_core.train", str(config), "--no-finish"]
        done = subprocess.run(launch, env=env, capture_output=True, text=True, timeout=300, cwd=tmp_path)
        assert done.returncode == 0, done.stderr[-3000:]
        events = [json.loads(line) for line in (tmp_path / mode / "events.jsonl").read_text().splitlines()]
        replicas = [e for e in events if e["event"] == "replicas"]
        assert replicas[-1]["processes"] == 2 and replicas[-1]["max_difference"] == 0.0
        runs[mode] = checkpoint_states(tmp_path / mode)
    assert_same(runs["copies"], runs["shared"])


def test_shared_base_refuses_what_it_cannot_do(tiny_pipelines, tmp_path):
    with pytest.raises(ConfigError, match="student.ema_decay"):
        Trainer(lora_config("sd3", tiny_pipelines, tmp_path / "a", "shared", student__ema_decay=0.9), progress=False)
    with pytest.raises(ConfigError, match="mixed_precision"):
        Trainer(lora_config("sd3", tiny_pipelines, tmp_path / "b", "shared", teacher__dtype="bfloat16"),
                progress=False)
    for kw in ({"student__ema_decay": 0.9}, {"teacher__dtype": "bfloat16"}):  # auto: copies where shared can't
        auto = Trainer(lora_config("sd3", tiny_pipelines, tmp_path / "c", "auto", **kw), progress=False)
        assert not isinstance(auto.student, AdapterView)


# ---- student.init_lora: a warm start from an exported LoRA -------------------------------------------------------
@pytest.mark.parametrize("family", ["sd3", "sdxl"])  # diffusers keys / kohya keys
def test_a_run_started_from_an_exported_lora_starts_at_that_student(tiny_pipelines, tmp_path, family):
    first = lora_config(family, tiny_pipelines, tmp_path / "first", "auto")
    train(first, progress=False, finish=False)
    lora = tmp_path / "student_lora.safetensors"
    assert cli(["export", str(tmp_path / "first"), "--format", "lora", "--dtype", "float32", "--out", str(lora)]) == 0
    trained = load_run_student(tmp_path / "first")

    for mode, rank in (("shared", 2), ("copies", 2), ("shared", 4)):  # rank 4: the file's rank 2 is padded
        cfg = lora_config(family, tiny_pipelines, tmp_path / f"{mode}{rank}", mode, rank, student__init_lora=str(lora))
        trainer = Trainer(cfg, progress=False)
        if rank == 2:
            assert_same({"student": trained.state}, {"student": network_state(trainer.acc, trainer.student)},
                        names=("student",))
        merged, expected = trainer.student_state_dict(), trained.weights()
        assert merged.keys() == expected.keys()
        assert all(torch.allclose(merged[k], expected[k], atol=1e-6) for k in merged), mode
    fresh = Trainer(lora_config(family, tiny_pipelines, tmp_path / "fresh", "shared"), progress=False)
    assert any(not torch.allclose(fresh.student_state_dict()[k], expected[k], atol=1e-6) for k in expected)


def test_init_lora_refuses_a_file_it_cannot_start_from(tiny_pipelines, tmp_path):
    foreign = tmp_path / "foreign.safetensors"
    save_file({"lora_unet_mid_block_attentions_0_proj_in.lora_down.weight": torch.zeros(2, 8)}, str(foreign))
    for rank, path, message in ((2, foreign, "do not cover"), (2, tmp_path / "missing.safetensors", "does not exist"),
                                (0, foreign, "lora_rank > 0")):
        cfg = lora_config("sd3", tiny_pipelines, tmp_path / "run", "shared", rank, student__init_lora=str(path))
        with pytest.raises(ConfigError, match=message):
            Trainer(cfg, progress=False)
