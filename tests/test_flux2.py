"""The FLUX.2 [klein] teacher against diffusers' own Flux2KleinPipeline, through training, resume and export.

A tiny random klein-base folder is built offline once per module (tests/tiny_flux2.py). The parity
tests are what prove the conventions (packed latents and position ids, t / 1000, the dynamic shift,
the batch-norm latent normalisation, CFG only above 1): the project's teacher sampling N steps equals
the pipeline's output for the same latents, prompts, steps and guidance.
"""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from conftest import assert_same_checkpoint
import torch
from safetensors.torch import load_file
from tiny_diffusers import tiny_run_config
from tiny_flux2 import RESOLUTION, build_tiny_flux2_pipeline

from distill_core.cli import main as cli
from distill_core.config import resolve
from distill_core.errors import ConfigError
from distill_core.export.exporters import load_student
from distill_core.sampling import sample_grid, seed_noise
from distill_core.teachers import load_teacher
from distill_core.teachers.diffusers_base import DiffusersTeacher

PROMPTS = ["a photo of a cat", "the red house"]

pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py


@pytest.fixture(scope="module")
def folder(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("flux2") / "klein_base"
    build_tiny_flux2_pipeline(path)
    return path


def run_config(folder, out, **kw):
    return tiny_run_config("flux2", folder, out, teacher__resolution=RESOLUTION, **kw)


def teacher_of(folder, tmp_path, **kw):
    return load_teacher(resolve(run_config(folder, tmp_path / "run", **kw)))


def pipeline(folder, **components):
    from diffusers import Flux2KleinPipeline

    return Flux2KleinPipeline.from_pretrained(str(folder), **components)


def close(a: torch.Tensor, b: torch.Tensor, rel: float = 1e-4) -> None:
    scale = max(float(b.abs().max()), 1.0)
    err = float((a - b).abs().max())
    assert err <= rel * scale, f"max diff {err} (scale {scale})"


# ---- the teacher against its own pipeline ---------------------------------------------------------------
def test_levels_are_the_pipelines_dynamically_shifted_sigmas(folder, tmp_path):
    from diffusers.pipelines.flux2.pipeline_flux2_klein import compute_empirical_mu

    teacher = teacher_of(folder, tmp_path)
    tokens = (RESOLUTION // 8) ** 2  # a 4x VAE, then 2 x 2 patches
    assert teacher.latent_shape() == (128, RESOLUTION // 8, RESOLUTION // 8) and teacher.image_tokens == tokens
    for n in (4, 6, 28):
        theirs = pipeline(folder).scheduler
        theirs.set_timesteps(sigmas=np.linspace(1.0, 1 / n, n), mu=compute_empirical_mu(tokens, n))
        assert teacher.teacher_levels(n) == pytest.approx([float(s) for s in theirs.sigmas], abs=1e-6)
    assert teacher.schedule.shift == pytest.approx(np.exp(compute_empirical_mu(tokens, 6)))  # teacher.num_steps
    assert "mu = 1.9301" in teacher.describe()["family_schedule"]
    assert teacher_of(folder, tmp_path, teacher__shift=2.0).teacher_levels(2) == pytest.approx([1.0, 2 / 3, 0.0])


@pytest.mark.parametrize("guidance", [4.0, 1.0])
def test_teacher_sampling_equals_the_pipeline(folder, tmp_path, guidance):
    """N steps with CFG (4: uncond + 4 (cond - uncond); 1: no CFG, as the pipeline below 1 too) from the same
    latents: the project's rollout, through the VAE's batch-norm and unpatching, is the pipeline's output."""
    teacher = teacher_of(folder, tmp_path, teacher__guidance_scale=guidance)
    n, seeds = 6, [3, 4]
    ours = sample_grid(teacher, teacher.network, PROMPTS, seeds[:1], teacher.teacher_levels(n), guidance=guidance)
    z = seed_noise(seeds[:1], teacher.latent_shape()).repeat(2, 1, 1, 1)
    theirs = pipeline(folder)(prompt=PROMPTS, height=RESOLUTION, width=RESOLUTION, num_inference_steps=n,
                              guidance_scale=guidance, latents=z, output_type="latent").images
    assert theirs.shape == (2, 32, RESOLUTION // 4, RESOLUTION // 4)
    close(teacher.vae_latents(ours), theirs)
    assert float((theirs[0] - theirs[1]).abs().max()) > 1e-3  # the prompts matter


def test_decode_is_the_pipelines_image(folder, tmp_path):
    teacher = teacher_of(folder, tmp_path)
    z = seed_noise([5], teacher.latent_shape())
    levels = teacher.teacher_levels(2)
    ours = teacher.decode(sample_grid(teacher, teacher.network, PROMPTS[:1], [5], levels, guidance=4.0))
    theirs = pipeline(folder)(prompt=PROMPTS[0], height=RESOLUTION, width=RESOLUTION, num_inference_steps=2,
                              guidance_scale=4.0, latents=z, output_type="pt").images
    assert ours.shape == theirs.shape == (1, 3, RESOLUTION, RESOLUTION)
    close(ours, theirs.float(), rel=1e-4)


def test_step_distilled_and_broken_folders_are_refused(folder, tmp_path):
    distilled = tmp_path / "distilled"
    shutil.copytree(folder, distilled)
    index = json.loads((distilled / "model_index.json").read_text())
    (distilled / "model_index.json").write_text(json.dumps({**index, "is_distilled": True}))
    with pytest.raises(ConfigError, match="is_distilled = true\\): its CFG is baked in.*klein base"):
        teacher_of(distilled, tmp_path)
    from trainer_ui.wizard import check_teacher_folder  # the wizard's folder check says the same, before a run

    with pytest.raises(ConfigError, match="step-distilled FLUX.2"):
        check_teacher_folder(resolve(run_config(distilled, tmp_path / "run")))
    check_teacher_folder(resolve(run_config(folder, tmp_path / "run")))
    shutil.rmtree(distilled / "vae")
    with pytest.raises(ConfigError, match="lacks the vae/ component"):
        teacher_of(distilled, tmp_path)


# ---- training, resume, export, reload ------------------------------------------------------------------
def write_config(cfg, path: Path) -> Path:
    path.write_text(cfg.to_toml())
    return path


@pytest.mark.parametrize("method, rank", [("dpdmd", 0), ("dmd", 0), ("dpdmd", 2), ("dmd", 2)])
def test_train_resume_is_bit_identical_and_exports_reload_in_the_pipeline(folder, tmp_path, monkeypatch, method,
                                                                             rank):
    """2 steps, resume to 3 (no text encoder loaded again) == 3 straight steps; the exported diffusers folder,
    loaded by Flux2KleinPipeline with its own call, reproduces the project's 4-step sample."""
    kw = dict(method__name=method, student__lora_rank=rank, optim__student_lr=1e-3 if rank else 1e-4)
    cfg = run_config(folder, tmp_path / "run", **kw)
    config = write_config(cfg, tmp_path / "run.toml")
    assert cli(["train", str(config), "--no-finish"]) == 0
    assert (tmp_path / "run" / "prompt_cache" / "index.json").is_file()
    cache = load_file(str(next((tmp_path / "run" / "prompt_cache").glob("shard_*.safetensors"))))
    assert cache["encoder_hidden_states"].shape[1:] == (512, 48)  # 512 tokens x layers 9, 18, 27 of 16 wide

    def no_encoders(self):
        raise AssertionError("the text encoders were loaded again on resume")

    with monkeypatch.context() as m:
        m.setattr(DiffusersTeacher, "_text_pipeline", no_encoders)
        assert cli(["train", str(config), "--max-steps", "3", "--no-finish"]) == 0
    straight = run_config(folder, tmp_path / "straight", run__max_steps=3, **kw)
    assert cli(["train", str(write_config(straight, tmp_path / "straight.toml")), "--no-finish"]) == 0
    assert_same_checkpoint(tmp_path / "run/checkpoints/step_00000003", tmp_path / "straight/checkpoints/step_00000003")
    if rank:
        saved = load_file(str(tmp_path / "run/checkpoints/step_00000003/student.safetensors"))
        assert saved and all(".lora_" in k for k in saved)  # shared base: the adapters only

    out = tmp_path / "student_diffusers"
    assert cli(["export", str(tmp_path / "run"), "--format", "diffusers", "--out", str(out)]) == 0
    assert cli(["export", str(tmp_path / "run"), "--out", str(tmp_path / "s.safetensors")]) == 0
    teacher = load_teacher(resolve(cfg))
    student, info = load_student(tmp_path / "s.safetensors", teacher)
    seeds = [0, 1]
    ours = sample_grid(teacher, student, PROMPTS[:1], seeds, info.levels)  # the project's own 4-step rollout
    assert not torch.allclose(ours, sample_grid(teacher, teacher.network, PROMPTS[:1], seeds, info.levels))

    from diffusers import FlowMatchEulerDiscreteScheduler, Flux2Transformer2DModel

    record = json.loads((out / "dpdmd_student.json").read_text())
    assert record["diffusers"]["call"] == {"num_inference_steps": 4, "guidance_scale": 1.0}
    pipe = pipeline(folder, transformer=Flux2Transformer2DModel.from_pretrained(str(out), subfolder="transformer"),
                    scheduler=FlowMatchEulerDiscreteScheduler.from_pretrained(str(out), subfolder="scheduler"))
    theirs = pipe(prompt=PROMPTS[:1] * 2, height=RESOLUTION, width=RESOLUTION,
                  latents=seed_noise(seeds, teacher.latent_shape()), output_type="latent",
                  **record["diffusers"]["call"]).images
    close(teacher.vae_latents(ours), theirs)

    comfy = tmp_path / "c.safetensors"  # BFL names; diffusers' own converter maps them back to the student exactly
    assert cli(["export", str(tmp_path / "run"), "--format", "comfy", "--dtype", "float32", "--out", str(comfy)]) == 0
    from diffusers.loaders.single_file_utils import convert_flux2_transformer_checkpoint_to_diffusers

    bfl = load_file(str(comfy))
    assert "double_blocks.0.img_attn.qkv.weight" in bfl and "single_blocks.0.linear1.weight" in bfl
    back = convert_flux2_transformer_checkpoint_to_diffusers(dict(bfl))
    merged = student.state_dict()
    assert back.keys() == merged.keys() and all(torch.equal(back[k], merged[k]) for k in merged)

    if not rank:  # a full run's LoRA: an SVD of the layers both loaders place, the share it captures recorded
        assert cli(["export", str(tmp_path / "run"), "--format", "lora", "--rank", "4",
                    "--out", str(tmp_path / "svd.safetensors")]) == 0
        from distill_core.export.student_file import read_student_info

        layers = {k.split(".lora_")[0].removeprefix("transformer.") for k in load_file(str(tmp_path / "svd.safetensors"))}
        assert "transformer_blocks.0.attn.to_q" in layers and layers <= set(teacher.lora_file_modules())
        assert not any("modulation" in k or "time_guidance" in k or "norm_out" in k for k in layers)
        assert 0 < read_student_info(tmp_path / "svd.safetensors").extra["captured"] < 1
        pipe = pipeline(folder)
        pipe.load_lora_weights(str(tmp_path / "svd.safetensors"))  # diffusers places every layer
        assert sum(name.endswith(".lora_A") for name, _ in pipe.transformer.named_modules()) == len(layers)
    if rank:  # the LoRA file loads in the pipeline over the teacher and is the merged student
        assert cli(["export", str(tmp_path / "run"), "--format", "lora", "--dtype", "float32",
                    "--out", str(tmp_path / "l.safetensors")]) == 0
        pipe = pipeline(folder, scheduler=FlowMatchEulerDiscreteScheduler.from_pretrained(str(out),
                                                                                           subfolder="scheduler"))
        pipe.load_lora_weights(str(tmp_path / "l.safetensors"))
        theirs = pipe(prompt=PROMPTS[:1] * 2, height=RESOLUTION, width=RESOLUTION,
                      latents=seed_noise(seeds, teacher.latent_shape()), output_type="latent",
                      **record["diffusers"]["call"]).images
        close(teacher.vae_latents(ours), theirs)


# ---- memory plan ----------------------------------------------------------------------------------------
def test_plan_counts_the_folder_and_the_real_klein_configs(folder, capsys):
    from distill_core.plan import Options, Planner, architecture_from_folder, architecture_from_reference

    pipe = pipeline(folder)
    tiny = Planner(architecture_from_folder(folder, "flux2"))
    numel = lambda m: sum(t.numel() for t in [*m.parameters(), *m.buffers()])  # noqa: E731
    assert tiny.net_params == sum(p.numel() for p in pipe.transformer.parameters())
    assert (tiny.text_params, tiny.vae_params) == (numel(pipe.text_encoder), numel(pipe.vae))
    assert tiny.arch.vae_factor == 8 and tiny.estimate(Options(resolution=RESOLUTION, batch_size=1)).peak > 0
    sizes = {name: Planner(architecture_from_reference(name)) for name in ("flux2-klein-4b", "flux2-klein-9b")}
    assert 3.8e9 < sizes["flux2-klein-4b"].net_params < 4.0e9 and 4.0e9 < sizes["flux2-klein-4b"].text_params < 4.1e9
    assert 9.0e9 < sizes["flux2-klein-9b"].net_params < 9.2e9 and 8.1e9 < sizes["flux2-klein-9b"].text_params < 8.3e9
    assert cli(["plan", "--architecture", "flux2-klein-4b", "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["presets"][out["best"]["24"]]["settings"]["teacher.quantize"] == "none"  # bf16 4B in 24 GB
    assert out["best"]["16"] == "fp8-shared-lora64-ckpt-onestep-b1"  # 16 GB only with the fp8 base


def test_example_config_and_its_stated_schedule(folder, tmp_path):
    """examples/configs/flux2_klein.toml resolves (on a real folder) and its comment's numbers are the schedule's."""
    import math
    import re

    from distill_core.config import load_config
    from distill_core.plan import Options
    from distill_core.schedules import FlowSchedule
    from distill_core.teachers.flux2 import empirical_mu

    path = Path(__file__).resolve().parent.parent / "examples" / "configs" / "flux2_klein.toml"
    cfg = load_config(path)
    (tmp_path / "prompts.txt").write_text("a photo of a cat\n")
    cfg.teacher.path, cfg.data.prompts_file = str(folder), str(tmp_path / "prompts.txt")
    cfg = resolve(cfg)
    assert (cfg.teacher.family, cfg.teacher.guidance_scale, cfg.teacher.num_steps) == ("flux2", 4.0, 50)
    text = path.read_text()
    mu = empirical_mu((1024 // 16) ** 2, 50)
    assert f"mu = {mu:.2f}" in text and f"exp(mu) = {math.exp(mu):.2f}" in text
    stated = [float(v) for v in re.search(r"4 levels \(([^)]*)\)", text).group(1).split(", ")]
    assert stated == pytest.approx(FlowSchedule(math.exp(mu), spacing="linear").sampling_levels(4), abs=1e-3)
    assert Options.from_config(cfg).describe().startswith("LoRA rank 64 on a shared base")


def test_the_familys_own_shift_is_stated_where_the_user_sets_the_teacher(capsys):
    """FLUX.2 writes mu, not a shift: the note beside teacher.shift (dpdmd config, the wizard's CFG note, the report's
    teacher line) gives the mu its pipeline computes at the row's defaults and the shift that equals."""
    import math

    from distill_core.cli import main
    from distill_core.evaluation.report import _teacher_line
    from distill_core.families import family
    from distill_core.teachers.flux2 import empirical_mu
    from trainer_ui.wizard import guidance_help

    row = family("flux2")
    mu = empirical_mu((row.resolution // 16) ** 2, row.num_steps)
    assert f"mu {mu:.2f} = shift {math.exp(mu):.2f}" in row.shift_note and row.shift == round(math.exp(mu), 2)
    main(["config", "--family", "flux2"])
    assert f"# shift: {row.shift_note}" in capsys.readouterr().out
    assert row.shift_note in guidance_help("flux2") and "mu" not in guidance_help("sd3")
    line = _teacher_line('[teacher]\nfamily = "flux2"\nguidance_scale = 4.0\nnum_steps = 50\n')
    assert line.endswith(row.shift_note)
    assert _teacher_line('[teacher]\nfamily = "flux2"\nguidance_scale = 4.0\nshift = 3.0\n').endswith("shift 3")


def test_the_24_gb_presets_settings_train(folder, tmp_path):
    """shared-lora64-ckpt-onestep-b1's combination (bf16 autocast, bf16 shared base, gradient checkpointing,
    one-step backprop) runs a fake and a student update on FLUX.2 and moves the adapters."""
    import math

    from distill_core.training.trainer import Trainer

    cfg = run_config(folder, tmp_path / "run", run__mixed_precision="bf16", teacher__dtype="bfloat16",
                     student__lora_rank=2, student__gradient_checkpointing=True, method__backprop="one_step",
                     data__batch_size=1, optim__student_lr=1e-3)
    trainer = Trainer(cfg, progress=False)
    net = trainer.acc.unwrap_model(trainer.student)
    assert trainer.teacher.network.is_gradient_checkpointing  # the shared base the adapters sit on
    before = {n: p.detach().clone() for n, p in net.named_parameters() if p.requires_grad}
    trainer.fake_update()
    assert math.isfinite(trainer.student_update()["loss"])
    trained = {n: p for n, p in net.named_parameters() if p.requires_grad}
    assert trained and {p.dtype for p in trained.values()} == {torch.float32}
    assert any(not torch.equal(p, before[n]) for n, p in trained.items())
