"""The per-device run queue (distill_core/run_queue.py): order, move up, cancel, dispatch, kept in a file."""
from __future__ import annotations

import json

import pytest

from distill_core.errors import DPDMDError
from distill_core.run_queue import QUEUE_FILE, QueueError, RunQueue, device_of


def test_each_device_has_its_own_queue_with_places(tmp_path):
    q = RunQueue(tmp_path)
    assert [q.add("a", "cpu"), q.add("g", "cuda"), q.add("b", "cpu"), q.add("c", "cpu")] == [1, 1, 2, 3]
    assert q.add("b", "cpu") == 2  # queued once
    assert q.positions() == {"a": ("cpu", 1), "g": ("cuda", 1), "b": ("cpu", 2), "c": ("cpu", 3)}


def test_move_up_and_cancel_keep_the_other_devices_order(tmp_path):
    q = RunQueue(tmp_path)
    for run, device in (("a", "cpu"), ("g", "cuda"), ("b", "cpu")):
        q.add(run, device)
    assert q.move_up("b") == 1 and q.move_up("b") == 1  # first already: stays
    assert [e.run for e in q.entries()] == ["b", "g", "a"]
    q.cancel("b")
    assert q.positions() == {"g": ("cuda", 1), "a": ("cpu", 1)}
    with pytest.raises(QueueError, match="not queued"):
        q.cancel("b")


def test_the_queue_is_a_file_a_new_process_reads(tmp_path):
    RunQueue(tmp_path).add("a", "cpu")
    RunQueue(tmp_path).add("b", "cpu")
    assert [e.run for e in RunQueue(tmp_path).entries()] == ["a", "b"]
    assert json.loads((tmp_path / QUEUE_FILE).read_text())["queue"][0]["run"] == "a"
    assert not list(tmp_path.glob(".*.tmp"))  # written atomically: no temporary left
    (tmp_path / QUEUE_FILE).write_text("{not json")
    with pytest.raises(QueueError, match="remove it"):
        RunQueue(tmp_path).entries()


def test_dispatch_starts_the_first_runs_of_devices_with_room(tmp_path):
    q = RunQueue(tmp_path)
    for run, device in (("a", "cpu"), ("b", "cpu"), ("g", "cuda"), ("h", "cuda")):
        q.add(run, device)
    started: list[str] = []
    assert q.dispatch(lambda: {"cpu": 1}, 1, started.append) == ["g"]  # the CPU is busy, one run per device
    assert started == ["g"] and [e.run for e in q.entries()] == ["a", "b", "h"]
    assert q.dispatch(lambda: {}, 2, started.append) == ["a", "b", "h"]  # two per device
    assert q.entries() == []


def test_a_run_that_cannot_start_leaves_the_queue_and_the_next_starts(tmp_path):
    q = RunQueue(tmp_path)
    q.add("gone", "cpu")
    q.add("next", "cpu")

    def start(run: str) -> None:
        if run == "gone":
            raise DPDMDError("'gone' has no config.toml")

    with pytest.raises(DPDMDError, match="no config.toml"):
        q.dispatch(lambda: {}, 1, start)
    assert q.entries() == []  # 'next' started in its place


def test_auto_is_the_gpu_when_there_is_one():
    assert (device_of("auto", True), device_of("auto", False), device_of("cpu", True)) == ("cuda", "cpu", "cpu")
