"""Layer 2: the pack against the real `comfy` modules of the ComfyUI at COMFYUI_PATH, in one process.

Run by tests/test_comfyui.py under the ComfyUI interpreter (or directly with it).
"""
from __future__ import annotations

import asyncio
import re
from collections.abc import Sequence
from pathlib import Path

import pytest
import torch

from comfy_env import COMFY, comfy_version, require_comfy, setup_comfy, targets

require_comfy()
setup_comfy()

import comfy.model_base  # noqa: E402
import comfy.model_sampling  # noqa: E402
import comfy.samplers  # noqa: E402
import comfy.supported_models  # noqa: E402
import folder_paths  # noqa: E402
from comfy.k_diffusion import sampling as k_sampling  # noqa: E402
from comfy_extras.nodes_custom_sampler import SamplerCustom  # noqa: E402
from comfy_pack import builtin_student, load_pack, pack_module, plain_safetensors, sd3_student, truncated_copy  # noqa: E402

from distill_core.errors import DPDMDError  # noqa: E402
from distill_core.method import ddim_sample  # noqa: E402
from distill_core.sampling import sample_grid  # noqa: E402
from distill_core.schedules import VPSchedule  # noqa: E402
from distill_core.teachers.base import Cond, Teacher  # noqa: E402

SEEDS = [3, 11]
TOKENS = 12


@pytest.fixture(scope="module")
def pack():
    return asyncio.run(load_pack().comfy_entrypoint())


@pytest.fixture(scope="module")
def models(tmp_path_factory, pack):
    """models/dpdmd with a tiny SD3 student, a built-in student and bad files; ComfyUI's lists point there."""
    root = tmp_path_factory.mktemp("models")
    dpdmd, diffusion = root / "dpdmd", root / "diffusion_models"
    dpdmd.mkdir()
    diffusion.mkdir()
    sd3 = sd3_student(dpdmd / "tiny_sd3_student.safetensors")
    builtin_student(dpdmd / "shapes_student.safetensors")
    builtin_student(dpdmd / "digits_student.safetensors", kind="digits")
    plain_safetensors(dpdmd / "not_a_student.safetensors")
    truncated_copy(sd3, dpdmd / "truncated_student.safetensors")
    sd3_student(diffusion / "student_in_diffusion_models.safetensors", seed=1)
    plain_safetensors(diffusion / "ordinary_model.safetensors")
    saved = {k: folder_paths.folder_names_and_paths[k] for k in ("dpdmd", "diffusion_models")}
    folder_paths.folder_names_and_paths["dpdmd"] = ([str(dpdmd)], {".safetensors", ".sft"})
    folder_paths.folder_names_and_paths["diffusion_models"] = ([str(diffusion)], saved["diffusion_models"][1])
    yield root
    folder_paths.folder_names_and_paths.update(saved)


def nodes_by_id(pack) -> dict:
    return {n.GET_SCHEMA().node_id: n for n in asyncio.run(pack.get_node_list())}


def run(node, **inputs):
    return node.execute(**inputs)


class FixedCondTeacher(Teacher):
    """distill_core's view of the tiny SD3 student: fixed prompt embeddings, diffusers forward.

    The sampling math under test (levels, noise, DDIM/Euler steps) is distill_core's own.
    """

    family = "sd3"

    def __init__(self, network, schedule, cond: Cond):
        super().__init__(network, schedule)
        self.cond = cond

    def call_network(self, net, x, levels, cond):
        t = self.schedule.model_timestep(levels)
        return net(hidden_states=x, encoder_hidden_states=cond["context"], pooled_projections=cond["pooled"],
                   timestep=t).sample

    def encode_prompts(self, prompts: Sequence[str]) -> Cond:
        return {k: v.expand(len(prompts), *v.shape[1:]) for k, v in self.cond.items()}

    def null_condition(self) -> Cond:
        return {k: torch.zeros_like(v) for k, v in self.cond.items()}

    def latent_shape(self):
        return (16, 8, 8)

    def decode(self, latents):
        raise NotImplementedError

    def network_config(self):
        return {}

    def describe(self):
        return {}


def test_node_ids_and_category(pack):
    ids = nodes_by_id(pack)
    assert set(ids) == {"DPDMDStudentLoader", "DPDMDBuiltinTeacher", "DPDMDStudentSigmas", "DPDMDStudentSampler", "DPDMDSample",
                        "DPDMDSeedGrid", "DPDMDDiversity", "DPDMDHybridSampler",
                        "DPDMDTeacherStudentSampler"}
    assert {n.GET_SCHEMA().category for n in ids.values()} == {"DP-DMD"}


def test_runs_against_the_comfyui_under_test():
    """The `comfy` modules in use are COMFYUI_PATH's, whatever else is installed."""
    assert Path(comfy.model_base.__file__).resolve().is_relative_to(COMFY.resolve()), comfy.model_base.__file__
    assert comfy_version() != "?"


def test_nodes_use_public_names_of_a_versioned_api():
    """The pack imports a pinned comfy_api version (not `latest`) and only names that version makes public."""
    import importlib

    from comfy_pack import ROOT

    source = "\n".join(p.read_text() for p in sorted((ROOT / "nodes").glob("*.py")))
    versions = set(re.findall(r"from comfy_api\.(\w+) import", source))
    assert versions and all(re.fullmatch(r"v\d+_\d+_\d+", v) for v in versions), versions
    for version in versions:
        api = importlib.import_module(f"comfy_api.{version}")
        for module, name in set(re.findall(r"\b(io|ui)\.(\w+)", source)):
            surface = getattr(api, module)
            public = getattr(surface, "__all__", None) or [n for n in vars(surface) if not n.startswith("_")]
            assert name in public, f"{module}.{name} is not public in comfy_api.{version}"


def test_every_node_says_how_to_use_it(pack):
    """A description and a tooltip on every input and output; the sampling nodes say cfg 1, and why ComfyUI's
    'simple' schedule is wrong for a student."""
    import json

    infos = {node_id: node.GET_NODE_INFO_V1() for node_id, node in nodes_by_id(pack).items()}
    for node_id, info in infos.items():
        assert len(info["description"]) > 80, node_id
        for section in ("required", "optional"):
            for name, spec in info["input"].get(section, {}).items():
                assert spec[1].get("tooltip"), (node_id, name)
        assert len(info["output_tooltips"]) == len(info["output"]) and all(info["output_tooltips"]), node_id
    said = {node_id: json.dumps(info) for node_id, info in infos.items()}
    assert all("cfg 1" in said[n] for n in ("DPDMDStudentLoader", "DPDMDStudentSampler", "DPDMDSample"))
    assert all("'simple'" in said[n] for n in ("DPDMDStudentLoader", "DPDMDStudentSigmas"))


def test_loader_lists_students_only(pack, models):
    options = nodes_by_id(pack)["DPDMDStudentLoader"].INPUT_TYPES()["required"]["student_name"][1]["options"]
    # everything in dpdmd/ is offered (bad files there get a clear error); diffusion_models/ only students
    assert "tiny_sd3_student.safetensors" in options and "student_in_diffusion_models.safetensors" in options
    assert "ordinary_model.safetensors" not in options


def test_sd3_student_loads_as_native_flow_model(pack, models):
    model, sigmas, student = run(nodes_by_id(pack)["DPDMDStudentLoader"],
                                 student_name="tiny_sd3_student.safetensors").result
    assert isinstance(model.model, comfy.model_base.SD3)
    assert isinstance(model.get_model_object("model_sampling"), comfy.model_sampling.CONST)
    assert torch.allclose(sigmas, torch.tensor([1.0, 0.8576923, 0.6021505, 0.0089286, 0.0]), atol=1e-6)
    assert student.info.family == "sd3" and student.model is model


def fixed_condition() -> tuple[Cond, list]:
    """Random prompt embeddings shaped like ComfyUI's SD3 text encoders' (distill_core and ComfyUI forms)."""
    g = torch.Generator().manual_seed(0)
    cond = {"context": torch.randn(1, TOKENS, 4096, generator=g), "pooled": torch.randn(1, 2048, generator=g)}
    return cond, [[cond["context"], {"pooled_output": cond["pooled"]}]]


def distill_core_samples(path, levels, state_dict_change=None) -> torch.Tensor:
    """distill_core's own 4-step samples of the student file (model space), one per seed in SEEDS."""
    from comfy_pack import tiny_sd3_transformer
    from safetensors.torch import load_file

    net = tiny_sd3_transformer()
    sd = load_file(str(path))
    net.load_state_dict(state_dict_change(sd) if state_dict_change else sd)
    teacher = FixedCondTeacher(net, pack_module("nodes.compute").family_schedule("sd3"), fixed_condition()[0])
    return sample_grid(teacher, net, ["p"], SEEDS, levels)  # (len(SEEDS), 16, 8, 8)


def comfy_samples(model, sampler, sigmas, positive, seeds=SEEDS, latent=(16, 8, 8)) -> torch.Tensor:
    """SamplerCustom (add noise from each seed, cfg 1) for each seed, in model space; ``latent``: (C, H, W)."""
    out = [SamplerCustom.execute(model, True, seed, 1.0, positive, positive, sampler, sigmas,
                                 {"samples": torch.zeros(1, *latent)}).result[0]["samples"] for seed in seeds]
    return model.get_model_object("latent_format").process_in(torch.cat(out))


def test_student_sigmas_node(pack, models):
    ids = nodes_by_id(pack)
    _, loader_sigmas, student = run(ids["DPDMDStudentLoader"], student_name="tiny_sd3_student.safetensors").result
    node = ids["DPDMDStudentSigmas"]
    assert torch.equal(run(node, source="from student", steps=9, shift=0.0, student=student).result[0], loader_sigmas)
    assert torch.allclose(run(node, source="sd3", steps=4, shift=0.0).result[0], loader_sigmas)
    builtin = run(node, source="builtin", steps=4, shift=0.0).result[0]
    assert builtin.tolist() == pytest.approx([1.0, 0.667, 0.334, 0.001, 0.0])  # shift 1, not SD3's 3
    assert run(node, source="sdxl", steps=4, shift=5.0).result[0][0] == pytest.approx(14.6146, abs=1e-3)
    with pytest.raises(DPDMDError, match="no student is connected"):
        run(node, source="from student", steps=4, shift=0.0)


def test_comfy_4_steps_equal_distill_core(pack, models):
    """SamplerCustom + Student Sampler + the loader's sigmas == distill_core.sampling.sample_grid, same noise."""
    ids = nodes_by_id(pack)
    model, sigmas, student = run(ids["DPDMDStudentLoader"], student_name="tiny_sd3_student.safetensors").result
    sampler = run(ids["DPDMDStudentSampler"]).result[0]
    _, positive = fixed_condition()
    ours = distill_core_samples(models / "dpdmd" / "tiny_sd3_student.safetensors", student.info.levels)
    theirs = comfy_samples(model, sampler, sigmas, positive)
    print(f"max |ComfyUI - distill_core| = {float((theirs - ours).abs().max()):.2e} (samples std {float(ours.std()):.2f})")
    assert torch.allclose(theirs, ours, atol=1e-5, rtol=1e-5), (theirs - ours).abs().max()
    latent_format = model.get_model_object("latent_format")
    # SamplerCustomAdvanced with BasicGuider and RandomNoise: the same images
    from comfy_extras.nodes_custom_sampler import BasicGuider, RandomNoise, SamplerCustomAdvanced

    guider = BasicGuider.execute(model, positive).result[0]
    noise = RandomNoise.execute(SEEDS[0]).result[0]
    adv, _ = SamplerCustomAdvanced.execute(noise, guider, sampler, sigmas, {"samples": torch.zeros(1, 16, 8, 8)}).result
    assert torch.allclose(latent_format.process_in(adv["samples"]), ours[:1], atol=1e-5, rtol=1e-5)
    # the all-in-one node: image i of a batch is what seed + i gives alone in SamplerCustom
    identity_vae = type("VAE", (), {"decode": staticmethod(lambda s: s[:, :3].permute(0, 2, 3, 1))})()
    _, latent = run(ids["DPDMDSample"], student=student, seed=SEEDS[0], batch_size=2, prompt="-", width=64,
                    height=64, display_size=64, positive=positive, vae=identity_vae).result
    alone = torch.cat([ours[:1], comfy_samples(model, sampler, sigmas, positive, [SEEDS[0] + 1])])
    assert torch.allclose(latent_format.process_in(latent["samples"]), alone, atol=1e-5, rtol=1e-5)
    # ComfyUI's 'simple' schedule is not the student's
    simple = comfy.samplers.calculate_sigmas(model.get_model_object("model_sampling"), "simple", 4)
    assert not torch.allclose(simple, sigmas, atol=1e-3)


def test_lora_on_the_native_model(pack, models):
    """A diffusers-format LoRA applied by ComfyUI to the student's MODEL == the merged weights in distill_core."""
    import comfy.sd

    ids = nodes_by_id(pack)
    model, sigmas, student = run(ids["DPDMDStudentLoader"], student_name="tiny_sd3_student.safetensors").result
    g = torch.Generator().manual_seed(5)
    target = "transformer_blocks.0.ff.net.2"  # a Linear(512 -> 128) of the first block
    lora_a, lora_b = torch.randn(4, 512, generator=g) * 0.05, torch.randn(128, 4, generator=g) * 0.05
    lora = {f"transformer.{target}.lora_A.weight": lora_a, f"transformer.{target}.lora_B.weight": lora_b}
    patched, _ = comfy.sd.load_lora_for_models(model, None, lora, 1.0, 0.0)
    _, positive = fixed_condition()
    theirs = comfy_samples(patched, run(ids["DPDMDStudentSampler"]).result[0], sigmas, positive)

    def merge(sd):
        sd = dict(sd)
        sd[f"{target}.weight"] = sd[f"{target}.weight"] + lora_b @ lora_a
        return sd

    path = models / "dpdmd" / "tiny_sd3_student.safetensors"
    ours = distill_core_samples(path, student.info.levels, merge)
    assert torch.allclose(theirs, ours, atol=1e-5, rtol=1e-5), (theirs - ours).abs().max()
    assert not torch.allclose(ours, distill_core_samples(path, student.info.levels), atol=1e-3)  # the LoRA matters


def test_base_then_user_lora_then_student_lora_is_distill_cores_merge(pack, models, tmp_path):
    """LoraLoaderModelOnly twice (a user's kohya LoRA, then a student LoRA as `dpdmd export --format lora` writes it)
    on the base == distill_core's teacher.loras merge plus the student's adapter (issue 27), to 1e-3."""
    import folder_paths
    import nodes as comfy_nodes
    from safetensors.torch import load_file, save_file

    from distill_core.export.exporters import lora_keys
    from distill_core.training.merge import merge_loras

    ids = nodes_by_id(pack)
    base_file = models / "dpdmd" / "tiny_sd3_student.safetensors"
    model, sigmas, student = run(ids["DPDMDStudentLoader"], student_name=base_file.name).result
    g = torch.Generator().manual_seed(9)
    base = load_file(str(base_file))
    user, ours_student = {}, {}
    for module in ("transformer_blocks.0.attn.to_q", "transformer_blocks.1.ff.net.2", "transformer_blocks.0.norm1.linear"):
        out_f, in_f = base[f"{module}.weight"].shape
        stem = "lora_transformer_" + module.replace(".", "_")  # kohya / OneTrainer keys, alpha 1 of rank 2
        user.update({f"{stem}.lora_down.weight": torch.randn(2, in_f, generator=g) * 0.2,
                     f"{stem}.lora_up.weight": torch.randn(out_f, 2, generator=g) * 0.2, f"{stem}.alpha": torch.tensor(1.0)})
    student_file = {}
    for module in ("transformer_blocks.0.attn.to_q", "transformer_blocks.0.ff.net.0.proj"):
        out_f, in_f = base[f"{module}.weight"].shape
        a, b = torch.randn(2, in_f, generator=g) * 0.2, torch.randn(out_f, 2, generator=g) * 0.2
        ours_student[module] = (a, b)
        student_file.update(lora_keys("sd3", module, a, b))
    save_file(student_file, str(tmp_path / "student.safetensors"))
    save_file(user, str(tmp_path / "user.safetensors"))
    saved = folder_paths.folder_names_and_paths["loras"]
    folder_paths.folder_names_and_paths["loras"] = ([str(tmp_path)], {".safetensors"})
    try:
        loader = comfy_nodes.LoraLoaderModelOnly()
        patched = loader.load_lora_model_only(model, "user.safetensors", 0.6)[0]
        patched = loader.load_lora_model_only(patched, "student.safetensors", 1.0)[0]
    finally:
        folder_paths.folder_names_and_paths["loras"] = saved
    _, positive = fixed_condition()
    theirs = comfy_samples(patched, run(ids["DPDMDStudentSampler"]).result[0], sigmas, positive)

    def merged(sd):
        from comfy_pack import tiny_sd3_transformer

        net = tiny_sd3_transformer()
        net.load_state_dict(sd)
        merge_loras(net, [{"path": str(tmp_path / "user.safetensors"), "weight": 0.6}], "sd3")
        out = dict(net.state_dict())
        for module, (a, b) in ours_student.items():
            out[f"{module}.weight"] = out[f"{module}.weight"] + b @ a
        return out

    ours = distill_core_samples(base_file, student.info.levels, merged)
    assert (theirs - ours).abs().max() < 1e-3, (theirs - ours).abs().max()
    assert (ours - distill_core_samples(base_file, student.info.levels)).abs().max() > 2e-2  # the LoRAs matter


def test_original_sdxl_layer_names_are_comfyuis(pack):
    """teacher.loras reads kohya / ComfyUI SDXL LoRAs by the original (LDM / SGM) layer names: distill_core's table
    (read off the diffusers UNet) names every mergeable layer of the real SDXL UNet as comfy.utils does."""
    import comfy.utils

    from distill_core.plan import Architecture, build_meta_network
    from distill_core.reference_configs import SDXL_BASE
    from distill_core.training.merge import original_name, original_unet_names

    net = build_meta_network(Architecture("sdxl", SDXL_BASE["network_class"], SDXL_BASE["network"], {}, {}))
    config = {"num_res_blocks": [2, 2, 2], "channel_mult": [1, 2, 4], "transformer_depth": [0, 0, 2, 2, 10, 10],
              "transformer_depth_output": [0, 0, 0, 2, 2, 2, 10, 10, 10], "transformer_depth_middle": 10}
    theirs = {k.removesuffix(".weight"): v.removesuffix(".weight")
              for k, v in comfy.utils.unet_to_diffusers(config).items() if k.endswith(".weight")}
    ours = original_unet_names(net)
    layers = [name for name, m in net.named_modules() if isinstance(m, (torch.nn.Linear, torch.nn.Conv2d))]
    compared = [name for name in layers if name in theirs]
    assert len(compared) > 0.9 * len(layers)  # comfy's table lacks only a few (e.g. attention norms are not layers)
    assert {name: original_name(name, ours) for name in compared} == {name: theirs[name] for name in compared}


def test_original_sd3_layer_names_are_comfyuis(pack):
    """SD3 LoRAs by MMDiT names (kohya sd-scripts, ComfyUI): distill_core's table (fused q/k/v rows, swapped adaLN
    halves) equals comfy.utils.mmdit_to_diffusers on SD3.5-Medium's transformer."""
    import comfy.utils

    from distill_core.plan import Architecture, build_meta_network
    from distill_core.reference_configs import SD35_MEDIUM
    from distill_core.training.merge import original_mmdit_names

    net = build_meta_network(Architecture("sd3", SD35_MEDIUM["network_class"], SD35_MEDIUM["network"], {}, {}))
    theirs = {}
    for key, value in comfy.utils.mmdit_to_diffusers({"depth": 24}).items():
        if key.endswith(".weight") and key.removesuffix(".weight") in dict(net.named_modules()):
            origin, rows, fn = ((value,) if isinstance(value, str) else tuple(value)) + (None,) * (
                3 - (1 if isinstance(value, str) else len(value)))
            theirs[key.removesuffix(".weight")] = (origin.removesuffix(".weight"), rows and rows[1:], fn is not None)
    ours = {p.module: (orig, p.size and (p.start, p.size), p.swap)
            for orig, parts in original_mmdit_names(net).items() for p in parts}
    linear = {n for n, m in net.named_modules() if isinstance(m, (torch.nn.Linear, torch.nn.Conv2d))}
    assert set(ours) == set(theirs) & linear == linear
    assert ours == {k: theirs[k] for k in ours}
    assert sum(swap for *_, swap in ours.values()) == 2 and sum(bool(rows) for _, rows, _ in ours.values()) == 24 * 6 + 13 * 3


def test_eps_euler_is_the_ddim_step_and_sdxl_sigmas_round_trip(pack):
    """SDXL (epsilon): the student's timesteps -> sigmas -> ComfyUI timesteps, and euler == distill_core DDIM."""
    compute = pack_module("nodes.compute")
    config = comfy.supported_models.SDXL(dict(comfy.supported_models.SDXL.unet_config))
    ms = comfy.model_base.model_sampling(config, comfy.model_base.ModelType.EPS)
    sigmas = torch.tensor(compute.family_sigmas("sdxl", 4), dtype=torch.float32)
    levels = VPSchedule().sampling_levels(4)
    assert ms.timestep(sigmas[:-1]).tolist() == [999, 749, 499, 249]
    assert torch.allclose(ms.sigma(torch.tensor(levels[:-1])), sigmas[:-1], rtol=1e-4)

    w = torch.randn(4, 4, generator=torch.Generator().manual_seed(1)) * 0.3

    def eps_net(x, t):  # any deterministic network of (x_t, t): a fixed mixing of channels
        return torch.einsum("oc,bchw->bohw", w, x) * (1 + t.view(-1, 1, 1, 1) / 1000)

    def denoiser(x, sigma, **_):  # what ComfyUI's model wrapper computes for an EPS model
        return ms.calculate_denoised(sigma, eps_net(ms.calculate_input(sigma, x), ms.timestep(sigma)), x)

    noise = torch.randn(2, 4, 8, 8, generator=torch.Generator().manual_seed(2))
    x = ms.noise_scaling(sigmas[0], noise, torch.zeros_like(noise), max_denoise=True)
    comfy_x0 = k_sampling.sample_euler(denoiser, x, sigmas, disable=True, s_churn=0.0)
    schedule = VPSchedule()
    ours = ddim_sample(lambda x, lv: eps_net(x, schedule.model_timestep(lv)), schedule, noise, levels)
    assert torch.allclose(comfy_x0, ours, atol=1e-4, rtol=1e-4), (comfy_x0 - ours).abs().max()


@pytest.mark.parametrize("kind, prompts", [("shapes", ["a red square", "triangle"]), ("digits", ["a handwritten 7", "three"])])
def test_builtin_student_grid_and_diversity(pack, models, kind, prompts):
    """Each built-in teacher's student draws exactly distill_core's samples; Diversity measures them with that
    teacher's measure (the shapes decoder's features, the digits classifier's)."""
    from distill_core.evaluation.evaluate import diversity, load_extractor

    ids = nodes_by_id(pack)
    model, sigmas, student = run(ids["DPDMDStudentLoader"], student_name=f"{kind}_student.safetensors").result
    assert student.teacher.kind == kind
    grid, images = run(ids["DPDMDSeedGrid"], prompts="\n".join(prompts), seeds=3, first_seed=5, title="",
                       width=64, height=64, display_size=32, student=student).result
    assert images.shape == (6, 32, 32, 3) and grid.shape[0] == 1 and grid.shape[-1] == 3
    assert 0 <= float(images.min()) and float(images.max()) <= 1
    lat = sample_grid(student.teacher, student.net, prompts, [5, 6, 7], student.info.levels)
    decoded = student.teacher.decode(lat)
    factor = 32 // decoded.shape[-1]
    expected = decoded.repeat_interleave(factor, -2).repeat_interleave(factor, -1).permute(0, 2, 3, 1)
    assert torch.allclose(images, expected, atol=1e-6)

    out = run(ids["DPDMDDiversity"], images=images, per_prompt=3, builtin=kind)
    extractor = load_extractor("builtin", kind)
    assert out.result[0] == pytest.approx(diversity(extractor.features(decoded), 3), abs=1e-6)
    assert "diversity" in out.ui.as_dict()["text"][0] and extractor.name in out.ui.as_dict()["text"][0]
    # the MODEL output of a built-in student is not a ComfyUI model: using it says so
    with pytest.raises(AttributeError, match="built-in-teacher student"):
        model.get_model_object("latent_format")


def test_seed_grid_preview_shows_every_row(pack, models):
    """The sampling preview of a 3-prompt grid is the whole grid, a row per prompt and a column per seed."""
    import comfy.utils
    import numpy as np

    from distill_core.grids import tile

    ids = nodes_by_id(pack)
    _, _, student = run(ids["DPDMDStudentLoader"], student_name="digits_student.safetensors").result
    previews = []
    saved = comfy.utils.PROGRESS_BAR_HOOK
    comfy.utils.set_progress_bar_global_hook(lambda value, total, preview, node_id=None: previews.append(preview))
    try:
        _, images = run(ids["DPDMDSeedGrid"], prompts="1\n2\n3", seeds=2, first_seed=0, title="", width=64,
                        height=64, display_size=8, student=student).result
    finally:
        comfy.utils.set_progress_bar_global_hook(saved)
    assert len(previews) == len(student.info.levels) - 1
    fmt, last, _ = previews[-1]
    grid = tile(pack_module("nodes.compute").from_comfy_images(images), 2, cell=64)  # the final images, 3 x 2
    assert fmt == "JPEG" and last.size == grid.size
    assert np.array_equal(np.asarray(last), np.asarray(grid))


def test_hybrid_sampler_node(pack, models):
    """Teacher (its 30-step schedule, cfg 2) for the student's anchor step k, then the student: the Seed Grid
    draws exactly distill_core's hybrid samples and says the evaluations per image."""
    from distill_core.hybrid import hybrid_legs, sample_legs

    ids = nodes_by_id(pack)
    _, _, student = run(ids["DPDMDStudentLoader"], student_name="shapes_student.safetensors").result
    teacher = run(ids["DPDMDBuiltinTeacher"], steps=30, cfg=2.0, teacher="shapes").result[0]
    out = run(ids["DPDMDHybridSampler"], teacher=teacher, student=student, k=0, handover=0.0)
    (hybrid,) = out.result
    k = student.info.anchor_step
    legs = hybrid_legs(teacher.net, teacher.teacher.teacher_levels(30), 2.0, k, student.net, student.info.levels)
    assert [leg.levels for leg in hybrid.legs] == [leg.levels for leg in legs]
    assert out.ui["text"][0].endswith(f"; {2 * k + legs[1].steps} per image"), out.ui
    grid, images = run(ids["DPDMDSeedGrid"], prompts="red\nblue", seeds=2, first_seed=1, title="", width=64,
                       height=64, display_size=16, student=hybrid).result
    expected = student.teacher.decode(sample_legs(student.teacher, legs, ["red", "blue"], [1, 2])).permute(0, 2, 3, 1)
    assert torch.allclose(images, expected, atol=1e-6)
    _, _, digits = run(ids["DPDMDStudentLoader"], student_name="digits_student.safetensors").result
    with pytest.raises(DPDMDError, match="distilled from the built-in digits teacher .* set the Built-in Teacher's "
                                         "'teacher' to digits"):
        run(ids["DPDMDHybridSampler"], teacher=teacher, student=digits, k=0, handover=0.0)
    digits_teacher = run(ids["DPDMDBuiltinTeacher"], steps=30, cfg=2.0, teacher="digits").result[0]
    assert digits_teacher.teacher.kind == "digits" and digits_teacher.net.config.in_channels == 1
    _, _, sd3 = run(ids["DPDMDStudentLoader"], student_name="tiny_sd3_student.safetensors").result
    with pytest.raises(DPDMDError, match="hybrid sampler runs built-in students"):
        run(ids["DPDMDHybridSampler"], teacher=teacher, student=sd3, k=0, handover=0.0)


def test_diversity_uses_a_clip_vision_model_when_given(pack):
    """With a Load CLIP Vision model connected, Eq. 9 runs on its image_embeds (a stand-in model here)."""
    from types import SimpleNamespace

    embeds = torch.tensor([[1.0, 0.0], [0.0, 1.0], [1.0, 0.0], [1.0, 0.0]])
    seen = []
    vision = SimpleNamespace(encode_image=lambda images: seen.append(images.shape) or SimpleNamespace(image_embeds=embeds))
    out = run(nodes_by_id(pack)["DPDMDDiversity"], images=torch.rand(4, 32, 32, 3), per_prompt=2, clip_vision=vision)
    assert seen == [(4, 32, 32, 3)] and out.result[0] == pytest.approx(0.5)
    assert "CLIP vision" in out.ui.as_dict()["text"][0]


@pytest.mark.parametrize("name, message", [
    ("nope.safetensors", "no student named 'nope.safetensors'"),
    ("not_a_student.safetensors", "no DP-DMD student metadata"),
    ("truncated_student.safetensors", "is truncated"),
])
def test_loader_refuses_bad_input_with_a_clear_message(pack, models, name, message):
    loader = nodes_by_id(pack)["DPDMDStudentLoader"]
    result = loader.validate_inputs(student_name=name)
    assert isinstance(result, str) and message in result


def test_comfy_registry_config_parses():
    """ComfyUI's own parser (the Comfy Registry schema) reads the [tool.comfy] block of pyproject.toml."""
    from comfy_config import config_parser
    from comfy_pack import ROOT

    config = config_parser.extract_node_configuration(str(ROOT))
    assert config.project.name == "dp-dmd-studio" and "comfyui" not in config.project.name.lower()
    assert config.tool_comfy.publisher_id and config.tool_comfy.display_name == "DP-DMD Studio"
    assert config.project.supported_comfyui_version == f">={targets()[0].name}"  # the oldest ComfyUI tested
    repo = config.project.urls.repository
    assert re.fullmatch(r"https://github\.com/[\w-]+/dp-dmd-studio", repo), repo
    icon = config.tool_comfy.icon  # served from the repository: a file it ships
    assert icon.startswith(repo.replace("github.com", "raw.githubusercontent.com") + "/main/"), icon
    assert (ROOT / icon.split("/main/", 1)[1]).is_file(), icon
    assert config.tool_comfy.web is None  # WEB_DIRECTORY serves the JS; both would load it twice


def test_teacher_student_sampler_node(pack, models):
    """The hybrid SAMPLER on ComfyUI MODELs: k = 0 is the Student Sampler exactly; teacher == student at cfg 1
    is plain Euler over the concatenated sigmas; a different teacher at cfg 2 equals the hand-composed
    teacher leg (SamplerCustom, cfg 2, the teacher's k sigmas) followed by the student's Euler steps."""
    from comfy_extras.nodes_custom_sampler import BasicGuider, SamplerCustomAdvanced

    ids = nodes_by_id(pack)
    model, sigmas, _ = run(ids["DPDMDStudentLoader"], student_name="tiny_sd3_student.safetensors").result
    teacher, _, _ = run(ids["DPDMDStudentLoader"], student_name="student_in_diffusion_models.safetensors").result
    _, positive = fixed_condition()
    negative = [[torch.zeros_like(positive[0][0]), {"pooled_output": torch.zeros_like(positive[0][1]["pooled_output"])}]]
    node = ids["DPDMDTeacherStudentSampler"]
    plain = comfy_samples(model, run(ids["DPDMDStudentSampler"]).result[0], sigmas, positive)

    alone = run(node, teacher=teacher, positive=positive, negative=negative, cfg=2.0, k=0, handover=1).result[0]
    assert torch.equal(comfy_samples(model, alone, sigmas, positive), plain)

    same = run(node, teacher=model, positive=positive, negative=negative, cfg=1.0, k=3, handover=1).result[0]
    joined = torch.cat([torch.linspace(float(sigmas[0]), float(sigmas[1]), 4), sigmas[2:]])
    euler = comfy_samples(model, run(ids["DPDMDStudentSampler"]).result[0], joined, positive)
    assert torch.allclose(comfy_samples(model, same, sigmas, positive), euler, atol=1e-5, rtol=1e-5)

    out = run(node, teacher=teacher, positive=positive, negative=negative, cfg=2.0, k=2, handover=1)
    assert "4 NFE" in out.ui["text"][0], out.ui
    ours = comfy_samples(model, out.result[0], sigmas, positive)
    assert torch.isfinite(ours).all() and not torch.allclose(ours, plain, atol=1e-3)
    latent_format = model.get_model_object("latent_format")
    euler_sampler = run(ids["DPDMDStudentSampler"]).result[0]
    leg = torch.linspace(float(sigmas[0]), float(sigmas[1]), 3)

    ms = teacher.get_model_object("model_sampling")

    class StartHere:  # CONST noise scaling: s * n + (1 - s) * x == x when n == x (continue from the latent)
        seed = 0

        def __init__(self, x):
            self.x = x

        def generate_noise(self, latent):
            return self.x

    reference = []
    for seed in SEEDS:
        mid = SamplerCustom.execute(teacher, True, seed, 2.0, positive, negative, euler_sampler, leg,
                                    {"samples": torch.zeros(1, 16, 8, 8)}).result[0]["samples"]
        mid = latent_format.process_in(mid)
        if hasattr(ms, "inverse_noise_scaling"):  # undo the division by 1 - sigma at the end of a flow leg
            mid = ms.noise_scaling(leg[-1], torch.zeros_like(mid), mid)
        guider = BasicGuider.execute(model, positive).result[0]
        reference.append(SamplerCustomAdvanced.execute(StartHere(mid), guider, euler_sampler, sigmas[1:],
                                                       {"samples": latent_format.process_out(mid)}).result[0]["samples"])
    reference = latent_format.process_in(torch.cat(reference))
    assert torch.allclose(ours, reference, atol=1e-5, rtol=1e-5), (ours - reference).abs().max()
