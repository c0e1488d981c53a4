"""Blank share and valid-only metrics (evaluation/valid_only.py), by hand and on the shapes decoder."""
import numpy as np
import pytest
import torch

from distill_core.builtin import shape_modes
from distill_core.builtin.shapes import generate
from distill_core.evaluation.evaluate import evaluate_images, load_extractor
from distill_core.evaluation.valid_only import valid_only_metrics


def test_valid_only_metrics_by_hand():
    """Prompt 0: 3 valid of 4 (modes 0, 0, 1); prompt 1: 1 valid and 1 blank of 4 (marked, not averaged)."""
    f = torch.tensor([[1.0, 0.0], [0.0, 1.0], [1.0, 1.0], [5.0, 5.0],
                      [1.0, 0.0], [0.0, 0.0], [1.0, 0.0], [1.0, 0.0]])
    valid = torch.tensor([True, True, True, False, True, True, False, False])  # a classifier may call a blank valid
    blank = torch.tensor([False, False, False, False, False, True, False, False])
    modes = np.array([0, 0, 1, 1, 1, -1, 0, 0])
    reference = np.array([[0.5, 0.3, 0.2], [0.4, 0.4, 0.2]])
    out = valid_only_metrics(f, valid, blank, modes, reference, per_prompt=4)
    c = 1 / 2 ** 0.5  # cos between (1, 0) or (0, 1) and (1, 1); 0 between (1, 0) and (0, 1)
    assert out["diversity_valid"] == pytest.approx(1 - (0 + c + c) / 3)
    # valid histogram of prompt 0: (2/3, 1/3, 0) against 0.25 x (0.5, 0.3, 0.2): modes 0 and 1 reached
    assert out["mode_histogram_valid"][0] == pytest.approx([2 / 3, 1 / 3, 0.0])
    assert out["mode_coverage_valid"] == pytest.approx(2 / 3)
    assert out["valid_per_prompt"] == [3, 1] and out["prompts_few_valid"] == [1]
    assert out["mode_histogram_valid"][1] is None and out["blank_share"] == pytest.approx(1 / 8)
    none = valid_only_metrics(f, torch.zeros(8, dtype=torch.bool), blank, modes, reference, per_prompt=4)
    assert none["diversity_valid"] is None and none["mode_coverage_valid"] is None
    assert none["prompts_few_valid"] == [0, 1]


def test_blank_images_are_never_booked_as_a_mode():
    """Half of "a red square"'s samples faded to black: its histogram loses their share instead of giving it
    to the first mode (top-left small), the blank share reads 0.5 and the valid-only numbers are those of the
    other half."""
    labels = torch.zeros(40, dtype=torch.long)
    images, true_modes = generate(labels, torch.Generator().manual_seed(0))
    images = (images + 1) / 2
    faded = images.clone()
    faded[20:] = 0.02  # near-black, below the decoder's ink level
    hist = np.array(shape_modes.model_metrics(faded, labels, 40)[0]["mode_histogram"][0])
    expected = np.bincount(true_modes[:20].numpy(), minlength=8) / 40
    np.testing.assert_allclose(hist, expected)
    assert hist.sum() == pytest.approx(0.5)
    out = evaluate_images(faded, 40, load_extractor("builtin", "shapes"), labels, diversity_seeds=9)
    half = evaluate_images(images[:20], 20, load_extractor("builtin", "shapes"), labels[:20], diversity_seeds=9)
    assert out["blank_share"] == 0.5 and half["blank_share"] == 0.0 and out["validity"] == pytest.approx(0.5)
    assert out["valid_per_prompt"] == [20] and out["prompts_few_valid"] == []
    assert out["diversity_valid"] == pytest.approx(half["diversity_valid"])
    assert out["mode_histogram_valid"] == half["mode_histogram_valid"]
    assert out["mode_coverage_valid"] == half["mode_coverage_valid"]
    assert half["mode_histogram_valid"][0] == pytest.approx((expected * 2).tolist())


def _student(validity, blank, coverage, diversity, few=()):
    return {"validity": validity, "blank_share": blank, "mode_coverage_valid": coverage, "diversity_valid": diversity,
            "prompts_few_valid": list(few)}


def test_the_demo_reports_words_follow_the_valid_only_numbers():
    """DMD mostly blank with valid samples as varied as DP-DMD's: the words say so; a real mode loss: the paper."""
    from distill_core.evaluation.demo_report import finding

    prompts = ["a red square", "a green circle", "a blue triangle"]
    faded = {"dmd": _student(0.55, 0.32, 0.80, 0.83, few=[0]), "dpdmd": _student(0.98, 0.0, 0.85, 0.80)}
    words = finding(faded, prompts)
    assert "Most of what DMD loses here is valid samples: 45% of its samples" in words and "(32% are blank)" in words
    assert "'a red square'" in words and "1.06x DMD's and its diversity 0.96x" in words
    assert "avoiding DMD's fade to invalid samples" in words and "the paper's effect." not in words
    seeking = {"dmd": _student(0.95, 0.0, 0.50, 0.40), "dpdmd": _student(0.97, 0.0, 0.80, 0.60)}
    words = finding(seeking, prompts)
    assert words.startswith("Over valid samples only") and "1.60x" in words and "the paper's effect." in words
    assert "did not collapse" not in words
    alike = {"dmd": _student(0.59, 0.0, 0.83, 0.81), "dpdmd": _student(0.56, 0.01, 0.79, 0.76)}  # the fair demo, seed 0
    words = finding(alike, prompts)
    assert "0.95x" in words and "did not collapse on this training seed" in words and "fade" not in words
    assert "did not collapse" not in finding(faded, prompts)


def test_valid_only_ratios_compare_the_prompts_both_students_draw():
    """The demo at E2 (2026-12-07): DMD has no valid 'a red square'; the ratios use the two other prompts only."""
    from distill_core.evaluation.demo_report import common_ratios, finding

    dmd = {**_student(0.24, 0.27, 0.875, 0.857, few=[0]), "mode_coverage_valid_per_prompt": [None, 0.75, 1.0],
           "diversity_valid_per_prompt": [None, 0.9, 0.8]}
    dp = {**_student(0.53, 0.0, 0.625, 0.789), "mode_coverage_valid_per_prompt": [0.75, 0.5, 0.625],
          "diversity_valid_per_prompt": [0.8, 0.7, 0.9]}
    cov, div, both = common_ratios(dmd, dp)
    assert both == 2 and cov == pytest.approx(1.125 / 1.75) and div == pytest.approx(1.6 / 1.7)
    assert "(on the 2 prompts where both draw 2 or more), DP-DMD's mode coverage is 0.64x" in finding(
        {"dmd": dmd, "dpdmd": dp}, ["a red square", "a green circle", "a blue triangle"])
