"""Network definitions of the built-in teacher and of the digits classifier."""
from __future__ import annotations

import torch
from torch import nn

from . import shapes
from .digits import IMAGE_SIZE, NUM_CLASSES

# A diffusers DiT (class-conditional, adaLN-zero). Small enough for a CPU
# distillation in minutes, large enough to draw clean digits at 30 steps.
TEACHER_CONFIG: dict = {
    "num_attention_heads": 4,
    "attention_head_dim": 24,
    "num_layers": 3,
    "sample_size": IMAGE_SIZE,
    "patch_size": 2,
    "in_channels": 1,
    "out_channels": 1,
    "num_embeds_ada_norm": NUM_CLASSES,
}

# The shapes teacher: the same width and depth on 16 tokens again (16x16 RGB in 4x4 patches), so a
# distillation step costs what a digits one does.
SHAPES_TEACHER_CONFIG: dict = {
    **TEACHER_CONFIG,
    "sample_size": shapes.IMAGE_SIZE,
    "patch_size": 4,
    "in_channels": shapes.CHANNELS,
    "out_channels": shapes.CHANNELS,
    "num_embeds_ada_norm": shapes.NUM_CLASSES,
}
TEACHER_CONFIGS: dict[str, dict] = {"digits": TEACHER_CONFIG, "shapes": SHAPES_TEACHER_CONFIG}


def build_teacher_network(config: dict | None = None) -> nn.Module:
    """A fresh DiTTransformer2DModel with the built-in teacher's architecture."""
    from diffusers import DiTTransformer2DModel

    return DiTTransformer2DModel(**(config or TEACHER_CONFIG))


class DigitsClassifier(nn.Module):
    """A 2-conv CNN whose 64-d penultimate features are the frozen metric extractor."""

    feature_dim = 64

    def __init__(self) -> None:
        super().__init__()
        self.body = nn.Sequential(
            nn.Conv2d(1, 16, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
            nn.Conv2d(16, 32, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
            nn.Flatten(), nn.Linear(32 * 2 * 2, self.feature_dim), nn.ReLU(),
        )
        self.head = nn.Linear(self.feature_dim, NUM_CLASSES)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """Penultimate activations for images in [-1, 1], shape (B, 1, 8, 8)."""
        return self.body(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.body(x))
