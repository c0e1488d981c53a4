"""teacher.loras: user LoRAs merged into the teacher at load; the student trains on (and loads on top of) the merge."""
from __future__ import annotations

import tempfile

import pytest
import torch
from safetensors.torch import load_file, save_file
from tiny_diffusers import tiny_run_config

from distill_core.cli import main as cli
from distill_core.config import resolve
from distill_core.errors import ConfigError
from distill_core.export.exporters import load_student
from distill_core.export.student_file import read_student_info
from distill_core.sampling import sample_grid, seed_noise
from distill_core.teachers import load_teacher
from distill_core.training.merge import file_sha256, merge_loras
from distill_core.training.trainer import train

pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py

# layers a user LoRA touches: attention / feed-forward (the student's too) and one the student's adapter lacks
LAYERS = {"sd3": ["transformer_blocks.0.attn.to_q", "transformer_blocks.1.ff.net.2", "transformer_blocks.0.norm1.linear"],
          "sdxl": ["down_blocks.1.attentions.0.transformer_blocks.0.attn1.to_k",
                   "up_blocks.0.attentions.0.proj_out", "time_embedding.linear_1"],
          "zimage": ["layers.0.attention.to_out.0", "layers.1.feed_forward.w2", "noise_refiner.0.adaLN_modulation.0"],
          "flux2": ["transformer_blocks.0.attn.add_k_proj", "single_transformer_blocks.0.attn.to_qkv_mlp_proj",
                    "x_embedder"]}
DIFFUSERS_PREFIX = {"sd3": "transformer.", "sdxl": "unet.", "zimage": "transformer.", "flux2": "transformer."}
KOHYA_PREFIX = {"sd3": "lora_transformer_", "sdxl": "lora_unet_", "zimage": "lora_unet_"}
# the same SDXL layers by the original (LDM / SGM) checkpoint's names, as kohya and ComfyUI write them (derived by
# hand for the tiny UNet: one resnet per block, a downsampler after the first; tests/comfyui checks the table
# against ComfyUI's own on the real SDXL)
ORIGINAL = {"down_blocks.1.attentions.0.transformer_blocks.0.attn1.to_k": "input_blocks.3.1.transformer_blocks.0.attn1.to_k",
            "up_blocks.0.attentions.0.proj_out": "output_blocks.0.1.proj_out", "time_embedding.linear_1": "time_embed.0"}


def user_lora(path, family: str, fmt: str, seed: int = 0, rank: int = 2, alpha: float = 1.0):
    """A random LoRA of the tiny teacher's LAYERS in key format ``fmt``; returns (path, {module: delta at weight 1})."""
    g = torch.Generator().manual_seed(seed)
    tensors, deltas = {}, {}
    for module, (out_f, in_f) in LORA_SHAPES[family].items():
        down, up = torch.randn(rank, in_f, generator=g) * 0.3, torch.randn(out_f, rank, generator=g) * 0.3
        deltas[module] = up @ down * (alpha / rank if fmt.startswith("kohya") else 1.0)
        name = ORIGINAL[module] if fmt.endswith("original") else module
        if fmt.startswith("kohya"):
            stem = KOHYA_PREFIX[family] + name.replace(".", "_")
            tensors.update({f"{stem}.lora_down.weight": down, f"{stem}.lora_up.weight": up,
                            f"{stem}.alpha": torch.tensor(alpha)})
        else:
            prefix = {"diffusers": DIFFUSERS_PREFIX[family], "peft": "base_model.model.",
                      "comfyui": "diffusion_model.", "comfyui_original": "diffusion_model."}[fmt]
            tensors.update({f"{prefix}{name}.lora_A.weight": down, f"{prefix}{name}.lora_B.weight": up})
    save_file(tensors, str(path))
    return path, deltas


LORA_SHAPES: dict[str, dict[str, tuple[int, int]]] = {}  # family -> module -> (out, in), read from the tiny teachers


@pytest.fixture(scope="module")
def folders(tiny_pipelines, tiny_qwen_pipelines):
    """family -> tiny diffusers folder (the four families); fills LORA_SHAPES from their weights."""
    out = {**tiny_pipelines, **tiny_qwen_pipelines}
    for family, path in out.items():
        weights = load_file(str(next((path / ("unet" if family == "sdxl" else "transformer")).glob("*.safetensors"))))
        LORA_SHAPES[family] = {m: tuple(weights[f"{m}.weight"].shape) for m in LAYERS[family]}
    return out


SAME_NAMES = ("diffusers", "peft", "kohya", "comfyui")  # formats that spell the diffusers layer names


@pytest.mark.parametrize("family, fmt", [(f, x) for f in ("sd3", "sdxl", "zimage") for x in SAME_NAMES]
                         + [("sdxl", "kohya_original"), ("sdxl", "comfyui_original")]
                         + [("flux2", x) for x in ("diffusers", "peft", "comfyui")])
def test_each_key_format_merges_its_layers_exactly(folders, tmp_path, family, fmt):
    path, deltas = user_lora(tmp_path / "user.safetensors", family, fmt, alpha=0.5)
    cfg = resolve(tiny_run_config(family, folders[family], tmp_path / "run",
                                  teacher__loras=[{"path": str(path), "weight": 0.8}]))
    plain = resolve(tiny_run_config(family, folders[family], tmp_path / "plain"))
    merged, base = load_teacher(cfg), load_teacher(plain)
    for net in (merged.network, merged.make_trainable_copy()):  # the teacher and the copies the student starts as
        ours, theirs = net.state_dict(), base.network.state_dict()
        for key in theirs:
            module = key.removesuffix(".weight")
            expected = theirs[key] + 0.8 * deltas[module] if module in deltas else theirs[key]
            assert torch.allclose(ours[key], expected, atol=1e-6), key


@pytest.mark.parametrize("prefix", ["lora_unet_", "diffusion_model."])  # kohya (sd-scripts), ComfyUI
def test_sd3_files_by_mmdit_names_split_fused_qkv_and_swap_adaln_halves(folders, tmp_path, prefix):
    """The original MMDiT names: one fused q/k/v weight for three diffusers layers, and the final adaLN layers'
    (scale, shift) rows where diffusers has (shift, scale); derived by hand here, checked against ComfyUI's own
    table in tests/comfyui."""
    weights = load_file(str(folders["sd3"] / "transformer" / "diffusion_pytorch_model.safetensors"))
    h = weights["transformer_blocks.0.attn.to_q.weight"].shape[0]
    g = torch.Generator().manual_seed(1)
    layers = {"joint_blocks.0.x_block.attn.qkv": (3 * h, h), "final_layer.adaLN_modulation.1":
              tuple(weights["norm_out.linear.weight"].shape), "joint_blocks.1.context_block.adaLN_modulation.1":
              tuple(weights["transformer_blocks.1.norm1_context.linear.weight"].shape)}
    tensors, fused = {}, {}
    for name, (out_f, in_f) in layers.items():
        down, up = torch.randn(2, in_f, generator=g), torch.randn(out_f, 2, generator=g)
        spelt = name.replace(".", "_") if prefix == "lora_unet_" else name
        tensors.update({f"{prefix}{spelt}.lora_down.weight": down, f"{prefix}{spelt}.lora_up.weight": up})
        fused[name] = up @ down
    save_file(tensors, str(tmp_path / "mmdit.safetensors"))
    expected = {f"transformer_blocks.0.attn.{m}.weight": fused["joint_blocks.0.x_block.attn.qkv"][j * h:(j + 1) * h]
                for j, m in enumerate(("to_q", "to_k", "to_v"))}
    for module, name in (("norm_out.linear", "final_layer.adaLN_modulation.1"),
                         ("transformer_blocks.1.norm1_context.linear", "joint_blocks.1.context_block.adaLN_modulation.1")):
        scale, shift = fused[name].chunk(2)
        expected[f"{module}.weight"] = torch.cat([shift, scale])
    cfg = tiny_run_config("sd3", folders["sd3"], tmp_path / "run",
                          teacher__loras=[{"path": str(tmp_path / "mmdit.safetensors"), "weight": 1.0}])
    merged = load_teacher(resolve(cfg)).network.state_dict()
    for key in weights:
        assert torch.allclose(merged[key], weights[key] + expected.get(key, 0), atol=1e-5), key


@pytest.mark.parametrize("prefix", ["lora_unet_", "diffusion_model."])  # kohya / ComfyUI, ai-toolkit (BFL names)
def test_flux2_files_by_bfl_names_split_fused_qkv_and_swap_adaln_halves(folders, tmp_path, prefix):
    """Black Forest Labs names (diffusers' _convert_kohya_flux2_lora_to_diffusers and
    _convert_non_diffusers_flux2_lora_to_diffusers read the same): a double block's fused q/k/v for three
    diffusers layers, a single block's linear1 whole, and the final adaLN's (shift, scale) rows where diffusers
    has (scale, shift); expected deltas derived by hand."""
    weights = load_file(str(folders["flux2"] / "transformer" / "diffusion_pytorch_model.safetensors"))
    h = weights["transformer_blocks.0.attn.add_q_proj.weight"].shape[0]
    single = tuple(weights["single_transformer_blocks.0.attn.to_qkv_mlp_proj.weight"].shape)
    layers = {"double_blocks.0.txt_attn.qkv": (3 * h, h), "single_blocks.0.linear1": single,
              "double_blocks.0.img_mlp.2": tuple(weights["transformer_blocks.0.ff.linear_out.weight"].shape),
              "final_layer.adaLN_modulation.1": tuple(weights["norm_out.linear.weight"].shape),
              "img_in": tuple(weights["x_embedder.weight"].shape)}
    g = torch.Generator().manual_seed(2)
    tensors, fused = {}, {}
    for name, (out_f, in_f) in layers.items():
        down, up = torch.randn(2, in_f, generator=g), torch.randn(out_f, 2, generator=g)
        spelt = name.replace(".", "_") if prefix == "lora_unet_" else name
        tensors.update({f"{prefix}{spelt}.lora_down.weight": down, f"{prefix}{spelt}.lora_up.weight": up,
                        f"{prefix}{spelt}.alpha": torch.tensor(1.0)})
        fused[name] = up @ down / 2  # alpha / rank
    save_file(tensors, str(tmp_path / "bfl.safetensors"))
    expected = {f"transformer_blocks.0.attn.{m}.weight": fused["double_blocks.0.txt_attn.qkv"][j * h:(j + 1) * h]
                for j, m in enumerate(("add_q_proj", "add_k_proj", "add_v_proj"))}
    expected["single_transformer_blocks.0.attn.to_qkv_mlp_proj.weight"] = fused["single_blocks.0.linear1"]
    expected["transformer_blocks.0.ff.linear_out.weight"] = fused["double_blocks.0.img_mlp.2"]
    expected["x_embedder.weight"] = fused["img_in"]
    shift, scale = fused["final_layer.adaLN_modulation.1"].chunk(2)
    expected["norm_out.linear.weight"] = torch.cat([scale, shift])
    cfg = tiny_run_config("flux2", folders["flux2"], tmp_path / "run",
                          teacher__loras=[{"path": str(tmp_path / "bfl.safetensors"), "weight": 1.0}])
    merged = load_teacher(resolve(cfg)).network.state_dict()
    for key in weights:
        assert torch.allclose(merged[key], weights[key] + expected.get(key, 0), atol=1e-5), key


def test_a_file_matching_no_layer_or_only_some_is_refused(folders, tmp_path):
    path, _ = user_lora(tmp_path / "user.safetensors", "sd3", "diffusers")
    partial = dict(load_file(str(path)))
    partial["lora_te1_text_model_encoder_layers_0_mlp_fc1.lora_down.weight"] = torch.zeros(2, 32)
    save_file(partial, str(tmp_path / "partial.safetensors"))
    sdxl, _ = user_lora(tmp_path / "sdxl.safetensors", "sdxl", "kohya")
    for file, message in ((tmp_path / "partial.safetensors", "only 3 layers matched; 1 of its 7 tensors"),
                          (sdxl, "no key matched a layer; 9 of its 9 tensors")):
        cfg = tiny_run_config("sd3", folders["sd3"], tmp_path / "run",
                              teacher__loras=[{"path": str(file), "weight": 1.0}])
        with pytest.raises(ConfigError, match=message) as err:
            load_teacher(resolve(cfg))
        assert "'transformer.' (diffusers)" in str(err.value) and "teacher.loras[0].path" in str(err.value)
    with pytest.raises(ConfigError, match="teacher.loras"):
        resolve(tiny_run_config("sd3", folders["sd3"], tmp_path / "run",
                                teacher__loras=[{"path": str(tmp_path / "missing.safetensors"), "weight": 1.0}]))


def test_base_then_user_lora_then_student_lora_in_diffusers_is_the_merged_student(folders, tmp_path):
    """Exported with a merged teacher: diffusers' load_lora_weights twice (user, then student) == our student file."""
    from diffusers import FlowMatchEulerDiscreteScheduler, StableDiffusion3Pipeline

    path, _ = user_lora(tmp_path / "user.safetensors", "sd3", "diffusers", seed=3)
    cfg = tiny_run_config("sd3", folders["sd3"], tmp_path / "run", student__lora_rank=2,
                          optim__student_lr=1e-2, optim__fake_lr=1e-2, teacher__loras=[{"path": str(path), "weight": 0.7}])
    train(cfg, progress=False)
    run = tmp_path / "run"
    assert cli(["export", str(run), "--format", "lora", "--dtype", "float32", "--out", str(tmp_path / "s.safetensors")]) == 0
    record = [{"name": "user.safetensors", "sha256": file_sha256(path), "weight": 0.7}]
    for file in (run / "student.safetensors", tmp_path / "s.safetensors"):  # recorded where the student goes
        assert read_student_info(file).extra["teacher_loras"] == record
    assert "user.safetensors</b> x 0.7" in (run / "report.html").read_text()
    assert "loras = [{ path = " in (run / "config.toml").read_text()

    teacher = load_teacher(resolve(cfg))
    student, info = load_student(run / "student.safetensors", teacher)
    seeds = [4, 5]
    ours = sample_grid(teacher, student, ["a photo of a cat"], seeds, info.levels)
    pipe = StableDiffusion3Pipeline.from_pretrained(str(folders["sd3"]), torch_dtype=torch.float32)
    pipe.load_lora_weights(str(path), adapter_name="user")
    pipe.load_lora_weights(str(tmp_path / "s.safetensors"), adapter_name="student")
    pipe.set_adapters(["user", "student"], [0.7, 1.0])
    pipe.scheduler = FlowMatchEulerDiscreteScheduler.from_config({**pipe.scheduler.config,
                                                                  "shift": teacher.schedule.shift})
    theirs = pipe("a photo of a cat", num_images_per_prompt=2, height=32, width=32, num_inference_steps=4,
                  guidance_scale=1.0, latents=seed_noise(seeds, teacher.latent_shape()), output_type="latent").images
    assert (ours - theirs).abs().max() < 1e-3
    pipe.set_adapters(["student"], [1.0])  # without the user LoRA it is another model
    alone = pipe("a photo of a cat", num_images_per_prompt=2, height=32, width=32, num_inference_steps=4,
                 guidance_scale=1.0, latents=seed_noise(seeds, teacher.latent_shape()), output_type="latent").images
    assert (ours - alone).abs().max() > 1e-2


def test_merge_is_generic_over_modules():
    """Any nn.Module merges by layer name (what a new family plugs into): here a bare Sequential."""
    net = torch.nn.Sequential(torch.nn.Linear(3, 4))
    down, up = torch.randn(1, 3), torch.randn(4, 1)
    before = net[0].weight.detach().clone()
    with tempfile.TemporaryDirectory() as d:
        save_file({"transformer.0.lora_A.weight": down, "transformer.0.lora_B.weight": up}, f"{d}/l.safetensors")
        merge_loras(net, [{"path": f"{d}/l.safetensors", "weight": 2.0}], "sd3")
    assert torch.allclose(net[0].weight, before + 2 * up @ down)
    with pytest.raises(ConfigError, match="not available for builtin"):  # a family without LoRA key formats
        merge_loras(net, [{"path": "x.safetensors", "weight": 1.0}], "builtin")
