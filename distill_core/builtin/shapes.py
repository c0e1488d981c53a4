"""The shapes data: generated 16x16 RGB images with exactly known modes, and their decoder.

Each prompt names a class (a coloured shape, e.g. "a red square"). Every image
shows one shape of its class on black, in one of 8 modes = 4 quadrants x 2 sizes
drawn with fixed probabilities that depend on the class (each class has its own
favourite quadrant), two of them rare (5 %). Within a mode the shape
is shifted by a few pixels and its brightness varies, so a mode is a cluster,
not a single image. Nothing is downloaded and nothing is learned: the decoder
matches a sample against every clean template (class x quadrant x size x shift)
and so tells, by counting, which mode a sample is in and whether it is a valid
member of its prompt's class. That makes mode coverage, histogram divergence,
same-noise agreement and validity exact, which the digits' style clusters
(k-means on a learned classifier) are not.

Model space is [-1, 1] (black background = -1); the decoder reads display space [0, 1].
"""
from __future__ import annotations

import functools
import re
from dataclasses import dataclass

import torch

from ..errors import PromptError, shown

IMAGE_SIZE = 16
CHANNELS = 3
CLASSES = (("red", "square"), ("green", "circle"), ("blue", "triangle"))
NUM_CLASSES = len(CLASSES)
NULL_LABEL = NUM_CLASSES  # the unconditional class used for classifier-free guidance
COLOURS = {"red": (1.0, 0.15, 0.1), "green": (0.1, 0.9, 0.2), "blue": (0.15, 0.3, 1.0)}
QUADRANTS = ("top-left", "top-right", "bottom-left", "bottom-right")
SIZES = (5, 7)  # side of the shape's bounding box in pixels (small, large)
# The 8 modes (quadrant, size) and their probability per class: one base distribution (two rare modes at 5 %)
# moved by one quadrant per class, so each class favours its own quadrant (40 % of its images). The layout is
# then class evidence, as a prompt's typical composition is in text-to-image data: CFG sharpens it, which is
# what pulls a DMD student onto the favourite modes, while the 30-step CFG teacher keeps every mode (CFG 2
# tilts p(m | c)^2 / p(m) to at least 0.39x a mode's share).
MODES = tuple((q, s) for q in range(len(QUADRANTS)) for s in range(len(SIZES)))
BASE_MODE_PROBS = (0.35, 0.05, 0.20, 0.08, 0.12, 0.05, 0.10, 0.05)
MODE_PROBS = tuple(tuple(BASE_MODE_PROBS[(m - len(SIZES) * c) % len(MODES)] for m in range(len(MODES)))
                   for c in range(len(CLASSES)))  # MODE_PROBS[class][mode]
BRIGHTNESS = (0.7, 1.0)  # the shape's colour is scaled by a uniform factor in this range
INK_LEVEL = 0.25  # display-space brightness a shape's pixel exceeds (the dimmest data colour is 0.7)
MIN_IOU = 0.7  # a sample is a valid member of its class when its best template is of that class, at this overlap


def mode_name(mode: int) -> str:
    q, s = MODES[mode]
    return f"{QUADRANTS[q]} {'small' if s == 0 else 'large'}"


def canonical_prompt(label: int) -> str:
    colour, shape = CLASSES[label]
    return f"a {colour} {shape}"


def parse_prompt(prompt: str) -> int:
    """Map a prompt naming one class ("a red square", "square", "red") to its label.

    Raises PromptError listing what is accepted when the prompt names no class or several.
    """
    words = set(re.findall(r"[a-z]+", prompt.lower()))
    found = {i for i, (colour, shape) in enumerate(CLASSES) if colour in words or shape in words}
    if len(found) == 1:
        return found.pop()
    what = "no shape" if not found else f"several shapes ({', '.join(canonical_prompt(i) for i in sorted(found))})"
    raise PromptError(
        f"prompt {shown(prompt)} names {what}; the built-in shapes teacher draws one of "
        f"{', '.join(repr(canonical_prompt(i)) for i in range(NUM_CLASSES))}. Use a prompt that names exactly one "
        "of them (its colour or its shape is enough)."
    )


def shape_mask(shape: str, side: int) -> torch.Tensor:
    """The (side, side) boolean mask of a shape."""
    i, j = torch.meshgrid(torch.arange(side, dtype=torch.float32), torch.arange(side, dtype=torch.float32),
                          indexing="ij")
    c = (side - 1) / 2
    if shape == "square":
        return torch.ones(side, side, dtype=torch.bool)
    if shape == "circle":
        return (i - c) ** 2 + (j - c) ** 2 <= (side / 2) ** 2
    if shape == "triangle":  # pointing up
        return (j - c).abs() <= i / 2 + 0.25
    raise ValueError(shape)


def shifts(side: int) -> list[tuple[int, int]]:
    """The within-quadrant offsets of a shape of this side (the variety inside one mode)."""
    room = range(IMAGE_SIZE // 2 - side + 1)
    return [(di, dj) for di in room for dj in room]


@dataclass(frozen=True)
class Templates:
    masks: torch.Tensor  # (T, H*W) float 0/1
    label: torch.Tensor  # (T,) class of each template
    mode: torch.Tensor  # (T,) mode index of each template


@functools.cache
def templates() -> Templates:
    """Every clean placement: class x quadrant x size x shift."""
    masks, labels, modes = [], [], []
    half = IMAGE_SIZE // 2
    for label, (_, shape) in enumerate(CLASSES):
        for mode, (q, s) in enumerate(MODES):
            side = SIZES[s]
            small = shape_mask(shape, side)
            for di, dj in shifts(side):
                m = torch.zeros(IMAGE_SIZE, IMAGE_SIZE, dtype=torch.bool)
                top, left = (q // 2) * half + di, (q % 2) * half + dj
                m[top:top + side, left:left + side] = small
                masks.append(m.flatten().float())
                labels.append(label)
                modes.append(mode)
    return Templates(torch.stack(masks), torch.tensor(labels), torch.tensor(modes))


def generate(labels: torch.Tensor, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """Images (B, 3, 16, 16) in model space [-1, 1] of the given classes, and the mode of each."""
    n = len(labels)
    modes = torch.multinomial(torch.tensor(MODE_PROBS)[labels], 1, replacement=True, generator=generator)[:, 0]
    shift_draw = torch.rand(n, generator=generator)
    bright = BRIGHTNESS[0] + (BRIGHTNESS[1] - BRIGHTNESS[0]) * torch.rand(n, generator=generator)
    t = templates()
    first, count = template_ranges()
    key = labels * len(MODES) + modes
    index = first[key] + (shift_draw * count[key]).long()
    palette = torch.tensor([COLOURS[c] for c, _ in CLASSES])
    images = (palette[labels] * bright[:, None])[:, :, None] * t.masks[index][:, None]
    return (images * 2 - 1).reshape(n, CHANNELS, IMAGE_SIZE, IMAGE_SIZE), modes


@functools.cache
def template_ranges() -> tuple[torch.Tensor, torch.Tensor]:
    """First template index and number of shifts of each (class, mode), as laid out by templates()."""
    t = templates()
    key = t.label * len(MODES) + t.mode
    count = torch.bincount(key, minlength=NUM_CLASSES * len(MODES))
    return torch.cumsum(count, 0) - count, count


@dataclass(frozen=True)
class Decoded:
    mode: torch.Tensor  # (B,) mode index (within the class's 8 modes)
    label: torch.Tensor  # (B,) the class whose template fits best
    iou: torch.Tensor  # (B,) overlap of the sample's shape with that template
    blank: torch.Tensor  # (B,) no pixel above INK_LEVEL: no shape at all, so no mode (``mode`` is then meaningless)


def decode(images: torch.Tensor) -> Decoded:
    """Read the generating factors of images (B, 3, 16, 16) in display space [0, 1].

    The shape is where the brightest channel exceeds INK_LEVEL; an image with no such pixel is blank;
    the best template by intersection over union gives quadrant, size and shape, and the mean
    colour of the shape's pixels, nearest of the palette, gives the colour.
    """
    x = images.float().flatten(2)  # (B, 3, HW)
    mask = (x.max(1).values > INK_LEVEL).float()  # (B, HW)
    t = templates()
    inter = mask @ t.masks.T
    union = mask.sum(1, keepdim=True) + t.masks.sum(1)[None] - inter
    iou = inter / union.clamp_min(1)
    best = iou.argmax(1)
    colour = (x * mask[:, None]).sum(2) / mask.sum(1, keepdim=True).clamp_min(1)  # (B, 3)
    palette = torch.tensor([COLOURS[c] for c, _ in CLASSES])
    palette = palette / palette.norm(dim=1, keepdim=True)
    colour_label = (torch.nn.functional.normalize(colour, dim=1) @ palette.T).argmax(1)
    shape_label = t.label[best]
    label = torch.where(colour_label == shape_label, shape_label, torch.full_like(shape_label, -1))
    return Decoded(t.mode[best], label, iou.gather(1, best[:, None])[:, 0], mask.sum(1) == 0)


def is_blank(images: torch.Tensor) -> torch.Tensor:
    """(B,) images (display space [0, 1]) with no pixel above INK_LEVEL in any channel: faded to black."""
    return images.float().flatten(1).amax(1) <= INK_LEVEL


def is_valid(decoded: Decoded, labels: torch.Tensor) -> torch.Tensor:
    """A sample is a valid member of its prompt's class: right colour and shape, one clean shape."""
    return (decoded.label == labels) & (decoded.iou >= MIN_IOU)


def features(images: torch.Tensor) -> torch.Tensor:
    """Eq. 9 features: the image at 8x8, centred on the data's mean image.

    Cosines between centred images are near 1 for two samples of the same mode and low or
    negative across quadrants or sizes, so the diversity reflects how a model spreads over
    the modes (and, less, within one).
    """
    small = torch.nn.functional.avg_pool2d(images.float(), 2).flatten(1)
    return small - data_mean_small()


@functools.cache
def data_mean_small() -> torch.Tensor:
    """The mean 8x8 image of the data (fixed seed, 3000 samples), in display space."""
    gen = torch.Generator().manual_seed(0)
    labels = torch.arange(3000) % NUM_CLASSES
    images, _ = generate(labels, gen)
    return torch.nn.functional.avg_pool2d((images + 1) / 2, 2).flatten(1).mean(0)
