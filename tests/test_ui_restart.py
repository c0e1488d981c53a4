"""Trainer UI: a run started from one UI process survives that process and is found by the next one, and so
is the queue: a run queued under the first UI starts under the next one when the device frees up."""
from __future__ import annotations

from gradio_client import Client
from ui_support import UIProcess, stop_trainers, tiny_form, values, wait_for

from distill_core.runfolder import RunFolder, pid_alive


def _steps(run: RunFolder) -> int:
    return max([e["step"] for e in run.read_events() if e.get("event") == "step"], default=0)


def test_restart_the_ui_during_a_run(tmp_path):
    runs_dir = tmp_path / "runs"
    runs_dir.mkdir()
    run = RunFolder(runs_dir / "survivor")
    log = run.root / "train.log"
    form = tiny_form("survivor", run__max_steps=500, run__checkpoint_every=100)
    try:
        with UIProcess(runs_dir, tmp_path / "ui1.log") as ui:
            msg = Client(ui.url, verbose=False).predict(*values(form), api_name="/start")[0]
            assert msg.startswith("Started **survivor**"), msg
            wait_for(lambda: _steps(run) >= 1, 240, "the first training step", log)
            queued = Client(ui.url, verbose=False).predict(*values(tiny_form("waiter")), api_name="/start")[0]
            assert queued.startswith("Queued **waiter**"), queued  # the device is busy: it waits
            banner = ui.log.read_text()
            assert "--share" in banner and "share=True" not in banner, banner  # this command's words, not gradio's
            ui.kill()  # the UI dies (a crash, a closed terminal): training must go on
        pid = run.read_status()["pid"]
        assert pid_alive(pid)
        seen = _steps(run)
        wait_for(lambda: _steps(run) > seen, 120, "training to go on without the UI", log)

        with UIProcess(runs_dir, tmp_path / "ui2.log") as ui:
            client = Client(ui.url, verbose=False)
            choice, table, status, *_ = client.predict(None, None, api_name="/monitor")
            assert choice["value"] == "survivor" and table["data"][0][:2] == ["survivor", "running"], (choice, table)
            assert "state-running" in status
            assert "already running" in client.predict(*values(form), api_name="/start")[0]  # no second process
            assert "stop" in client.predict("survivor", api_name="/stop")
            wait_for(lambda: run.effective_state() == "stopped", 120, "the run to stop", log)
            waiter = RunFolder(runs_dir / "waiter")  # queued under the first UI, started by this one's queue keeper
            wait_for(lambda: waiter.effective_state() in ("starting", "running"), 60, "the queued run to start",
                     ui.log)
        assert not pid_alive(pid) or run.effective_state() == "stopped"
        assert log.read_text().count("trainer UI:") == 1  # one process was ever started
    finally:
        stop_trainers(runs_dir)
