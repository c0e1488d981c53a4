"""An exponential moving average of the student: sampled, evaluated and exported when it is on."""
from __future__ import annotations

import copy

import torch
from torch import nn


class StudentEMA:
    """A frozen copy of the student whose trainable weights follow it: avg <- avg + (1 - decay) (p - avg)."""

    def __init__(self, student: nn.Module, decay: float) -> None:
        self.decay = decay
        self.model = copy.deepcopy(student).requires_grad_(False).eval()

    @torch.no_grad()
    def update(self, student: nn.Module) -> None:
        """Called after every student optimiser step; frozen (non-trainable) weights never differ."""
        for avg, p in zip(self.model.parameters(), student.parameters()):
            if p.requires_grad:
                avg.lerp_(p.detach().to(avg.dtype), 1.0 - self.decay)
