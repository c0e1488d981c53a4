"""The numbers behind README's Z-Image parity line: the project's Z-Image teacher against ZImagePipeline.

    PYTHONPATH=. python bench/zimage_parity.py

Builds the tiny random folder of tests/tiny_zimage.py in a temporary directory and samples two prompts of
different lengths x two seeds for 5 steps, without CFG (guidance_scale 0), with CFG (3), and with CFG 4 plus
cfg_truncation 0.3 / cfg_normalization 1.05; prints the largest difference of the final latents for each.
tests/test_zimage.py asserts the same to 1e-4.
"""
from __future__ import annotations

import sys
import tempfile
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))
from tiny_diffusers import tiny_run_config  # noqa: E402
from tiny_zimage import RESOLUTION, build_tiny_zimage_pipeline  # noqa: E402

from distill_core.config import resolve  # noqa: E402
from distill_core.sampling import sample_grid, seed_noise  # noqa: E402
from distill_core.teachers import load_teacher  # noqa: E402

PROMPTS, SEEDS, STEPS = ["a photo of a cat", "the red dog of the sea"], [3, 4], 5


def main() -> None:
    torch.set_num_threads(1)
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp) / "zimage"
        pipe = build_tiny_zimage_pipeline(folder)
        for w, extra in [(0.0, {}), (3.0, {}), (4.0, {"cfg_truncation": 0.3, "cfg_normalization": 1.05})]:
            overrides = {f"teacher__{k}": v for k, v in extra.items()}
            teacher = load_teacher(resolve(tiny_run_config("zimage", folder, Path(tmp) / "run", **overrides)))
            ours = sample_grid(teacher, teacher.network, PROMPTS, SEEDS, teacher.teacher_levels(STEPS), guidance=1 + w)
            theirs = pipe([p for p in PROMPTS for _ in SEEDS], height=RESOLUTION, width=RESOLUTION,
                          num_inference_steps=STEPS, guidance_scale=w, output_type="latent",
                          latents=seed_noise(SEEDS * len(PROMPTS), teacher.latent_shape()), **extra).images
            print(f"guidance_scale {w:g} {extra or ''}: max |teacher - ZImagePipeline| = "
                  f"{float((ours - theirs).abs().max()):.1e} (latents up to {float(theirs.abs().max()):.1f})")


if __name__ == "__main__":
    main()
