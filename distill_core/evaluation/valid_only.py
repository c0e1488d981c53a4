"""Blank share and the metrics of valid samples only: what a model draws when it draws its prompt at all.

A student that fades samples to black (blank) or off its prompt's class loses mode coverage and Eq. 9
diversity over all samples without seeking any mode; the paper's claim (DMD keeps quality, loses variety)
is about its valid samples. Per prompt: the valid samples' mode histogram (coverage as over all samples: a
mode counts at >= MIN_FRACTION of its reference share, so it is coverage conditional on validity) and their
Eq. 9 diversity over all valid pairs (the same expectation as the R-seed diversity, from more samples).
A prompt with fewer than MIN_VALID valid samples has neither; it is listed in ``prompts_few_valid`` and left
out of both means, which are None when no prompt has enough. Built-in teachers only (validity is counted).
"""
from __future__ import annotations

import numpy as np
import torch

from .evaluate import pairwise_diversity

MIN_VALID = 2  # Eq. 9 compares pairs
MIN_FRACTION = 0.25  # as the all-samples coverage of both built-in teachers


def valid_only_metrics(features: torch.Tensor, valid: torch.Tensor, blank: torch.Tensor, modes: np.ndarray,
                       reference: np.ndarray, per_prompt: int) -> dict:
    """Prompt-major ``per_prompt`` samples per prompt: features (B, D), valid and blank (B,) booleans, modes (B,)
    (-1 for blank), reference (P, K) each prompt's mode shares in the data."""
    valid = valid & ~blank  # a blank image is never a valid one
    groups = zip(features.reshape(-1, per_prompt, features.shape[-1]), valid.reshape(-1, per_prompt),
                 modes.reshape(-1, per_prompt), reference)
    counts, diversities, coverages, histograms, few = [], [], [], [], []
    for p, (f, ok, m, ref) in enumerate(groups):
        n = int(ok.sum())
        counts.append(n)
        if n < MIN_VALID:
            few.append(p)
            histograms.append(None)
            diversities.append(None)
            coverages.append(None)
            continue
        hist = np.bincount(m[ok.numpy()], minlength=len(ref)) / n
        histograms.append(hist.tolist())
        coverages.append(float((hist >= MIN_FRACTION * np.asarray(ref)).mean()))
        diversities.append(pairwise_diversity(f[ok]))
    have = [i for i, d in enumerate(diversities) if d is not None]
    return {"blank_share": float(blank.float().mean()),
            "diversity_valid": float(np.mean([diversities[i] for i in have])) if have else None,
            "mode_coverage_valid": float(np.mean([coverages[i] for i in have])) if have else None,
            "diversity_valid_per_prompt": diversities, "mode_coverage_valid_per_prompt": coverages,
            "mode_histogram_valid": histograms, "valid_per_prompt": counts, "prompts_few_valid": few}


def builtin_valid_metrics(extractor, images: torch.Tensor, labels: torch.Tensor, per_prompt: int,
                          features: torch.Tensor) -> dict:
    """valid_only_metrics of a built-in teacher's extractor (shapes decoder or digits classifier)."""
    from ..builtin.shapes import is_blank

    return valid_only_metrics(features, extractor.valid(images, labels), is_blank(images),
                              extractor.sample_modes(images, labels), extractor.mode_reference(labels[::per_prompt]),
                              per_prompt)
