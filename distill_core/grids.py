"""Seed grids: rows of prompts, columns of seeds, the picture that shows diversity."""
from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from PIL import Image, ImageDraw


def to_uint8(images: torch.Tensor) -> np.ndarray:
    """(B, 3, H, W) in [0, 1] to (B, H, W, 3) uint8."""
    return (images.clamp(0, 1).permute(0, 2, 3, 1).cpu().numpy() * 255 + 0.5).astype(np.uint8)


def seed_grid(images: torch.Tensor, prompts: Sequence[str], seeds: Sequence[int], title: str, *,
              max_cell: int | None = 256) -> Image.Image:
    """Prompts down, seeds across: (len(prompts) * len(seeds), 3, H, W) images.

    Tiny images are enlarged to be seen; large ones shrink to ``max_cell`` (None: full size).
    """
    w = images.shape[-1]
    cell = 48 if w <= 32 else (min(max_cell, w) if max_cell else None)
    return tile(images, len(seeds), cell=cell, row_labels=prompts, col_labels=[f"seed {s}" for s in seeds],
                title=title)


def tile(images: torch.Tensor, cols: int, *, cell: int | None = None, pad: int = 2,
         row_labels: Sequence[str] | None = None, col_labels: Sequence[str] | None = None,
         title: str | None = None) -> Image.Image:
    """Tile (B, 3, H, W) images in [0, 1] row-major into a labelled grid.

    ``cell`` upsamples each image (nearest) to that size, so 8x8 digits stay crisp.
    """
    if images.dim() != 4 or images.shape[1] != 3:
        raise ValueError(f"expected images of shape (B, 3, H, W), got {tuple(images.shape)}")
    b, _, h, w = images.shape
    cols = max(1, min(cols, b))
    rows = (b + cols - 1) // cols
    cell_h, cell_w = (cell, cell * w // h) if cell else (h, w)
    left = 8 + 7 * max((len(s) for s in row_labels), default=0) if row_labels else 0
    top = (16 if col_labels else 0) + (18 if title else 0)
    canvas = Image.new("RGB", (left + cols * (cell_w + pad) + pad, top + rows * (cell_h + pad) + pad), "white")
    draw = ImageDraw.Draw(canvas)
    if title:
        draw.text((pad, 2), title, fill="black")
    for i, arr in enumerate(to_uint8(images)):
        r, c = divmod(i, cols)
        im = Image.fromarray(arr)
        if cell:
            im = im.resize((cell_w, cell_h), Image.NEAREST)
        canvas.paste(im, (left + pad + c * (cell_w + pad), top + pad + r * (cell_h + pad)))
    for r, label in enumerate(row_labels or []):
        draw.text((4, top + pad + r * (cell_h + pad) + cell_h // 2 - 6), label, fill="black")
    for c, label in enumerate(col_labels or []):
        draw.text((left + pad + c * (cell_w + pad) + 2, top - 14), label, fill="black")
    return canvas


def side_by_side(panels: Sequence[Image.Image], gap: int = 12) -> Image.Image:
    """Place grids next to each other (teacher | student | ...)."""
    w = sum(p.width for p in panels) + gap * (len(panels) - 1)
    h = max(p.height for p in panels)
    out = Image.new("RGB", (w, h), "white")
    x = 0
    for p in panels:
        out.paste(p, (x, 0))
        x += p.width + gap
    return out
