"""Z-Image teachers from diffusers folders: against ZImagePipeline, through training, resume and export.

The tiny random folder is built offline once per module (tests/tiny_zimage.py). The
parity tests are what prove the conventions of distill_core/teachers/zimage.py (time
(1000 - t) / 1000, negated output, pos + w (pos - neg) CFG, variable-length prompts):
break any one of them and they fail.
"""
from __future__ import annotations

import json

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file
from tiny_diffusers import tiny_run_config
from tiny_zimage import RESOLUTION, build_tiny_zimage_pipeline

from distill_core.cli import main as cli
from distill_core.config import Config, resolve
from distill_core.errors import ConfigError
from distill_core.export.exporters import load_student
from distill_core.export.student_file import read_student_info
from distill_core.families import native_guidance
from distill_core.sampling import sample_grid, seed_noise
from distill_core.teachers import load_teacher
from distill_core.teachers.diffusers_base import DiffusersTeacher
from distill_core.training import checkpoint as ckpt

PROMPTS = ["a photo of a cat", "the red dog of the sea"]  # embeddings of different lengths

pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    path = tmp_path_factory.mktemp("zimage") / "zimage"
    build_tiny_zimage_pipeline(path)
    return path


def run_config(folder, out, **kw):
    return tiny_run_config("zimage", folder, out, **kw)


def teacher_of(folder, tmp_path, **kw):
    return load_teacher(resolve(run_config(folder, tmp_path / "run", **kw)))


def pipeline(folder, **components):
    from diffusers import ZImagePipeline

    return ZImagePipeline.from_pretrained(str(folder), **components)


def close(a: torch.Tensor, b: torch.Tensor, rel: float = 1e-4) -> None:
    scale = max(float(b.abs().max()), 1.0)
    assert float((a - b).abs().max()) <= rel * scale, f"max diff {float((a - b).abs().max())} (scale {scale})"


def write_config(cfg, path):
    path.write_text(cfg.to_toml())
    return path


# ---- the teacher against ZImagePipeline ------------------------------------------------------------------------
def test_defaults_levels_and_the_familys_own_guidance(folder, tmp_path):
    teacher = teacher_of(folder, tmp_path)
    cfg = teacher.cfg
    assert (cfg.teacher.guidance_scale, cfg.teacher.num_steps) == (6.0, 6)  # the row's CFG; the test's steps
    assert native_guidance("zimage", 6.0) == "= Z-Image's own guidance_scale 5"
    assert native_guidance("sd3", 3.5) == ""
    assert teacher.schedule.shift == 3.0 and teacher.schedule.sigmas == "linear"
    from diffusers import FlowMatchEulerDiscreteScheduler

    theirs = FlowMatchEulerDiscreteScheduler.from_pretrained(str(folder), subfolder="scheduler")
    theirs.set_timesteps(sigmas=torch.linspace(1.0, 1 / 8, 8).tolist())  # what the pipeline passes
    assert teacher.teacher_levels(8) == pytest.approx([float(s) for s in theirs.sigmas], abs=1e-6)


@pytest.mark.parametrize("w", [0.0, 3.0])
def test_teacher_with_cfg_matches_the_pipeline(folder, tmp_path, w):
    """N teacher steps with Z-Image's guidance w == the project's CFG 1 + w, on the same latents and prompts."""
    teacher = teacher_of(folder, tmp_path)
    seeds, steps = [3, 4], 5
    ours = sample_grid(teacher, teacher.network, PROMPTS, seeds, teacher.teacher_levels(steps), guidance=1.0 + w)
    latents = seed_noise(seeds * 2, teacher.latent_shape())
    theirs = pipeline(folder)([p for p in PROMPTS for _ in seeds], height=RESOLUTION, width=RESOLUTION,
                              num_inference_steps=steps, guidance_scale=w, latents=latents.clone(),
                              output_type="latent").images
    close(ours, theirs)
    assert float((ours - latents).abs().max()) > 0.1  # it moved


def test_cfg_truncation_and_normalization_match_the_pipeline(folder, tmp_path):
    teacher = teacher_of(folder, tmp_path, teacher__cfg_truncation=0.3, teacher__cfg_normalization=1.05)
    seeds, steps = [5], 6
    ours = sample_grid(teacher, teacher.network, PROMPTS[:1], seeds, teacher.teacher_levels(steps), guidance=5.0)
    theirs = pipeline(folder)(PROMPTS[0], height=RESOLUTION, width=RESOLUTION, num_inference_steps=steps,
                              guidance_scale=4.0, cfg_truncation=0.3, cfg_normalization=1.05,
                              latents=seed_noise(seeds, teacher.latent_shape()), output_type="latent").images
    close(ours, theirs)
    plain = sample_grid(teacher_of(folder, tmp_path), teacher.network, PROMPTS[:1], seeds,
                        teacher.teacher_levels(steps), guidance=5.0)
    assert float((plain - ours).abs().max()) > 1e-3  # the two options did something
    with pytest.raises(ConfigError, match="teacher.cfg_truncation / cfg_normalization apply to teachers whose "
                                          "pipeline has them \\(zimage\\)"):
        bad = Config()
        bad.teacher.cfg_normalization = 1.0
        resolve(bad)


def test_variable_length_prompts_are_stored_with_masks(folder, tmp_path):
    teacher = teacher_of(folder, tmp_path)
    pipe = pipeline(folder)
    theirs, _ = pipe.encode_prompt(list(PROMPTS), device="cpu", do_classifier_free_guidance=False)  # (it edits
    # the list it is given in place: the teacher hands it a copy too)
    assert theirs[0].shape[0] != theirs[1].shape[0]
    cond = teacher.encode_prompts(PROMPTS)
    for i, e in enumerate(theirs):
        mask = cond["prompt_mask"][i]
        assert int(mask.sum()) == e.shape[0] and bool(mask[:e.shape[0]].all())
        assert torch.equal(cond["prompt_embeds"][i][mask], e) and not cond["prompt_embeds"][i][~mask].any()
    # paged from a store on disk, one row at a time, in any order
    bank = teacher.prompt_bank(PROMPTS)
    one = bank.get(torch.tensor([1, 0]))
    assert torch.equal(one["prompt_embeds"][0][one["prompt_mask"][0]], theirs[1])
    assert torch.equal(one["prompt_embeds"][1][one["prompt_mask"][1]], theirs[0])
