"""Two processes through accelerate on CPU (gloo): both ranks end with the same weights."""
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

from ports import free_port

from distill_core.training import checkpoint as ckpt

ROOT = Path(__file__).resolve().parent.parent


def test_two_processes_stay_in_sync(tiny, tmp_path):
    cfg = tiny(run__max_steps=3)
    config = tmp_path / "ddp.toml"
    config.write_text(cfg.to_toml())
    accelerate = shutil.which("accelerate", path=str(Path(sys.executable).parent)) or "accelerate"
    # --multi_gpu on a CPU-only machine gives MULTI_CPU over gloo; --cpu would silently run one process
    cmd = [accelerate, "launch", "--multi_gpu", "--num_processes", "2", "--num_machines", "1",
           "--mixed_precision", "no", "--dynamo_backend", "no", "--main_process_port", str(free_port()),
           "-m", "distill_core.train", str(config), "--no-finish"]
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    run = Path(cfg.run.output_dir)
    events = [json.loads(line) for line in (run / "events.jsonl").read_text().splitlines()]
    replicas = [e for e in events if e["event"] == "replicas"]
    assert replicas and replicas[-1]["processes"] == 2
    assert replicas[-1]["max_difference"] == 0.0
    last = ckpt.latest(run / "checkpoints")
    assert {p.name for p in last.iterdir()} >= {"rng_rank0.safetensors", "rng_rank1.safetensors"}
    assert ckpt.read_state(last)["world_size"] == 2
