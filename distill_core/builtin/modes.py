"""Style modes of the real digits: what "mode coverage" means on the built-in teacher.

Each class's real training digits are split into a few style clusters (k-means
on the classifier's features). A sample of class c belongs to the nearest
cluster of c. Counting clusters then tells, exactly rather than by eye, whether
a student still draws all the ways of writing a digit (coverage, histogram
divergence from the teacher) and whether a noise still leads to the same style
as in the teacher (agreement).
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from .digits import NUM_CLASSES, load_split

MODES_PER_CLASS = 6


@dataclass
class StyleModes:
    centers: np.ndarray  # (NUM_CLASSES, MODES_PER_CLASS, D)
    real_share: np.ndarray  # (NUM_CLASSES, MODES_PER_CLASS): share of real train digits per cluster

    @classmethod
    def fit(cls, extractor, modes: int = MODES_PER_CLASS, seed: int = 0) -> StyleModes:
        from sklearn.cluster import KMeans

        split = load_split()
        feats = extractor.features(((split.train_images + 1) / 2).repeat(1, 3, 1, 1)).numpy()
        labels = split.train_labels.numpy()
        centers, shares = [], []
        for c in range(NUM_CLASSES):
            km = KMeans(n_clusters=modes, n_init=10, random_state=seed).fit(feats[labels == c])
            centers.append(km.cluster_centers_)
            shares.append(np.bincount(km.labels_, minlength=modes) / len(km.labels_))
        return cls(np.stack(centers), np.stack(shares))

    def assign(self, features: torch.Tensor, labels: torch.Tensor) -> np.ndarray:
        """The style cluster (within its class) of each sample."""
        f, y = features.numpy(), labels.numpy()
        d = ((f[:, None, :] - self.centers[y]) ** 2).sum(-1)
        return d.argmin(1)

    def histograms(self, modes: np.ndarray, labels: torch.Tensor) -> np.ndarray:
        """(NUM_CLASSES, k) share of samples per cluster, for the classes present (blank samples, -1, in none)."""
        y = labels.numpy()
        k = self.centers.shape[1]
        out = np.zeros((NUM_CLASSES, k))
        for c in np.unique(y):
            out[c] = np.bincount(modes[(y == c) & (modes >= 0)], minlength=k) / (y == c).sum()
        return out

    def coverage(self, hist: np.ndarray, classes: np.ndarray, min_fraction: float = 0.25) -> float:
        """Share of real style clusters reached: a cluster counts when it gets at least
        ``min_fraction`` of its real share (so one stray sample is not coverage)."""
        reached = hist[classes] >= min_fraction * self.real_share[classes]
        return float(reached.mean())


def histogram_divergence(p: np.ndarray, q: np.ndarray, eps: float = 1e-3) -> float:
    """Mean over classes of KL(p || q) between cluster histograms (smoothed by eps)."""
    p, q = p + eps, q + eps
    p, q = p / p.sum(1, keepdims=True), q / q.sum(1, keepdims=True)
    return float((p * np.log(p / q)).sum(1).mean())


def agreement(modes_a: np.ndarray, modes_b: np.ndarray) -> float:
    """Share of noises that land in the same style cluster under two models."""
    return float((modes_a == modes_b).mean())


def prompt_histograms(modes: np.ndarray, per_prompt: int, k: int) -> list[list[float]]:
    """Share of each prompt's samples per cluster (prompt-major samples, ``per_prompt`` each); a blank sample
    (mode -1) is in no cluster, so a prompt's shares sum to one minus its blank share."""
    return [(np.bincount(group[group >= 0], minlength=k) / len(group)).tolist()
            for group in modes.reshape(-1, per_prompt)]


def sample_modes(extractor, images: torch.Tensor, labels: torch.Tensor) -> np.ndarray:
    """Each sample's style cluster within its prompt's class; -1 for a blank image (never booked as a mode)."""
    from .shapes import is_blank

    modes = extractor.modes.assign(extractor.features(images), labels)
    return np.where(is_blank(images).numpy(), -1, modes)


def mode_metrics(extractor, teacher_images: torch.Tensor, student_images: torch.Tensor,
                 labels: torch.Tensor, per_prompt: int | None = None) -> tuple[dict, dict]:
    """Coverage for both; for the student also divergence and agreement with the teacher (same noises).

    With ``per_prompt`` (prompt-major samples): each prompt's histogram, the real digits' shares and the
    clusters' names (the keys the demo's bar charts read, docs in evaluation/compare.py).
    """
    modes = extractor.modes
    classes = np.unique(labels.numpy())
    t_modes = sample_modes(extractor, teacher_images, labels)
    s_modes = sample_modes(extractor, student_images, labels)
    t_hist, s_hist = modes.histograms(t_modes, labels), modes.histograms(s_modes, labels)
    t_out = {"mode_coverage": modes.coverage(t_hist, classes)}
    s_out = {"mode_coverage": modes.coverage(s_hist, classes),
             "mode_divergence_from_teacher": histogram_divergence(t_hist[classes], s_hist[classes]),
             "mode_divergence_from_data": histogram_divergence(modes.real_share[classes], s_hist[classes]),
             "mode_agreement_with_teacher": agreement(t_modes, s_modes)}
    if per_prompt:
        k = modes.centers.shape[1]
        prompt_classes = labels.numpy()[::per_prompt]
        shared = {"mode_names": [[f"style {j + 1}" for j in range(k)] for _ in prompt_classes],
                  "data_histogram": modes.real_share[prompt_classes].tolist()}
        t_out.update(mode_histogram=prompt_histograms(t_modes, per_prompt, k), **shared)
        s_out.update(mode_histogram=prompt_histograms(s_modes, per_prompt, k), **shared)
    return t_out, s_out
