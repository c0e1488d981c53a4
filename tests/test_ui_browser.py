"""Trainer UI in a real browser: Debian's chromium driven by Playwright (never `playwright install`).

Wizard (move the k and lambda sliders, start a tiny run, double click included),
Monitor (grid and curves appear, stop), Compare (two finished students and the
teacher). Screenshots are saved under the test's tmp folder and checked.
"""
from __future__ import annotations

import importlib.util
import os
import shutil
import subprocess
from pathlib import Path

import numpy as np
from conftest import require
from PIL import Image
from ui_support import UIProcess, copy_run, finished_runs, stop_trainers, wait_for

from distill_core.runfolder import RunFolder
from trainer_ui import app, runs

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
        "--disable-sync", "--no-first-run", "--disable-quic"]


def _not_blank(path: Path) -> Image.Image:
    img = Image.open(path).convert("L")
    pixels = np.asarray(img, dtype=np.float32)
    assert pixels.std() > 10 and len(np.unique(pixels)) > 20, f"{path.name} looks blank"
    return img


def _grid_present(path: Path) -> None:
    """A seed grid: white background with black digit cells (many dark pixels) holding bright strokes."""
    pixels = np.asarray(Image.open(path).convert("L"), dtype=np.float32)
    dark, bright = (pixels < 40).mean(), (pixels > 200).mean()
    assert dark > 0.05 and bright > 0.05, f"{path.name}: no seed grid (dark {dark:.2f}, bright {bright:.2f})"


def _line_drawn(page, plot_id: str, color: str) -> bool:
    """A drawn line (two points or more) of ``color`` in a LinePlot's SVG (gradio 6 renders Vega as SVG)."""
    paths = page.locator(f"#{plot_id} svg .mark-line path[stroke='{color}']")
    return any("L" in (paths.nth(i).get_attribute("d") or "") for i in range(paths.count()))


def _points_drawn(page, plot_id: str, who: str) -> int:
    """The points of one series in a ScatterPlot's SVG (each mark names its values for screen readers)."""
    return page.locator(f"#{plot_id} svg path[aria-label*='who: {who}']").count()


def _set_number(page, elem_id: str, value) -> None:
    box = page.locator(f"#{elem_id} input[type=number], #{elem_id} textarea, #{elem_id} input[type=text]").first
    box.fill(str(value))
    box.press("Tab")


def test_wizard_monitor_compare_in_chromium(tmp_path, tmp_path_factory):
    require(Path(CHROMIUM).exists(), "chromium", "apt-get install -y chromium (Debian's package)")
    require(importlib.util.find_spec("playwright") is not None, "playwright (python)", "pip install playwright")
    from playwright import sync_api
    shots = tmp_path / "screenshots"
    shots.mkdir()
    runs_dir = tmp_path / "runs"
    runs_dir.mkdir()
    for src in finished_runs(tmp_path_factory).values():
        copy_run(src, runs_dir)
    run = RunFolder(runs_dir / "browser-run")
    log = run.root / "train.log"
    try:
        with UIProcess(runs_dir, tmp_path / "ui.log") as ui, sync_api.sync_playwright() as p:
            browser = p.chromium.launch(executable_path=CHROMIUM, args=ARGS)
            page = browser.new_page(viewport={"width": 1280, "height": 1000})
            page.set_default_timeout(60_000)
            outside = []
            page.on("request", lambda r: None if r.url.startswith(ui.url) or r.url.startswith("data:")
                    else outside.append(r.url))
            try:
                _drive(page, ui, run, log, shots)
            except BaseException:
                page.screenshot(path=shots / "failure.png", full_page=True)  # for whoever reads the CI log
                raise
            assert not outside, f"the page fetched from outside the UI: {outside[:3]}"
            browser.close()
    finally:
        stop_trainers(runs_dir)


def _drive(page, ui: UIProcess, run: RunFolder, log: Path, shots: Path) -> None:
    """The user's path through the three pages; every wait names what it waits for."""
    page.goto(ui.url, wait_until="load")
    page.wait_for_selector("#start-btn")

    # ---- Wizard: a tiny budget, then move the sliders as a user does (keyboard on the range input)
    _set_number(page, "teacher-steps", 8)
    _set_number(page, "batch-size", 8)
    _set_number(page, "max-steps", 500)
    page.get_by_text("Advanced").click()
    _set_number(page, "fake-updates", 2)
    _set_number(page, "grid-every", 2)
    _set_number(page, "diversity-every", 2)
    editor = page.locator("#extra-toml .cm-content")
    editor.click()
    page.keyboard.type('[teacher]\nbuiltin = "digits"\n[eval]\nprompts = ["0", "1", "2"]\nseeds = 3\ngrid_prompts = 2\ngrid_seeds = 2\n'
                       'fd_samples_per_prompt = 4\n')
    k = page.locator("#anchor-step input[type=range]")
    k.focus()
    k.press("ArrowLeft")
    k.press("ArrowLeft")  # 5 -> 3
    lam = page.locator("#diversity-weight input[type=range]")
    lam.focus()
    lam.press("ArrowRight")
    lam.press("ArrowRight")  # 0.5 (the built-in family's) -> 0.51
    name_box = page.locator("#run-name input, #run-name textarea").first

    def named() -> bool:  # the page's load event sets a fresh default name, maybe after we typed ours
        if name_box.input_value() != "browser-run":
            name_box.fill("browser-run")
            name_box.press("Tab")
        return "runs/browser-run" in page.locator("#config-preview").inner_text()

    wait_for(named, 30, "the run name in the config preview")
    page.click("#check-btn")
    preview = page.locator("#config-preview")
    wait_for(lambda: "runs/browser-run" in preview.inner_text() and "anchor_step = 3" in preview.inner_text() and "diversity_weight = 0.51" in
             preview.inner_text() and "num_steps = 8" in preview.inner_text(), 30, "the config preview")
    assert "Ready" in page.locator("#wizard-message").inner_text()
    page.screenshot(path=shots / "wizard.png", full_page=True)
    _not_blank(shots / "wizard.png")

    page.locator("#start-btn").dblclick()  # a double click starts one run
    page.wait_for_selector("#run-status .state-running, #run-status .state-starting")
    # issue 29.2: the Wizard's verdict on the run it started is news, not a refusal
    page.get_by_role("tab", name="Wizard").click()
    page.click("#check-btn")
    wait_for(lambda: "the Monitor follows it" in _message(page), 30, "the verdict on the started run")
    assert "Refused" not in _message(page) and "browser-run" in _message(page), _message(page)
    page.get_by_role("tab", name="Monitor").click()

    # ---- Monitor: the grids and both curves appear while it trains
    wait_for(lambda: len([e for e in run.read_events() if e.get("event") == "eval"]) >= 2, 240,
             "two diversity evaluations", log)
    page.wait_for_selector("#run-status .state-running")
    page.wait_for_selector("#student-grid img")
    page.wait_for_selector("#teacher-grid img")
    wait_for(lambda: _line_drawn(page, "loss-plot", app.LOSS_COLORS[runs.LOSSES["loss_dmd"]]), 30, "the DMD loss curve")
    wait_for(lambda: _points_drawn(page, "diversity-plot", "student") >= 2, 30, "the diversity points")
    page.screenshot(path=shots / "monitor.png", full_page=True)
    _not_blank(shots / "monitor.png")
    page.locator("#student-grid img").screenshot(path=shots / "student_grid.png")
    _grid_present(shots / "student_grid.png")
    page.locator("#loss-plot").screenshot(path=shots / "losses.png")
    _not_blank(shots / "losses.png")
    assert log.read_text().count("trainer UI:") == 1, "the double click started two processes"

    page.click("#stop-btn")
    page.wait_for_selector("#run-status .state-stopped", timeout=120_000)
    assert "stop" in page.locator("#monitor-message").inner_text()
    page.screenshot(path=shots / "stopped.png", full_page=True)

    # ---- Compare: two finished students (DP-DMD, DMD) and the teacher, same prompts and seeds
    page.get_by_role("tab", name="Compare").click()
    # issue 29.6: the stopped run is offered too (at its newest checkpoint); its presence says the list is in
    wait_for(lambda: page.locator("#compare-runs").get_by_label("browser-run").count() == 1, 30,
             "the stopped run among the runs to compare")
    for name in ("done-dpdmd", "done-dmd"):
        page.locator("#compare-runs").get_by_label(name).check()
    page.click("#compare-btn")
    cards = page.locator("#compare-cards figure.compare-card")
    wait_for(lambda: cards.count() >= 3, 120, "three grids with their numbers")
    page.wait_for_timeout(1000)
    page.screenshot(path=shots / "compare.png", full_page=True)
    _not_blank(shots / "compare.png")
    for i, label in enumerate(("teacher", "done-dpdmd", "done-dmd")):  # 10: each grid's numbers directly under it
        card = cards.nth(i)
        assert card.locator("figcaption").inner_text() == label
        img, numbers = card.locator("img").bounding_box(), card.locator("table").bounding_box()
        assert 0 <= numbers["y"] - (img["y"] + img["height"]) < 40, (label, img, numbers)
        assert "diversity (these samples)" in card.locator("table").inner_text()
    cards.nth(0).locator("img").screenshot(path=shots / "compare_grid.png")
    _grid_present(shots / "compare_grid.png")
    wait_for(lambda: page.locator("#compare-chart svg .mark-rect path").count() >= 3, 30, "the bar chart")
    assert "DMD" in page.locator("#compare-explained").inner_text()


def _prepared_runs(runs_dir: Path, tmp_path_factory) -> None:
    """A run that died loading its teacher (no checkpoint, a long error line) and one still finishing."""
    done = {m: copy_run(src, runs_dir) for m, src in finished_runs(tmp_path_factory).items()}
    (done["dmd"] / "train.log").write_text("step 2 / 2\n")
    died = RunFolder(runs_dir / "died-early")
    died.create()
    died.config_path.write_text((done["dpdmd"] / "config.toml").read_text())
    (died.root / "train.log").write_text("Traceback (most recent call last):\n" + "OSError: " + "x" * 400 + " END\n")
    dead = subprocess.Popen(["true"])
    dead.wait()  # a pid that no longer runs: the trainer died
    died.write_status("starting", pid=dead.pid, host=os.uname().nodename, max_steps=2, message="loading the teacher")
    finishing = RunFolder(shutil.copytree(done["dpdmd"], runs_dir / "finishing-run"))
    finishing.student_path.unlink()
    finishing.report_path.unlink()
    finishing.write_status("finishing", pid=os.getpid(), host=os.uname().nodename, step=2, max_steps=2)
    (runs_dir / "plain-folder").mkdir()  # exists, but is no diffusers teacher


def _message(page) -> str:
    return page.locator("#wizard-message").inner_text()


def _pick_run(page, name: str) -> None:
    box = page.locator("#run-select input")
    box.click()
    box.fill(name)
    page.locator("ul[role=listbox] li", has_text=name).first.click()


def test_verdicts_and_run_states_in_chromium(tmp_path, tmp_path_factory, tiny_pipelines):
    """Issue 14's broken items at 1400x900: a hidden path, a non-teacher folder, typed out-of-range slider
    values, a run that died before a checkpoint, a finishing run; the verdict bar stays in view."""
    require(Path(CHROMIUM).exists(), "chromium", "apt-get install -y chromium (Debian's package)")
    require(importlib.util.find_spec("playwright") is not None, "playwright (python)", "pip install playwright")
    from playwright import sync_api
    shots = tmp_path / "screenshots"
    shots.mkdir()
    runs_dir = tmp_path / "runs"
    runs_dir.mkdir()
    _prepared_runs(runs_dir, tmp_path_factory)
    shutil.copytree(tiny_pipelines["sd3"], runs_dir / "sd3-teacher")  # inside the folders the UI may read
    ui_log = tmp_path / "ui.log"
    with UIProcess(runs_dir, ui_log) as ui, sync_api.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=ARGS)
        page = browser.new_page(viewport={"width": 1400, "height": 900})
        page.set_default_timeout(30_000)
        try:
            _check_wizard(page, ui, runs_dir, shots)
            _check_monitor(page, shots)
            _check_queue(page, shots)
        except BaseException:
            page.screenshot(path=shots / "failure.png", full_page=True)
            raise
        browser.close()
    assert "Traceback" not in ui_log.read_text(), ui_log.read_text()[-3000:]


def _in_view(page, selector: str) -> bool:
    box = page.locator(selector).bounding_box()
    return box is not None and box["y"] >= 0 and box["y"] + box["height"] <= 900


def _check_wizard(page, ui: UIProcess, runs_dir: Path, shots: Path) -> None:
    page.goto(ui.url, wait_until="load")
    wait_for(lambda: "Ready" in _message(page), 30, "the first verdict")
    assert _in_view(page, "#verdict-bar") and _in_view(page, "#start-btn"), "the verdict bar is below the fold"
    # 9: the estimate sits in the verdict bar; Quick test sets a first-look budget and the estimate follows
    estimate = page.locator("#wizard-estimate")
    wait_for(lambda: "s/step x 200 iterations" in estimate.inner_text(), 30, "the time estimate")
    page.locator("#quick-btn").click()
    wait_for(lambda: "x 30 iterations" in estimate.inner_text() and "30 iterations" in _message(page), 30,
             "the quick test's estimate")
    assert _in_view(page, "#wizard-estimate")
    page.screenshot(path=shots / "wizard_1400x900.png")
    page.mouse.wheel(0, 600)
    page.wait_for_timeout(300)
    assert _in_view(page, "#verdict-bar"), "the verdict bar scrolled away"

    # 1: a bad path typed for SD3, then the built-in teacher again: the hidden box is not checked
    page.locator("#family").get_by_label("SD3", exact=False).check()
    _set_number(page, "teacher-path", "../../etc")
    wait_for(lambda: "Teacher folder" in _message(page) and "outside" in _message(page), 30, "the refused path")
    page.locator("#family").get_by_label("Built-in", exact=False).check()
    wait_for(lambda: "Ready" in _message(page), 30, "Ready for the built-in teacher")

    # 2: an existing folder that is not a diffusers teacher is refused before Start
    page.locator("#family").get_by_label("SD3", exact=False).check()
    _set_number(page, "prompts", "a photo of a cat")
    _set_number(page, "teacher-path", str(runs_dir / "plain-folder"))
    wait_for(lambda: "model_index.json" in _message(page), 30, "the missing model_index.json")
    # issue 29.3: a real teacher at a size its network cannot take is refused (its Resolution field), not Ready
    _set_number(page, "teacher-path", str(runs_dir / "sd3-teacher"))
    wait_for(lambda: "Resolution = 1024" in _message(page) and "128 or less" in _message(page), 30,
             "the refused resolution")
    assert "Refused:" in _message(page)
    _set_number(page, "resolution", 32)
    wait_for(lambda: "Ready" in _message(page), 30, "Ready at 32 px")
    wait_for(lambda: "GB peak" in estimate.inner_text(), 60, "the memory estimate at 32 px")
    _set_number(page, "prompts", "")
    page.locator("#family").get_by_label("Built-in", exact=False).check()

    # 4 and 5: out-of-range numbers typed into a slider's box, named by their labels, the field marked
    wait_for(lambda: "Ready" in _message(page), 30, "Ready for the built-in teacher")
    page.wait_for_timeout(1500)  # the family's defaults (teacher steps -> k's maximum) have arrived
    for elem_id, value, label, ok in (("anchor-step", 40, "k (anchor step) = 40", 5),
                                      ("diversity-weight", -0.2, "lambda (diversity weight) = -0.2", 0.5)):
        page.locator(f"#{elem_id} input[type=number]").fill(str(value))  # typed
        wait_for(lambda: label in _message(page), 30, f"the refusal naming {label!r}")
        assert "Refused:" in _message(page) and "method." not in _message(page), _message(page)
        outline = page.locator(f"#{elem_id}").evaluate("e => getComputedStyle(e).outlineStyle")
        assert outline == "solid", f"#{elem_id} is not marked ({outline})"
        assert page.locator(".toast-body").count() == 0, "a raw Gradio toast"
        assert _in_view(page, "#wizard-message")
        # issue 29.1: leaving the box (Tab, or a click on Check config) must not clamp it into a run that is Ready
        page.locator(f"#{elem_id} input[type=number]").press("Tab")
        page.click("#check-btn")
        page.wait_for_timeout(1500)
        assert label in _message(page) and "Refused:" in _message(page), _message(page)
        assert page.locator(f"#{elem_id} input[type=number]").input_value() == str(value)
        page.screenshot(path=shots / f"wizard_refused_{elem_id}.png")
        _set_number(page, elem_id, ok)  # the user acts: the refusal goes
        wait_for(lambda: "Ready" in _message(page), 30, f"Ready again after {label!r}")


def _check_monitor(page, shots: Path) -> None:
    page.get_by_role("tab", name="Monitor").click()
    status = page.locator("#run-status")
    # 2: died before its first checkpoint: Start again, and the error wraps instead of running off the page
    _pick_run(page, "died-early")
    wait_for(lambda: "state-died" in status.inner_html(), 30, "the died run")
    assert page.locator("#resume-btn").inner_text().strip() == "Start again"
    assert "loading the teacher" not in status.inner_text()
    error = page.locator("#run-status pre.run-error")
    assert "END" in error.inner_text() and error.evaluate("e => e.scrollWidth <= e.clientWidth"), "the error is cut off"
    # 3: finishing: evaluating / writing the report, then download links for a finished run
    _pick_run(page, "finishing-run")
    wait_for(lambda: "Evaluating / writing the report" in status.inner_text(), 30, "the finishing state")
    assert "being written" in page.locator("#report").inner_text()
    page.screenshot(path=shots / "monitor_finishing.png", full_page=True)
    _pick_run(page, "done-dmd")
    wait_for(lambda: status.locator("a[download]").count() == 3, 30, "the download links")
    for link in status.locator("a[download]").all():
        assert page.request.get(link.evaluate("a => a.href")).status == 200


def _check_queue(page, shots: Path) -> None:
    """7: 'finishing-run' holds the CPU, so a Start queues the new run: the Monitor shows its place, and Cancel takes
    it out (no training process is started)."""
    page.get_by_role("tab", name="Wizard").click()
    _set_number(page, "run-name", "waiting-run")
    wait_for(lambda: "Start queues this run" in _message(page) and "waiting-run" in _message(page), 30,
             "the verdict on waiting-run saying Start queues")
    page.locator("#start-btn").click()
    status = page.locator("#run-status")
    wait_for(lambda: "state-queued" in status.inner_html(), 30, "the queued run in the Monitor")
    assert "#1" in status.inner_text() and page.locator("#cancel-btn").is_visible()
    assert "queued #1 (cpu)" in page.locator("#runs-table").inner_text()
    page.screenshot(path=shots / "monitor_queued.png")
    page.locator("#cancel-btn").click()
    wait_for(lambda: "out of the queue" in page.locator("#monitor-message").inner_text(), 30, "the cancel message")
    wait_for(lambda: "state-stopped" in status.inner_html(), 30, "the cancelled run shown as stopped")
    assert "out of the queue" in page.locator("#monitor-message").inner_text()  # a refresh keeps the message ...
    _pick_run(page, "done-dmd")
    wait_for(lambda: not page.locator("#monitor-message").inner_text().strip(), 30, "... picking another clears it")


def test_the_wizard_keeps_its_form_across_a_reload_and_a_ui_restart(tmp_path):
    require(Path(CHROMIUM).exists(), "chromium", "apt-get install -y chromium (Debian's package)")
    require(importlib.util.find_spec("playwright") is not None, "playwright (python)", "pip install playwright")
    from playwright import sync_api
    runs_dir = tmp_path / "runs"
    runs_dir.mkdir()
    with sync_api.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=ARGS)
        context = browser.new_context(viewport={"width": 1400, "height": 900})  # one browser profile throughout
        page = context.new_page()
        page.set_default_timeout(30_000)
        steps = page.locator("#max-steps input[type=number]")
        with UIProcess(runs_dir, tmp_path / "ui1.log") as ui:
            page.goto(ui.url, wait_until="load")
            wait_for(lambda: "Ready" in _message(page), 30, "the first verdict")
            _set_number(page, "max-steps", 123)
            page.locator("#method").get_by_label("DMD (baseline)", exact=False).check()
            wait_for(lambda: "Ready: dmd" in _message(page) and "123 iterations" in _message(page), 30,
                     "the verdict on DMD and 123 iterations")
            page.wait_for_timeout(1000)  # the browser's copy is written after the verdict
            page.reload(wait_until="load")
            wait_for(lambda: steps.input_value() == "123", 30, "the kept iterations after a reload")
        with UIProcess(runs_dir, tmp_path / "ui2.log", ui.port) as ui:  # restarted (a page's storage is per port)
            page.goto(ui.url, wait_until="load")
            wait_for(lambda: steps.input_value() == "123", 30, "the kept iterations after a UI restart")
            wait_for(lambda: "Ready: dmd" in _message(page), 30, "the kept method")
        browser.close()
