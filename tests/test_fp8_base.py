"""teacher.quantize = "fp8": the frozen base in float8_e4m3fn with per-channel scales, on the tiny SD3 / SDXL teachers."""
from __future__ import annotations

import pytest
import torch
from safetensors.torch import load_file
from tiny_diffusers import tiny_run_config
from torch import nn

from distill_core.cli import main as cli
from distill_core.config import resolve
from distill_core.errors import ConfigError
from distill_core.teachers import load_teacher
from distill_core.training.adapters import adapter_factors
from distill_core.training.fp8 import FP8Linear, quantize_linears
from distill_core.training.lora import AdapterView
from distill_core.training.trainer import Trainer, train
from test_shared_base import assert_same, checkpoint_states

pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py

BF16 = {"teacher__dtype": "bfloat16", "run__mixed_precision": "bf16"}
# relative L2 error of the guided prediction against the float32 teacher, measured on the tiny teachers (seed 0,
# level 0.7, two prompts): fp8 sd3 0.068 / sdxl 0.082 / zimage 0.100 / flux2 0.043; the bf16 teacher's own is
# 0.029 / 0.092 / 0.031 / 0.017
FP8_TOLERANCE = 0.12


def test_fp8_linear_rounds_once_and_keeps_no_upcast_copy():
    torch.manual_seed(0)
    dense = nn.Linear(64, 32).requires_grad_(False)
    dense.weight[3] *= 1e-3  # a quiet output channel keeps its own precision (per-channel scale)
    net = nn.Sequential(dense)
    assert quantize_linears(net) == 1 and isinstance(net[0], FP8Linear)
    layer = net[0]
    assert layer.weight.dtype == torch.uint8 and torch.equal(torch.exp2(torch.log2(layer.scale).round()), layer.scale)
    w = layer.dequantized()
    rel = ((w - dense.weight).abs() / dense.weight.abs().amax(1, keepdim=True)).amax()
    assert rel <= 2 ** -4  # e4m3: 3 mantissa bits, relative to each channel's largest weight
    assert (w[3] - dense.weight[3]).abs().max() < 1e-3 * (w - dense.weight).abs().max()
    x = torch.randn(5, 64, requires_grad=True)
    saved = []
    with torch.autograd.graph.saved_tensors_hooks(lambda t: saved.append(t) or t, lambda t: t):
        y = layer(x)
    assert all(t.dtype == torch.uint8 or t.numel() == 32 for t in saved)  # the fp8 bytes, not a float copy
    y.pow(2).sum().backward()
    x2 = x.detach().requires_grad_(True)
    nn.functional.linear(x2, w, dense.bias).pow(2).sum().backward()
    assert torch.allclose(y, nn.functional.linear(x, w, dense.bias), atol=1e-5)
    assert torch.allclose(x.grad, x2.grad, atol=1e-5)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert layer(x).dtype == torch.bfloat16
    bits = layer.weight.clone()
    nn.Module.to(net, torch.bfloat16)  # casts that would undo a float8 tensor leave the bytes alone
    assert torch.equal(layer.weight, bits) and torch.equal(layer.dequantized(torch.bfloat16).float(), w)


def test_quantizing_a_network_loaded_from_its_file_releases_the_files_memory_map(tiny_qwen_pipelines, tmp_path):
    """diffusers loads a bf16 safetensors file on the CPU as views of one memory map of it: were any tensor left
    on the map, the replaced bf16 weights would stay resident beside the fp8 ones (a full-size Z-Image: 12.3 GB
    beside 6.2, bench/fullsize_cpu.py)."""
    import gc
    from pathlib import Path

    from diffusers import ZImageTransformer2DModel

    ZImageTransformer2DModel.from_pretrained(str(tiny_qwen_pipelines["zimage"]), subfolder="transformer").to(
        torch.bfloat16).save_pretrained(tmp_path / "bf16")
    net = ZImageTransformer2DModel.from_pretrained(str(tmp_path / "bf16"), torch_dtype=torch.bfloat16)
    file = str(tmp_path / "bf16" / "diffusion_pytorch_model.safetensors")

    def mapped() -> bool:
        return file in Path("/proc/self/maps").read_text()

    assert mapped()  # the premise: the loaded weights are views of the file's map
    before = {n: p.float().clone() for n, p in net.named_parameters() if "norm" in n or n.endswith("bias")}
    quantize_linears(net.requires_grad_(False))
    gc.collect()
    assert not mapped()
    after = dict(net.named_parameters())
    assert all(torch.equal(after[n].float(), v) for n, v in before.items())  # the unquantised ones kept as they were


@pytest.mark.parametrize("family", ["sd3", "sdxl", "zimage", "flux2"])
def test_fp8_teacher_predicts_within_the_stated_tolerance(tiny_pipelines, tiny_qwen_pipelines, tmp_path, family):
    preds = {}
    folder = {**tiny_pipelines, **tiny_qwen_pipelines}[family]
    for name, kw in (("fp32", {}), ("fp8", {**BF16, "teacher__quantize": "fp8"})):
        cfg = resolve(tiny_run_config(family, folder, tmp_path / name, **kw))
        teacher = load_teacher(cfg)
        fp8 = [m for m in teacher.network.modules() if isinstance(m, FP8Linear)]
        plain = [m for m in teacher.network.modules() if type(m) is nn.Linear]
        assert (bool(fp8), bool(plain)) == ((True, False) if name == "fp8" else (False, True))
        cond, null = teacher.encode_prompts(["a photo of a cat", "the dog"]), teacher.null_condition()
        x = torch.randn(2, *teacher.latent_shape(), generator=torch.Generator().manual_seed(0))
        null = {k: v.expand(2, *v.shape[1:]) for k, v in null.items()}
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=name == "fp8"):
            preds[name] = teacher.predict_cfg(teacher.network, x, torch.full((2,), 0.7), cond, null,
                                              cfg.teacher.guidance_scale).float()
    error = float((preds["fp8"] - preds["fp32"]).norm() / preds["fp32"].norm())
    assert 0 < error < FP8_TOLERANCE, error


def test_fp8_run_trains_as_copies_resumes_exactly_and_exports_the_full_base(tiny_pipelines, tmp_path):
    kw = {**BF16, "teacher__quantize": "fp8", "student__lora_rank": 2, "student__gradient_checkpointing": True,
          "optim__student_lr": 1e-2, "optim__fake_lr": 1e-2}
    runs = {}
    for mode in ("shared", "copies"):  # the copies' frozen bases are quantised as the teacher's
        trainer = Trainer(tiny_run_config("sd3", tiny_pipelines["sd3"], tmp_path / mode, student__lora_mode=mode,
                                          run__max_steps=3, **kw), progress=False)
        assert isinstance(trainer.student, AdapterView) is (mode == "shared")
        bases = [trainer.teacher.network] + ([] if mode == "shared" else [trainer.student, trainer.fake])
        assert all(any(isinstance(m, FP8Linear) for m in net.modules()) for net in bases)
        trainer.fit()
        runs[mode] = checkpoint_states(tmp_path / mode)
    assert_same(runs["shared"], runs["copies"])
    broken = tiny_run_config("sd3", tiny_pipelines["sd3"], tmp_path / "resumed", run__max_steps=1, **kw)
    train(broken, progress=False, finish=False)
    broken.run.max_steps = 3
    train(broken, progress=False, finish=False)
    assert_same(runs["shared"], checkpoint_states(tmp_path / "resumed"))

    out = tmp_path / "student.safetensors"
    assert cli(["export", str(tmp_path / "shared"), "--out", str(out)]) == 0
    exported = load_file(str(out))
    full = load_file(str(tiny_pipelines["sd3"] / "transformer" / "diffusion_pytorch_model.safetensors"))
    factors = adapter_factors(runs["shared"]["student"])
    assert factors and set(exported) == set(full)
    for module, (a, b) in factors.items():  # the bf16 base (the run's base dtype), never its fp8 rounding
        key = f"{module}.weight"
        expected = full[key].to(torch.bfloat16).float() + b @ a
        assert torch.allclose(exported[key], expected, atol=1e-6), key
    assert any(b.abs().max() > 0 for _, b in factors.values())  # trained


@pytest.mark.parametrize("family", ["zimage", "flux2"])
def test_fp8_runs_of_the_qwen_families_train_and_export_the_full_base(tiny_qwen_pipelines, tmp_path, family):
    """A two-step fp8 LoRA run of Z-Image / FLUX.2 (their own layer layouts, all linear layers quantised) trains
    and exports the bf16 base plus the trained factors, never the fp8 rounding."""
    cfg = tiny_run_config(family, tiny_qwen_pipelines[family], tmp_path / "run", teacher__quantize="fp8",
                          student__lora_rank=2, optim__student_lr=1e-2, optim__fake_lr=1e-2, **BF16)
    trainer = Trainer(cfg, progress=False)
    for net in (trainer.teacher.network, trainer.student, trainer.fake):  # one shared base or copies: all fp8
        assert not [n for n, m in net.named_modules() if type(m) is nn.Linear and ".lora_" not in n]
    trainer.fit()
    factors = adapter_factors(checkpoint_states(tmp_path / "run")["student"])
    out = tmp_path / "student.safetensors"
    assert cli(["export", str(tmp_path / "run"), "--out", str(out)]) == 0
    exported = load_file(str(out))
    full = load_file(str(tiny_qwen_pipelines[family] / "transformer" / "diffusion_pytorch_model.safetensors"))
    assert factors and set(exported) == set(full)
    for module, (a, b) in factors.items():
        key = f"{module}.weight"
        assert torch.allclose(exported[key], full[key].to(torch.bfloat16).float() + b @ a, atol=1e-6), key
    assert any(b.abs().max() > 0 for _, b in factors.values())


def test_fp8_is_refused_where_it_does_not_apply(tmp_path):
    from conftest import tiny_config

    with pytest.raises(ConfigError, match="teacher.quantize"):
        resolve(tiny_config(tmp_path, teacher__quantize="fp8"))
    with pytest.raises(ConfigError, match="teacher.quantize"):
        resolve(tiny_config(tmp_path, teacher__quantize="fp4"))
