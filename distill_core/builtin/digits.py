"""The digits data and the prompt language of the built-in teacher.

scikit-learn ships the 1,797 8x8 handwritten digits inside its wheel, so nothing
is downloaded. Pixels 0..16 are mapped to [-1, 1]. The split is fixed (seeded
permutation) so that the teacher, the classifier and every metric agree on which
images are held out.
"""
from __future__ import annotations

import re
from dataclasses import dataclass

import numpy as np
import torch

from ..errors import PromptError, shown

NUM_CLASSES = 10
NULL_LABEL = NUM_CLASSES  # the unconditional class used for classifier-free guidance
IMAGE_SIZE = 8
SPLIT_SEED = 0
NUM_TRAIN = 1400

NUMBER_WORDS = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine")


@dataclass(frozen=True)
class DigitsSplit:
    train_images: torch.Tensor  # (N, 1, 8, 8) in [-1, 1]
    train_labels: torch.Tensor  # (N,)
    test_images: torch.Tensor
    test_labels: torch.Tensor


def load_split() -> DigitsSplit:
    """The fixed train / held-out split used by the teacher, classifier and metrics."""
    from sklearn.datasets import load_digits

    data = load_digits()
    images = torch.tensor(data.images, dtype=torch.float32).unsqueeze(1) / 8.0 - 1.0
    labels = torch.tensor(data.target, dtype=torch.long)
    order = torch.tensor(np.random.RandomState(SPLIT_SEED).permutation(len(labels)))
    train, test = order[:NUM_TRAIN], order[NUM_TRAIN:]
    return DigitsSplit(images[train], labels[train], images[test], labels[test])


def canonical_prompt(label: int) -> str:
    """The prompt used in reports and grids for a class label."""
    return f"a handwritten {label}"


def parse_prompt(prompt: str) -> int:
    """Map a prompt naming one digit ("7", "seven", "a handwritten 7") to its class label.

    Raises PromptError listing what is accepted when the prompt names no digit or
    several different ones.
    """
    text = prompt.lower()
    found = {int(ch) for ch in re.findall(r"\d", text)}
    found |= {NUMBER_WORDS.index(w) for w in re.findall(r"[a-z]+", text) if w in NUMBER_WORDS}
    if len(found) == 1:
        return found.pop()
    what = "no digit" if not found else f"several digits {sorted(found)}"
    raise PromptError(
        f"prompt {shown(prompt)} names {what}; the built-in teacher draws one handwritten digit. "
        "Use a prompt that names exactly one digit 0-9, as a numeral or a word, "
        "e.g. '7', 'seven', 'a handwritten 7'."
    )


def to_pixels(x: torch.Tensor) -> torch.Tensor:
    """Model space [-1, 1] to display space [0, 1], clamped."""
    return ((x + 1.0) / 2.0).clamp(0.0, 1.0)
