"""FSDP for real: two CPU processes (gloo) launched with examples/accelerate/fsdp.yaml train the tiny SD3 teacher's
DP-DMD as DDP does, and their checkpoints (full states, the files one process writes) resume under one process and
under DDP.

Tolerances. FSDP sums the gradients in another order than DDP (a reduce-scatter over shards for DDP's bucketed
all-reduce, the clipping norm as a sum of per-shard sums), so the weights agree to the last float32 bits, not
bit for bit (measured: <= 2.1e-7 on the weights, <= 3.2e-6 of a tensor's largest value on the optimiser states).
An Adam step moves a weight by up to the learning rate (1e-5 here), so WEIGHTS_ATOL = lr / 10 still fails a
missed, doubled or un-averaged update, a lost optimiser state or a wrong random stream.
"""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from ports import free_port
from safetensors.torch import load_file
from tiny_diffusers import tiny_run_config

from distill_core.errors import ConfigError
from distill_core.training import checkpoint as ckpt
from distill_core.training.lora import lora_mode
from distill_core.training.trainer import train

ROOT = Path(__file__).resolve().parent.parent
STATES = ("student", "fake", "optim_student", "optim_fake")
LR = 1e-5
WEIGHTS_ATOL = LR / 10
OPTIM_RTOL = 1e-4  # of each optimiser tensor's largest value (Adam's moments are not on the weights' scale)
MODES = {"full": {}, "lora-copies": {"student__lora_rank": 2, "student__lora_mode": "copies"}}

pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py


def config(folders, out: Path, mode: str, **kw):
    return tiny_run_config("sd3", folders["sd3"], out, data__batch_size=1, optim__student_lr=LR,
                           optim__fake_lr=LR, **MODES[mode], **kw)


def launch(cfg, how: str) -> None:
    """``accelerate launch`` of distill_core.train on two CPU processes: 'fsdp' with the example config, or 'ddp'."""
    path = Path(cfg.run.output_dir).with_suffix(".toml")
    path.write_text(cfg.to_toml())
    distributed = (["--config_file", str(ROOT / "examples" / "accelerate" / "fsdp.yaml")] if how == "fsdp"
                   else ["--multi_gpu", "--num_machines", "1", "--dynamo_backend", "no"])  # --multi_gpu: MULTI_CPU
    cmd = [sys.executable, "-m", "accelerate.commands.launch", *distributed, "--num_processes", "2",
           "--mixed_precision", "no", "--main_process_port", str(free_port()),
           "-m", "distill_core.train", str(path), "--no-finish"]
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1",
           "TRANSFORMERS_OFFLINE": "1"}
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300, cwd=path.parent)
    assert done.returncode == 0, done.stderr[-3000:]


def step_dir(cfg, step: int) -> Path:
    return Path(cfg.run.output_dir) / "checkpoints" / ckpt.step_dir_name(step)


def states(folder: Path) -> dict[str, dict[str, torch.Tensor]]:
    return {name: load_file(str(folder / f"{name}.safetensors")) for name in STATES}


def assert_close(got: dict, want: dict) -> None:
    """Weights within WEIGHTS_ATOL, optimiser states within OPTIM_RTOL of their scale; the same keys."""
    for name in STATES:
        assert got[name].keys() == want[name].keys(), name
        for key, b in want[name].items():
            a = got[name][key]
            assert a.shape == b.shape and a.dtype == b.dtype, f"{name}: {key}"
            diff = float((a.double() - b.double()).abs().max()) if a.numel() else 0.0
            bound = WEIGHTS_ATOL if not name.startswith("optim") else OPTIM_RTOL * float(b.double().abs().max())
            assert diff <= bound, f"{name}: {key} differs by {diff:.3g} (> {bound:.3g})"


def layout(folder: Path) -> dict:
    """Every file's tensor names, shapes and dtypes, except the per-process random states."""
    return {name: {k: (tuple(v.shape), v.dtype) for k, v in tensors.items()} for name, tensors in states(folder).items()}


@pytest.mark.parametrize("mode", MODES)
def test_fsdp_trains_as_ddp_and_resumes_under_one_process_and_ddp(tiny_pipelines, tmp_path, mode):
    fsdp = config(tiny_pipelines, tmp_path / "fsdp", mode, run__max_steps=2)
    launch(fsdp, "fsdp")
    ddp = config(tiny_pipelines, tmp_path / "ddp", mode, run__max_steps=3)  # checkpoints at steps 1, 2, 3
    launch(ddp, "ddp")
    written = step_dir(fsdp, 2)
    assert ckpt.check(written) is None  # complete, checksums recorded and right, every tensor finite
    assert ckpt.read_state(written)["world_size"] == 2
    assert sorted(p.name for p in written.glob("rng_rank*")) == ["rng_rank0.safetensors", "rng_rank1.safetensors"]
    assert_close(states(written), states(step_dir(ddp, 2)))

    # (a) one process, from the FSDP checkpoint and from DDP's at the same step: both reseed at step 2 alike
    ones = {}
    for name, source in (("one_from_fsdp", written), ("one_from_ddp", step_dir(ddp, 2))):
        cfg = config(tiny_pipelines, tmp_path / name, mode, run__max_steps=3, run__branch_from=str(source))
        train(cfg, progress=False, finish=False)
        ones[name] = step_dir(cfg, 3)
    assert_close(states(ones["one_from_fsdp"]), states(ones["one_from_ddp"]))
    assert layout(written) == layout(ones["one_from_fsdp"])  # FSDP writes one process's files

    if mode != "full":  # a launch less: LoRA adapters load under DDP as under one process (the same call)
        return
    # (b) DDP on two processes: each rank's random state comes back, so it continues DDP's straight run
    resumed = config(tiny_pipelines, tmp_path / "ddp_from_fsdp", mode, run__max_steps=3, run__branch_from=str(written))
    launch(resumed, "ddp")
    assert_close(states(step_dir(resumed, 3)), states(step_dir(ddp, 3)))


def test_shared_base_lora_is_refused_under_fsdp(tiny_pipelines, tmp_path):
    """The shared base is the teacher's network, which FSDP leaves whole on every process: 'auto' trains copies."""
    cfg = config(tiny_pipelines, tmp_path / "run", "full", student__lora_rank=2, student__lora_mode="shared")
    with pytest.raises(ConfigError, match="student.lora_mode = 'shared' is not available under FSDP"):
        lora_mode(cfg, sharded=True)
    cfg.student.lora_mode = "auto"
    assert lora_mode(cfg, sharded=True) == "copies" and lora_mode(cfg, sharded=False) == "shared"
