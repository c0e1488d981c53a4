"""Fixed-seed pictures and measurements of a run: seed grids and diversity during training."""
from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from ..config import Config
from ..families import native_guidance
from ..grids import seed_grid
from ..progress import phase
from ..sampling import sample_grid
from ..teachers.base import Teacher
from .evaluate import FeatureExtractor, evaluate_images


class Snapshots:
    """Samples the teacher once and the student on demand, from the same fixed seeds."""

    def __init__(self, cfg: Config, teacher: Teacher, extractor: FeatureExtractor | None, device) -> None:
        self.cfg, self.teacher, self.extractor, self.device = cfg, teacher, extractor, device
        e = cfg.eval
        self.grid_prompts = e.prompts[: e.grid_prompts]
        self.grid_seeds = list(range(e.grid_seeds))
        self.eval_prompts = e.prompts
        self.eval_seeds = list(range(e.seeds))
        self.student_levels = teacher.student_levels(cfg.student.num_steps, cfg.student.shift)
        self.teacher_levels = teacher.teacher_levels(cfg.teacher.num_steps)
        self.batch = max(cfg.data.batch_size, 16)

    def _student(self, net: nn.Module, prompts, seeds) -> torch.Tensor:
        return sample_grid(self.teacher, net, prompts, seeds, self.student_levels, 1.0, self.batch, self.device)

    def teacher_grid(self, path: Path) -> None:
        total = len(self.grid_prompts) * len(self.grid_seeds)
        with phase("sampling the teacher's seed grid", total, "img") as p:
            lat = sample_grid(self.teacher, self.teacher.network, self.grid_prompts, self.grid_seeds,
                              self.teacher_levels, self.cfg.teacher.guidance_scale, self.batch, self.device,
                              progress=p.advance)
        t = self.cfg.teacher
        title = f"teacher: {t.num_steps} steps, CFG {t.guidance_scale:g} {native_guidance(t.family, t.guidance_scale)}"
        title = title.rstrip()
        seed_grid(self.teacher.decode(lat), self.grid_prompts, self.grid_seeds, title).save(path)

    def student_grid(self, net: nn.Module, path: Path, step: int) -> None:
        lat = self._student(net, self.grid_prompts, self.grid_seeds)
        title = f"student: {self.cfg.student.num_steps} steps, step {step}"
        seed_grid(self.teacher.decode(lat), self.grid_prompts, self.grid_seeds, title).save(path)

    def teacher_metrics(self) -> dict:
        """The teacher's diversity (Eq. 9) on the same eval prompts x R seeds as ``student_metrics``."""
        if self.extractor is None:
            return {}
        lat = sample_grid(self.teacher, self.teacher.network, self.eval_prompts, self.eval_seeds, self.teacher_levels,
                          self.cfg.teacher.guidance_scale, self.batch, self.device)
        return evaluate_images(self.teacher.decode(lat), len(self.eval_seeds), self.extractor)

    def student_metrics(self, net: nn.Module) -> dict:
        """Diversity (Eq. 9) of the student on the eval prompts x R seeds."""
        if self.extractor is None:
            return {}
        lat = self._student(net, self.eval_prompts, self.eval_seeds)
        return evaluate_images(self.teacher.decode(lat), len(self.eval_seeds), self.extractor)
