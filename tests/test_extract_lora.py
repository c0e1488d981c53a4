"""dpdmd extract-lora and the warm start: a tiny "turbo" from the project's own short distillation, factored back."""
from __future__ import annotations

import re

import pytest
import torch
from safetensors.torch import load_file, save_file
from tiny_diffusers import tiny_run_config

from distill_core.cli import main as cli
from distill_core.export.exporters import load_student
from distill_core.export.extract import group_of
from distill_core.sampling import sample_grid
from distill_core.training.adapters import read_lora_file
from distill_core.training.trainer import Trainer, train

pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py

PROMPTS, SEEDS = ["a photo of a cat", "the dog"], [0, 1]


@pytest.fixture(scope="module")
def turbo(tiny_pipelines, tmp_path_factory):
    """A rank-4 DMD LoRA student of the tiny SD3 teacher, exported as a whole (merged, float32) model file."""
    root = tmp_path_factory.mktemp("turbo")
    cfg = tiny_run_config("sd3", tiny_pipelines["sd3"], root / "run", method__name="dmd", student__lora_rank=4,
                          optim__student_lr=1e-2, optim__fake_lr=1e-2)
    train(cfg, progress=False, finish=False)
    assert cli(["export", str(root / "run"), "--out", str(root / "turbo.safetensors")]) == 0
    return root / "turbo.safetensors"


def extracted(capsys, base, tuned, rank, out) -> tuple[dict, dict[str, float], float]:
    """Run the CLI; (the LoRA's factors per module, the printed errors per group and overall, printed outside %)."""
    capsys.readouterr()
    assert cli(["extract-lora", "--base", str(base), "--tuned", str(tuned), "--rank", str(rank), "--out",
                str(out)]) == 0
    text = capsys.readouterr().out
    printed = {m[1].strip(): float(m[2]) for m in re.finditer(r"^  (\S.*?)\s+\d+\s+(\S+)$", text, re.M)}
    outside = float(re.search(r"outside the covered layers: (\S+) %", text)[1])
    tensors = load_file(str(out))
    modules = sorted({k.removeprefix("transformer.").rsplit(".lora_", 1)[0] for k in tensors})
    return read_lora_file(out, "sd3", modules), printed, outside


def measured(base: dict, tuned: dict, factors: dict) -> tuple[dict[str, float], float]:
    """||D - BA|| / ||D|| per group and overall, measured on the weights."""
    num, den = {}, {}
    for module, (a, b) in factors.items():
        d = tuned[f"{module}.weight"] - base[f"{module}.weight"]
        g = group_of(module, "sd3")
        num[g] = num.get(g, 0.0) + float((d - b @ a).pow(2).sum())
        den[g] = den.get(g, 0.0) + float(d.pow(2).sum())
    errors = {g: (num[g] / den[g]) ** 0.5 for g in num if den[g] > 0}
    return errors, (sum(num.values()) / sum(den.values())) ** 0.5


def teacher_weights(tiny_pipelines) -> dict[str, torch.Tensor]:
    return load_file(str(tiny_pipelines["sd3"] / "transformer" / "diffusion_pytorch_model.safetensors"))


def test_full_rank_reproduces_the_turbo_and_lower_ranks_print_the_measured_error(tiny_pipelines, turbo, tmp_path,
                                                                                capsys):
    base, tuned = teacher_weights(tiny_pipelines), load_file(str(turbo))
    factors, printed, outside = extracted(capsys, tiny_pipelines["sd3"], turbo, 4, tmp_path / "r4.safetensors")
    assert outside == 0.0 and printed["all covered layers"] < 1e-5
    for module, (a, b) in factors.items():  # float precision: the turbo's own rank-4 change
        key = f"{module}.weight"
        assert torch.allclose(base[key] + b @ a, tuned[key], rtol=0, atol=1e-6), key
    changed = [k for k in tuned if not torch.equal(tuned[k], base[k])]
    assert changed and all(k.removesuffix(".weight") in factors for k in changed)

    factors, printed, _ = extracted(capsys, tiny_pipelines["sd3"], turbo, 1, tmp_path / "r1.safetensors")
    groups, overall = measured(base, tuned, factors)
    assert 0.05 < overall < 0.95 and printed["all covered layers"] == pytest.approx(overall, rel=1e-4)
    for group, error in groups.items():
        assert printed[group] == pytest.approx(error, rel=1e-4, abs=1e-6), group


def test_the_delta_outside_the_covered_layers_is_measured(tiny_pipelines, turbo, tmp_path, capsys):
    base, tuned = teacher_weights(tiny_pipelines), load_file(str(turbo))
    tuned["norm_out.linear.bias"] = tuned["norm_out.linear.bias"] + 0.01  # a layer the adapter does not cover
    save_file(tuned, str(tmp_path / "tuned.safetensors"))
    _, _, outside = extracted(capsys, tiny_pipelines["sd3"], tmp_path / "tuned.safetensors", 4,
                              tmp_path / "x.safetensors")
    covered = sum(float((tuned[k] - base[k]).pow(2).sum()) for k in tuned if ".weight" in k
                  and any(k.removesuffix(".weight").endswith(s) for s in ("to_q", "to_k", "to_v", "to_out.0",
                          "add_q_proj", "add_k_proj", "add_v_proj", "to_add_out", "net.0.proj", "net.2")))
    rest = float((tuned["norm_out.linear.bias"] - base["norm_out.linear.bias"]).pow(2).sum())
    assert outside == pytest.approx(100 * rest / (rest + covered), rel=1e-3)


def test_a_run_warm_started_from_the_extraction_starts_at_the_turbos_samples(tiny_pipelines, turbo, tmp_path, capsys):
    extracted(capsys, tiny_pipelines["sd3"], turbo, 4, tmp_path / "r4.safetensors")
    _, printed, _ = extracted(capsys, tiny_pipelines["sd3"], turbo, 1, tmp_path / "r1.safetensors")
    samples, gaps = {}, {}
    for rank in (4, 1):
        lora = str(tmp_path / f"r{rank}.safetensors")
        cfg = tiny_run_config("sd3", tiny_pipelines["sd3"], tmp_path / f"run{rank}", student__lora_rank=4,
                              student__init_lora=lora, fake__init_lora=lora)
        trainer = Trainer(cfg, progress=False)
        student_params = [p.detach().clone() for p in trainer.student.adapter_parameters()]
        assert all(torch.equal(s, f) for s, f in zip(student_params, trainer.fake.adapter_parameters()))
        samples[rank] = sample_grid(trainer.teacher, trainer.student, PROMPTS, SEEDS, trainer.student_levels)
        teacher = trainer.teacher
        samples["teacher"] = sample_grid(teacher, teacher.network, PROMPTS, SEEDS, trainer.student_levels)
    net, info = load_student(turbo, teacher)
    samples["turbo"] = sample_grid(teacher, net, PROMPTS, SEEDS, info.levels)
    norm = (samples["turbo"] - samples["teacher"]).norm()  # how far the turbo is from the teacher's 4 steps
    for rank in (4, 1):
        gaps[rank] = float((samples[rank] - samples["turbo"]).norm() / norm)
    assert gaps[4] < 1e-4  # full rank: the turbo's samples at step 0
    assert 0 < gaps[1] < 1.0 and gaps[1] > 100 * gaps[4]  # rank 1 leaves its extraction error in the samples
    assert printed["all covered layers"] > 0.05


def test_bad_input_is_one_line_and_exit_code_2(tiny_pipelines, turbo, tmp_path, capsys):
    sdxl = tiny_pipelines["sdxl"]
    bare = tmp_path / "bare.safetensors"
    save_file({"w": torch.zeros(2)}, str(bare))
    cases = [(["--base", str(sdxl), "--tuned", str(turbo), "--rank", "2"], "not the same architecture"),
             (["--base", str(tmp_path / "none"), "--tuned", str(turbo), "--rank", "2"], "--base"),
             (["--base", str(tiny_pipelines["sd3"]), "--tuned", str(turbo), "--rank", "0"], "--rank 0"),
             (["--base", str(bare), "--tuned", str(bare), "--rank", "2"], "--family is needed"),
             (["--base", str(bare), "--tuned", str(bare), "--rank", "2", "--family", "sd3"], "none of the sd3 layers")]
    for args, message in cases:
        capsys.readouterr()
        assert cli(["extract-lora", *args, "--out", str(tmp_path / "x.safetensors")]) == 2, args
        err = capsys.readouterr().err
        errors = [line for line in err.splitlines() if line.startswith("error:")]  # (after the progress bar)
        assert len(errors) == 1 and message in errors[0] and "Traceback" not in err, err


def test_every_familys_folder_is_told_by_its_pipeline_class(tiny_pipelines, tiny_qwen_pipelines):
    """extract-lora needs no --family for any diffusers family's folder (Z-Image and FLUX.2 included)."""
    from distill_core.export.extract import detect_family

    for family, folder in {**tiny_pipelines, **tiny_qwen_pipelines}.items():
        assert detect_family(str(folder)) == family
