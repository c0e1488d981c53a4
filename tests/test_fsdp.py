"""FSDP for real: two CPU processes (gloo) launched with examples/accelerate/fsdp.yaml train the tiny SD3 teacher's
DP-DMD as DDP does, and their checkpoints (full states, the files one process writes) resume under one process and
under DDP.

Tolerances. FSDP sums the gradients in another order than DDP (a reduce-scatter over shards for DDP's bucketed
all-reduce, the clipping norm as a sum of per-shard sums), so the weights agree to the last float32 bits, not
bit for bit (measured, full fine-tune: <= 1.5e-8 on the weights here, 2.1e-7 after two FSDP steps from the
start; <= 2.4e-6 of a tensor's largest value on the optimiser states; the LoRA copies came out bit-identical).
An Adam step moves a weight by up to the learning rate (1e-5 here), so WEIGHTS_ATOL = lr / 10 still fails a
missed, doubled or un-averaged update, a lost optimiser state or a wrong random stream.
"""
from __future__ import annotations

import os
import signal
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


def launch(configs: list, how: str) -> None:
    """One ``accelerate launch`` on two CPU processes, 'fsdp' with the example config or 'ddp', training each config
    through distill_core.train's entry point (tests/train_runs.py: one process start-up for all)."""
    paths = []
    for cfg in configs:
        paths.append(Path(cfg.run.output_dir).with_suffix(".toml"))
        paths[-1].write_text(cfg.to_toml())
    distributed = (["--config_file", str(ROOT / "examples" / "accelerate" / "fsdp.yaml")] if how == "fsdp"
                   else ["--multi_gpu", "--num_machines", "1", "--dynamo_backend", "no"])  # --multi_gpu: MULTI_CPU
    cmd = [sys.executable, "-m", "accelerate.commands.launch", *distributed, "--num_processes", "2",
           "--mixed_precision", "no", "--main_process_port", str(free_port()),
           str(ROOT / "tests" / "train_runs.py"), *map(str, paths)]
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1",
           "TRANSFORMERS_OFFLINE": "1"}
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            cwd=paths[0].parent, start_new_session=True)
    try:
        _, err = proc.communicate(timeout=400)
    except subprocess.TimeoutExpired:  # a hung collective: end the workers too, not only the launcher
        os.killpg(proc.pid, signal.SIGKILL)
        _, err = proc.communicate()
        pytest.fail(f"the {how} launch hung (killed after 400 s): {err[-3000:]}")
    assert proc.returncode == 0, err[-3000:]


def step_dir(cfg, step: int) -> Path:
    return Path(cfg.run.output_dir) / "checkpoints" / ckpt.step_dir_name(step)


def states(folder: Path) -> dict[str, dict[str, torch.Tensor]]:
    return {name: load_file(str(folder / f"{name}.safetensors")) for name in STATES}


def assert_close(got: dict, want: dict) -> tuple[float, float]:
    """Weights within WEIGHTS_ATOL, optimiser states within OPTIM_RTOL of their scale, the same keys and shapes;
    returns the largest weight difference and the largest optimiser difference over its scale."""
    largest = {False: 0.0, True: 0.0}
    for name in STATES:
        optim = name.startswith("optim")
        assert got[name].keys() == want[name].keys(), name
        for key, b in want[name].items():
            a = got[name][key]
            assert a.shape == b.shape and a.dtype == b.dtype, f"{name}: {key}"
            diff = float((a.double() - b.double()).abs().max()) if a.numel() else 0.0
            scale = float(b.double().abs().max() or 1.0) if optim and a.numel() else 1.0
            bound = OPTIM_RTOL if optim else WEIGHTS_ATOL
            assert diff / scale <= bound, f"{name}: {key} differs by {diff:.3g} (> {bound:.3g} x {scale:.3g})"
            largest[optim] = max(largest[optim], diff / scale)
    return largest[False], largest[True]


def layout(folder: Path) -> dict:
    """Every file's tensor names, shapes and dtypes, except the per-process random states."""
    return {name: {k: (tuple(v.shape), v.dtype) for k, v in tensors.items()} for name, tensors in states(folder).items()}


def test_fsdp_trains_as_ddp_and_resumes_under_one_process_and_ddp(tiny_pipelines, tmp_path):
    """Both modes (MODES) per launch; three launches in all."""
    def run(name, mode, **kw):
        return config(tiny_pipelines, tmp_path / f"{name}_{mode}", mode, **kw)

    ddp = {m: run("ddp", m, run__max_steps=4, run__keep_checkpoints=4) for m in MODES}
    launch(list(ddp.values()), "ddp")  # the reference: DDP straight through, a checkpoint per step
    # FSDP loads DDP's step 1 into its shards and trains steps 2 and 3 (a launch less than a fresh start and a load)
    fsdp = {m: run("fsdp", m, run__max_steps=3, run__branch_from=str(step_dir(ddp[m], 1))) for m in MODES}
    launch(list(fsdp.values()), "fsdp")
    # (b) DDP on two processes from FSDP's step 3: each rank's random state comes back, so it continues DDP's run
    resumed = {m: run("ddp_from_fsdp", m, run__max_steps=4, run__branch_from=str(step_dir(fsdp[m], 3)))
               for m in MODES}
    launch(list(resumed.values()), "ddp")
    for mode in MODES:
        written = step_dir(fsdp[mode], 3)
        assert ckpt.check(written) is None  # complete, checksums recorded and right, every tensor finite
        assert ckpt.read_state(written)["world_size"] == 2
        assert sorted(p.name for p in written.glob("rng_rank*")) == ["rng_rank0.safetensors", "rng_rank1.safetensors"]
        measured = {"fsdp vs ddp": assert_close(states(written), states(step_dir(ddp[mode], 3))),
                    "ddp": assert_close(states(step_dir(resumed[mode], 4)), states(step_dir(ddp[mode], 4)))}
        # (a) one process, from the FSDP checkpoint and from DDP's at the same step: both reseed at step 3 alike
        ones = [run(name, mode, run__max_steps=4, run__branch_from=str(source))
                for name, source in (("one_from_fsdp", written), ("one_from_ddp", step_dir(ddp[mode], 3)))]
        for cfg in ones:
            train(cfg, progress=False, finish=False)
        measured["one process"] = assert_close(*(states(step_dir(cfg, 4)) for cfg in ones))
        assert layout(written) == layout(step_dir(ones[0], 4))  # FSDP writes one process's files
        print(f"{mode}: largest differences (weights, optimiser / its scale): {measured}")


def test_shared_base_lora_is_refused_under_fsdp(tiny_pipelines, tmp_path):
    """The shared base is the teacher's network, which FSDP leaves whole on every process: 'auto' trains copies."""
    cfg = config(tiny_pipelines, tmp_path / "run", "full", student__lora_rank=2, student__lora_mode="shared")
    with pytest.raises(ConfigError, match="student.lora_mode = 'shared' is not available under FSDP"):
        lora_mode(cfg, sharded=True)
    cfg.student.lora_mode = "auto"
    assert lora_mode(cfg, sharded=True) == "copies" and lora_mode(cfg, sharded=False) == "shared"
