"""The shapes teacher's data and decoder: the decoder must recover every generating factor.

Mode coverage, validity and agreement on the built-in default are counted with
this decoder, so a decoder that misreads modes would make every such number wrong.
"""
import numpy as np
import pytest
import torch

from distill_core.builtin import shape_modes, shapes
from distill_core.errors import PromptError


def data(n: int = 1500, seed: int = 3):
    labels = torch.arange(n) % shapes.NUM_CLASSES
    images, modes = shapes.generate(labels, torch.Generator().manual_seed(seed))
    return (images + 1) / 2, labels, modes


def test_decoder_recovers_the_generating_mode_and_class():
    images, labels, modes = data()
    decoded = shapes.decode(images)
    assert torch.equal(decoded.mode, modes)
    assert shapes.is_valid(decoded, labels).all()
    noisy = (images + 0.1 * torch.randn(images.shape, generator=torch.Generator().manual_seed(0))).clamp(0, 1)
    assert (shapes.decode(noisy).mode == modes).float().mean() > 0.99


def test_decoder_refuses_other_classes_and_non_shapes():
    images, labels, _ = data(300)
    assert not shapes.is_valid(shapes.decode(images), (labels + 1) % shapes.NUM_CLASSES).any()
    blank = torch.zeros(4, 3, shapes.IMAGE_SIZE, shapes.IMAGE_SIZE)
    assert not shapes.is_valid(shapes.decode(blank), torch.arange(4) % shapes.NUM_CLASSES).any()
    quadrant = torch.tensor([shapes.MODES[m][0] for m in shapes.decode(images).mode])
    pairs = [(i, j) for i in range(60) for j in range(i % 3, 60, 3) if quadrant[i] != quadrant[j]][:40]
    two = torch.stack([torch.maximum(images[i], images[j]) for i, j in pairs])  # two shapes: not one clean shape
    assert not shapes.is_valid(shapes.decode(two), labels[[i for i, _ in pairs]]).any()


def test_modes_follow_the_stated_probabilities_including_the_rare_ones():
    _, labels, modes = data(9000)
    for c in range(shapes.NUM_CLASSES):
        share = np.bincount(modes[labels == c].numpy(), minlength=len(shapes.MODES)) / 3000
        assert np.abs(share - np.array(shapes.MODE_PROBS[c])).max() < 0.025
        assert min(shapes.MODE_PROBS[c]) == 0.05 and abs(sum(shapes.MODE_PROBS[c]) - 1) < 1e-9
    favourite = [int(np.argmax(p)) for p in shapes.MODE_PROBS]
    assert len({shapes.MODES[m][0] for m in favourite}) == shapes.NUM_CLASSES  # the layout tells the classes apart


def test_counted_metrics_of_the_data_itself():
    images, labels, _ = data(600)
    order = torch.argsort(labels, stable=True)  # prompt-major, 200 per class
    t, s = shape_modes.mode_metrics(images[order], images[order], labels[order], 200)
    assert t["mode_coverage"] == 1.0 and t["validity"] == 1.0
    assert s["mode_agreement_with_teacher"] == 1.0 and s["mode_divergence_from_teacher"] < 1e-9
    assert t["mode_divergence_from_data"] < 0.05
    collapsed = images[order].clone()
    collapsed[:] = collapsed[0]  # one image for every noise: one mode of eight
    c, _ = shape_modes.model_metrics(collapsed, labels[order], 200)
    assert c["mode_coverage"] == 1 / 8 and len(c["mode_names"][0]) == len(c["mode_histogram"][0]) == 8


def test_prompts_name_one_class():
    assert [shapes.parse_prompt(p) for p in ("a red square", "circle", "Blue triangle!")] == [0, 1, 2]
    for bad in ("a handwritten 7", "a red circle"):
        with pytest.raises(PromptError, match="names"):
            shapes.parse_prompt(bad)


def test_the_shipped_teacher_draws_every_mode_of_every_prompt():
    """The premise of the default: the 30-step CFG teacher covers its data's modes, with valid shapes."""
    from distill_core.config import Config, resolve
    from distill_core.sampling import sample_grid
    from distill_core.teachers import load_teacher

    cfg = resolve(Config())
    teacher = load_teacher(cfg)
    per_prompt = 60
    latents = sample_grid(teacher, teacher.network, cfg.eval.prompts, list(range(per_prompt)),
                          teacher.teacher_levels(cfg.teacher.num_steps), cfg.teacher.guidance_scale, 90, "cpu")
    labels = teacher.encode_prompts(cfg.eval.prompts)["class_labels"].repeat_interleave(per_prompt)
    m, _ = shape_modes.model_metrics(teacher.decode(latents), labels, per_prompt)
    # measured at CFG 2 (class-dependent modes): coverage 0.958 (one rare prompt-mode of 24 under a quarter of its
    # share at 60 seeds), validity 0.74, KL to the data's mode probabilities 0.11
    assert m["mode_coverage"] >= 0.95 and m["validity"] >= 0.7, m
    assert m["mode_divergence_from_data"] < 0.3, m
