"""The README's main job end to end (quick mode), and the CLI's behaviour on bad input."""
import json
import os
import subprocess
import sys
from pathlib import Path

from distill_core.cli import main
from distill_core.demo import demo_config
from distill_core.training.trainer import train

ROOT = Path(__file__).resolve().parent.parent


def test_quick_demo_writes_student_metrics_and_report(tmp_path):
    cfg = demo_config(tmp_path / "demo", quick=True)
    cfg.run.max_steps = 4
    cfg.eval.diversity_every = cfg.eval.grid_every = cfg.run.checkpoint_every = 2
    run = train(cfg, progress=False)
    metrics = json.loads((run / "metrics.json").read_text())
    for who in ("teacher", "student"):
        assert {"diversity", "frechet_distance", "class_accuracy", "seconds_per_image"} <= metrics[who].keys()
    assert metrics["student"]["nfe"] == 4 and metrics["teacher"]["nfe"] == 60
    assert (run / "student.safetensors").stat().st_size > 100_000
    report = (run / "report.html").read_text()
    assert report.count("data:image/png;base64,") >= 4  # grids teacher/student, loss and diversity curves
    assert "Teacher vs student" in report
    assert {p.name for p in (run / "samples").iterdir()} >= {"teacher.png", "step_00000000.png", "step_00000004.png"}
    status = json.loads((run / "status.json").read_text())
    assert status["state"] == "finished" and status["step"] == 4
    # the exported student samples through the CLI
    out = tmp_path / "grid.png"
    assert main(["sample", str(run / "student.safetensors"), "--prompt", "a green circle", "--seeds", "3", "--out", str(out)]) == 0
    assert out.stat().st_size > 0


def test_cli_reports_bad_input_without_traceback(tmp_path):
    bad = tmp_path / "bad.toml"
    bad.write_text("[method]\nanchor_step = 99\n")
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    proc = subprocess.run([sys.executable, "-m", "distill_core", "train", str(bad)], capture_output=True,
                          text=True, env=env, timeout=120)
    assert proc.returncode == 2
    assert "error: method.anchor_step (k) = 99" in proc.stderr
    assert "Traceback" not in proc.stderr


def test_cli_refuses_non_safetensors_student(tmp_path, capsys):
    f = tmp_path / "model.ckpt"
    f.write_bytes(b"0" * 100)
    assert main(["sample", str(f), "--prompt", "1"]) == 2
    assert "safetensors" in capsys.readouterr().err


def test_resuming_with_another_config_is_refused(tiny, capsys):
    cfg = tiny(run__max_steps=2)
    train(cfg, progress=False, finish=False)
    cfg.method.anchor_step = 2
    config = Path(cfg.run.output_dir).parent / "other.toml"
    config.write_text(cfg.to_toml())
    assert main(["train", str(config)]) == 2
    assert "differs in method.anchor_step" in capsys.readouterr().err


def test_sample_refuses_a_student_with_non_finite_weights(tmp_path, capsys):
    import torch

    from distill_core.config import Config, resolve
    from distill_core.export.exporters import save_student, student_info
    from distill_core.teachers import load_teacher

    teacher = load_teacher(resolve(Config()))
    weights = {k: torch.full_like(v, float("nan")) if v.is_floating_point() else v
               for k, v in teacher.network.state_dict().items()}
    student = save_student(weights, student_info(teacher, resolve(Config()), 0), tmp_path / "nan.safetensors")
    out = tmp_path / "grid.png"
    assert main(["sample", str(student), "--prompt", "1", "--out", str(out)]) == 2
    assert "nan.safetensors holds NaN or infinite values" in capsys.readouterr().err and not out.exists()
