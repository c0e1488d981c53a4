"""SD3 / SDXL teachers from diffusers folders: against the pipelines, through training, resume and export.

Tiny random pipelines are built offline once per module (tests/tiny_diffusers.py).
Everything runs on one CPU thread: these models are too small to gain from more,
and on a shared machine extra threads only wait for each other.
"""
from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import assert_same_checkpoint
import torch
from ports import free_port
from safetensors import safe_open
from safetensors.torch import load_file
from tiny_diffusers import build_tiny_dino, tiny_run_config

from distill_core.cli import main as cli
from distill_core.config import resolve
from distill_core.errors import ConfigError
from distill_core.export.exporters import load_student, student_info
from distill_core.export.student_file import read_student_info
from distill_core.method import teacher_anchor
from distill_core.sampling import sample_grid, seed_noise
from distill_core.schedules import VPSchedule
from distill_core.teachers import load_teacher, load_teacher_with_prompts
from distill_core.teachers.diffusers_base import DiffusersTeacher
from distill_core.training.trainer import Trainer
from distill_core.training import checkpoint as ckpt

ROOT = Path(__file__).resolve().parent.parent
PROMPT = "a photo of a cat"


pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py


@pytest.fixture(scope="module")
def folders(tiny_pipelines):
    return tiny_pipelines


def write_config(cfg, path: Path) -> Path:
    path.write_text(cfg.to_toml())
    return path


def teacher_of(family, folders, tmp_path, **kw):
    return load_teacher(resolve(tiny_run_config(family, folders[family], tmp_path / "run", **kw)))


def pipeline(family, folder, **components):
    import diffusers

    name = {"sd3": "StableDiffusion3Pipeline", "sdxl": "StableDiffusionXLPipeline"}[family]
    return getattr(diffusers, name).from_pretrained(str(folder), **components)


def close(a: torch.Tensor, b: torch.Tensor, rel: float = 1e-4) -> None:
    scale = max(float(b.abs().max()), 1.0)
    assert float((a - b).abs().max()) <= rel * scale, f"max diff {float((a - b).abs().max())} (scale {scale})"


# ---- the teachers against their own pipelines ---------------------------------------------------------
def test_sd3_schedule_numbers_and_anchor_match_the_pipeline(folders, tmp_path):
    teacher = teacher_of("sd3", folders, tmp_path, teacher__guidance_scale=3.5)
    assert teacher.schedule.shift == 3.0  # read from the folder's scheduler config
    assert teacher.student_levels(4) == pytest.approx([1.0, 0.8577, 0.6022, 0.0089, 0.0], abs=1e-4)
    levels = teacher.teacher_levels(30)
    assert (levels[5], levels[10]) == pytest.approx((0.9353, 0.8513), abs=1e-4)
    assert teacher_of("sd3", folders, tmp_path, teacher__shift=1.0).student_levels(4)[1] == pytest.approx(2 / 3, abs=1e-3)

    # the anchor x_{t_k} (k = 5 of 30, CFG 3.5) is the pipeline's own latent after 5 steps
    z = seed_noise([7], teacher.latent_shape())
    cond, null = teacher.encode_prompts([PROMPT]), teacher.null_condition()
    real = lambda x, lv: teacher.predict_cfg(teacher.network, x, lv, cond, null, 3.5)  # noqa: E731
    x_tk, t_k = teacher_anchor(real, teacher.schedule, z, levels, 5)
    seen = {}

    def stop_after_five(pipe, i, t, kw):
        if i == 4:
            seen["latents"] = kw["latents"].clone()
            pipe._interrupt = True
        return kw

    pipeline("sd3", folders["sd3"])(PROMPT, height=32, width=32, num_inference_steps=30, guidance_scale=3.5,
                                    latents=z.clone(), output_type="latent", callback_on_step_end=stop_after_five)
    assert t_k == pytest.approx(0.9353, abs=1e-4)
    close(x_tk, seen["latents"])


def test_sdxl_teacher_with_cfg_matches_the_pipeline(folders, tmp_path):
    teacher = teacher_of("sdxl", folders, tmp_path)
    assert teacher.teacher_levels(8)[:3] == [999.0, 874.0, 749.0]
    levels = teacher.teacher_levels(8)
    ours = sample_grid(teacher, teacher.network, [PROMPT], [3], levels, guidance=8.0)
    theirs = pipeline("sdxl", folders["sdxl"])(
        PROMPT, height=32, width=32, timesteps=[int(t) for t in levels[:-1]], guidance_scale=8.0,
        latents=seed_noise([3], teacher.latent_shape()), output_type="latent").images
    close(ours, theirs)
    assert all(float(v.abs().max()) == 0 for v in teacher.null_condition().values())  # force_zeros_for_empty_prompt


def test_sdxl_leading_spacing_is_the_folders_own_sampler(folders, tmp_path):
    """teacher.timestep_spacing = 'leading': the teacher samples (and runs the anchor) as its pipeline does."""
    from diffusers import EulerDiscreteScheduler

    cfg = resolve(tiny_run_config("sdxl", folders["sdxl"], tmp_path / "run", teacher__timestep_spacing="leading"))
    teacher = load_teacher(cfg)
    theirs = EulerDiscreteScheduler.from_pretrained(str(folders["sdxl"]), subfolder="scheduler")
    theirs.set_timesteps(50)
    assert teacher.teacher_levels(50)[:-1] == [float(t) for t in theirs.timesteps]
    assert teacher.student_levels(4) == VPSchedule().sampling_levels(4)  # the student keeps trailing
    assert student_info(teacher, cfg, 0).teacher_timestep_spacing == "leading"
    with pytest.raises(ConfigError, match="student.shift = 2.0 must be positive and applies to flow"):
        resolve(tiny_run_config("sdxl", folders["sdxl"], tmp_path / "run", student__shift=2.0))  # VP: no shift
    levels = teacher.teacher_levels(8)
    ours = sample_grid(teacher, teacher.network, [PROMPT], [3], levels, guidance=8.0)
    default = pipeline("sdxl", folders["sdxl"])(PROMPT, height=32, width=32, num_inference_steps=8, guidance_scale=8.0,
                                                latents=seed_noise([3], teacher.latent_shape()), output_type="latent")
    close(ours, default.images)


def test_broken_teacher_folders_give_config_errors(folders, tmp_path):
    import shutil

    def error(family, path):
        with pytest.raises(ConfigError) as e:
            teacher_of(family, {family: path}, tmp_path)
        return str(e.value)

    assert "does not exist" in error("sd3", tmp_path / "nowhere")
    (tmp_path / "single.safetensors").write_bytes(b"x")
    assert "is a file" in error("sd3", tmp_path / "single.safetensors")
    (tmp_path / "empty").mkdir()
    assert "no model_index.json" in error("sd3", tmp_path / "empty")
    assert "teacher.family = 'sd3'" in error("sdxl", folders["sd3"])
    broken = tmp_path / "broken"
    shutil.copytree(folders["sd3"], broken)
    shutil.rmtree(broken / "vae")
    assert "lacks the vae/ component" in error("sd3", broken)
    shutil.copytree(folders["sd3"] / "vae", broken / "vae")
    weights = next((broken / "transformer").glob("*.safetensors"))
    weights.rename(weights.with_suffix(".bin"))
    msg = error("sd3", broken)
    assert "teacher.path" in msg and "no .safetensors weights" in msg


@pytest.mark.parametrize("family, component", [("sd3", "vae"), ("sd3", "text_encoder"), ("sd3", "text_encoder_3"),
                                               ("sdxl", "text_encoder_2"), ("sdxl", "unet")])
def test_a_component_with_pickled_weights_only_is_refused(folders, tmp_path, family, component):
    import shutil

    broken = tmp_path / "broken"
    shutil.copytree(folders[family], broken)
    assert any((broken / component).glob("*.safetensors"))
    for weights in (broken / component).glob("*.safetensors"):
        weights.rename(weights.with_suffix(".bin"))
    match = rf"teacher.path .*: {component}/ has no .safetensors weights \(only .*\.bin\)"
    with pytest.raises(ConfigError, match=match):
        teacher_of(family, {family: broken}, tmp_path)


def test_prompts_are_cached_and_encoders_freed_before_the_denoiser_moves(folders, tmp_path, monkeypatch):
    """The denoiser and the text encoders never share the accelerator (SD3.5-M in 16 GB needs it)."""
    import gc

    from diffusers import SD3Transformer2DModel
    from transformers import PreTrainedModel

    cfg = resolve(tiny_run_config("sd3", folders["sd3"], tmp_path / "run"))
    moves, real_to = [], SD3Transformer2DModel.to
    gc.collect()
    before = {id(o) for o in gc.get_objects() if isinstance(o, PreTrainedModel)}  # other tests' leftovers

    def spy(self, *args, **kwargs):  # the real move, noting what else is alive when the denoiser is placed
        if any(isinstance(a, (str, torch.device)) for a in args) or "device" in kwargs:
            encoders = [o for o in gc.get_objects() if isinstance(o, PreTrainedModel) and id(o) not in before]
            moves.append((len(encoders), (tmp_path / "run" / "prompt_cache" / "index.json").is_file()))
        return real_to(self, *args, **kwargs)

    monkeypatch.setattr(SD3Transformer2DModel, "to", spy)
    teacher, bank = load_teacher_with_prompts(cfg, "cpu", [PROMPT, "a dog"])
    assert moves == [(0, True)]  # one placement, after the cache was written, with no text encoder alive
    assert teacher._text_pipe is None and len(bank) == 2
    assert bank.get(torch.tensor([1]))["encoder_hidden_states"].shape[-1] == teacher.network.config.joint_attention_dim


# ---- training, resume, export, reload --------------------------------------------------------------------
@pytest.mark.parametrize("family", ["sd3", "sdxl"])
def test_train_resume_export_and_reload_in_diffusers(family, folders, tmp_path, monkeypatch):
    own_shift = {"student__shift": 2.0} if family == "sd3" else {}  # the exported scheduler must follow it
    cfg = tiny_run_config(family, folders[family], tmp_path / "run", **own_shift)
    config = write_config(cfg, tmp_path / "run.toml")
    assert cli(["train", str(config), "--no-finish"]) == 0  # 2 steps, prompts encoded into the run folder
    assert (tmp_path / "run" / "prompt_cache" / "index.json").is_file()

    def no_encoders(self):
        raise AssertionError("the text encoders were loaded again on resume")

    with monkeypatch.context() as m:  # resume: every embedding comes from the run folder's cache
        m.setattr(DiffusersTeacher, "_text_pipeline", no_encoders)
        assert cli(["train", str(config), "--max-steps", "3"]) == 0
    events = [json.loads(line) for line in (tmp_path / "run" / "events.jsonl").read_text().splitlines()]
    assert [e["event"] for e in events].count("resume") == 1
    assert json.loads((tmp_path / "run" / "status.json").read_text())["state"] == "finished"

    if family == "sd3":  # resume is bit-exact: same checkpoint as an uninterrupted 3-step run
        straight = tiny_run_config(family, folders[family], tmp_path / "straight", run__max_steps=3, **own_shift)
        assert cli(["train", str(write_config(straight, tmp_path / "straight.toml")), "--no-finish"]) == 0
        assert_same_checkpoint(tmp_path / "run/checkpoints/step_00000003", tmp_path / "straight/checkpoints/step_00000003")

    out = tmp_path / "student_diffusers"
    assert cli(["export", str(tmp_path / "run"), "--format", "diffusers", "--out", str(out)]) == 0
    assert cli(["export", str(tmp_path / "run"), "--format", "comfy", "--out", str(tmp_path / "c.safetensors")]) == 0

    teacher = load_teacher(resolve(cfg))
    student, info = load_student(tmp_path / "run" / "student.safetensors", teacher)
    seeds = [0, 1]
    ours = sample_grid(teacher, student, [PROMPT], seeds, info.levels)  # the core's own 4-step rollout

    import diffusers

    net_class = getattr(diffusers, teacher.net_class)
    net = net_class.from_pretrained(str(out), subfolder=teacher.net_folder)
    record = json.loads((out / "dpdmd_student.json").read_text())
    scheduler = getattr(diffusers, record["diffusers"]["scheduler"]).from_pretrained(str(out), subfolder="scheduler")
    pipe = pipeline(family, folders[family], **{teacher.net_folder: net, "scheduler": scheduler})
    theirs = pipe([PROMPT] * 2, height=32, width=32, latents=seed_noise(seeds, teacher.latent_shape()),
                  output_type="latent", **record["diffusers"]["call"]).images
    assert record["diffusers"]["call"] == {"num_inference_steps": 4, "guidance_scale": 1.0}
    close(ours, theirs)
    assert not torch.allclose(ours, sample_grid(teacher, teacher.network, [PROMPT], seeds, info.levels))

    comfy = read_student_info(tmp_path / "c.safetensors")
    assert comfy.sigmas == pytest.approx(teacher.schedule.comfy_sigmas(info.levels))
    with safe_open(str(tmp_path / "c.safetensors"), "pt") as f:
        assert set(f.keys()) == set(net.state_dict()) and f.get_tensor(next(iter(f.keys()))).dtype == torch.bfloat16
        arch = f.metadata()["modelspec.architecture"]
    assert arch == {"sd3": "stable-diffusion-v3.5-medium", "sdxl": "stable-diffusion-xl-v1-base"}[family]


def test_lora_run_checkpoints_adapters_and_exports_an_exact_lora(folders, tmp_path):
    cfg = tiny_run_config("sd3", folders["sd3"], tmp_path / "run", student__lora_rank=2, optim__student_lr=1e-2,
                          optim__fake_lr=1e-2)
    assert cli(["train", str(write_config(cfg, tmp_path / "run.toml"))]) == 0
    saved = load_file(str(ckpt.latest(tmp_path / "run" / "checkpoints") / "student.safetensors"))
    assert saved and all(".lora_" in k for k in saved)  # the frozen base is not duplicated into checkpoints

    teacher = load_teacher(resolve(cfg))
    student, info = load_student(tmp_path / "run" / "student.safetensors", teacher)  # merged, teacher layout
    assert cli(["export", str(tmp_path / "run"), "--format", "lora", "--dtype", "float32",
                "--out", str(tmp_path / "l.safetensors")]) == 0
    lora_info = read_student_info(tmp_path / "l.safetensors")
    assert lora_info.extra["exact"] and lora_info.extra["captured"] == pytest.approx(1.0, abs=1e-5)

    pipe = pipeline("sd3", folders["sd3"])
    pipe.load_lora_weights(str(tmp_path / "l.safetensors"))
    seeds = [4]
    theirs = pipe(PROMPT, height=32, width=32, num_inference_steps=4, guidance_scale=1.0,
                  latents=seed_noise(seeds, teacher.latent_shape()), output_type="latent").images
    ours = sample_grid(teacher, student, [PROMPT], seeds, info.levels)
    close(ours, theirs)
    assert float((ours - sample_grid(teacher, teacher.network, [PROMPT], seeds, info.levels)).abs().max()) > 1e-3


def test_evaluate_cli_measures_diversity_with_dino(folders, tmp_path, capsys):
    cfg = tiny_run_config("sd3", folders["sd3"], tmp_path / "run", run__max_steps=1)
    assert cli(["train", str(write_config(cfg, tmp_path / "run.toml"))]) == 0
    build_tiny_dino(tmp_path / "dino")
    capsys.readouterr()
    assert cli(["evaluate", str(tmp_path / "run" / "student.safetensors"), "--teacher", str(folders["sd3"]),
                "--prompt", PROMPT, "--prompt", "the dog", "--seeds", "3", "--features", str(tmp_path / "dino")]) == 0
    metrics = json.loads(capsys.readouterr().out)
    teacher, student = metrics["teacher"], metrics["student"]
    assert (teacher["nfe"], student["nfe"]) == (60, 4)  # the teacher at its 30 default steps with CFG
    assert teacher["features"] == student["features"] == "dino:dino" and student["seeds_per_prompt"] == 3
    assert 0 < student["diversity"] < 2 and 0 < teacher["diversity"] < 2 and metrics["ratios"]["sampling_speedup"] > 0
    assert cli(["evaluate", str(tmp_path / "run" / "student.safetensors"), "--teacher", str(folders["sd3"])]) == 2


# ---- memory options -------------------------------------------------------------------------------------------
def test_bf16_autocast_keeps_fp32_masters_and_a_bf16_teacher(folders, tmp_path):
    for rank in (0, 2):
        cfg = tiny_run_config("sd3", folders["sd3"], tmp_path / f"r{rank}", run__mixed_precision="bf16",
                              teacher__dtype="bfloat16", student__lora_rank=rank, optim__student_lr=1e-3,
                              student__gradient_checkpointing=bool(rank))  # the lora64-ckpt preset's combination
        trainer = Trainer(cfg, progress=False)
        net = trainer.acc.unwrap_model(trainer.student)
        before = {n: p.detach().clone() for n, p in net.named_parameters() if p.requires_grad}
        trainer.fake_update()
        logs = trainer.student_update()
        assert math.isfinite(logs["loss"])
        teacher_weights = [p for n, p in trainer.teacher.network.named_parameters() if ".lora_" not in n]
        assert {p.dtype for p in teacher_weights} == {torch.bfloat16}  # (LoRA: the shared base holds the adapters)
        trained = {n: p for n, p in net.named_parameters() if p.requires_grad}
        assert {p.dtype for p in trained.values()} == {torch.float32}  # fp32 masters (adapters for LoRA)
        assert any(not torch.equal(p, before[n]) for n, p in trained.items())
        if rank:
            assert {p.dtype for p in net.parameters() if not p.requires_grad} == {torch.bfloat16}


def test_gradient_checkpointing_gives_the_same_update(folders, tmp_path):
    results = []
    for ckpting in (False, True):
        cfg = tiny_run_config("sd3", folders["sd3"], tmp_path / f"g{ckpting}", student__gradient_checkpointing=ckpting,
                              optim__student_lr=1e-3)
        trainer = Trainer(cfg, progress=False)
        assert trainer.acc.unwrap_model(trainer.student).is_gradient_checkpointing is ckpting
        results.append((trainer.student_update()["loss"], trainer.acc.unwrap_model(trainer.student).state_dict()))
    (loss_a, a), (loss_b, b) = results
    assert loss_a == pytest.approx(loss_b, rel=1e-6)
    assert all(torch.allclose(a[k], b[k], atol=1e-7) for k in a)


# ---- Appendix C: the x0-space diversity target of epsilon teachers -------------------------------------------
def test_appendix_c_x0_target_by_hand(folders, tmp_path):
    cfg = tiny_run_config("sdxl", folders["sdxl"], tmp_path / "run", teacher__num_steps=8, method__anchor_step=2,
                          teacher__guidance_scale=8.0)
    trainer = Trainer(cfg, progress=False)
    assert trainer.anchor_target == "x0"  # chosen automatically for an epsilon teacher
    teacher, k = trainer.teacher, 2
    states = {n: g.get_state() for n, g in trainer.generators.items()}
    cond, null, z = trainer._batch()
    for n, g in trainer.generators.items():
        g.set_state(states[n])

    # by hand: scaled-linear betas, DDIM with CFG 8 over the trailing 8-step schedule, Eq. 39-41
    betas = torch.linspace(0.00085 ** 0.5, 0.012 ** 0.5, 1000, dtype=torch.float64) ** 2
    abar = torch.cumprod(1 - betas, 0)
    levels = [999, 874, 749]
    assert trainer.teacher_levels[:3] == levels

    def eps_cfg(x, t):
        lv = torch.full((x.shape[0],), float(t))
        with torch.no_grad():
            c = teacher.call_network(teacher.network, x, lv, cond).double()
            u = teacher.call_network(teacher.network, x, lv, null).double()
        return u + 8.0 * (c - u)

    x = z.double()
    for t, t_next in zip(levels[:k], levels[1:k + 1]):
        eps = eps_cfg(x.float(), t)
        x0 = (x - (1 - abar[t]).sqrt() * eps) / abar[t].sqrt()
        x = abar[t_next].sqrt() * x0 + (1 - abar[t_next]).sqrt() * eps
    t_k = levels[k]
    x0_star = (x - (1 - abar[t_k]).sqrt() * eps_cfg(x.float(), t_k)) / abar[t_k].sqrt()  # Eq. 39
    with torch.no_grad():
        eps_g = teacher.call_network(trainer.student, z, torch.full((z.shape[0],), 999.0), cond).double()
    x0_g = (z.double() - (1 - abar[999]).sqrt() * eps_g) / abar[999].sqrt()  # Eq. 40
    expected = float(((x0_g - x0_star) ** 2).mean())  # Eq. 41

    assert trainer.student_update()["loss_div"] == pytest.approx(expected, rel=1e-4)


# ---- several processes ----------------------------------------------------------------------------------------------
def test_two_process_training_on_cpu(folders, tmp_path):
    """accelerate launch --multi_gpu --num_processes 2 on a CPU machine runs MULTI_CPU over gloo."""
    cfg = tiny_run_config("sd3", folders["sd3"], tmp_path / "run", data__batch_size=1)
    config = write_config(cfg, tmp_path / "run.toml")
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1",
           "TRANSFORMERS_OFFLINE": "1"}
    launch = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2",
              "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no",
              "--main_process_port", str(free_port()), "-m", "distill_core.train", str(config), "--no-finish"]
    done = subprocess.run(launch, env=env, capture_output=True, text=True, timeout=240, cwd=tmp_path)
    assert done.returncode == 0, done.stderr[-3000:]
    events = [json.loads(line) for line in (tmp_path / "run" / "events.jsonl").read_text().splitlines()]
    replicas = [e for e in events if e["event"] == "replicas"]
    assert replicas and replicas[-1]["processes"] == 2 and replicas[-1]["max_difference"] == 0.0
    last = ckpt.latest(tmp_path / "run" / "checkpoints")
    assert ckpt.read_state(last)["world_size"] == 2
    assert {p.name for p in last.glob("rng_rank*.safetensors")} == {"rng_rank0.safetensors", "rng_rank1.safetensors"}

    cfg.run.max_steps = 3  # resume the two-process checkpoint in one process
    trainer = Trainer(cfg, progress=False)
    assert trainer.try_resume() and trainer.step == 2
