"""Counted mode metrics of the shapes teacher: every sample's mode comes from the decoder.

Per eval prompt, the histogram over its class's 8 modes is compared with the data's
known probabilities (MODE_PROBS of its class) and, for a student, with the teacher's histogram
from the same noises; agreement is the share of noises whose mode is the same under
both models. Keys as in notes of issue 13 (modes_interface): mode_coverage,
validity, mode_histogram, mode_names, data_histogram, mode_divergence_from_*,
mode_agreement_with_teacher.
"""
from __future__ import annotations

import numpy as np
import torch

from .modes import agreement, histogram_divergence, prompt_histograms
from .shapes import MODE_PROBS, MODES, Decoded, decode, is_valid, mode_name

MIN_FRACTION = 0.25  # a mode counts as reached with at least this share of its data probability (as for digits)


def coverage(hist: np.ndarray, data: np.ndarray) -> float:
    """Share of the prompts' modes reached (one stray sample in a mode is not coverage)."""
    return float((hist >= MIN_FRACTION * data).mean())


def sample_modes(decoded: Decoded) -> np.ndarray:
    """Each sample's mode; -1 for a blank image (no shape: the decoder's best template would be mode 0)."""
    return np.where(decoded.blank.numpy(), -1, decoded.mode.numpy())


def model_metrics(images: torch.Tensor, labels: torch.Tensor, per_prompt: int) -> tuple[dict, np.ndarray]:
    """The counted metrics of one model's prompt-major samples, and each sample's mode (-1: blank)."""
    decoded = decode(images)
    modes = sample_modes(decoded)
    hist = np.array(prompt_histograms(modes, per_prompt, len(MODES)))
    data = np.array(MODE_PROBS)[labels[::per_prompt].numpy()]
    return {"mode_coverage": coverage(hist, data),
            "validity": float(is_valid(decoded, labels).float().mean()),
            "mode_histogram": hist.tolist(),
            "mode_names": [[mode_name(m) for m in range(len(MODES))] for _ in hist],
            "data_histogram": data.tolist(),
            "mode_divergence_from_data": histogram_divergence(data, hist)}, modes


def mode_metrics(teacher_images: torch.Tensor, student_images: torch.Tensor, labels: torch.Tensor,
                 per_prompt: int) -> tuple[dict, dict]:
    """Teacher's and student's counted metrics; the student's also against the teacher (same noises)."""
    t, t_modes = model_metrics(teacher_images, labels, per_prompt)
    s, s_modes = model_metrics(student_images, labels, per_prompt)
    s["mode_divergence_from_teacher"] = histogram_divergence(np.array(t["mode_histogram"]),
                                                            np.array(s["mode_histogram"]))
    s["mode_agreement_with_teacher"] = agreement(t_modes, s_modes)
    return t, s
