"""bench/gpu_check.py cannot rot: the GPU command runs end to end here on the CPU, on few-layer networks.

The same script and worker as on a GPU (`--device cpu --tiny`): planning, teacher builds, the project's Trainer,
DP-DMD and DMD iterations interleaved, sampling times, the JSON file and the table; one architecture per family
of the planner's table, so a family added there is checked here too. The watchdog is checked on a worker that
hangs, the in-preset deadline on a preset with no time, the order on the full-size SDXL plan.
"""
from __future__ import annotations

import json
import math
import os
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "bench"))

import gpu_check  # noqa: E402

from distill_core import plan as planning  # noqa: E402
from distill_core.presets import PRESETS  # noqa: E402

PRESET = "shared-lora64-ckpt-onestep-b1"
# The first architecture of each family in the planner's table: a family added there is run here without a change.
FIRST_OF_FAMILY: dict[str, str] = {}
for _name, _ref in planning.REFERENCES.items():
    FIRST_OF_FAMILY.setdefault(_ref["family"], _name)
FAMILY_ARCHS = list(FIRST_OF_FAMILY.values())
CPU = ["--device", "cpu", "--tiny", "--fp32", "--resolution", "32", "--teacher-steps", "4"]


def run_check(tmp_path: Path, *extra: str) -> tuple[subprocess.CompletedProcess, dict]:
    out = tmp_path / "check.json"
    # one thread: on a loaded 2-core machine, two threads per small op wait for each other (10-30x slower)
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}
    proc = subprocess.run([sys.executable, "bench/gpu_check.py", *CPU, "--work", str(tmp_path / "work"),
                           "--out", str(out), *extra], cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return proc, json.loads(out.read_text())


def test_end_to_end_on_cpu(tmp_path):
    proc, state = run_check(tmp_path, "--arch", ",".join(FAMILY_ARCHS), "--presets", PRESET, "--iterations", "1")
    records = state["presets"]
    assert [r["arch"] for r in records] == FAMILY_ARCHS and all(r["preset"] == PRESET for r in records)
    for rec in records:
        assert rec["status"] == "ok", rec
        dp, dmd = rec["iterations"]  # interleaved, DP-DMD first, on the same trainer
        assert (dp["method"], dmd["method"]) == ("dpdmd", "dmd")
        for it in (dp, dmd):
            assert it["seconds"] > 0 and it["fake_update_s"] > 0 and it["student_update_s"] > 0 and it["peak_gb"] > 0
        # DMD really is DMD: no anchor rollout, no diversity loss; DP-DMD has both
        assert dp["anchor_rollout_s"] > 0 and dp["loss_div"] > 0
        assert dmd["anchor_rollout_s"] == 0 and dmd["loss_div"] == 0
        s = rec["summary"]
        assert math.isfinite(s["dpdmd_over_dmd"]) and s["dpdmd_over_dmd"] > 0
        for method in ("dpdmd", "dmd"):
            assert rec["planned"][method]["parts_sum_gb"] > 0
            assert math.isfinite(s[method]["measured_over_planned"]) and s[method]["measured_over_planned"] > 0
        t = rec["sampling"]  # first preset of its architecture
        assert (t["teacher_steps"], t["student_steps"], t["resolution"]) == (4, 4, 32)
        assert t["teacher_s"] > 0 and t["student_s"] > 0 and t["teacher_over_student"] > 0
        assert f"| {rec['arch']} | {PRESET} | ok |" in proc.stdout
    assert {a: b["status"] for a, b in state["builds"].items()} == {a: "ok" for a in FAMILY_ARCHS}
    assert not list((tmp_path / "work").glob("teacher_*"))  # each deleted after its last preset


def test_a_preset_with_no_time_left_stops_before_its_first_iteration(tmp_path):
    _, state = run_check(tmp_path, "--arch", FAMILY_ARCHS[0], "--presets", PRESET, "--preset-budget-s", "0",
                         "--grace-s", "600")
    (rec,) = state["presets"]
    assert rec["status"] == "stopped" and rec["iterations"] == [] and "would pass the deadline" in rec["note"]
    assert rec["load"]["seconds"] > 0


HANGING_WORKER = textwrap.dedent("""
    import json, os, sys, time
    spec = json.load(open(sys.argv[1]))
    index = spec["queue"][0]
    with open(spec["progress"], "a") as f:
        f.write(json.dumps({"event": "start", "time": time.time(), "step": f"preset {index}", "job": index,
                            "budget_s": 0.5, "pid": os.getpid()}) + "\\n")
        f.write(json.dumps({"event": "partial", "time": time.time(), "job": index, "record": {"iterations": [
            {"method": "dpdmd", "warmup": True, "seconds": 1.0, "peak_gb": 2.0, "reserved_gb": None,
             "fake_update_s": 0.4, "student_update_s": 0.6, "anchor_rollout_s": 0.1}]}}) + "\\n")
    time.sleep(20)
""")


def test_the_watchdog_kills_a_hanging_step_and_goes_on_with_the_rest(tmp_path):
    worker = tmp_path / "hang.py"
    worker.write_text(HANGING_WORKER)
    args = gpu_check.parse([*CPU, "--work", str(tmp_path), "--grace-s", "1", "--budget-s", "60"])
    planned = {"dpdmd": {"parts_sum_gb": 1.0}, "dmd": {"parts_sum_gb": 1.0}}
    jobs = [{"arch": "sdxl", "preset": p, "sample": False, "tier": 0, "planned": planned} for p in ("a", "b")]
    state = {"started": time.time(), "builds": {}, "presets": [None, None], "device": {}}
    stale = {"event": "done", "time": 0, "job": 0, "record": {"status": "ok"}}  # an earlier check in the same --work
    (tmp_path / "progress_1.jsonl").write_text(json.dumps(stale) + "\n")
    t0 = time.time()
    gpu_check.Supervisor(args, jobs, state, save=lambda: None, worker=[sys.executable, str(worker)]).run()
    assert time.time() - t0 < 30
    for rec in state["presets"]:
        assert rec["status"] == "killed" and "watchdog" in rec["note"]
        assert rec["summary"]["dpdmd"]["sec_per_iter"] == 1.0  # what it measured before the kill is kept
    pids = [json.loads(line)["pid"] for f in sorted(tmp_path.glob("progress_*.jsonl"))
            for line in f.read_text().splitlines() if '"start"' in line]
    assert len(pids) == 2  # a new worker for what was left
    for pid in pids:
        with pytest.raises(ProcessLookupError):
            os.kill(pid, 0)


def test_the_16_and_24_gb_presets_come_first(tmp_path):
    args = gpu_check.parse(["--device", "cpu", "--arch", "sdxl", "--card-gb", "24", "--work", str(tmp_path)])
    jobs, archs = gpu_check.schedule(args, 24)
    best = archs["sdxl"]["best"]
    order = [j["preset"] for j in jobs]
    assert order[:2] == [best["16"], best["24"]] and set(order) == set(archs["sdxl"]["fitting"]) and len(order) > 2
    fp8 = {p for p in PRESETS if PRESETS[p].get("teacher.quantize") == "fp8"}
    assert fp8 and fp8 <= set(order)  # the fp8-base presets are measured too (SDXL: all fit 24 GB)
    assert [j["sample"] for j in jobs] == [True] + [False] * (len(jobs) - 1)
    assert jobs[0]["planned_peak_gb"] <= 16 < jobs[1]["planned_peak_gb"] <= 24


def test_summary_times_the_iterations_after_the_warm_up():
    rows = [{"method": m, "warmup": w, "seconds": s, "peak_gb": p, "reserved_gb": p + 1, "fake_update_s": 1.0,
             "student_update_s": 2.0, "anchor_rollout_s": 0.5 if m == "dpdmd" else 0.0}
            for m, w, s, p in (("dpdmd", True, 50.0, 9.0), ("dmd", True, 40.0, 8.0), ("dpdmd", False, 6.0, 10.0),
                               ("dmd", False, 4.0, 7.0), ("dpdmd", False, 8.0, 9.5), ("dmd", False, 5.0, 7.5))]
    rec = {"iterations": rows, "baseline_gb": 0.0,
           "planned": {"dpdmd": {"parts_sum_gb": 8.0}, "dmd": {"parts_sum_gb": 10.0}}}
    s = gpu_check.summary(rec)
    assert (s["dpdmd"]["sec_per_iter"], s["dmd"]["sec_per_iter"]) == (7.0, 4.5)
    assert s["dpdmd_over_dmd"] == pytest.approx(7.0 / 4.5)
    assert (s["dpdmd"]["peak_gb"], s["dmd"]["peak_gb"]) == (10.0, 8.0)  # memory over every iteration
    assert s["dpdmd"]["measured_over_planned"] == pytest.approx(10.0 / 8.0)
    assert s["dmd"]["reserved_over_planned"] == pytest.approx(9.0 / (10.0 * planning.FRAGMENTATION))


def test_bad_arguments_are_one_line_and_exit_2(capsys):
    with pytest.raises(SystemExit) as e:
        gpu_check.parse(["--arch", "sd9"])
    assert e.value.code == 2
    err = capsys.readouterr().err.strip()
    assert "'sd9'" in err and "--arch" in err and len(err.splitlines()) == 1
