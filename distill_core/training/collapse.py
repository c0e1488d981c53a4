"""The collapse guard: a run whose student loses the teacher's variety says so while it trains.

DMD's reverse KL seeks modes; the paper's Fig. 5 shows diversity falling over training. The trainer measures
the student's Eq. 9 diversity every ``eval.diversity_every`` steps on the eval prompts and seeds, and the
teacher's once on the same ones. When the student's is below ``eval.collapse_fraction`` of the teacher's at
two evaluations in a row (one low evaluation can be noise), the run writes a warning line to the terminal and a
``collapse_warning`` event (the Monitor and the report mark it on the diversity plot), with advice that
follows from the method; with ``eval.collapse_stop`` it stops with a checkpoint, to be resumed with changes.
"""
from __future__ import annotations

from dataclasses import dataclass

from ..config import METHODS, Config

IN_A_ROW = 2


def advice(cfg: Config) -> str:
    """What to change, from the run's method (the fake score's pace matters to every DMD variant: DMD2)."""
    o, m = cfg.optim, cfg.method
    pace = (f"keep the fake score at least as fast as the student (optim.fake_lr {o.fake_lr:g} vs optim.student_lr "
            f"{o.student_lr:g}, method.fake_updates {m.fake_updates}; DMD2's two time-scale rule)")
    if not METHODS[m.name].diversity:
        return (f"{METHODS[m.name].name}'s reverse KL seeks modes on every step: train with method.name = 'dpdmd' "
                f"(the first step follows the teacher's trajectory), and {pace}")
    if not METHODS[m.name].detach:
        return (f"DMD's gradient reaches the first step without the detach: use method.name = 'dpdmd', and {pace}")
    return (f"raise method.diversity_weight (lambda, now {m.diversity_weight:g}) or method.anchor_step (k, now "
            f"{m.anchor_step}) so the first step holds the teacher's layout, and {pace}")


@dataclass
class CollapseGuard:
    """Counts evaluations in a row below ``fraction`` of the teacher's diversity."""
    fraction: float
    teacher_diversity: float
    low: int = 0  # evaluations in a row below the fraction

    def observe(self, diversity: float) -> bool:
        """Take one evaluation; True when it makes IN_A_ROW low ones in a row (then again at each further one)."""
        self.low = self.low + 1 if diversity < self.fraction * self.teacher_diversity else 0
        return self.low >= IN_A_ROW

    def warning(self, step: int, diversity: float, cfg: Config) -> str:
        return (f"warning: diversity collapse at step {step}: the student's diversity {diversity:.4f} is "
                f"{diversity / self.teacher_diversity:.0%} of the teacher's {self.teacher_diversity:.4f}, below "
                f"eval.collapse_fraction = {self.fraction:g} at {self.low} evaluations in a row. "
                f"Advice: {advice(cfg)}.")
