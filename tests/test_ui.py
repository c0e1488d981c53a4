"""Trainer UI, in-process: each page's handlers on the built-in teacher with a tiny budget.

The Start handler launches a real training process (as the page does); the
monitor handlers only read its run folder.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
import tomllib
import urllib.error
import urllib.request
from pathlib import Path

import gradio as gr
import pytest
from ui_support import REPO, copy_run, finished_runs, stop_trainers, tiny_form, values, wait_for

from distill_core import checkpoint as ckpt
from distill_core.config import loads_config, resolve
from distill_core.runfolder import RunFolder
from trainer_ui import app, launcher, runs
from trainer_ui.paths import PathRefused, Roots
from trainer_ui.wizard import PRESETS, WizardForm, build_config


@pytest.fixture
def settings(tmp_path):
    s = app.Settings(Roots(tmp_path / "runs", [tmp_path / "models"]))
    s.roots.runs.mkdir()
    yield s
    stop_trainers(s.roots.runs)


# ---- paths ---------------------------------------------------------------------------------------------
def test_typed_paths_outside_the_roots_are_refused(tmp_path):
    roots = Roots(tmp_path / "runs", [tmp_path / "models"])
    (tmp_path / "models").mkdir()
    (tmp_path / "runs").mkdir()
    assert roots.inside(str(tmp_path / "models" / "x.txt"), "prompts file") == tmp_path / "models" / "x.txt"
    for bad in ("/etc/passwd", str(tmp_path / "runs" / ".." / "secret"), "~"):
        with pytest.raises(PathRefused, match="outside the folders this UI may read"):
            roots.inside(bad, "prompts file")
    (tmp_path / "runs" / "escape").symlink_to(tmp_path)  # a symlink out of the runs folder
    for bad in ("../x", "a/b", "", ".", "..", "/abs", "escape", "x" * 101):
        with pytest.raises(PathRefused):
            roots.run_dir(bad)
    assert roots.run_dir("ok-run_1.2") == tmp_path / "runs" / "ok-run_1.2"


def test_the_monitor_never_follows_links_out_of_the_runs_folder(settings, tmp_path):
    from PIL import Image

    secret = tmp_path / "secret"
    secret.mkdir()
    (secret / "passwd").write_text("root:x:0:0:SECRET:/root:/bin/bash\n")
    Image.new("RGB", (8, 8)).save(secret / "image.png")
    files = {"status.json": json.dumps({"state": "finished", "step": 3, "message": "SECRET"}),
             "events.jsonl": json.dumps({"event": "step", "step": 1, "loss_dmd": 0.25}) + "\n",
             "metrics.json": json.dumps({"teacher": {"diversity": 0.5}, "student": {"diversity": 0.4}}),
             "config.toml": '[method]\nname = "SECRET"\n', "report.html": "<p>SECRET</p>"}
    for name, text in files.items():
        (secret / name).write_text(text)
    run = settings.roots.runs / "planted"
    (run / "samples").mkdir(parents=True)
    links = {"train.log": "passwd", "samples/teacher.png": "image.png", "samples/step_00000002.png": "image.png",
             "student.safetensors": "image.png", **{name: name for name in files}}
    for name, target in links.items():
        (run / name).symlink_to(secret / target)
    (settings.roots.runs / "linked").symlink_to(secret)  # a whole run folder that is a link out

    assert [r.name for r in runs.list_runs(settings.roots)] == ["planted"]
    v = runs.view(run)
    assert (v.state, v.message, v.log, v.losses, v.metrics) == ("unknown", "", "", [], {})
    assert v.teacher_grid is v.student_grid is v.report is v.student is None
    shown = repr(app.refresh(settings, "planted", None))
    assert "SECRET" not in shown and str(secret) not in shown and "root:x" not in shown
    assert not app.compare_choices(settings)["choices"]  # its student is a link out: not offered ...
    refused = app.run_compare(settings, app.cmp.ModelCache(), ["planted"], False, "1", 2, 0, progress=lambda *a: 0)
    assert "has no exported student" in refused[2]  # ... nor loaded when asked for by name

    (run / "samples" / "step_00000004.png").write_bytes((secret / "image.png").read_bytes())  # its own file
    assert runs.view(run).student_grid == (run / "samples" / "step_00000004.png").resolve()
    with pytest.raises(PathRefused, match="train.log is a link that leads outside the run folder"):
        launcher.start(build_config(tiny_form("planted"), settings.roots))  # appending would write through it


# ---- wizard --------------------------------------------------------------------------------------------
def test_wizard_shows_the_exact_config_and_the_cores_messages(settings, tmp_path):
    form = tiny_form("w1", method__diversity_weight=0.08)
    toml_text, msg = app.check(settings, *values(form))
    assert msg.startswith("Ready"), msg
    cfg = loads_config(toml_text)
    assert resolve(cfg).to_toml() == toml_text  # resolved already: what the trainer will record
    assert cfg.method.anchor_step == 3 and cfg.method.diversity_weight == 0.08 and cfg.teacher.num_steps == 8
    assert cfg.run.output_dir == str(settings.roots.runs / "w1") and cfg.eval.seeds == 3
    assert len(cfg.data.prompts) == 10  # built-in teacher, no prompts typed: all ten digits

    def refused(**changes) -> str:
        toml_out, message = app.check(settings, *values(WizardForm(**{**vars(form), **changes})))
        assert toml_out == "" and message.startswith("**Refused:**"), message
        return message

    assert "method.anchor_step (k) = 8" in refused(anchor_step=8)  # k must stay below the teacher's steps
    assert "did you mean &#x27;seeds&#x27;" in refused(extra_toml="[eval]\nsedes = 3")
    assert "names no digit" in refused(prompts="a photo of a cat")
    assert "outside the folders" in refused(prompts_file="/etc/hostname")
    assert "outside the folders" in refused(extra_toml='[teacher]\npath = "/etc"')
    assert "run.output_dir cannot be set" in refused(extra_toml='[run]\noutput_dir = "/tmp/x"')
    assert "not a plain folder name" in refused(run_name="../elsewhere")
    assert "iterations is empty" in refused(max_steps=None)

    models = tmp_path / "models"
    models.mkdir()
    (models / "prompts.txt").write_text("# digits\nseven\na handwritten 3\n")
    cfg = build_config(WizardForm(**{**vars(form), "prompts_file": str(models / "prompts.txt")}), settings.roots)
    assert cfg.data.prompts == ["seven", "a handwritten 3"] and cfg.data.prompts_file == ""

    sd3_folder = models / "sd3"
    sd3_folder.mkdir()
    sd3 = WizardForm(**{**vars(form), "family": "sd3", "teacher_path": str(sd3_folder), "prompts": "a photo of a cat"})
    assert build_config(sd3, settings.roots).teacher.path == str(sd3_folder)
    assert "does not exist" in refused(family="sd3", teacher_path=str(models / "missing"), prompts="a cat")
    assert "outside the folders" in refused(family="sd3", teacher_path=str(tmp_path), prompts="a cat")

    big = build_config(WizardForm(**{**vars(form), "memory": "24 GB"}), settings.roots)
    assert (big.run.mixed_precision, big.student.gradient_checkpointing, big.method.backprop) == ("bf16", True,
                                                                                                   "one_step")
    dmd = build_config(WizardForm(**{**vars(form), "memory": "24 GB", "method": "dmd"}), settings.roots)
    assert dmd.method.backprop == "all" and dmd.lam == 0.0  # one-step needs the detach (Trainer refuses it)
    assert set(PRESETS) == {"CPU / tiny", "24 GB", "48 GB", "80 GB"}


# ---- start, double start, monitor, save now, stop ------------------------------------------------------
def test_start_monitor_save_stop(settings):
    form = tiny_form("live", run__max_steps=500, run__checkpoint_every=100, eval__grid_every=2, eval__every=2)
    run = RunFolder(settings.roots.runs / "live")
    msg, toml_text, _, choice = app.start(settings, *values(form))
    assert msg.startswith("Started **live**"), msg
    assert choice["value"] == "live" and (run.root / "config.toml").read_text() == toml_text
    again = app.start(settings, *values(form))[0]  # a second click while the first run is starting
    assert again.startswith("**Refused:**") and "already starting" in again, again
    assert runs.list_runs(settings.roots)[0].state in ("starting", "running")

    log = run.root / "train.log"
    wait_for(lambda: len([e for e in run.read_events() if e.get("event") == "eval"]) >= 2, 240,
             "two diversity evaluations", log)
    (choice, table, status, losses, diversity, teacher_img, student_img, report, log_text, stop_btn, save_btn,
     resume_btn, sig) = app.refresh(settings, None, None)  # a fresh page: picks the running run itself
    assert choice["value"] == "live" and table[0][:2] == ["live", "running"]
    assert "state-running" in status and "s/step" in status
    losses, diversity = losses.dropna(), diversity.dropna()  # (a series without data has a NaN placeholder)
    assert set(losses["series"]) == set(runs.LOSSES.values()) and losses["step"].max() >= 2
    assert list(diversity["who"]).count("student") >= 2
    assert Path(teacher_img).name == "teacher.png" and Path(student_img).name.startswith("step_")
    assert stop_btn["interactive"] and save_btn["interactive"] and not resume_btn["interactive"]
    assert "trainer UI:" in log_text or "distilling" in log_text

    assert "checkpoint" in app.control(settings, "save", "live")
    wait_for(lambda: any(e.get("event") == "checkpoint" for e in run.read_events()), 120, "the saved checkpoint", log)
    assert "stop" in app.control(settings, "stop", "live")
    wait_for(lambda: run.effective_state() == "stopped", 120, "the run to stop", log)
    status = run.read_status()
    assert ckpt.read_state(ckpt.latest(run.checkpoints))["step"] == status["step"] < 500  # graceful: checkpointed
    *_, stop_btn, save_btn, resume_btn, sig = app.refresh(settings, "live", None)
    assert resume_btn["interactive"] and not stop_btn["interactive"]
    assert all(out == gr.skip() for out in app.refresh(settings, "live", sig))  # nothing changed: nothing sent
    assert app.control(settings, "stop", "live").startswith("**Refused:**")  # not running any more


def test_start_refuses_an_existing_run_with_another_config(settings):
    run = settings.roots.runs / "taken"
    run.mkdir()
    cfg = build_config(tiny_form("taken"), settings.roots)
    (run / "config.toml").write_text(cfg.to_toml().replace("anchor_step = 3", "anchor_step = 4"))
    msg = app.start(settings, *values(tiny_form("taken")))[0]
    assert msg.startswith("**Refused:**") and "method.anchor_step" in msg and not (run / "status.json").exists()
    with launcher.launch_lock(run):  # another start in progress
        assert "being started right now" in app.start(settings, *values(tiny_form("taken")))[0]


# ---- compare -------------------------------------------------------------------------------------------
def test_compare_samples_each_student_and_the_teacher(settings, tmp_path_factory):
    done = {m: copy_run(p, settings.roots.runs) for m, p in finished_runs(tmp_path_factory).items()}
    assert set(app.compare_choices(settings)["choices"]) == {d.name for d in done.values()}
    monitor = app.refresh(settings, "done-dpdmd", None)  # a finished run: final numbers and the report
    assert "state-finished" in monitor[2] and "final evaluation: diversity" in monitor[2]
    assert "gradio_api/file=" in monitor[7] and "report.html" in monitor[7]
    gallery, table, msg = app.run_compare(settings, app.cmp.ModelCache(), ["done-dpdmd", "done-dmd"], True, "", 4, 0,
                                          progress=lambda *a, **k: None)
    assert [label for _, label in gallery] == ["teacher", "done-dpdmd", "done-dmd"], msg
    assert list(table["method"]) == ["teacher", "dpdmd", "dmd"]
    assert table["diversity (these samples)"].between(0, 1).all()
    assert table.loc[1, "diversity (run eval)"] != ""  # the run's metrics.json is shown next to it
    width = {img.size for img, _ in gallery}
    assert len(width) == 1  # same prompts x seeds for every model
    refused = app.run_compare(settings, app.cmp.ModelCache(), ["done-dpdmd"], False, "a cat", 4, 0,
                              progress=lambda *a, **k: None)[2]
    assert refused.startswith("**Refused:**") and "names no digit" in refused


# ---- serving and the command line ----------------------------------------------------------------------
def test_files_are_served_only_from_the_runs_folder(settings, tmp_path, tmp_path_factory):
    copy_run(finished_runs(tmp_path_factory)["dpdmd"], settings.roots.runs)
    outside = tmp_path / "models" / "secret.png"
    outside.parent.mkdir()
    outside.write_bytes((settings.roots.runs / "done-dpdmd" / "samples" / "teacher.png").read_bytes())
    demo = app.build_app(settings)
    demo.queue().launch(server_name="127.0.0.1", server_port=None, prevent_thread_lock=True, quiet=True,
                        allowed_paths=[str(settings.roots.runs)], run_history=False)
    try:
        def status(path: Path) -> int:
            try:
                with urllib.request.urlopen(f"{demo.local_url}gradio_api/file={path}") as r:
                    return r.status
            except urllib.error.HTTPError as e:
                return e.code
        assert status(settings.roots.runs / "done-dpdmd" / "samples" / "teacher.png") == 200
        assert status(settings.roots.runs / "done-dpdmd" / "report.html") == 200
        assert status(outside) == 403 and status(REPO / "README.md") == 403
        assert demo.server_name == "127.0.0.1" and demo.share is False
    finally:
        demo.close()


def test_dpdmd_ui_subcommand_and_lazy_import():
    from trainer_ui.cli import build_parser, parse_auth

    args = build_parser().parse_args([])
    assert (args.host, args.share, args.auth, args.runs_dir) == ("127.0.0.1", False, None, "runs")
    assert parse_auth("me:secret:with:colons") == ("me", "secret:with:colons")
    with pytest.raises(SystemExit):
        parse_auth("no-colon")
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    code = ("import sys, distill_core.cli as c; assert 'gradio' not in sys.modules; "
            "sys.exit(c.main(['ui', '--help']))")
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert "--runs-dir" in out.stdout and "--allowed-root" in out.stdout and "--share" in out.stdout
    pyproject = tomllib.loads((REPO / "pyproject.toml").read_text())
    assert "trainer_ui*" in pyproject["tool"]["setuptools"]["packages"]["find"]["include"]


def test_a_run_that_dies_at_startup_shows_why(settings):
    # Passes the config checks (the folder exists) but the trainer cannot load it as an SD3 teacher.
    not_a_teacher = settings.roots.runs / "not-a-teacher"
    not_a_teacher.mkdir()
    form = tiny_form("doomed")
    form.family, form.teacher_path, form.prompts = "sd3", str(not_a_teacher), "a photo of a cat"
    assert app.start(settings, *values(form))[0].startswith("Started")
    run = RunFolder(settings.roots.runs / "doomed")
    wait_for(lambda: runs.run_state(run) == "died", 120, "the state 'died'", run.root / "train.log")
    status, resume_btn = app.refresh(settings, "doomed", None)[2], app.refresh(settings, "doomed", None)[11]
    assert "state-died" in status and "model_index.json" in status and resume_btn["interactive"]


def test_wizard_refuses_one_step_backprop_without_the_detach(settings):
    form = tiny_form("refused", method__name="no_detach")
    form.extra_toml += '\n[method]\nbackprop = "one_step"\n'
    message = app.start(settings, *values(form))[0]
    assert "method.backprop" in message and not (settings.roots.runs / "refused" / "config.toml").exists()
