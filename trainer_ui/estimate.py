"""What a run will cost, shown in the Wizard before Start: GPU memory from the core's planner, time from steps.

Memory is distill_core.plan's estimate for the run's own config (the teacher
folder's configs, nothing loaded); the planner is built once per teacher folder
(building it measures the network on the meta device, ~15 s for SD3.5). Time is
seconds per step x iterations: measured, when a run in this runs folder trained
the same teacher at the same batch and steps, else a rough table for the
built-in teacher on a CPU. Both are estimates, and say where they come from.
"""
from __future__ import annotations

import statistics
import threading
from dataclasses import dataclass
from pathlib import Path

from distill_core.config import Config, field_value, load_run_config, resolve
from distill_core.errors import DPDMDError
from distill_core.runfolder import RunFolder

from .paths import Roots

# The built-in teacher on a 2-core CPU (measured: batch 8 ~0.35 s/step, batch 64 ~1.9 s/step): a + b x batch.
BUILTIN_CPU_SECONDS = (0.2, 0.027)
# What the speed of a step depends on: runs that agree on these are comparable.
SPEED_FIELDS = ("teacher.family", "teacher.path", "teacher.resolution", "data.batch_size", "student.num_steps",
                "method.name", "method.fake_updates", "method.backprop", "student.lora_rank",
                "student.gradient_checkpointing", "run.mixed_precision")


@dataclass
class Speed:
    sec_per_step: float
    source: str  # where the figure comes from, in words


def _speed_key(cfg: Config) -> tuple:
    return tuple(field_value(cfg, key) for key in SPEED_FIELDS)


def measured_speed(cfg: Config, roots: Roots) -> Speed | None:
    """The median s/step of the newest run here that trained like ``cfg`` (its own folder excluded)."""
    want, own = _speed_key(cfg), Path(cfg.run.output_dir).name
    best: tuple[float, Speed] | None = None
    for d in roots.run_folders():
        run = RunFolder(d)
        config = run.file(run.config_path)
        if d.name == own or config is None:
            continue
        try:
            if _speed_key(resolve(load_run_config(config))) != want:
                continue
        except (DPDMDError, OSError):
            continue
        steps = [e["sec_per_step"] for e in run.read_events() if e.get("event") == "step" and "sec_per_step" in e]
        if len(steps) >= 2:
            when = run.events_path.stat().st_mtime
            speed = Speed(statistics.median(steps[1:]), f"measured in run {d.name}")  # the first step warms up
            if best is None or when > best[0]:
                best = (when, speed)
    return best[1] if best else None


def table_speed(cfg: Config) -> Speed | None:
    """A rough figure from the table (the built-in teacher only); None where there is no table."""
    if cfg.teacher.family != "builtin":
        return None
    a, b = BUILTIN_CPU_SECONDS
    return Speed(a + b * cfg.data.batch_size, "rough, the built-in teacher on a 2-core CPU")


def _minutes(seconds: float) -> str:
    return f"{seconds:.0f} s" if seconds < 90 else f"{seconds / 60:.1f} min"


def time_estimate(cfg: Config, roots: Roots) -> str:
    speed = measured_speed(cfg, roots) or table_speed(cfg)
    if speed is None:
        return ("**Time:** no measured speed for this teacher here yet; the Monitor shows s/step and the time left "
                "from the run's first steps.")
    total = speed.sec_per_step * cfg.run.max_steps
    return (f"**Time:** about {speed.sec_per_step:.2f} s/step x {cfg.run.max_steps} iterations = "
            f"**{_minutes(total)}** of training ({speed.source}), then the final evaluation.")


class MemoryPlans:
    """One planner per teacher folder (building one is the slow part), shared by every page of this UI, and what it
    said of each config (an estimate, or why it cannot run it: the verdict refuses those, see ``refusal``)."""

    def __init__(self) -> None:
        self._planners: dict[tuple, object] = {}
        self._outcomes: dict[tuple, object] = {}  # (planner key, options) -> Estimate | the error's text
        self._lock = threading.Lock()

    def known(self, cfg: Config) -> bool:
        return cfg.teacher.family == "builtin" or self._key(cfg) in self._planners

    @staticmethod
    def _key(cfg: Config) -> tuple:
        index = Path(cfg.teacher.path) / "model_index.json"
        return cfg.teacher.family, str(index.parent), index.stat().st_mtime_ns if index.exists() else 0

    def _outcome(self, cfg: Config):
        """The planner's Estimate for ``cfg``, or the text of the error its network raised on this config (e.g.
        diffusers' 'Height ... cannot be greater than pos_embed_max_size')."""
        from distill_core.plan import Options, Planner, architecture_from_folder

        key = self._key(cfg)
        with self._lock:  # two pages asking at once build it once
            if key not in self._planners:
                self._planners[key] = Planner(architecture_from_folder(Path(cfg.teacher.path), cfg.teacher.family))
            options = Options.from_config(cfg)
            if (key, repr(options)) not in self._outcomes:
                try:
                    self._outcomes[key, repr(options)] = self._planners[key].estimate(options)
                except (ValueError, RuntimeError) as e:
                    self._outcomes[key, repr(options)] = str(e)
            return self._outcomes[key, repr(options)]

    def refusal(self, cfg: Config) -> str | None:
        """Why the network cannot run ``cfg`` (as its planner found), or None; only for a teacher whose planner is
        built already (the verdict does not wait the ~15 s a first build takes; the memory line does)."""
        if cfg.teacher.family == "builtin" or not self.known(cfg):
            return None
        outcome = self._outcome(cfg)
        return outcome if isinstance(outcome, str) else None

    def estimate(self, cfg: Config) -> str:
        """The planner's peak for this config, and which of the planner's GPU sizes it fits."""
        if cfg.teacher.family == "builtin":
            return "**Memory:** the built-in teacher needs no GPU (well under 1 GB of RAM)."
        from distill_core.plan import BUDGETS, GB

        e = self._outcome(cfg)
        if isinstance(e, str):
            return f"**Memory:** the network cannot run this config ({e}); Start is refused until it can."
        fits = [b for b in BUDGETS if e.fits(b)]
        verdict = f"fits a {fits[0]} GB GPU" if fits else f"fits none of {', '.join(map(str, BUDGETS))} GB"
        return (f"**Memory:** about **{e.peak / GB:.1f} GB** peak per GPU, {verdict} (the planner, `dpdmd plan`; "
                "a lighter memory preset lowers it).")
