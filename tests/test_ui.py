"""Trainer UI, in-process: each page's handlers on the built-in teacher with a tiny budget.

The Start handler launches a real training process (as the page does); the
monitor handlers only read its run folder.
"""
from __future__ import annotations

import base64
import io
import json
import os
import re
import shutil
import socket
import subprocess
import sys
import urllib.error
import urllib.parse
import urllib.request
from dataclasses import replace
from pathlib import Path

import gradio as gr
import pytest
import tomllib
from PIL import Image
from ui_support import REPO, copy_run, diffusers_skeleton, finished_runs, stop_trainers, tiny_form, values, wait_for

from distill_core.config import Config, loads_config, resolve
from distill_core.run_queue import RunQueue
from distill_core.runfolder import RunFolder
from distill_core.training import checkpoint as ckpt
from trainer_ui import app, launcher, runs
from trainer_ui.paths import PathRefused, Roots
from trainer_ui.serving import launch_options
from trainer_ui.wizard import PRESETS, build_config


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


def test_every_path_field_of_the_config_is_checked_against_the_roots(settings):
    """The wizard checks the config's ReadPath fields (one list, from the annotations): each, set outside the
    roots in the advanced box, is refused naming the field; in a list of tables (teacher.loras), every entry's
    path, not only the first."""
    from distill_core.config import field_value, read_path_fields

    assert {"teacher.path", "run.branch_from", "student.init_lora", "data.prompts_file", "fake.init_lora",
            "teacher.loras"} <= set(read_path_fields())
    inside = settings.roots.extra[0] / "style.safetensors"
    for key in read_path_fields():
        section, name = key.split(".")
        if isinstance(field_value(Config(), key), list):
            value, shown = f'[{{ path = "{inside}" }}, {{ path = "/etc", weight = 0.5 }}]', f"{key}[1].path"
        else:
            value, shown = '"/etc"', key
        with pytest.raises(PathRefused, match=re.escape(f"{shown} '/etc'") + " .* is outside the folders"):
            build_config(replace(tiny_form("w1"), extra_toml=f"[{section}]\n{name} = {value}"), settings.roots)


def test_run_names_are_plain_folder_names_in_the_runs_folder(tmp_path):
    roots = Roots(tmp_path / "runs", [tmp_path / "models"])
    (tmp_path / "runs").mkdir()
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
    assert "has no checkpoint yet" in refused.message  # ... nor loaded when asked for by name

    (run / "samples" / "step_00000004.png").write_bytes((secret / "image.png").read_bytes())  # its own file
    assert runs.view(run).student_grid == (run / "samples" / "step_00000004.png").resolve()
    with pytest.raises(PathRefused, match="train.log is a link that leads outside the run folder"):
        launcher.start(build_config(tiny_form("planted"), settings.roots))  # appending would write through it


# ---- wizard --------------------------------------------------------------------------------------------
def test_check_shows_the_resolved_config_that_will_run(settings):
    view = app.check(settings, *values(tiny_form("w1", method__diversity_weight=0.08)))
    assert view.message.startswith("Ready"), view.message
    cfg = loads_config(view.config_toml)
    assert resolve(cfg).to_toml() == view.config_toml  # resolved already: what the trainer will record
    assert (cfg.method.anchor_step, cfg.method.diversity_weight, cfg.teacher.num_steps) == (3, 0.08, 8)
    assert cfg.run.output_dir == str(settings.roots.runs / "w1")


def test_the_advanced_box_sets_fields_the_form_does_not_show(settings):
    cfg = loads_config(app.check(settings, *values(tiny_form("w1", eval__seeds=5))).config_toml)
    assert cfg.eval.seeds == 5 != Config().eval.seeds


def test_no_typed_prompts_means_all_ten_digits_for_the_builtin_teacher(settings):
    form = tiny_form("w1")
    assert form.prompts == "" and len(build_config(form, settings.roots).data.prompts) == 10


REFUSALS = {  # a change to a valid form -> what the core's refusal says
    "k beyond the teacher's steps": ({"anchor_step": 9}, "k (anchor step) = 9"),
    "a misspelt advanced field": ({"extra_toml": "[eval]\nsedes = 3"}, "did you mean &#x27;seeds&#x27;"),
    "a prompt naming no digit": ({"prompts": "a photo of a cat"}, "names no digit"),
    "a prompts file outside the roots": ({"prompts_file": "/etc/hostname"}, "outside the folders"),
    "a teacher path outside the roots": ({"extra_toml": '[teacher]\npath = "/etc"'}, "outside the folders"),
    "a branch checkpoint outside the roots": ({"extra_toml": '[run]\nbranch_from = "/etc"'}, "outside the folders"),
    "a student LoRA outside the roots": ({"extra_toml": '[student]\ninit_lora = "/etc/shadow"'}, "outside the folders"),
    "an output folder in the advanced box": ({"extra_toml": '[run]\noutput_dir = "/tmp/x"'},
                                             "run.output_dir cannot be set"),
    "a run name that is a path": ({"run_name": "../elsewhere"}, "not a plain folder name"),
    "an emptied number": ({"max_steps": None}, "Iterations is empty"),
}


@pytest.mark.parametrize("changes, expected", REFUSALS.values(), ids=REFUSALS.keys())
def test_check_refuses_bad_input_with_the_cores_message(settings, changes, expected):
    view = app.check(settings, *values(replace(tiny_form("w1"), **changes)))
    assert view.config_toml == "" and view.message.startswith("**Refused:**"), view.message
    assert expected in view.message


def test_refusals_name_the_fields_label_and_mark_the_field(settings):
    view = app.check(settings, *values(replace(tiny_form("w1"), max_steps=0)))
    assert view.message.startswith("**Refused:** Iterations") and "run.max_steps" not in view.message, view.message
    assert view.highlight.startswith("<style>#max-steps {") and "outline" in view.highlight
    assert app.check(settings, *values(tiny_form("w1"))).highlight == ""  # Ready: nothing marked
    misspelt = app.check(settings, *values(replace(tiny_form("w1"), extra_toml="[eval]\nsedes = 3")))
    assert "#extra-toml" in misspelt.highlight, misspelt


def test_out_of_range_slider_values_are_refused_naming_the_field(settings):
    sliders = {b.elem_id: b for b in app.build_app(settings).blocks.values() if isinstance(b, gr.Slider)}
    for name, value, label in (("anchor_step", 40, "k (anchor step) = 40"),
                               ("diversity_weight", -0.2, "lambda (diversity weight) = -0.2")):
        typed = sliders[app.field_id(name)].preprocess(value)  # what the page hands on (gr.Slider raised here)
        view = app.check(settings, *values(replace(tiny_form("w1"), **{name: typed})))
        assert view.message.startswith("**Refused:**") and label in view.message, view.message
        assert "method." not in view.message and f"#{app.field_id(name)} " in view.highlight


def test_a_prompts_file_is_read_without_its_comments(settings, tmp_path):
    prompts = tmp_path / "models" / "prompts.txt"
    prompts.parent.mkdir()
    prompts.write_text("# digits\nseven\na handwritten 3\n")
    cfg = build_config(replace(tiny_form("w1"), prompts_file=str(prompts)), settings.roots)
    assert cfg.data.prompts == ["seven", "a handwritten 3"] and cfg.data.prompts_file == ""


def test_an_sd3_teacher_must_be_a_diffusers_folder_inside_the_roots(settings, tmp_path):
    models = tmp_path / "models"
    diffusers_skeleton(models / "sd3", "sd3")
    diffusers_skeleton(models / "sdxl", "sdxl")
    (models / "empty").mkdir()
    sd3 = replace(tiny_form("w1"), family="sd3", prompts="a photo of a cat")
    cfg = build_config(replace(sd3, teacher_path=str(models / "sd3")), settings.roots)
    assert cfg.teacher.path == str(models / "sd3")
    shutil.rmtree(models / "sd3" / "vae")
    refusals = {models / "missing": "does not exist", models / "empty": "model_index.json", models / "sd3": "vae/",
                models / "sdxl": "holds a StableDiffusionXLPipeline", tmp_path: "outside the folders"}
    for folder, expected in refusals.items():
        message = app.check(settings, *values(replace(sd3, teacher_path=str(folder)))).message
        assert message.startswith("**Refused:**") and expected in message, (folder, message)


def test_a_hidden_teacher_folder_does_not_block_the_builtin_teacher(settings):
    # typed while SD3 was chosen, then the built-in teacher chosen again: the box is hidden, so not checked
    form = replace(tiny_form("w1"), teacher_path="../../etc")
    view = app.check(settings, *values(form))
    assert view.message.startswith("Ready"), view.message
    assert loads_config(view.config_toml).teacher.path == ""
    refused = app.check(settings, *values(replace(form, family="sd3", prompts="a cat"))).message
    assert refused.startswith("**Refused:**") and "outside the folders" in refused, refused  # shown: checked


def test_the_one_step_preset_sets_bf16_checkpointing_and_one_step_backprop(settings):
    cfg = build_config(replace(tiny_form("w1"), memory="lora64-ckpt-onestep"), settings.roots)
    assert (cfg.run.mixed_precision, cfg.student.gradient_checkpointing, cfg.method.backprop) == ("bf16", True,
                                                                                                   "one_step")


def test_a_preset_leaves_backprop_alone_without_the_detach(settings):
    cfg = build_config(replace(tiny_form("w1"), memory="lora64-ckpt-onestep", method="dmd"), settings.roots)
    assert cfg.method.backprop == "all" and cfg.lam == 0.0  # one-step needs the detach (Trainer refuses it)


def test_the_wizard_offers_the_planners_presets():
    assert "lora64-ckpt" in PRESETS  # the planner's presets (tests/test_tables.py)


# ---- start, double start, monitor, save now, stop ------------------------------------------------------
def test_start_monitor_save_stop(settings):
    form = tiny_form("live", run__max_steps=500, run__checkpoint_every=100, eval__grid_every=2, eval__diversity_every=2)
    run = RunFolder(settings.roots.runs / "live")
    started = app.start(settings, *values(form))
    assert started.message.startswith("Started **live**"), started.message
    assert started.run_choice["value"] == "live" and (run.root / "config.toml").read_text() == started.config_toml
    again = app.start(settings, *values(form))  # a second click while the first run is starting: follow it
    assert "already starting" in again.message and not again.message.startswith("**Refused"), again.message
    assert again.run_choice["value"] == "live" and again.tabs.selected == "monitor"
    other = app.check(settings, *values(tiny_form("second"))).message  # a second run would share the device
    assert other.startswith("Ready") and "Start queues this run** (#1 on cpu): **live**" in other, other
    assert runs.list_runs(settings.roots)[0].state in ("starting", "running")
    # 7: Starts while the device is busy queue the runs; reorder and cancel them
    queued = app.start(settings, *values(tiny_form("second")))
    assert queued.message.startswith("Queued **second** (#1 on cpu)") and queued.run_choice["value"] == "second"
    assert app.start(settings, *values(tiny_form("third"))).message.startswith("Queued **third** (#2 on cpu)")
    assert "already queued (#2 on cpu)" in app.start(settings, *values(tiny_form("third"))).message
    assert not (settings.roots.runs / "second" / "status.json").exists()  # no process: waiting
    rows = {row[0]: row[1] for row in app.refresh(settings, "third", None).runs_table}
    assert (rows["second"], rows["third"]) == ("queued #1 (cpu)", "queued #2 (cpu)"), rows
    waiting = app.refresh(settings, "third", None)
    assert "state-queued" in waiting.status and waiting.move_up["interactive"] and waiting.cancel["interactive"]
    assert not waiting.resume["interactive"] and not waiting.stop["interactive"]
    assert "now #1" in app.control(settings, "up", "third")
    assert "out of the queue" in app.control(settings, "cancel", "second")
    assert RunQueue(settings.roots.runs).positions() == {"third": ("cpu", 1)}
    assert runs.summarize(settings.roots.runs / "second").state == "stopped"
    assert settings.devices.dispatch() == []  # live still trains: the CPU has no room

    log = run.root / "train.log"
    wait_for(lambda: len([e for e in run.read_events() if e.get("event") == "eval"]) >= 2, 240,
             "two diversity evaluations", log)
    view = app.refresh(settings, None, None)  # a fresh page: picks the running run itself
    clicked = gr.SelectData(None, {"index": [0, 3], "value": "dpdmd", "row_value": view.runs_table[0]})
    assert app.picked_row(clicked)["value"] == "live"  # a click on its row in the Runs table selects it
    row = dict(zip(runs.SUMMARY_HEADERS, view.runs_table[0]))
    assert view.run_choice["value"] == "live" and (row["run"], row["state"]) == ("live", "running")
    assert "state-running" in view.status  # the speed once a median of steps after the first is measured
    assert "s/step" in view.status or "time left: measuring the first steps" in view.status
    losses, diversity = view.losses["value"].dropna(), view.diversity["value"].dropna()  # (NaN: a series without data)
    assert set(losses["series"]) == set(runs.LOSSES.values()) and losses["step"].max() >= 2
    assert list(diversity["who"]).count("student") >= 2
    assert Path(view.teacher_grid).name == "teacher.png" and Path(view.student_grid).name.startswith("step_")
    assert view.stop["interactive"] and view.save["interactive"] and not view.resume["interactive"]
    assert "trainer UI:" in view.log or "distilling" in view.log

    assert "checkpoint" in app.control(settings, "save", "live")
    wait_for(lambda: any(e.get("event") == "checkpoint" for e in run.read_events()), 120, "the saved checkpoint", log)
    assert "stop" in app.control(settings, "stop", "live")
    wait_for(lambda: run.effective_state() == "stopped", 120, "the run to stop", log)
    status = run.read_status()
    assert ckpt.read_state(ckpt.latest(run.checkpoints))["step"] == status["step"] < 500  # graceful: checkpointed
    view = app.refresh(settings, "live", None)
    assert view.resume["interactive"] and not view.stop["interactive"]
    assert "same command" not in view.status and f"Resume continues from its newest checkpoint (step {status['step']})" \
        in view.status  # 8: in the UI's words, not the terminal's
    unchanged = app.refresh(settings, "live", view.signature)
    assert all(out == gr.skip() for out in unchanged)  # nothing changed: nothing sent
    assert app.control(settings, "stop", "live").startswith("**Refused:**")  # not running any more
    assert settings.devices.dispatch() == ["third"]  # the device is free: the queued run starts
    third = RunFolder(settings.roots.runs / "third")
    assert runs.run_state(third) in ("starting", "running") and RunQueue(settings.roots.runs).entries() == []
    assert app.control(settings, "resume", "live").startswith("Queued **live** (#1 on cpu)")  # resume queues too


def test_a_refresh_never_moves_the_monitor_off_a_run_the_page_holds(settings):
    """A tick leaves with the dropdown's value of its time; if Start (or a pick) lands before it returns, its
    answer must not set the old run back (the Monitor would leave the run just started: CI, stop 33)."""
    for name in ("older", "just-started"):
        RunFolder(settings.roots.runs / name).write_status("stopped", max_steps=2)
    stale = app.refresh(settings, "older", None)
    assert "value" not in stale.run_choice and set(stale.run_choice["choices"]) == {"older", "just-started"}
    fresh = app.refresh(settings, None, None)  # a new page holds none: the Monitor picks one
    assert fresh.run_choice["value"] in ("older", "just-started")
    assert app.refresh(settings, "deleted-since", None).run_choice["value"] in ("older", "just-started")


def test_start_refuses_an_existing_run_with_another_config(settings):
    run = settings.roots.runs / "taken"
    run.mkdir()
    cfg = build_config(tiny_form("taken"), settings.roots)
    (run / "config.toml").write_text(cfg.to_toml().replace("anchor_step = 3", "anchor_step = 4"))
    msg = app.start(settings, *values(tiny_form("taken"))).message
    assert msg.startswith("**Refused:**") and "k (anchor step)" in msg and not (run / "status.json").exists()
    with launcher.launch_lock(run):  # another start in progress
        assert "being started right now" in app.start(settings, *values(tiny_form("taken"))).message


# ---- a finished run, compare ---------------------------------------------------------------------------
def test_monitor_polish_integer_steps_teacher_level_from_the_start_and_the_log_once(settings, tmp_path_factory):
    done = {m: copy_run(src, settings.roots.runs) for m, src in finished_runs(tmp_path_factory).items()}
    fresh = RunFolder(settings.roots.runs / "fresh")  # a DP-DMD run early on: one diversity point, no metrics yet
    fresh.create()
    fresh.config_path.write_text((done["dpdmd"] / "config.toml").read_text().replace("max_steps = 2", "max_steps = 40"))
    fresh.append_event("step", step=1, loss_dmd=0.5, sec_per_step=0.3)
    fresh.append_event("eval", step=1, diversity=0.07)
    fresh.write_status("stopped", step=1, max_steps=40)
    (fresh.root / "train.log").write_text("start\n 2%|  | 1/40\r 5%|  | 2/40\r 5%|  | 2/40\n 5%|  | 2/40\nend\n")
    view = app.refresh(settings, "fresh", None)
    assert view.losses["x_lim"] == [0, 10] and view.diversity["x_lim"] == [0, 10]  # whole steps from the start
    rows = [tuple(r) for r in view.diversity["value"].itertuples(index=False)]
    teacher = RunFolder(done["dmd"]).read_json(RunFolder(done["dmd"]).metrics_path)["teacher"]["diversity"]
    level = [(r[0], r[1]) for r in rows if r[2] == "teacher"]  # the DMD baseline measured it: drawn from step 0
    assert {s for s, _ in level} == set(range(11)) and {d for _, d in level} == {teacher}, level
    assert [(r[0], r[1]) for r in rows if r[2] == "student"] == [(1, 0.07)]
    assert view.log == "start\n 5%|  | 2/40\nend"  # the bar's last drawing, once
    table = {row[0]: dict(zip(runs.SUMMARY_HEADERS, row)) for row in view.runs_table}
    assert table["done-dmd"]["k"] == "" and table["done-dpdmd"]["k"] == 3  # DMD has no anchor step


def test_dmd_disables_k_and_a_default_run_name_follows_the_method():
    dmd = app.on_method("dmd", app.default_run_name("dpdmd"))
    assert not dmd.anchor_step["interactive"] and not dmd.diversity_weight["interactive"]
    assert dmd.run_name["value"].startswith("dmd-")
    assert app.on_method("dpdmd", "my-run").run_name == gr.skip()  # a typed name stays
    assert app.on_method("no_detach", dmd.run_name["value"]).run_name["value"].startswith("no_detach-")


def test_monitor_shows_a_finished_runs_evaluation_and_report(settings, tmp_path_factory):
    copy_run(finished_runs(tmp_path_factory)["dpdmd"], settings.roots.runs)
    view = app.refresh(settings, "done-dpdmd", None)
    assert "state-finished" in view.status and "final evaluation: diversity" in view.status
    assert "gradio_api/file=" in view.report and "report.html" in view.report


def test_monitor_shows_a_finishing_run_as_evaluating(settings, tmp_path_factory):
    run = RunFolder(copy_run(finished_runs(tmp_path_factory)["dpdmd"], settings.roots.runs))
    run.student_path.unlink()
    run.report_path.unlink()
    run.write_status("finishing", pid=os.getpid(), host=os.uname().nodename, message="evaluating")  # a live process
    view = app.refresh(settings, "done-dpdmd", None)
    assert "state-finishing" in view.status and "Evaluating / writing the report" in view.status
    assert "min left" not in view.status and "being written" in view.report
    assert not view.stop["interactive"] and not view.resume["interactive"]
    assert "student.safetensors" not in view.status  # no download link before the file exists


def test_settings_load_from_a_run_and_as_its_dmd_baseline(settings, tmp_path_factory):
    done = copy_run(finished_runs(tmp_path_factory)["dpdmd"], settings.roots.runs)
    original = launcher.run_config(done).to_dict()
    for baseline, differ in ((False, {"run.output_dir"}),
                             (True, {"run.output_dir", "method.name", "method.diversity_weight"})):
        *updates, message = app.load_settings(settings, baseline, "done-dpdmd")
        assert message.startswith("Loaded") and "done-dpdmd" in message, message
        loaded = build_config(app.WizardForm(*(u["value"] for u in updates)), settings.roots).to_dict()
        changed = {f"{s}.{k}" for s in original for k in original[s] if original[s][k] != loaded[s][k]}
        assert changed == differ, changed  # everything else as the run had it, the advanced fields included
    assert (loaded["method"]["name"], loaded["run"]["output_dir"]) == ("dmd", str(settings.roots.runs / "done-dpdmd-dmd"))
    assert app.load_settings(settings, True, "missing")[-1].startswith("**Refused:**")


def test_a_kept_form_comes_back_with_its_teacher_folder_box_shown():
    from trainer_ui.wizard import FIELDS

    kept = app.remember(*values(replace(tiny_form("kept"), family="sd3", teacher_path="/models/sd3")))
    updates = dict(zip(FIELDS, app.restore(kept)))
    assert updates["teacher_path"] == {"__type__": "update", "visible": True, "value": "/models/sd3"}
    assert updates["run_name"] == {"__type__": "update", "value": "kept"}  # issue 29: the name is kept too
    assert all(u == gr.skip() for u in app.restore(None))


def test_compare_offers_the_runs_with_an_exported_student(settings, tmp_path_factory):
    done = [copy_run(p, settings.roots.runs) for p in finished_runs(tmp_path_factory).values()]
    (settings.roots.runs / "unfinished").mkdir()
    (settings.roots.runs / "unfinished" / "config.toml").write_text((done[0] / "config.toml").read_text())
    assert {r.name for r in runs.list_runs(settings.roots)} == {d.name for d in done} | {"unfinished"}
    assert set(app.compare_choices(settings)["choices"]) == {d.name for d in done}


def test_compare_samples_each_student_and_the_teacher(settings, tmp_path_factory):
    for src in finished_runs(tmp_path_factory).values():
        copy_run(src, settings.roots.runs)
    moves = []
    view = app.run_compare(settings, app.cmp.ModelCache(), ["done-dpdmd", "done-dmd"], True, "", 4, 0,
                           progress=lambda f, desc: moves.append(f))
    cards = re.findall(r"<figure class='compare-card'><figcaption>(.*?)</figcaption>"
                       r"<img alt='[^']*' src='data:image/png;base64,([^']+)'>(.*?)</figure>", view.cards)
    assert [label for label, _, _ in cards] == ["teacher", "done-dpdmd", "done-dmd"], view.message
    assert list(view.table["method"]) == ["teacher", "dpdmd", "dmd"]
    assert view.table["diversity (these samples)"].between(0, 1).all()
    assert view.table.loc[1, "diversity (run eval)"] != ""  # the run's metrics.json is shown next to it
    for (label, png, numbers), (_, row) in zip(cards, view.table.iterrows()):  # 10: each grid's numbers under it
        assert f"<th>diversity (these samples)</th><td>{row['diversity (these samples)']:.4g}</td>" in numbers
        assert f"<td>{row['method']}</td>" in numbers, (label, numbers)
    sizes = {Image.open(io.BytesIO(base64.b64decode(png))).size for _, png, _ in cards}
    assert len(sizes) == 1  # same prompts x seeds for every model
    heights = view.chart.groupby("bar")["value"].sum()  # (a zero bar: a colour without bars)
    # the runs' evaluations count modes: the chart is the first prompt's share per mode, the data beside each model
    assert "Share of samples per mode" in view.chart_title
    for model in ("data", "teacher", "done-dpdmd", "done-dmd"):
        shares = heights[[bar for bar in heights.index if bar.endswith(f" · {model}")]]
        assert len(shares) >= 2 and shares.sum() == pytest.approx(1.0), model
    assert len(moves) > 2 * len(cards) and moves == sorted(moves) and moves[-1] == 1.0  # 11: the progress moves


def test_the_compare_chart_draws_exact_mode_shares_when_the_evaluation_has_them():
    names, data = [["upright", "slanted"]], [[0.5, 0.5]]
    panels = [app.cmp.Panel(label, None, {"method": label}, {"mode_histogram": hist, "mode_names": names, "data_histogram": data,
                                              "mode_coverage": 1.0}, ["a 7"])
              for label, hist in (("teacher", [[0.45, 0.55]]), ("dpdmd", [[0.4, 0.6]]), ("dmd", [[1.0, 0.0]]))]
    rows, title = app.cmp.chart(panels)
    assert [r[0] for r in rows[:4]] == ["upright · data", "upright · teacher", "upright · dpdmd", "upright · dmd"]
    assert {r[0]: r[1] for r in rows}["slanted · dmd"] == 0.0 and "'a 7'" in title
    assert [r[2] for r in rows[:4]] == ["data", "teacher", "dpdmd", "dmd"]  # colour: what each bar is
    panels[2].evaluation.pop("mode_histogram")  # one model without exact modes: the common measures instead
    assert app.cmp.chart(panels)[0][0][0] == "coverage · teacher"


def test_compare_refuses_prompts_the_teacher_cannot_draw(settings, tmp_path_factory):
    copy_run(finished_runs(tmp_path_factory)["dpdmd"], settings.roots.runs)
    view = app.run_compare(settings, app.cmp.ModelCache(), ["done-dpdmd"], False, "a cat", 4, 0,
                           progress=lambda *a, **k: None)
    assert view.message.startswith("**Refused:**") and "names no digit" in view.message
    assert view.cards == gr.skip() and view.chart == gr.skip() and view.table == gr.skip()  # the last grids stay on the page


# ---- serving and the command line ----------------------------------------------------------------------
def test_files_are_served_only_from_the_runs_folder(settings, tmp_path, tmp_path_factory):
    copy_run(finished_runs(tmp_path_factory)["dpdmd"], settings.roots.runs)
    outside = tmp_path / "models" / "secret.png"
    outside.parent.mkdir()
    outside.write_bytes((settings.roots.runs / "done-dpdmd" / "samples" / "teacher.png").read_bytes())
    (settings.roots.runs / "done-dpdmd" / "train.log").write_text("step 1\n")
    links = re.findall(r"href='(gradio_api/file=[^']+)' download", app.refresh(settings, "done-dpdmd", None).status)
    assert sorted(Path(urllib.parse.unquote(u)).name for u in links) == ["report.html", "student.safetensors",
                                                                          "train.log"]
    (settings.roots.runs / "done-dpdmd" / "planted.svg").write_text(
        "<svg xmlns='http://www.w3.org/2000/svg'><script>fetch('/gradio_api/info')</script></svg>")
    demo = app.build_app(settings)
    demo.queue().launch(server_name="127.0.0.1", server_port=None, prevent_thread_lock=True, quiet=True,
                        **launch_options(settings.roots.runs, None))  # as `dpdmd ui` launches it
    try:
        def status(path: Path) -> int:
            try:
                with urllib.request.urlopen(f"{demo.local_url}gradio_api/file={path}") as r:
                    return r.status
            except urllib.error.HTTPError as e:
                return e.code
        assert status(settings.roots.runs / "done-dpdmd" / "samples" / "teacher.png") == 200
        assert status(settings.roots.runs / "done-dpdmd" / "report.html") == 200
        for name in ("report.html", "planted.svg", "samples/teacher.png"):  # no script with the UI's origin
            with urllib.request.urlopen(f"{demo.local_url}gradio_api/file={settings.roots.runs / 'done-dpdmd' / name}") as r:
                assert r.headers["Content-Security-Policy"] == "sandbox", name
                assert r.headers["X-Content-Type-Options"] == "nosniff", name
        assert all(urllib.request.urlopen(demo.local_url + link).status == 200 for link in links)
        assert status(outside) == 403 and status(REPO / "README.md") == 403
        assert demo.server_name == "127.0.0.1" and demo.share is False
    finally:
        demo.close()


def test_with_a_login_nothing_about_the_app_answers_before_it(settings):
    import base64

    demo = app.build_app(settings)
    demo.queue().launch(server_name="127.0.0.1", server_port=None, prevent_thread_lock=True, quiet=True,
                        **launch_options(settings.roots.runs, ("me", "pw:1")))
    runs_path = str(settings.roots.runs)

    def get(path: str, login: str | None = None, method: str = "GET") -> tuple[int, str]:
        request = urllib.request.Request(demo.local_url + path, method=method, data=b"{}" if method == "POST" else None,
                                         headers={"Content-Type": "application/json"})
        if login:
            request.add_header("Authorization", "Basic " + base64.b64encode(login.encode()).decode())
        try:
            with urllib.request.urlopen(request) as r:
                return r.status, r.read().decode("utf-8", "replace")
        except urllib.error.HTTPError as e:
            return e.code, e.read().decode("utf-8", "replace")
    try:
        for path, method in (("", "GET"), ("config", "GET"), ("gradio_api/info", "GET"), ("login", "GET"),
                             ("gradio_api/reset", "POST"), ("gradio_api/cancel", "POST"),
                             ("gradio_api/queue/data?session_hash=x", "GET"),
                             (f"gradio_api/file={runs_path}/x.png", "GET")):
            for login in (None, "me:wrong", "other:pw:1"):
                code, body = get(path, login, method)
                assert code == 401 and runs_path not in body and "gradio_api_info" not in body, (path, login, code)
        code, body = get("", "me:pw:1")
        assert code == 200 and "gradio" in body.lower()
    finally:
        demo.close()


def test_the_ui_serves_this_machine_only_without_a_login_by_default():
    from trainer_ui.cli import build_parser

    args = build_parser().parse_args([])
    assert (args.host, args.share, args.auth, args.runs_dir) == ("127.0.0.1", False, None, "runs")


def test_a_busy_port_is_one_line_naming_the_port_option(tmp_path):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        out = subprocess.run([sys.executable, "-m", "trainer_ui", "--runs-dir", str(tmp_path), "--port", str(port)],
                             cwd=REPO, env={**os.environ, "PYTHONPATH": str(REPO)}, capture_output=True, text=True,
                             timeout=120)
    assert out.returncode == 2, out.stderr
    assert len(out.stderr.strip().splitlines()) == 1 and f"--port {port + 1}" in out.stderr, out.stderr


def test_the_banner_names_the_share_option_not_launch_arguments():
    from trainer_ui.cli import banner

    local = banner("http://127.0.0.1:7860/", None)
    assert "--share" in local and "share=True" not in local and "launch()" not in local
    assert "https://x.gradio.live" in banner("http://127.0.0.1:7860/", "https://x.gradio.live")


def test_a_login_is_split_at_its_first_colon():
    from trainer_ui.cli import parse_auth

    assert parse_auth("me:secret:with:colons") == ("me", "secret:with:colons")
    with pytest.raises(SystemExit):
        parse_auth("no-colon")


def test_dpdmd_ui_help_does_not_import_gradio():
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    code = ("import sys, distill_core.cli as c; assert 'gradio' not in sys.modules; "
            "sys.exit(c.main(['ui', '--help']))")
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert "--runs-dir" in out.stdout and "--allowed-root" in out.stdout and "--share" in out.stdout


def test_the_trainer_ui_is_packaged():
    pyproject = tomllib.loads((REPO / "pyproject.toml").read_text())
    assert "trainer_ui*" in pyproject["tool"]["setuptools"]["packages"]["find"]["include"]


def test_a_run_that_dies_at_startup_shows_why_and_offers_start_again(settings, tmp_path):
    # Passes every check (a diffusers folder's layout) but its weights file is empty: the trainer dies loading it.
    teacher = diffusers_skeleton(tmp_path / "models" / "sd3", "sd3")
    form = replace(tiny_form("doomed"), family="sd3", teacher_path=str(teacher), prompts="a photo of a cat",
                   resolution=1024)
    assert app.start(settings, *values(form)).message.startswith("Started")
    run = RunFolder(settings.roots.runs / "doomed")
    wait_for(lambda: runs.run_state(run) in ("died", "failed"), 180, "the run to die", run.root / "train.log")
    view = app.refresh(settings, "doomed", None)
    assert "Unable to load weights" in view.status and "class='run-error'" in view.status  # the error, wrapped
    assert "loading the teacher" not in view.status  # what it was doing when it died, not what it does
    assert view.resume == {"__type__": "update", "interactive": True, "value": "Start again"}, view.resume
    assert "from the beginning" in app.control(settings, "resume", "doomed")


def test_wizard_refuses_one_step_backprop_without_the_detach(settings):
    form = tiny_form("refused", method__name="no_detach")
    form.extra_toml += '\n[method]\nbackprop = "one_step"\n'
    message = app.start(settings, *values(form)).message
    assert "method.backprop" in message and not (settings.roots.runs / "refused" / "config.toml").exists()


def _estimate(settings, form) -> str:
    return list(app.estimate(settings, *values(form)))[-1]


def test_the_wizard_estimates_time_from_a_measured_run_else_the_table(settings, tmp_path_factory):
    form = tiny_form("next")
    fresh = _estimate(settings, form)
    assert "rough" in fresh and f"x {form.max_steps} iterations" in fresh and "needs no GPU" in fresh, fresh
    done = copy_run(finished_runs(tmp_path_factory)["dpdmd"], settings.roots.runs)
    measured = _estimate(settings, form)
    steps = [e["sec_per_step"] for e in RunFolder(done).read_events() if e.get("event") == "step"]
    assert f"{steps[-1]:.2f} s/step" in measured and "measured in run done-dpdmd" in measured, measured
    other = _estimate(settings, replace(form, batch_size=form.batch_size + 1))  # another batch: not comparable
    assert "rough" in other, other


def test_the_wizard_shows_the_planners_memory_for_the_chosen_preset(tmp_path, tiny_pipelines):
    from distill_core.plan import GB, Options, plan

    settings = app.Settings(Roots(tmp_path / "runs", [tiny_pipelines["sd3"].parent]))
    # 128 px (its largest): the tiny network's activations then set the presets apart by more than the 0.1 GB shown
    form = replace(tiny_form("big"), family="sd3", teacher_path=str(tiny_pipelines["sd3"]), prompts="a cat",
                   extra_toml="[teacher]\nresolution = 128\n")
    shown = []
    for memory in ("lora64-ckpt-onestep", "full"):
        cfg = build_config(replace(form, memory=memory), settings.roots)
        peak = plan(cfg).planner.estimate(Options.from_config(cfg)).peak
        steps = list(app.estimate(settings, *values(replace(form, memory=memory))))
        assert f"about **{peak / GB:.1f} GB** peak" in steps[-1], steps
        shown.append(steps)
    assert "planning" in shown[0][0] and len(shown[1]) == 1  # the planner is built once per teacher folder
    assert shown[0][-1] != shown[1][-1]
    assert "no measured speed" in shown[0][-1]


def test_the_quick_test_gives_a_first_result_in_a_minute_or_two(settings):
    updates = app.apply_quick_test("builtin")
    quick = {name: u["value"] for name, u in zip(app.FIELDS, updates) if isinstance(u, dict) and "value" in u}
    form = replace(tiny_form("quick", eval__seeds=9), **quick)
    form.extra_toml = ""  # the config's own evaluation
    cfg = build_config(form, settings.roots)
    assert cfg.run.max_steps <= 40 and cfg.eval.grid_every <= 10 and cfg.data.batch_size <= 8
    text = _estimate(settings, form)
    seconds = float(re.search(r"= \*\*([\d.]+) s\*\*", text).group(1))
    assert seconds < 60, text


def test_the_demo_preset_starts_the_demos_two_runs(settings, tmp_path):
    """Issue 29: one click starts what `dpdmd demo` trains, one run per student, each with the config.toml the demo
    writes into <out>/<method>/ (its trainer's resolved config), but for the folder."""
    from distill_core.config import load_run_config
    from distill_core.demo import STUDENTS, demo_config

    view = app.start_demo(settings)
    assert "Started **demo-dmd**" in view.message and "Queued **demo-dpdmd**" in view.message, view.message
    for method in STUDENTS:
        written = resolve(load_run_config(settings.roots.runs / f"demo-{method}" / "config.toml"))
        demos = resolve(demo_config(tmp_path / "demo" / method, method=method))  # what run_demo trains
        written.run.output_dir = demos.run.output_dir
        assert written.to_toml() == demos.to_toml(), method
    assert "lambda = 0.5" in view.message and "fake-score lr 0.001" in view.message  # the setting, in words
    assert "already" in app.start_demo(settings).message  # a second click starts nothing twice


def _stopped_run(settings, tmp_path_factory, name: str = "stopped") -> Path:
    """A finished tiny run copied with its checkpoints, then made a stopped one (no student.safetensors)."""
    import shutil

    run = RunFolder(Path(shutil.copytree(finished_runs(tmp_path_factory)["dpdmd"], settings.roots.runs / name)))
    for path in (run.student_path, run.report_path, run.metrics_path):
        path.unlink()
    run.write_status("stopped", step=2)
    return run.root


def test_compare_samples_a_stopped_run_at_its_newest_checkpoint(settings, tmp_path_factory):
    """Issue 29.6: a running or stopped run is compared at its newest checkpoint, and its card says which step."""
    stopped = _stopped_run(settings, tmp_path_factory)
    assert "stopped" in app.compare_choices(settings)["choices"]
    view = app.run_compare(settings, app.cmp.ModelCache(), ["stopped"], False, "", 2, 0, progress=lambda f, desc: None)
    assert "<figcaption>stopped (checkpoint, step 2)</figcaption>" in view.cards, view.message
    assert (stopped / "student_step00000002.safetensors").is_file()  # exported once, as `dpdmd export` names it
    assert "student_step00000002.safetensors" in app.refresh(settings, "stopped", None).status  # and downloadable


def test_delete_asks_nothing_it_cannot_undo_and_refuses_a_working_run(settings, tmp_path_factory):
    """Issue 29.7: delete only a run folder inside the runs folder, never while a process works on it."""
    stopped = _stopped_run(settings, tmp_path_factory)
    RunFolder(stopped).write_status("running", pid=os.getpid(), host=os.uname().nodename, step=2)
    message, _ = app.delete_run(settings, "stopped")
    assert message.startswith("**Refused:**") and "stop it first" in message and stopped.is_dir()
    RunFolder(stopped).write_status("stopped", step=2)
    (settings.roots.runs / "link").symlink_to(stopped)
    assert app.delete_run(settings, "link")[0].startswith("**Refused:**") and stopped.is_dir()
    assert app.delete_run(settings, "../runs")[0].startswith("**Refused:**")
    message, choice = app.delete_run(settings, "stopped")
    assert message.startswith("Deleted 'stopped'") and not stopped.exists()
    assert "stopped" not in choice["choices"]
    assert app.delete_run(settings, "") == (gr.skip(), gr.skip())  # the browser's dialog was cancelled


def test_notes_are_kept_in_the_run_folder(settings, tmp_path_factory):
    stopped = _stopped_run(settings, tmp_path_factory)
    assert app.load_notes(settings, "stopped") == ""
    assert "Notes saved" in app.save_notes(settings, "stopped", "lambda 0.5 looked best")
    assert (stopped / "notes.md").read_text() == "lambda 0.5 looked best"
    assert app.load_notes(settings, "stopped") == "lambda 0.5 looked best"
    assert app.save_notes(settings, "stopped", "lambda 0.5 looked best") == gr.skip()  # unchanged: not written


def test_export_from_the_monitor_and_its_download_link(settings, tmp_path_factory):
    _stopped_run(settings, tmp_path_factory)
    message = app.export_run(settings, "stopped", "comfy")
    assert message.startswith("Exported step 2 of **stopped**"), message
    status = app.refresh(settings, "stopped", None).status
    assert "download='student_step00000002_comfy.safetensors'" in status


def test_several_processes_start_through_accelerate_launch(settings, tmp_path):
    """Issue 29.7: the wizard's process count; the command is shown, kept for a resume and the queue."""
    form = replace(tiny_form("multi"), processes=2)
    assert "accelerate launch --multi_gpu --num_processes 2" in app.check(settings, *values(form)).message
    command = launcher.train_command(tmp_path / "config.toml", 2)
    assert command[1:3] == ["-m", "accelerate.commands.launch"] and command[command.index("--num_processes") + 1] == "2"
    assert launcher.train_command(tmp_path / "config.toml")[1:3] == ["-m", "distill_core.cli"]
    bad = app.check(settings, *values(replace(form, processes=0))).message
    assert bad.startswith("**Refused:**") and "Processes = 0" in bad
    run = settings.roots.runs / "multi"
    run.mkdir()
    (run / launcher.LAUNCH).write_text('{"processes": 2}')
    assert launcher.processes_of(run) == 2 and launcher.processes_of(settings.roots.runs / "none") == 1


def test_the_verdict_on_a_started_run_is_not_a_refusal(settings):
    """Issue 29.2: after Start, a check of the same form (a blur, another tab) says the run is on its way."""
    form = tiny_form("going")
    run = RunFolder(settings.roots.runs / "going")
    run.create()
    run.config_path.write_text(build_config(form, settings.roots).to_toml())
    run.write_status("running", pid=os.getpid(), host=os.uname().nodename, step=3, max_steps=4)
    view = app.check(settings, *values(form))
    assert "Refused" not in view.message and "**going** is running (step 3 / 4): the Monitor follows it" in view.message
    assert view.config_toml and view.highlight == ""


def test_a_real_teacher_at_a_size_its_network_cannot_take_is_refused(settings, tiny_pipelines):
    """Issue 29.3: the folder's configs bound the resolution (SD3: pos_embed_max_size); the memory planner's
    network refuses what it cannot run, so neither becomes a run that fails at step 0."""
    from tiny_diffusers import tiny_run_config

    teacher = settings.roots.extra[0] / "sd3"
    shutil.copytree(tiny_pipelines["sd3"], teacher)
    form = replace(tiny_form("big"), family="sd3", teacher_path=str(teacher), prompts="a photo of a cat",
                   resolution=1024)
    view = app.check(settings, *values(form))
    assert view.message.startswith("**Refused:** Resolution = 1024 is larger than this sd3 teacher can take (128 px")
    assert "#resolution" in view.highlight
    assert app.check(settings, *values(replace(form, resolution=64))).message.startswith("Ready")
    cfg = resolve(tiny_run_config("sd3", teacher, settings.roots.runs / "big", teacher__resolution=64))
    assert "peak per GPU" in settings.plans.estimate(cfg) and settings.plans.refusal(cfg) is None
    cfg.teacher.resolution = 1024  # past the folder check: what the planner's network says of it
    assert "pos_embed_max_size" in settings.plans.refusal(cfg)
    assert "Start is refused" in settings.plans.estimate(cfg)
