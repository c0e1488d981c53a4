"""The README's main job end to end (quick mode), and the CLI's behaviour on bad input."""
import contextlib
import io
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from distill_core import demo
from distill_core.cli import main
from distill_core.config import resolve
from distill_core.demo import demo_config
from distill_core.training.trainer import train

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def quick_demo(tmp_path_factory):
    """`dpdmd demo --quick OUT` once for the module, on a smaller budget (4 steps); returns OUT and its stdout."""
    out = tmp_path_factory.mktemp("demo") / "demo"
    return out, run_cli_demo(out)


def run_cli_demo(out: Path) -> str:
    """`dpdmd demo --quick` given OUT relative to the working directory, as a user types it (issue 25)."""
    def small(*args, **kwargs):
        cfg = demo_config(*args, **kwargs)
        cfg.run.max_steps = 4
        cfg.eval.diversity_every = cfg.eval.grid_every = cfg.run.checkpoint_every = 2
        return cfg

    printed = io.StringIO()
    with pytest.MonkeyPatch.context() as mp, contextlib.redirect_stdout(printed):
        mp.setattr(demo, "demo_config", small)
        mp.chdir(out.parent)
        assert main(["demo", "--quick", out.name]) == 0
    return printed.getvalue()


def test_quick_demo_trains_both_students_into_normal_run_folders(quick_demo, tmp_path):
    out, printed = quick_demo
    metrics = json.loads((out / "metrics.json").read_text())
    assert set(metrics) == {"teacher", "dmd", "dpdmd"}
    c = resolve(demo_config())
    teacher_nfe = c.teacher.num_steps * (2 if c.teacher.guidance_scale != 1 else 1)
    for who, nfe in (("teacher", teacher_nfe), ("dmd", c.student.num_steps), ("dpdmd", c.student.num_steps)):
        m = metrics[who]
        assert {"diversity", "mode_coverage", "validity", "nfe", "mode_histogram", "data_histogram", "blank_share",
                "mode_coverage_valid", "diversity_valid", "valid_per_prompt", "prompts_few_valid"} <= m.keys()
        assert m["nfe"] == nfe and 0 <= m["validity"] <= 1
        shares = [sum(h) for h in m["mode_histogram"]]  # a blank sample is in no mode
        assert max(shares) <= 1 + 1e-6 and abs(sum(shares) / len(shares) + m["blank_share"] - 1) < 1e-6
    for method in ("dmd", "dpdmd"):
        run = out / method
        own = json.loads((run / "metrics.json").read_text())
        assert own["run"]["method"] == method and own["student"] == metrics[method]
        assert own["teacher"] == metrics["teacher"]  # measured once, the same in both runs
        status = json.loads((run / "status.json").read_text())
        assert status["state"] == "finished" and status["step"] == 4
        assert (run / "student.safetensors").stat().st_size > 100_000
        assert own["run"]["train_seconds"] > 0 and "state: unknown" not in (run / "report.html").read_text()
        title = (run / "report.html").read_text().split("<h1>", 1)[1].split("</h1>", 1)[0]
        assert title == f"{'DMD' if method == 'dmd' else 'DP-DMD'} run: {method}"
        assert ("k = " in (run / "report.html").read_text().split("<h2>", 1)[0]) is (method == "dpdmd")
        assert {p.name for p in (run / "checkpoints").iterdir()} >= {"step_00000004"}
    for label in (f"teacher ({c.teacher.num_steps} steps, CFG {c.teacher.guidance_scale:g})",
                  f"DMD student ({c.student.num_steps} steps)", f"DP-DMD student ({c.student.num_steps} steps)"):
        assert label in printed
    assert f"report: {Path(out.name) / 'report.html'}" in printed
    grid = tmp_path / "grid.png"  # the exported student samples through the CLI
    assert main(["sample", str(out / "dpdmd" / "student.safetensors"), "--prompt", "a green circle", "--seeds", "3",
                 "--out", str(grid)]) == 0
    assert grid.stat().st_size > 0


def test_demo_report_shows_three_grids_mode_bars_and_diversity_curves(quick_demo):
    out, _ = quick_demo
    report = (out / "report.html").read_text()
    metrics = json.loads((out / "metrics.json").read_text())
    for part in ("grid-teacher", "grid-dmd", "grid-dpdmd", "mode-bars", "diversity-curves"):
        section = report.split(f"id='{part}'>", 1)[1]
        assert section.startswith("<img src=\"data:image/png;base64,"), part
    for who in ("teacher", "dmd", "dpdmd"):  # each grid's numbers right under it
        caption = report.split(f"id='grid-{who}'>", 1)[1].split("</figure>", 1)[0]
        assert f"diversity {metrics[who]['diversity']:.4f}" in caption and f"{metrics[who]['nfe']} NFE" in caption
    assert report.count("data:image/png;base64,") == 5
    c = resolve(demo_config())  # the budget and DP-DMD's k and lambda are stated, as trained
    setting = report.split("id='setting'>", 1)[1].split("</p>", 1)[0]
    assert f"fake-score lr {c.optim.fake_lr:g}" in setting and f"lambda = {c.method.diversity_weight:g}" in setting
    finding = report.split("id='finding'><b>", 1)[1].split("</b>", 1)[0]
    assert "Over valid samples only" in finding or "fewer than 2 valid samples" in finding


def test_a_second_demo_reuses_the_finished_runs(quick_demo):
    out, _ = quick_demo
    before = {p: p.read_bytes() for p in out.rglob("*") if p.is_file() and p != out / "report.html"}
    printed = run_cli_demo(out)
    assert "DMD student: " in printed and printed.count("finished already, reused") == 2
    assert "teacher: measured in the finished runs, reused" in printed
    after = {p: p.read_bytes() for p in out.rglob("*") if p.is_file() and p != out / "report.html"}
    assert after == before  # nothing retrained, re-evaluated or re-exported
    assert (out / "report.html").is_file()


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

    from distill_core.config import Config
    from distill_core.export.exporters import save_student, student_info
    from distill_core.teachers import load_teacher

    teacher = load_teacher(resolve(Config()))
    weights = {k: torch.full_like(v, float("nan")) if v.is_floating_point() else v
               for k, v in teacher.network.state_dict().items()}
    student = save_student(weights, student_info(teacher, resolve(Config()), 0), tmp_path / "nan.safetensors")
    out = tmp_path / "grid.png"
    assert main(["sample", str(student), "--prompt", "1", "--out", str(out)]) == 2
    assert "nan.safetensors holds NaN or infinite values" in capsys.readouterr().err and not out.exists()
