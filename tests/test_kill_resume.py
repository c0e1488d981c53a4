"""kill -9 during training and during a checkpoint write, then resume: the final weights are bit-identical."""
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import torch
from conftest import tiny_config
from safetensors.torch import load_file

from distill_core.training.trainer import train
from distill_core.training import checkpoint as ckpt

ROOT = Path(__file__).resolve().parent.parent


def _steps_done(run: Path) -> int:
    try:
        lines = (run / "events.jsonl").read_text().splitlines()
    except FileNotFoundError:
        return 0
    return max((json.loads(x).get("step", 0) for x in lines[:-1] if '"step"' in x), default=0)


def _kill_when(config: Path, ready) -> None:
    """Start `dpdmd train` and SIGKILL it the moment ``ready()`` holds (polled every few ms)."""
    proc = subprocess.Popen([sys.executable, "-m", "distill_core.cli", "train", str(config), "--no-finish"],
                            cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            env={**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)})
    deadline = time.monotonic() + 240
    while not ready() and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.002)
    assert proc.poll() is None, "the run ended before the moment to kill it"
    proc.kill()
    proc.wait()


def _final_states(run: Path) -> dict[str, dict[str, torch.Tensor]]:
    last = ckpt.latest(run / "checkpoints")
    return {f.name: load_file(str(f)) for f in last.glob("*.safetensors")}


def test_kill_9_mid_step_and_mid_checkpoint_then_resume_is_bit_identical(tmp_path):
    kw = dict(run__max_steps=6, run__checkpoint_every=1)
    straight = tiny_config(tmp_path / "straight", **kw)
    train(straight, progress=False, finish=False)

    broken = tiny_config(tmp_path / "broken", **kw)
    run = Path(broken.run.output_dir)
    config = tmp_path / "broken.toml"
    config.write_text(broken.to_toml())
    _kill_when(config, lambda: _steps_done(run) >= 2)  # during training
    staging = run / "checkpoints"
    _kill_when(config, lambda: _steps_done(run) >= 3 and any(p.name.endswith(".tmp") for p in staging.iterdir()))
    train(broken, progress=False, finish=False)

    a, b = _final_states(Path(straight.run.output_dir)), _final_states(run)
    assert a.keys() == b.keys()
    for name in a:
        for key in a[name]:
            if key != "torch.cpu":  # the process-global RNG, which training never draws from
                assert torch.equal(a[name][key], b[name][key]), f"{name}:{key} differs after two kills"
    assert [e["event"] for e in json.loads("[" + ",".join((run / "events.jsonl").read_text().split("\n")[:-1]) + "]")
            ].count("resume") >= 1
