"""The Gradio app: Wizard, Monitor and Compare pages wired to the UI's plain-Python modules.

Handlers are module-level functions taking the app's Settings first, so tests
call exactly what the page calls. A handler with several outputs returns a
NamedTuple whose field names are also the names its output components are wired
by (``_wired``), so neither a test nor the page depends on positions. Training
never runs in this process: Start launches it, and the Monitor re-reads run
folders on a timer.
"""
from __future__ import annotations

import base64
import dataclasses
import html
import io
import os
import secrets
import urllib.parse
from collections.abc import Sequence
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any, NamedTuple

import gradio as gr
import pandas as pd

from distill_core import demo
from distill_core.builtin.kinds import DEFAULT_KIND
from distill_core.config import Config, resolve, tensorboard_installed
from distill_core.errors import ConfigError, DPDMDError
from distill_core.export.formats import FORMATS
from distill_core.runfolder import TRAINING_STATES, RunFolder

from . import compare as cmp
from . import estimate as est
from . import launcher, runs
from .paths import Roots
from .widgets import KEEP_TYPED_JS, TYPED_SLIDER_CLASS, TypedSlider
from .wizard import (BUILTINS, FAMILIES, FIELDS, FORM_FIELDS, K_HELP, LAMBDA_HELP, METHODS, ONE_STEP_NOTE, PRESETS,
                     QUICK_TEST_NOTE, WizardForm, build_config, default_form, default_run_name, form_from_config,
                     guidance_help, in_labels, is_default_run_name, processes, quick_test)

CSS = """
#teacher-grid img, #student-grid img, .compare-card img { image-rendering: pixelated; }
.compare-cards { display: flex; flex-wrap: wrap; gap: 12px; }
.compare-card { flex: 1 1 300px; max-width: 440px; margin: 0; border: 1px solid var(--border-color-primary);
  border-radius: 8px; padding: 8px; }
.compare-card figcaption { font-weight: 600; margin-bottom: 4px; }
.compare-card img { width: 100%; height: auto; }
.compare-numbers { width: 100%; font-size: .9em; border-collapse: collapse; }
.compare-numbers th { text-align: left; font-weight: normal; color: var(--body-text-color-subdued); }
.compare-numbers td { text-align: right; font-variant-numeric: tabular-nums; }
.compare-numbers th, .compare-numbers td { border: none !important; padding: 1px 6px !important; }
.compare-numbers tr:nth-child(odd) { background: var(--table-odd-background-fill); }
#teacher-grid img, #student-grid img { height: 280px !important; width: auto !important; max-width: 100%;
  object-fit: contain; }
.run-status { font-size: 1.05em; line-height: 1.6; }
.run-status progress { width: 100%; height: 14px; }
.state { padding: 1px 8px; border-radius: 8px; color: white; font-weight: 600; }
.state-running, .state-starting, .state-finishing { background: #2f7ed8; } .state-finished { background: #2e9d4f; }
#verdict-bar { position: fixed; bottom: 0; left: 0; right: 0; z-index: 50; background: var(--background-fill-primary);
  border-top: 2px solid var(--border-color-primary); box-shadow: 0 -4px 12px rgba(0,0,0,.08);
  padding: 6px max(16px, calc((100vw - 1280px) / 2)); }
#tab-wizard { padding-bottom: 190px; }
#wizard-estimate { font-size: .92em; }
#train-log textarea { font-family: ui-monospace, SFMono-Regular, Menlo, Consolas, monospace; font-size: .85em; }
#teacher-grid img, #student-grid img { margin-top: 30px; }
#wizard-message { min-height: 1.5em; }
#field-mark { min-height: 0 !important; height: 0; overflow: hidden; padding: 0; }
.run-error { white-space: pre-wrap; overflow-wrap: anywhere; }
.state-stopped { background: #8a8a8a; } .state-queued { background: #a66bd3; } .state-failed, .state-died { background: #c9372c; }
"""
RESUMABLE = ("stopped", "failed", "died")


@dataclass
class Settings:
    roots: Roots
    refresh_seconds: float = 2.0
    device: str = "cpu"  # where Compare samples
    plans: est.MemoryPlans = dataclasses.field(default_factory=est.MemoryPlans)  # planners, built once per teacher
    runs_per_device: int = 1  # more runs than this on one device wait in its queue

    @property
    def devices(self) -> launcher.Devices:
        return launcher.Devices(self.roots.runs, cuda=self.device == "cuda", limit=self.runs_per_device)


def _refused(e: Exception) -> str:
    return f"**Refused:** {html.escape(str(e))}"


def field_id(name: str) -> str:
    """The page element of a form field (``max_steps`` -> ``#max-steps``)."""
    return name.replace("_", "-")


def _refused_field(e: Exception, form: WizardForm) -> tuple[str, str]:
    """The refusal in the page's words (field labels, not config keys) and a style marking that field; a field
    the form does not show can only have come from the advanced box."""
    message, name = in_labels(str(e))
    name = name or ("extra_toml" if form.extra_toml.strip() else None)
    mark = (f"<style>#{field_id(name)} {{ outline: 3px solid #c9372c; outline-offset: 2px; border-radius: 6px; }}"
            "</style>" if name else "")
    return f"**Refused:** {html.escape(message)}", mark


def _wired(names: Sequence[str], **components: Any) -> list:
    """The components in the order of ``names`` (a handler result's or the form's fields), matched by name."""
    if set(components) != set(names):
        raise TypeError(f"components {sorted(components)} do not match the fields {sorted(names)}")
    return [components[name] for name in names]


# ---- Wizard -------------------------------------------------------------------------------------------
class CheckView(NamedTuple):
    """What Check shows: the TOML that will run ('' when refused), the core's message and the refused field's
    mark (a style, '' when none)."""
    config_toml: str
    message: str
    highlight: str


class StartView(NamedTuple):
    """What Start shows; the last three are gr.skip() when the start is refused."""
    message: str
    highlight: str
    config_toml: Any
    tabs: Any  # the Monitor tab, selected
    run_choice: Any  # the Monitor's run dropdown, on the new run


class FamilyDefaults(NamedTuple):
    """The form fields a teacher family (or built-in teacher) sets when it is chosen: its defaults (families.py)."""
    teacher_path: Any  # shown for the diffusers families only
    resolution: Any  # likewise
    builtin: Any  # shown for the built-in family only
    guidance_scale: Any  # its value, and a note with the family's own convention where it differs
    teacher_steps: int
    batch_size: int
    memory: str
    diversity_weight: float
    max_steps: int
    fake_lr: float


def _checked_config(settings: Settings, form: WizardForm):
    """The form's config, refused also when the memory planner's network cannot run it (the error the memory
    line shows): a run the verdict calls Ready must get past its first step."""
    cfg = build_config(form, settings.roots)
    problem = settings.plans.refusal(cfg)
    if problem:
        raise ConfigError(f"teacher.resolution = {cfg.teacher.resolution}: the teacher's network cannot run this "
                          f"config ({problem}); give another resolution")
    return cfg


def check(settings: Settings, *values) -> CheckView:
    """The TOML that will run and a message: the core's resolve() and error messages, unchanged."""
    form = WizardForm(*values)
    try:
        cfg = _checked_config(settings, form)
        note = launcher.existing_run_note(cfg)
    except launcher.RunBusy:  # the run started (this form's Start, another tab): news, not a refusal
        return CheckView(cfg.to_toml(), _running_note(Path(cfg.run.output_dir)), "")
    except DPDMDError as e:
        return CheckView("", *_refused_field(e, form))
    lam = f"lambda = {cfg.lam:g}" if cfg.lam else "no diversity loss"
    busy = _queue_note(settings, cfg)
    msg = (f"Ready: {cfg.method.name}, k = {cfg.method.anchor_step}, {lam}, {cfg.student.num_steps} student steps, "
           f"{len(cfg.data.prompts)} prompts, {cfg.run.max_steps} iterations, batch {cfg.data.batch_size} "
           f"→ `{cfg.run.output_dir}`")
    if processes(form) > 1:
        msg += (f"  \n{processes(form)} processes (batch {cfg.data.batch_size} each), started as "
                f"`{launcher.terminal_command(Path(cfg.run.output_dir) / 'config.toml', processes(form))}`")
    for extra in (note, busy):
        msg += f"  \n{extra}" if extra else ""
    return CheckView(cfg.to_toml(), msg, "")


def _running_note(run_dir: Path) -> str:
    """What the verdict says about a run whose process is working now: where to watch it, how to start another."""
    run = RunFolder(run_dir)
    status = run.read_status()
    return (f"**{run_dir.name}** is {launcher.run_state(run)} (step {status.get('step', 0)} / "
            f"{status.get('max_steps', '?')}): the Monitor follows it. Give a new run name to start another run.")


def start(settings: Settings, *values) -> StartView:
    """Start the run the form describes, and switch to the Monitor on it."""
    form = WizardForm(*values)
    try:
        cfg = _checked_config(settings, form)
        started = settings.devices.start_or_queue(cfg, processes(form))
    except launcher.RunBusy as e:  # this run has a process already (a double click, another tab): follow it
        name = Path(cfg.run.output_dir).name
        return StartView(f"{html.escape(str(e))}  \nThe Monitor follows **{name}**.", "", gr.skip(),
                         gr.Tabs(selected="monitor"), gr.update(value=name))
    except DPDMDError as e:
        return StartView(*_refused_field(e, form), gr.skip(), gr.skip(), gr.skip())
    config = started.run_dir / "config.toml"
    if isinstance(started, launcher.Queued):
        msg = (f"Queued **{started.run_dir.name}** (#{started.position} on {started.device}): it starts by itself "
               f"when {_names(started.working) or 'the runs before it'} {'ends' if len(started.working) == 1 else 'end'}"
               ", also if this page is closed. The Monitor shows the queue: move it up or cancel it there.")
    else:
        msg = (f"Started **{started.run_dir.name}** (process {started.pid}). The Monitor follows it; closing this "
               f"page does not stop it. The same run from a terminal: "
               f"`{launcher.terminal_command(config, processes(form))}`")
    summaries = runs.list_runs(settings.roots)
    msg += f"  \n{started.note}" if started.note else ""
    return StartView(msg, "", cfg.to_toml(), gr.Tabs(selected="monitor"),
                     gr.update(choices=[r.name for r in summaries], value=started.run_dir.name))


DEMO_RUNS = {method: f"demo-{method}" for method in demo.STUDENTS}  # the preset's run names, one per student


def demo_configs(settings: Settings) -> dict[str, Config]:
    """`dpdmd demo`'s two runs (DMD and DP-DMD, the same config but the method: distill_core.demo) in this runs
    folder."""
    return {method: resolve(demo.demo_config(settings.roots.run_dir(name), method=method))
            for method, name in DEMO_RUNS.items()}


def start_demo(settings: Settings) -> StartView:
    """The demo preset: start (or queue) `dpdmd demo`'s two runs, the pair that shows what the diversity loss does;
    a run that finished this setting already is kept, as `dpdmd demo` keeps it."""
    lines = []
    try:
        for method, cfg in demo_configs(settings).items():
            name = Path(cfg.run.output_dir).name
            if demo.finished_metrics(cfg) is not None:
                lines.append(f"**{name}** finished this setting already: kept.")
                continue
            try:
                started = settings.devices.start_or_queue(cfg)
            except launcher.RunBusy as e:  # a second click, another tab: that run is on its way already
                lines.append(f"{html.escape(str(e))}.")
                continue
            lines.append(f"Queued **{name}** (#{started.position} on {started.device})."
                         if isinstance(started, launcher.Queued) else f"Started **{name}** (process {started.pid}).")
    except DPDMDError as e:
        return StartView(_refused(e), "", gr.skip(), gr.skip(), gr.skip())
    lines.append(f"The demo's setting ({demo_setting(settings)}); when both have finished, Compare shows them side "
                 "by side. The same runs from a terminal: `dpdmd demo`.")
    first = DEMO_RUNS["dmd"]
    return StartView("  \n".join(lines), "", gr.skip(), gr.Tabs(selected="monitor"),
                     gr.update(choices=[r.name for r in runs.list_runs(settings.roots)], value=first))


def demo_setting(settings: Settings) -> str:
    from distill_core.evaluation.demo_report import setting_line

    return setting_line(demo_configs(settings)["dpdmd"]).removeprefix("Setting: ").rstrip(".")


def estimate(settings: Settings, *values):
    """The run's memory (the core's planner) and time before Start; yields the time first when the planner for
    this teacher has still to be built (~15 s once per teacher folder)."""
    try:
        cfg = build_config(WizardForm(*values), settings.roots)
    except DPDMDError:
        yield ""  # the verdict says why; there is nothing to estimate
        return
    clock = est.time_estimate(cfg, settings.roots)
    if not settings.plans.known(cfg):
        yield f"{clock}  \n**Memory:** planning for this teacher (once per folder, about 15 s)..."
    try:
        memory = settings.plans.estimate(cfg)
    except (DPDMDError, ValueError, OSError, RuntimeError) as e:  # a config the planner cannot read: say so, go on
        memory = f"**Memory:** no estimate ({html.escape(str(e))})"
    yield f"{clock}  \n{memory}"


def apply_quick_test(family: str) -> list:
    """The form's run-size fields set to the quick test (the rest as they are)."""
    return _form_updates(quick_test(family))


def _names(names: list[str]) -> str:
    return ", ".join(f"**{n}**" for n in names)


def _queue_note(settings: Settings, cfg) -> str:
    """What Start will do when the run's device is busy: queue it (the limit is reached, or runs wait), or run
    it side by side (a limit above 1), which slows each run down."""
    devices, name = settings.devices, Path(cfg.run.output_dir).name
    device = devices.device(cfg.run.device)
    working = [n for n, d in devices.working().items() if d == device and n != name]
    waiting = [e.run for e in devices.queue.entries() if e.device == device and e.run != name]
    if len(working) >= devices.limit or waiting:
        return (f"**Start queues this run** (#{len(waiting) + 1} on {device}): {_names(working) or 'nothing'} "
                f"{'is' if len(working) == 1 else 'are'} training there" +
                (f" and {_names(waiting)} {'waits' if len(waiting) == 1 else 'wait'} before it" if waiting else "") +
                "; it starts by itself when the device is free.")
    if working:
        return (f"**Note:** {_names(working)} {'is' if len(working) == 1 else 'are'} training on {device} too; runs "
                "side by side share the device and each one slows down.")
    return ""


def load_settings(settings: Settings, baseline: bool, name: str | None) -> list:
    """The form filled in from a run's config.toml under a new run name, then the message. ``baseline``: the same
    settings with plain DMD, the comparison that shows what the diversity loss does."""
    try:
        run_dir = settings.roots.run_dir(name or "")
        cfg = launcher.run_config(run_dir, "loaded")
        form = form_from_config(cfg, f"{run_dir.name[:96]}-dmd" if baseline else default_run_name(cfg.method.name),
                                settings.roots)
    except DPDMDError as e:
        return [*(gr.skip(),) * len(FIELDS), _refused(e)]
    if baseline:
        form.method = "dmd"
    what = "the same settings with plain DMD (no diversity loss)" if baseline else "its settings"
    return [*_form_updates(dataclasses.asdict(form)), f"Loaded {what} from **{run_dir.name}**; check and Start."]


def _form_updates(fields: dict[str, Any]) -> list:
    """Updates setting the form's fields to ``fields`` (the others as they are), the teacher folder box shown
    for the families that read it."""
    out = [gr.update(value=fields[name]) if name in fields else gr.skip() for name in FIELDS]
    if "family" in fields:
        for name in (*REAL_TEACHER_FIELDS, "builtin"):
            out[FIELDS.index(name)] = gr.update(visible=(fields["family"] != "builtin") == (name != "builtin"),
                                                **({"value": fields[name]} if name in fields else {}))
    return out


REAL_TEACHER_FIELDS = ("teacher_path", "resolution")  # shown for the diffusers families only


def _state_secret(runs_dir: Path) -> str:
    """The key the browser's copy of the form is encrypted with, kept in the runs folder: a random key per UI
    start (Gradio's default) would make a restarted UI forget every form."""
    path = runs_dir / ".ui-state-key"
    if not path.exists():
        runs_dir.mkdir(parents=True, exist_ok=True)
        fd = os.open(path, os.O_CREAT | os.O_WRONLY | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as f:
            f.write(secrets.token_hex(16))
    return path.read_text().strip()


def remember(*values) -> dict:
    """The form as the browser keeps it across reloads and UI restarts, the run name included (a started run's
    name then reads as running in the verdict, which says to give a new one)."""
    return dict(zip(FIELDS, values))


def restore(saved: dict | None) -> list:
    """The form the browser kept, onto a fresh page (nothing when it kept none)."""
    return _form_updates({k: v for k, v in (saved or {}).items() if k in FIELDS})


def run_names(settings: Settings):
    return gr.update(choices=[r.name for r in runs.list_runs(settings.roots)])


def on_family(family: str, builtin: str) -> FamilyDefaults:
    f, real = default_form(family, builtin or DEFAULT_KIND), family != "builtin"
    return FamilyDefaults(gr.update(visible=real), gr.update(visible=real, value=f.resolution),
                          gr.update(visible=not real),
                          gr.update(value=f.guidance_scale, info=guidance_help(family)), f.teacher_steps, f.batch_size, f.memory,
                          f.diversity_weight, f.max_steps, f.fake_lr)


class MethodFields(NamedTuple):
    """The form fields a method choice changes: plain DMD has no anchor and no diversity weight."""
    anchor_step: Any
    diversity_weight: Any
    run_name: Any  # a default name follows the method; a typed one stays


def on_method(method: str, run_name: str) -> MethodFields:
    on = gr.update(interactive=method != "dmd")
    name = gr.update(value=default_run_name(method)) if is_default_run_name(run_name or "") else gr.skip()
    return MethodFields(on, on, name)


def on_teacher_steps(steps, k):
    """k must not exceed the teacher's steps; k's value is only touched when it is out of range (a stale
    value sent back would undo a slider move made while this ran)."""
    try:
        top = max(1, int(steps))
    except (TypeError, ValueError):
        return gr.skip()
    return gr.update(maximum=top, value=top) if int(k) > top else gr.update(maximum=top)


def preset_note(memory: str, method: str) -> str:
    preset = PRESETS.get(memory)
    if preset is None:
        return ""
    extra = f" ({ONE_STEP_NOTE})" if preset.settings.get("method.backprop") == "one_step" and method != "dpdmd" else ""
    return f"Sets: {preset.note}{extra}. Starting points, not measured limits."


# ---- Monitor -------------------------------------------------------------------------------------------
class MonitorView(NamedTuple):
    """Everything the Monitor shows (gr.skip() in a field leaves that component as it is)."""
    run_choice: Any  # the run dropdown: every run, the shown one selected
    runs_table: Any  # list of RunSummary.row()
    status: Any  # HTML
    losses: Any  # pd.DataFrame for the loss plot
    diversity: Any  # pd.DataFrame for the diversity plot
    teacher_grid: Any  # image path or None
    student_grid: Any
    report: Any  # HTML
    log: Any  # train.log's last lines
    stop: Any  # the buttons' interactive updates
    save: Any
    resume: Any
    move_up: Any  # a queued run's buttons
    cancel: Any
    signature: Any  # what refresh() compares to skip an unchanged page

    @classmethod
    def unchanged(cls) -> MonitorView:
        return cls(*(gr.skip(),) * len(cls._fields))


def _status_html(v: runs.RunView) -> str:
    if v.queued:
        device, place = v.queued
        return (f"<div class='run-status'><span class='state state-queued'>queued</span> <b>#{place}</b> on {device}: "
                f"it starts by itself when {'the device is free' if place == 1 else 'the runs before it have run'} "
                "(the queue is kept in the runs folder, so a UI restart keeps it). Move it up or cancel it below."
                "</div>")
    parts = [f"<span class='state state-{v.state}'>{v.state}</span> step <b>{v.step}</b> / {v.max_steps}"]
    if v.sec_per_step is not None:
        parts.append(f"{v.sec_per_step:.2f} s/step")
    if v.eta_seconds is not None:
        parts.append(f"about {v.eta_seconds / 60:.1f} min left")
    elif v.state == "running" and v.step < v.max_steps:
        parts.append("time left: measuring the first steps")
    if v.checkpoint_step is not None:
        parts.append(f"last checkpoint: step {v.checkpoint_step}")
    out = [" · ".join(parts), f"<progress value='{v.step}' max='{max(v.max_steps, 1)}'></progress>"]
    if v.phase:
        out.append(_phase_html(v.phase))
    message = {"died": "the training process ended without recording why (see train.log)",
               "stopped": f"stopped at step {v.step}; " + (  # the trainer's words are for a terminal
                   f"Resume continues from its newest checkpoint (step {v.checkpoint_step})"
                   if v.checkpoint_step is not None else "it has no checkpoint: Start again starts it over")}.get(
        v.state, v.message)
    if message:  # a died run's recorded message ("loading the teacher") is what it was doing, not what it does
        out.append(f"<div>{html.escape(message)}</div>")
    t, st = v.metrics.get("teacher", {}), v.metrics.get("student", {})
    if "diversity" in t and "diversity" in st:
        fd = (f"; Frechet distance {st['frechet_distance']:.1f} vs {t['frechet_distance']:.1f}"
              if "frechet_distance" in t and "frechet_distance" in st else "")
        out.append(f"<div>final evaluation: diversity <b>{st['diversity']:.4f}</b> (student, {st.get('steps')} steps) "
                   f"vs {t['diversity']:.4f} (teacher, {t.get('steps')} steps){fd}</div>")
    if v.state in ("failed", "died"):
        last = "\n".join(v.log.splitlines()[-4:])
        again = (f"<b>Resume</b> continues from its newest checkpoint (step {v.checkpoint_step})"
                 if v.checkpoint_step is not None else
                 "it wrote no checkpoint, so <b>Start again</b> starts it from the beginning")
        out.append(f"<div>The end of train.log (all of it below); {again}.</div>"
                   f"<pre class='run-error'>{html.escape(last)}</pre>")
    if v.state == "finishing":
        out.append("<div class='finishing'><b>Evaluating / writing the report:</b> training is done; the student, "
                   "its final evaluation and report.html appear here when they are written.</div>")
    if v.student:
        out.append(f"<div>student: <code>{html.escape(str(v.student))}</code></div>")
    links = [f"<a href='{_file_url(path)}' download='{html.escape(path.name)}'>{html.escape(path.name)}</a>"
             for path in (v.student, *v.exports, v.report, v.log_file) if path is not None]
    if links:
        out.append(f"<div class='downloads'>Download: {' · '.join(links)}</div>")
    return f"<div class='run-status'>{'<br>'.join(out)}</div>"


def _phase_html(phase: dict) -> str:
    """What the run's process does now (status.json's phase, written by the trainer), with its own bar; a phase
    that cannot be counted gets a moving bar."""
    name, done, total = html.escape(str(phase.get("name", ""))), phase.get("done", 0), phase.get("total")
    if total:
        return (f"<div class='run-phase'><b>{name}</b>: {done} / {total}<br>"
                f"<progress value='{done}' max='{total}'></progress></div>")
    return f"<div class='run-phase'><b>{name}</b>...<br><progress></progress></div>"


def _file_url(path: Path) -> str:
    """The URL of a run's file; Gradio serves only the runs folder (launch's allowed_paths), and the paths
    here come from RunFolder.file, so they resolve inside their run."""
    return "gradio_api/file=" + urllib.parse.quote(str(path))


def _report_html(path: Path | None, state: str = "") -> str:
    if path is None:
        if state == "finishing":
            return "<p>The report is being written (the final evaluation runs first).</p>"
        return "<p>The report appears here when the run finishes.</p>"
    url = _file_url(path)
    return (f"<p><a href='{url}' target='_blank'>Open report.html in a new tab</a></p>"
            f"<iframe src='{url}' sandbox='' style='width:100%;height:720px;border:1px solid #ddd'></iframe>")


LOSS_COLORS = dict(zip(runs.LOSSES.values(), ("#2f6fb5", "#e8862a", "#c9372c")))
DIVERSITY_COLORS = {"student": "#2f6fb5", "teacher": "#8a8a8a", "collapse warning": "#d62728"}


def _frame(rows: list[tuple], columns: list[str], series: dict[str, str]) -> pd.DataFrame:
    """(step, value, series) rows for a LinePlot, typed, with every series present.

    The plot keeps the axis types and the series of the first frame it draws: an empty untyped frame
    makes both axes categorical, and a missing series is never drawn. A series without data gets one
    empty (NaN) point, which the plot skips.
    """
    present = {r[2] for r in rows}
    rows = list(rows) + [(0, float("nan"), name) for name in series if name not in present]
    return pd.DataFrame(rows, columns=columns).astype({columns[0]: "int64", columns[1]: "float64",
                                                       columns[2]: "str"})


def _losses(rows: list[tuple]) -> pd.DataFrame:
    return _frame(rows, ["step", "value", "series"], LOSS_COLORS)


def _diversity(rows: list[tuple]) -> pd.DataFrame:
    return _frame(rows, ["step", "diversity", "who"], DIVERSITY_COLORS)


def refresh(settings: Settings, selected: str | None, last: tuple | None) -> MonitorView:
    """Everything the Monitor shows; all unchanged when nothing changed since ``last``."""
    summaries = runs.list_runs(settings.roots)
    names = [r.name for r in summaries]
    name = selected if selected in names else runs.default_run(summaries)
    run_dir = settings.roots.runs / name if name else None
    sig = (tuple(tuple(r.row()) for r in summaries), runs.signature(run_dir) if run_dir else None)
    if sig == last:
        return MonitorView.unchanged()
    table = [r.row() for r in summaries]
    # the value only where the page had none (or a deleted run): a tick that left before Start (or a pick) landed
    # carries the old choice, and setting it would move the Monitor off the run just started
    choice = gr.update(choices=names) if name == selected else gr.update(choices=names, value=name)
    if run_dir is None:
        off = gr.update(interactive=False)
        return MonitorView(run_choice=choice, runs_table=table, status="<p>No runs yet: start one in the Wizard.</p>",
                           losses=_losses([]), diversity=_diversity([]), teacher_grid=None, student_grid=None,
                           report=_report_html(None), log="", stop=off, save=off, resume=off, move_up=off,
                           cancel=off, signature=sig)
    v = runs.view(run_dir)
    active = v.state in TRAINING_STATES
    steps = [0, runs.plot_span([v.step, *(r[0] for r in v.losses + v.diversity)])]  # whole steps from the first
    return MonitorView(run_choice=choice, runs_table=table, status=_status_html(v),
                       losses=gr.update(value=_losses(v.losses), x_lim=steps),
                       diversity=gr.update(value=_diversity(v.diversity), x_lim=steps),
                       teacher_grid=str(v.teacher_grid) if v.teacher_grid else None,
                       student_grid=str(v.student_grid) if v.student_grid else None,
                       report=_report_html(v.report, v.state), log=v.log, stop=gr.update(interactive=active),
                       save=gr.update(interactive=active), resume=gr.update(interactive=v.state in RESUMABLE,
                                                                            value=_resume_label(v.checkpoint_step)),
                       move_up=gr.update(interactive=bool(v.queued) and v.queued[1] > 1, visible=bool(v.queued)),
                       cancel=gr.update(interactive=bool(v.queued), visible=bool(v.queued)), signature=sig)


def picked_row(evt: gr.SelectData):
    """A click on a Runs table row selects that run (its first cell is the run's name)."""
    return gr.update(value=evt.row_value[0]) if evt.row_value else gr.skip()


def _resume_label(checkpoint_step: int | None) -> str:
    """What the resume button does: continue from a checkpoint, or start over when there is none."""
    return "Start again" if checkpoint_step is None else "Resume"


def control(settings: Settings, what: str, selected: str | None) -> str:
    """Stop, save now or resume the chosen run; move a queued one up, or cancel it."""
    if not selected:
        return "Choose a run first."
    try:
        run_dir = settings.roots.run_dir(selected)
        if what == "resume":
            from distill_core.training import checkpoint as ckpt

            resumes = bool(ckpt.list_complete(RunFolder(run_dir).checkpoints))
            started = settings.devices.start_or_queue(launcher.run_config(run_dir), launcher.processes_of(run_dir))
            if isinstance(started, launcher.Queued):
                return f"Queued **{selected}** (#{started.position} on {started.device}): its device is busy."
            how = "from its newest checkpoint" if resumes else "from the beginning (it had no checkpoint)"
            return f"Started **{selected}** again (process {started.pid}) {how}."
        if what == "up":
            return f"**{selected}** is now #{settings.devices.queue.move_up(selected)} in its queue."
        if what == "cancel":
            return settings.devices.cancel(run_dir)
        return launcher.request(run_dir, what)
    except DPDMDError as e:
        return _refused(e)


def export_run(settings: Settings, selected: str | None, fmt: str) -> str:
    """`dpdmd export` of the run's newest checkpoint, in this process; the file appears under Download."""
    from distill_core.export.exporters import export

    if not selected:
        return "Choose a run first."
    try:
        path, student = export(settings.roots.run_dir(selected), fmt)
    except DPDMDError as e:
        return _refused(e)
    return (f"Exported step {student.step} of **{selected}** as `{path.name}`"
            + ("" if path.is_file() else " (a folder: find it in the run folder)") + ".")


def delete_run(settings: Settings, selected: str | None) -> tuple[str, Any]:
    """Delete the chosen run (the page asked for confirmation; '' is a cancelled dialog)."""
    if not selected:
        return gr.skip(), gr.skip()
    try:
        settings.roots.run_dir(selected)  # a plain name (refused otherwise); the folder itself, not where a link leads
        message = launcher.delete(settings.roots.runs / selected.strip(), settings.roots.runs)
    except DPDMDError as e:
        return _refused(e), gr.skip()
    left = runs.list_runs(settings.roots)
    return f"{message[0].upper()}{message[1:]}.", gr.update(choices=[r.name for r in left],
                                                             value=runs.default_run(left))


def load_notes(settings: Settings, selected: str | None) -> str:
    try:
        return runs.read_notes(settings.roots.run_dir(selected)) if selected else ""
    except DPDMDError:
        return ""


def save_notes(settings: Settings, selected: str | None, text: str) -> Any:
    """Keep the notes in the run's folder (only when they changed: a blur without typing writes nothing)."""
    if not selected:
        return gr.skip()
    try:
        run_dir = settings.roots.run_dir(selected)
        if not run_dir.is_dir() or runs.read_notes(run_dir) == (text or ""):
            return gr.skip()
        runs.write_notes(run_dir, text or "")
    except DPDMDError as e:
        return _refused(e)
    return f"Notes saved in **{selected}**/{runs.NOTES}."


# ---- Compare -------------------------------------------------------------------------------------------
class CompareView(NamedTuple):
    """What Compare shows; all but the message are gr.skip() when refused."""
    cards: Any  # HTML: each model's seed grid with its numbers directly under it
    chart: Any  # pd.DataFrame for the bar chart (bar, value, model)
    chart_title: Any  # what the chart shows (exact modes, or the common measures)
    table: Any  # pd.DataFrame, one row of numbers per model (for copying)
    message: str


def compare_choices(settings: Settings):
    return gr.update(choices=[r.name for r in runs.list_runs(settings.roots) if r.comparable])


def _number(value: Any) -> str:
    return f"{value:.4g}" if isinstance(value, float) else html.escape(str(value))


def _cards_html(panels: list[cmp.Panel]) -> str:
    """One card per model: its label, its grid (an inline PNG: nothing is written for it) and its numbers."""
    cards = []
    for p in panels:
        buf = io.BytesIO()
        p.image.save(buf, format="PNG")
        rows = "".join(f"<tr><th>{html.escape(k)}</th><td>{_number(v)}</td></tr>"
                       for k, v in p.numbers.items() if k != "model" and v != "")
        cards.append(f"<figure class='compare-card'><figcaption>{html.escape(p.label)}</figcaption>"
                     f"<img alt='{html.escape(p.label)}' src='data:image/png;base64,"
                     f"{base64.b64encode(buf.getvalue()).decode()}'><table class='compare-numbers'>{rows}</table>"
                     "</figure>")
    return f"<div class='compare-cards'>{''.join(cards)}</div>"


CHART_COLORS = dict(zip(cmp.KINDS, ("#222222", "#8a8a8a", "#2f6fb5", "#e8862a", "#3aa37a", "#a66bd3")))


def _bars(rows: list[tuple[str, float, str]]) -> pd.DataFrame:
    """The bar chart's frame with every kind present (a zero bar on the first bar for a missing one): like the line
    plots, the chart keeps the colours of the first frame it draws (a NaN would blank the bar it stacks on)."""
    at = rows[0][0] if rows else ""
    rows = rows + [(at, 0.0, kind) for kind in CHART_COLORS if kind not in {r[2] for r in rows}]
    return pd.DataFrame(rows, columns=["bar", "value", "kind"]).astype({"value": "float64", "bar": "str", "kind": "str"})


def _chart(panels: list[cmp.Panel]) -> tuple[pd.DataFrame, str]:
    rows, title = cmp.chart(panels)
    return _bars(rows), f"**Chart:** {title}; colour: the data, the teacher, or a student by its method."


def run_compare(settings: Settings, cache: cmp.ModelCache, names: list[str], teacher: bool, prompt_text: str,
                seeds: float, first_seed: float, progress=gr.Progress()) -> CompareView:
    """The chosen runs and the teacher on the same prompts and seeds, with their numbers."""
    try:
        run_dirs = [settings.roots.run_dir(n) for n in names or []]
        prompts = [p.strip() for p in (prompt_text or "").splitlines() if p.strip()] or cmp.default_prompts(run_dirs)
        seed_list = list(range(int(first_seed or 0), int(first_seed or 0) + int(seeds)))
        panels = cmp.compare(run_dirs, teacher, prompts, seed_list, cache, settings.device,
                             progress=lambda f, what: progress(f, desc=what))
    except DPDMDError as e:
        return CompareView(gr.skip(), gr.skip(), gr.skip(), gr.skip(), _refused(e))
    table = pd.DataFrame([p.numbers for p in panels]).fillna("")
    msg = (f"{len(prompts)} prompts x {len(seed_list)} seeds (seeds {seed_list[0]}-{seed_list[-1]}), the same noise "
           "for every model; each student in its own schedule, the teacher with its steps and CFG.")
    return CompareView(_cards_html(panels), *_chart(panels), table, msg)


# ---- layout ----------------------------------------------------------------------------------------------
def _wizard_page(settings: Settings):
    f = default_form()

    def named(name: str, detail: str = "") -> dict:
        """A form field's label (the name refusals use) and element id (what a refusal marks)."""
        return {"label": FORM_FIELDS[name].label + (f" ({detail})" if detail else ""), "elem_id": field_id(name)}

    def typed(name: str) -> dict:  # a TypedSlider's: its typed value stays as typed (KEEP_TYPED_JS)
        return {**named(name), "elem_classes": [TYPED_SLIDER_CLASS]}

    inside = f"inside {settings.roots.describe()}"
    with gr.Row(equal_height=True):
        from_run = gr.Dropdown(choices=[], label="Start from a run's settings", elem_id="from-run", scale=2)
        load_btn = gr.Button("Load its settings", elem_id="load-btn", scale=1)
        baseline_btn = gr.Button("Same settings as a DMD baseline", elem_id="baseline-btn", scale=1)
        quick_btn = gr.Button("Quick test", elem_id="quick-btn", scale=1)
        demo_btn = gr.Button("The demo: DMD vs DP-DMD", elem_id="demo-btn", scale=1)
    gr.Markdown(f"**Quick test:** {QUICK_TEST_NOTE}  \n**The demo:** starts `dpdmd demo`'s two runs on the shapes "
                f"teacher ({DEMO_RUNS['dmd']} and {DEMO_RUNS['dpdmd']}, one after the other): "
                f"{demo_setting(settings)}.", elem_id="quick-note")
    with gr.Row():
        family = gr.Radio(FAMILIES, value=f.family, **named("family"))
        teacher_path = gr.Textbox(visible=False, placeholder=inside,
                                  **named("teacher_path", "a local diffusers folder with model_index.json"))
        resolution = gr.Number(value=f.resolution, precision=0, visible=False, scale=0, min_width=160,
                               **named("resolution", "pixels"))
        builtin = gr.Radio(BUILTINS, value=f.builtin, **named("builtin"))
    with gr.Row():
        prompts = gr.Textbox(lines=4, **named("prompts", "one per line"),
                             placeholder="built-in teacher: leave empty for all its prompts, or e.g. 'a green circle'")
        prompts_file = gr.Textbox(placeholder=inside, **named("prompts_file", "instead: one prompt per line"))
    method = gr.Radio(METHODS, value=f.method, **named("method"))
    with gr.Row():
        k = TypedSlider(1, f.teacher_steps, value=f.anchor_step, step=1, info=K_HELP, **typed("anchor_step"))
        lam = TypedSlider(0.0, 1.0, value=f.diversity_weight, step=0.005, info=LAMBDA_HELP,
                          **typed("diversity_weight"))
    with gr.Row():
        student_steps = TypedSlider(2, 8, value=f.student_steps, step=1, **typed("student_steps"))
        guidance = gr.Number(value=f.guidance_scale, info=guidance_help(f.family),
                             **named("guidance_scale", "baked into the student"))
        teacher_steps = gr.Number(value=f.teacher_steps, precision=0, **named("teacher_steps", "k at most this"))
    with gr.Row():
        max_steps = gr.Number(value=f.max_steps, precision=0, **named("max_steps", "student updates"))
        batch = gr.Number(value=f.batch_size, precision=0, **named("batch_size", "per process"))
        procs = gr.Number(value=f.processes, precision=0, minimum=1,
                          **named("processes", "GPUs of this machine; more than 1: accelerate launch"))
        memory = gr.Radio(list(PRESETS), value=f.memory, **named("memory"))
    memory_note = gr.Markdown(preset_note(f.memory, f.method))
    run_name = gr.Textbox(value=lambda: default_run_name(), **named("run_name", f"a folder in {settings.roots.runs}"))
    with gr.Accordion("Advanced", open=False):
        with gr.Row():
            fake_updates = gr.Number(value=f.fake_updates, precision=0, **named("fake_updates", "per student update"))
            fake_lr = gr.Number(value=f.fake_lr, **named("fake_lr", "the student's lr is the family's"))
            seed = gr.Number(value=f.seed, precision=0, **named("seed"))
            checkpoint_every = gr.Number(value=f.checkpoint_every, precision=0, **named("checkpoint_every", "N steps"))
            grid_every = gr.Number(value=f.grid_every, precision=0, **named("grid_every", "N steps"))
            diversity_every = gr.Number(value=f.diversity_every, precision=0, **named("diversity_every", "N steps"))
            tensorboard = gr.Checkbox(value=f.tensorboard, visible=tensorboard_installed(),
                                      **named("tensorboard", "log to <run>/tensorboard"))
        extra = gr.Code(value="", language=None, lines=4,
                        **named("extra_toml", "any other config field; overrides the form, e.g. [eval] seeds = 9"))
    inputs = _wired(FIELDS, family=family, teacher_path=teacher_path, resolution=resolution, builtin=builtin,
                    fake_lr=fake_lr, prompts=prompts, prompts_file=prompts_file,
                    method=method, anchor_step=k, diversity_weight=lam, student_steps=student_steps,
                    guidance_scale=guidance, teacher_steps=teacher_steps, max_steps=max_steps, batch_size=batch,
                    memory=memory, run_name=run_name, processes=procs, fake_updates=fake_updates, seed=seed,
                    checkpoint_every=checkpoint_every, grid_every=grid_every, diversity_every=diversity_every,
                    tensorboard=tensorboard, extra_toml=extra)
    with gr.Column(elem_id="verdict-bar"):  # fixed: the verdict and Start stay in view while the form scrolls
        with gr.Row():
            message = gr.Markdown(elem_id="wizard-message")
            check_btn = gr.Button("Check config", elem_id="check-btn", scale=0, min_width=140)
            start_btn = gr.Button("Start training", variant="primary", elem_id="start-btn", scale=0, min_width=160)
        estimate_box = gr.Markdown(elem_id="wizard-estimate")
        highlight = gr.HTML(elem_id="field-mark", padding=False)
    preview = gr.Code(label="config.toml: exactly what will run (`dpdmd train` takes the same file)",
                      language=None, interactive=False, elem_id="config-preview")

    private = {"api_visibility": "private", "show_progress": "hidden"}
    for btn, baseline in ((load_btn, False), (baseline_btn, True)):
        btn.click(partial(load_settings, settings, baseline), from_run, [*inputs, message],
                  api_name="baseline" if baseline else "load_settings")
    from_run.focus(partial(run_names, settings), None, from_run, **private)
    # .input, not .change: a loaded run's family must not reset its CFG, steps and batch to the family's
    gr.on([family.input, builtin.input], on_family, [family, builtin],
          _wired(FamilyDefaults._fields, teacher_path=teacher_path, resolution=resolution, builtin=builtin,
                 guidance_scale=guidance, teacher_steps=teacher_steps, batch_size=batch, memory=memory,
                 diversity_weight=lam, max_steps=max_steps, fake_lr=fake_lr), **private)
    method.change(on_method, [method, run_name],
                  _wired(MethodFields._fields, anchor_step=k, diversity_weight=lam, run_name=run_name), **private)
    teacher_steps.change(on_teacher_steps, [teacher_steps, k], k, **private)
    gr.on([memory.change, method.change], preset_note, [memory, method], memory_note, **private)
    gr.on([c.change for c in inputs] + [check_btn.click], partial(check, settings), inputs,
          _wired(CheckView._fields, config_toml=preview, message=message, highlight=highlight),
          trigger_mode="always_last", show_progress="hidden", api_name="check")
    gr.on([c.change for c in inputs] + [check_btn.click], partial(estimate, settings), inputs, estimate_box,
          trigger_mode="always_last", show_progress="hidden", api_name="estimate")
    quick_btn.click(apply_quick_test, family, inputs, api_name="quick_test")
    saved = gr.BrowserState(None, storage_key="dpdmd-studio-wizard", secret=_state_secret(settings.roots.runs))
    gr.on([c.change for c in inputs], remember, inputs, saved, **private)
    return inputs, saved, start_btn, demo_btn, message, highlight, preview


def _monitor_page(settings: Settings):
    with gr.Row():
        run_select = gr.Dropdown(choices=[], label="Run", elem_id="run-select", scale=1)
        status = gr.HTML(elem_id="run-status")
    with gr.Row():
        stop_btn = gr.Button("Stop (checkpoint, then exit)", variant="stop", interactive=False, elem_id="stop-btn")
        save_btn = gr.Button("Save a checkpoint now", interactive=False, elem_id="save-btn")
        resume_btn = gr.Button("Resume", interactive=False, elem_id="resume-btn")
        up_btn = gr.Button("Move up in the queue", interactive=False, visible=False, elem_id="up-btn")
        cancel_btn = gr.Button("Cancel (take out of the queue)", interactive=False, visible=False, elem_id="cancel-btn")
    with gr.Row():
        export_format = gr.Dropdown([(f"{name}: {f.help}", name) for name, f in FORMATS.items()], value="lora",
                                    label="Export the newest checkpoint as", elem_id="export-format", scale=2)
        export_btn = gr.Button("Export", elem_id="export-btn", scale=1)
        delete_btn = gr.Button("Delete this run...", variant="stop", elem_id="delete-btn", scale=1)
    action = gr.Markdown(elem_id="monitor-message")
    notes = gr.Textbox(label=f"Notes on this run (kept in its folder as {runs.NOTES}; saved when you leave the box)",
                       lines=2, elem_id="run-notes")
    with gr.Row():
        teacher_img = gr.Image(type="filepath", label="teacher: fixed seeds", interactive=False, elem_id="teacher-grid",
                               buttons=["download", "fullscreen"], height=320)
        student_img = gr.Image(type="filepath", label="student: latest grid, same seeds", interactive=False,
                               elem_id="student-grid", buttons=["download", "fullscreen"], height=320)
    with gr.Row():
        loss_plot = gr.LinePlot(_losses([]), x="step", y="value", color="series", color_map=LOSS_COLORS,
                                title="Training losses (not quality measures)", elem_id="loss-plot", height=260)
        # points: diversity is measured every few hundred steps, and a single measurement must show
        div_plot = gr.ScatterPlot(_diversity([]), x="step", y="diversity", color="who", color_map=DIVERSITY_COLORS,
                                  title="Diversity (Eq. 9) on fixed seeds; teacher: its level", elem_id="diversity-plot",
                                  height=260)
    runs_table = gr.Dataframe(headers=runs.SUMMARY_HEADERS, interactive=False, label="Runs", elem_id="runs-table")
    with gr.Accordion("train.log (last lines)", open=False):
        log = gr.Textbox(lines=12, max_lines=12, show_label=False, elem_id="train-log")
    with gr.Accordion("Report", open=True):
        report = gr.HTML(elem_id="report")
    last = gr.State(None)
    timer = gr.Timer(settings.refresh_seconds)
    outputs = _wired(MonitorView._fields, run_choice=run_select, runs_table=runs_table, status=status,
                     losses=loss_plot, diversity=div_plot, teacher_grid=teacher_img, student_grid=student_img,
                     report=report, log=log, stop=stop_btn, save=save_btn, resume=resume_btn, move_up=up_btn,
                     cancel=cancel_btn, signature=last)
    timer.tick(partial(refresh, settings), [run_select, last], outputs, show_progress="hidden", api_name="monitor")
    run_select.change(lambda sel: refresh(settings, sel, None), run_select, outputs, show_progress="hidden",
                      api_visibility="private")
    # the action message clears when the user picks another run (not when a refresh renews the dropdown's choices)
    gr.on([run_select.input, runs_table.select], lambda: "", None, action, show_progress="hidden",
          api_visibility="private")
    runs_table.select(picked_row, None, run_select, show_progress="hidden", api_visibility="private")
    for btn, what in ((stop_btn, "stop"), (save_btn, "save"), (up_btn, "up"), (cancel_btn, "cancel")):
        btn.click(partial(control, settings, what), run_select, action, api_name=what)
    # Resume starts a process, like Start: the same queue, so two clicks cannot start two processes.
    resume_btn.click(partial(control, settings, "resume"), run_select, action, trigger_mode="once",
                     concurrency_limit=1, concurrency_id="start", api_name="resume")
    export_btn.click(partial(export_run, settings), [run_select, export_format], action, api_name="export")
    # the browser asks first; a cancelled dialog sends '' and nothing is deleted
    delete_btn.click(partial(delete_run, settings), run_select, [action, run_select], api_name="delete",
                     js="(name) => name && confirm(`Delete the run '${name}' and all its files (checkpoints, "
                        "student, report)? This cannot be undone.`) ? name : ''")
    run_select.change(partial(load_notes, settings), run_select, notes, show_progress="hidden",
                      api_visibility="private")
    notes.blur(partial(save_notes, settings), [run_select, notes], action, show_progress="hidden",
               api_visibility="private")
    return run_select, outputs


def _compare_page(settings: Settings, cache: cmp.ModelCache):
    gr.Markdown("Sample the same prompts from the same seeds with each chosen student (and the teacher), "
                "side by side. A finished run is sampled from its `student.safetensors`; a running or stopped run from "
                "its newest checkpoint (its card says which step).")
    gr.Markdown(cmp.WHAT_TO_LOOK_FOR, elem_id="compare-explained")
    with gr.Row():
        names = gr.CheckboxGroup(choices=[], label="Runs", elem_id="compare-runs")
        teacher = gr.Checkbox(value=True, label="Include the teacher", elem_id="compare-teacher")
    with gr.Row():
        prompts = gr.Textbox(lines=3, label="Prompts, one per line (empty: the first run's grid prompts)",
                             elem_id="compare-prompts")
        seeds = gr.Slider(2, cmp.MAX_SEEDS, value=6, step=1, label="Seeds per prompt", elem_id="compare-seeds")
        first_seed = gr.Number(value=0, precision=0, label="First seed", elem_id="compare-first-seed")
    go = gr.Button("Sample side by side", variant="primary", elem_id="compare-btn")
    message = gr.Markdown(elem_id="compare-message")
    cards = gr.HTML(elem_id="compare-cards", label="Seed grids (rows: prompts, columns: seeds)")
    chart_title = gr.Markdown(elem_id="compare-chart-title")
    chart = gr.BarPlot(_bars([]), x="bar", y="value", color="kind", color_map=CHART_COLORS,
                       x_title="", y_title="", elem_id="compare-chart", height=320)
    with gr.Accordion("All numbers (a table to copy)", open=False):
        table = gr.Dataframe(interactive=False, elem_id="compare-table", show_label=False)
    go.click(partial(run_compare, settings, cache), [names, teacher, prompts, seeds, first_seed],
             _wired(CompareView._fields, cards=cards, chart=chart, chart_title=chart_title, table=table,
                     message=message), api_name="compare")
    return names


def build_app(settings: Settings) -> gr.Blocks:
    cache = cmp.ModelCache()
    with gr.Blocks(title="DP-DMD Studio", analytics_enabled=False) as demo:
        gr.Markdown(f"## DP-DMD Studio: distil a teacher into a 4-step student that keeps its variety\n"
                    f"Runs folder: `{settings.roots.runs}`. Training runs in its own process: closing this page "
                    "or restarting the UI does not stop it.")
        with gr.Tabs(elem_id="tabs") as tabs:
            with gr.Tab("Wizard", id="wizard", elem_id="tab-wizard"):
                inputs, saved, start_btn, demo_btn, message, highlight, preview = _wizard_page(settings)
            with gr.Tab("Monitor", id="monitor", elem_id="tab-monitor"):
                run_select, monitor_outputs = _monitor_page(settings)
            with gr.Tab("Compare", id="compare", elem_id="tab-compare") as compare_tab:
                compare_names = _compare_page(settings, cache)
        started = _wired(StartView._fields, message=message, highlight=highlight, config_toml=preview, tabs=tabs,
                         run_choice=run_select)
        start_btn.click(partial(start, settings), inputs, started,
                        trigger_mode="once", concurrency_limit=1, concurrency_id="start", api_name="start"
                        ).then(None, js="() => window.scrollTo(0, 0)")  # the Monitor from its top
        demo_btn.click(partial(start_demo, settings), None, started, trigger_mode="once", concurrency_limit=1,
                       concurrency_id="start", api_name="start_demo").then(None, js="() => window.scrollTo(0, 0)")
        compare_tab.select(partial(compare_choices, settings), None, compare_names, api_visibility="private")
        demo.load(None, js=KEEP_TYPED_JS)
        demo.load(restore, saved, inputs, api_visibility="private")
        demo.load(lambda: refresh(settings, None, None), None, monitor_outputs, api_visibility="private")
        demo.load(partial(compare_choices, settings), None, compare_names, api_visibility="private")
    return demo
