"""Z-Image teachers from diffusers folders: against ZImagePipeline, through training, resume and export.

The tiny random folder is built offline once per module (tests/tiny_zimage.py). The
parity tests are what prove the conventions of distill_core/teachers/zimage.py (time
(1000 - t) / 1000, negated output, pos + w (pos - neg) CFG, variable-length prompts):
break any one of them and they fail.
"""
from __future__ import annotations

import html
import json
from pathlib import Path

import pytest

from conftest import assert_same_checkpoint
import torch
from safetensors import safe_open
from safetensors.torch import load_file
from tiny_diffusers import tiny_run_config
from tiny_zimage import RESOLUTION, build_tiny_zimage_pipeline

from distill_core.cli import main as cli
from distill_core.config import Config, from_dict, resolve
from distill_core.errors import ConfigError
from distill_core.export.exporters import load_student
from distill_core.export.student_file import read_student_info
from distill_core.families import native_guidance
from distill_core.sampling import sample_grid, seed_noise
from distill_core.teachers import load_teacher
from distill_core.teachers.diffusers_base import DiffusersTeacher
from distill_core.training import checkpoint as ckpt

ROOT = Path(__file__).resolve().parent.parent
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
    assert teacher.schedule.shift == 3.0 and teacher.schedule.spacing == "linear"
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


def test_a_resolution_past_the_position_table_is_refused_in_one_line(folder, tmp_path):
    with pytest.raises(ConfigError, match=r"teacher.resolution = 1024 is 128 tokens per side; this Z-Image network's "
                                          r"position table \(axes_lens\) covers 32: use at most 256 px"):
        teacher_of(folder, tmp_path, teacher__resolution=1024)


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


# ---- training, resume, export, reload ------------------------------------------------------------------------
def train_resume_and_compare(folder, tmp_path, monkeypatch, **kw):
    """2 steps, a resume to 3 that never loads the text encoders, and a checkpoint bit-identical to a straight
    3-step run's; returns the run's config."""
    cfg = run_config(folder, tmp_path / "run", **kw)
    config = write_config(cfg, tmp_path / "run.toml")
    assert cli(["train", str(config), "--no-finish"]) == 0
    assert (tmp_path / "run" / "prompt_cache" / "index.json").is_file()

    def no_encoders(self):
        raise AssertionError("the text encoders were loaded again on resume")

    with monkeypatch.context() as m:
        m.setattr(DiffusersTeacher, "_text_pipeline", no_encoders)
        assert cli(["train", str(config), "--max-steps", "3"]) == 0
    events = [json.loads(line) for line in (tmp_path / "run" / "events.jsonl").read_text().splitlines()]
    assert [e["event"] for e in events].count("resume") == 1
    straight = run_config(folder, tmp_path / "straight", **{**kw, "run__max_steps": 3})
    assert cli(["train", str(write_config(straight, tmp_path / "straight.toml")), "--no-finish"]) == 0
    assert_same_checkpoint(tmp_path / "run/checkpoints/step_00000003", tmp_path / "straight/checkpoints/step_00000003")
    return cfg


@pytest.mark.parametrize("method", ["dpdmd", "dmd"])
def test_full_run_trains_resumes_exactly_and_exports_for_diffusers_and_comfy(folder, tmp_path, monkeypatch, method):
    cfg = train_resume_and_compare(folder, tmp_path, monkeypatch, method__name=method, optim__student_lr=1e-3)

    out = tmp_path / "student_diffusers"
    assert cli(["export", str(tmp_path / "run"), "--format", "diffusers", "--out", str(out)]) == 0
    assert cli(["export", str(tmp_path / "run"), "--format", "comfy", "--out", str(tmp_path / "c.safetensors")]) == 0
    teacher = load_teacher(resolve(cfg))
    student, info = load_student(tmp_path / "run" / "student.safetensors", teacher)
    seeds = [0, 1]
    ours = sample_grid(teacher, student, PROMPTS[:1], seeds, info.levels)  # the project's own 4-step sample

    import diffusers

    net = diffusers.ZImageTransformer2DModel.from_pretrained(str(out), subfolder="transformer")
    record = json.loads((out / "dpdmd_student.json").read_text())
    scheduler = getattr(diffusers, record["diffusers"]["scheduler"]).from_pretrained(str(out), subfolder="scheduler")
    assert record["diffusers"]["call"] == {"num_inference_steps": 4, "guidance_scale": 0.0}  # its "no CFG"
    assert "guidance_scale=0)" in (out / "README.md").read_text()
    pipe = pipeline(folder, transformer=net, scheduler=scheduler)
    theirs = pipe(PROMPTS[:1] * 2, height=RESOLUTION, width=RESOLUTION, latents=seed_noise(seeds, teacher.latent_shape()),
                  output_type="latent", **record["diffusers"]["call"]).images
    close(ours, theirs)
    assert not torch.allclose(ours, sample_grid(teacher, teacher.network, PROMPTS[:1], seeds, info.levels))

    comfy = read_student_info(tmp_path / "c.safetensors")
    assert comfy.sigmas == pytest.approx(teacher.schedule.comfy_sigmas(info.levels))
    assert comfy.schedule == {"type": "flow", "shift": 3.0, "num_train_timesteps": 1000, "spacing": "linear"}
    with safe_open(str(tmp_path / "c.safetensors"), "pt") as f:
        assert set(f.keys()) == set(net.state_dict()) and f.get_tensor(next(iter(f.keys()))).dtype == torch.bfloat16


@pytest.mark.parametrize("method", ["dpdmd", "dmd"])
def test_lora_shared_base_trains_resumes_exactly_and_exports_an_exact_lora(folder, tmp_path, monkeypatch, method):
    from distill_core.training.lora import AdapterView
    from distill_core.training.trainer import Trainer

    lora = {"method__name": method, "student__lora_rank": 2, "optim__student_lr": 1e-2, "optim__fake_lr": 1e-2}
    trainer = Trainer(resolve(run_config(folder, tmp_path / "probe", **lora)), progress=False)
    assert isinstance(trainer.student, AdapterView)  # auto: the shared base
    del trainer
    cfg = train_resume_and_compare(folder, tmp_path, monkeypatch, **lora)
    saved = load_file(str(ckpt.latest(tmp_path / "run" / "checkpoints") / "student.safetensors"))
    assert saved and all(".lora_" in k for k in saved)  # the frozen base is not duplicated into checkpoints

    assert cli(["train", str(tmp_path / "run.toml")]) == 0  # finish: the student file and the report
    report = html.unescape((tmp_path / "run" / "report.html").read_text())
    assert "teacher: zimage, 6 steps, CFG 6 (uncond + s (cond - uncond)) = Z-Image's own guidance_scale 5" in report
    teacher = load_teacher(resolve(cfg))
    student, info = load_student(tmp_path / "run" / "student.safetensors", teacher)
    assert cli(["export", str(tmp_path / "run"), "--format", "lora", "--dtype", "float32",
                "--out", str(tmp_path / "l.safetensors")]) == 0
    lora_info = read_student_info(tmp_path / "l.safetensors")
    assert lora_info.extra["exact"] and lora_info.extra["captured"] == pytest.approx(1.0, abs=1e-5)

    pipe = pipeline(folder)
    pipe.load_lora_weights(str(tmp_path / "l.safetensors"))
    seeds = [4]
    theirs = pipe(PROMPTS[0], height=RESOLUTION, width=RESOLUTION, num_inference_steps=4, guidance_scale=0.0,
                  latents=seed_noise(seeds, teacher.latent_shape()), output_type="latent").images
    ours = sample_grid(teacher, student, PROMPTS[:1], seeds, info.levels)
    close(ours, theirs)
    assert float((ours - sample_grid(teacher, teacher.network, PROMPTS[:1], seeds, info.levels)).abs().max()) > 1e-3


# ---- planning and the surfaces a user meets ----------------------------------------------------------------------
def test_plan_reads_the_real_config_and_a_tiny_folder(folder, tmp_path, capsys):
    assert cli(["plan", "--architecture", "z-image", "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["parameters"] == 6_154_908_736  # Z-Image's 6.15 B
    shared = out["presets"]["shared-lora64-ckpt-onestep-b1"]
    assert shared["peak_gb"] < out["presets"]["lora64-ckpt-onestep-b1"]["peak_gb"] < out["presets"]["full"]["peak_gb"]
    assert shared["parts_gb"]["prompt_encoding"] == pytest.approx(4.02 * 2, abs=0.1)  # Qwen3-4B in bf16
    assert out["best"]["80"] is not None
    cfg = write_config(run_config(folder, tmp_path / "run"), tmp_path / "run.toml")
    assert cli(["plan", str(cfg), "--json"]) == 0  # the folder's own configs, nothing loaded
    assert json.loads(capsys.readouterr().out)["network_class"] == "ZImageTransformer2DModel"


def test_config_command_example_and_wizard_show_zimages_own_guidance(folder, tmp_path, capsys):
    import tomllib

    from trainer_ui.wizard import check_teacher_folder, guidance_help

    assert cli(["config", "--family", "zimage"]) == 0
    text = capsys.readouterr().out
    assert "# guidance_scale = 6 by default: this project's CFG uncond + s (cond - uncond), = Z-Image's own " \
           "guidance_scale 5" in text and tomllib.loads(text)["teacher"]["family"] == "zimage"
    assert guidance_help("zimage").endswith("the default 6 = Z-Image's own guidance_scale 5")
    example = tomllib.loads((ROOT / "examples" / "configs" / "zimage.toml").read_text())
    example["teacher"]["path"], example["run"]["output_dir"] = str(folder), str(tmp_path / "run")
    example["teacher"]["resolution"] = RESOLUTION
    (tmp_path / "prompts.txt").write_text("a photo of a cat\n")
    example["data"]["prompts_file"] = str(tmp_path / "prompts.txt")
    cfg = resolve(from_dict(example))
    assert (cfg.teacher.family, cfg.teacher.guidance_scale, cfg.teacher.num_steps) == ("zimage", 6.0, 50)
    check_teacher_folder(cfg)  # the wizard's check passes on a whole folder

    import shutil

    broken = tmp_path / "broken"
    shutil.copytree(folder, broken)
    shutil.rmtree(broken / "tokenizer")
    cfg.teacher.path = str(broken)
    with pytest.raises(ConfigError, match=r"lacks the tokenizer/ component; expected a local diffusers ZImagePipeline "
                                          r"folder \(model_index.json, transformer/, scheduler, vae, text_encoder, "
                                          r"tokenizer\)"):
        check_teacher_folder(cfg)
    cfg.teacher.family = "sd3"
    with pytest.raises(ConfigError, match="holds a ZImagePipeline; set teacher.family = 'zimage'"):
        check_teacher_folder(cfg)
