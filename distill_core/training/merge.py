"""``teacher.loras``: LoRA files merged into the frozen teacher at load, W += weight * (alpha / rank) * up @ down.

Family-generic: a file's keys are matched to the layers of any ``nn.Module`` by name, through the per-family
key formats its teacher class lists (``lora_key_formats``: the prefixes LoRA trainers write), and where its
trainers use the original checkpoint's layer names, a table here its teacher names (SDXL's UNet blocks, SD3's
MMDiT with fused q/k/v, both read off the network and checked against ComfyUI's own tables; FLUX.2's Black Forest
Labs names, from the tables its ComfyUI export uses). A file is merged whole or not at all: keys that match no
layer (a text-encoder part, another family's names, a format this table lacks) refuse the file, naming how many
matched and the prefix expected, so a LoRA is never silently half applied. Merging is done in float32 and cast back to the layer's dtype.
"""
from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from ..errors import ConfigError, shown

# (down / A, up / B) suffixes: kohya / ComfyUI, diffusers / PEFT (with peft's adapter name), older diffusers
FACTOR_SUFFIXES = ((".lora_down.weight", ".lora_up.weight"), (".lora_A.weight", ".lora_B.weight"),
                   (".lora_A.default.weight", ".lora_B.default.weight"), (".lora.down.weight", ".lora.up.weight"))


@dataclass(frozen=True)
class KeyFormat:
    name: str
    prefix: str  # before the layer name
    underscores: bool  # the layer name's dots written as underscores (kohya)
    original: bool = False  # the layer named as in the original (LDM / SGM) checkpoint, not as in diffusers


def key_formats(family: str) -> tuple[KeyFormat, ...]:
    """The LoRA file layouts teacher.loras reads for ``family`` (its teacher's ``lora_key_formats``)."""
    from ..teachers.base import family_teacher  # (imported here: the teachers import this module)

    return family_teacher(family).lora_key_formats


# a ResNet block's layers in the original UNet
_RESNET = {"conv1": "in_layers.2", "time_emb_proj": "emb_layers.1", "conv2": "out_layers.3",
           "conv_shortcut": "skip_connection"}
_UNET_BASIC = {"conv_in": "input_blocks.0.0", "conv_out": "out.2", "time_embedding.linear_1": "time_embed.0",
               "time_embedding.linear_2": "time_embed.2", "add_embedding.linear_1": "label_emb.0.0",
               "add_embedding.linear_2": "label_emb.0.2"}


def original_unet_names(net: nn.Module) -> dict[str, str]:
    """diffusers UNet module prefix -> its original (LDM / SGM, kohya's and ComfyUI's) name, read off the network's
    own blocks (the numbering ComfyUI's unet_to_diffusers uses)."""
    names, n = dict(_UNET_BASIC), 1
    for b, block in enumerate(getattr(net, "down_blocks", [])):
        for i in range(len(block.resnets)):
            names[f"down_blocks.{b}.resnets.{i}"] = f"input_blocks.{n}.0"
            if getattr(block, "attentions", None):
                names[f"down_blocks.{b}.attentions.{i}"] = f"input_blocks.{n}.1"
            n += 1
        if getattr(block, "downsamplers", None):
            names[f"down_blocks.{b}.downsamplers.0.conv"] = f"input_blocks.{n}.0.op"
            n += 1
    mid = getattr(net, "mid_block", None)
    if mid is not None:
        names.update({"mid_block.resnets.0": "middle_block.0", "mid_block.attentions.0": "middle_block.1",
                      "mid_block.resnets.1": "middle_block.2"})
    n = 0
    for u, block in enumerate(getattr(net, "up_blocks", [])):
        attentions = bool(getattr(block, "attentions", None))
        for i in range(len(block.resnets)):
            names[f"up_blocks.{u}.resnets.{i}"] = f"output_blocks.{n}.0"
            if attentions:
                names[f"up_blocks.{u}.attentions.{i}"] = f"output_blocks.{n}.1"
            if i == len(block.resnets) - 1 and getattr(block, "upsamplers", None):
                names[f"up_blocks.{u}.upsamplers.0.conv"] = f"output_blocks.{n}.{2 if attentions else 1}.conv"
            n += 1
    return names


@dataclass(frozen=True)
class Part:
    """Where rows of an original layer's weight go: ``module``'s rows (all, or ``size`` from ``start`` of a fused
    q/k/v weight); ``swap``: the original stores (scale, shift) where diffusers stores (shift, scale)."""
    module: str
    start: int = 0
    size: int | None = None
    swap: bool = False


_MMDIT_BASIC = {"context_embedder": "context_embedder", "t_embedder.mlp.0": "time_text_embed.timestep_embedder.linear_1",
                "t_embedder.mlp.2": "time_text_embed.timestep_embedder.linear_2", "x_embedder.proj": "pos_embed.proj",
                "y_embedder.mlp.0": "time_text_embed.text_embedder.linear_1",
                "y_embedder.mlp.2": "time_text_embed.text_embedder.linear_2", "final_layer.linear": "proj_out"}
_MMDIT_BLOCK = {"context_block.adaLN_modulation.1": "norm1_context.linear", "context_block.attn.proj": "attn.to_add_out",
                "context_block.mlp.fc1": "ff_context.net.0.proj", "context_block.mlp.fc2": "ff_context.net.2",
                "x_block.adaLN_modulation.1": "norm1.linear", "x_block.attn.proj": "attn.to_out.0",
                "x_block.attn2.proj": "attn2.to_out.0", "x_block.mlp.fc1": "ff.net.0.proj", "x_block.mlp.fc2": "ff.net.2"}
_MMDIT_QKV = {"x_block.attn.qkv": ("attn.to_q", "attn.to_k", "attn.to_v"),
              "context_block.attn.qkv": ("attn.add_q_proj", "attn.add_k_proj", "attn.add_v_proj"),
              "x_block.attn2.qkv": ("attn2.to_q", "attn2.to_k", "attn2.to_v")}


def original_mmdit_names(net: nn.Module) -> dict[str, list[Part]]:
    """SD3 MMDiT original layer name -> the diffusers layers it holds (the numbering of ComfyUI's mmdit_to_diffusers):
    q, k and v fused in one weight, adaLN rows of the final layers in (scale, shift) order."""
    modules = dict(net.named_modules())
    table = {orig: [Part(module)] for orig, module in _MMDIT_BASIC.items()}
    table["final_layer.adaLN_modulation.1"] = [Part("norm_out.linear", swap=True)]
    for i in range(len(getattr(net, "transformer_blocks", []))):
        block, joint = f"transformer_blocks.{i}", f"joint_blocks.{i}"
        for orig, module in _MMDIT_BLOCK.items():
            if f"{block}.{module}" in modules:  # the last block's context half is pre-only: fewer layers
                swap = module == "norm1_context.linear" and getattr(modules[block], "context_pre_only", False)
                table[f"{joint}.{orig}"] = [Part(f"{block}.{module}", swap=swap)]
        for orig, (q, k, v) in _MMDIT_QKV.items():
            if f"{block}.{q}" in modules:
                h = modules[f"{block}.{q}"].out_features
                table[f"{joint}.{orig}"] = [Part(f"{block}.{m}", j * h, h) for j, m in enumerate((q, k, v))]
    return {orig: parts for orig, parts in table.items() if all(p.module in modules for p in parts)}


def original_flux2_names(net: nn.Module) -> dict[str, list[Part]]:
    """FLUX.2 Black Forest Labs layer name -> the diffusers layers it holds, from the tables the ComfyUI export uses
    (teachers/flux2.py): the double blocks' q, k and v fused in one weight, the final adaLN's rows (shift, scale)."""
    from ..teachers.flux2 import BFL_DOUBLE, BFL_NAMES, BFL_QKV, BFL_SINGLE

    modules = dict(net.named_modules())
    table = {bfl: [Part(module)] for module, bfl in BFL_NAMES.items()}
    table["final_layer.adaLN_modulation.1"] = [Part("norm_out.linear", swap=True)]
    for i in range(len(getattr(net, "transformer_blocks", []))):
        block, double = f"transformer_blocks.{i}", f"double_blocks.{i}"
        table.update({f"{double}.{bfl}": [Part(f"{block}.{module}")] for module, bfl in BFL_DOUBLE.items()})
        for fused, qkv in BFL_QKV.items():
            h = getattr(modules.get(f"{block}.{qkv[0]}"), "out_features", 0)
            table[f"{double}.{fused}"] = [Part(f"{block}.{m}", j * h, h) for j, m in enumerate(qkv)]
    for i in range(len(getattr(net, "single_transformer_blocks", []))):
        table.update({f"single_blocks.{i}.{bfl}": [Part(f"single_transformer_blocks.{i}.{module}")]
                      for module, bfl in BFL_SINGLE.items()})
    return {orig: parts for orig, parts in table.items()
            if all(isinstance(modules.get(p.module), nn.Linear) for p in parts)}  # not the norms


def original_unet_layers(net: nn.Module) -> dict[str, list[Part]]:
    """SDXL's UNet: every linear and convolution layer by its original (LDM / SGM) name."""
    blocks = original_unet_names(net)
    out = {}
    for name, m in net.named_modules():
        if isinstance(m, (nn.Linear, nn.Conv2d)) and (spelt := original_name(name, blocks)) is not None:
            out[spelt] = [Part(name)]
    return out


def original_name(module: str, names: dict[str, str]) -> str | None:
    """A diffusers module's original name (None where the table has no block for it)."""
    parts = module.split(".")
    for cut in range(len(parts), 0, -1):
        head = ".".join(parts[:cut])
        if head in names:
            tail = parts[cut:]
            if ".resnets." in head and tail:
                tail = _RESNET.get(tail[0], tail[0]).split(".") + tail[1:]
            return ".".join([names[head], *tail])
    return None


def expected_prefixes(family: str) -> str:
    return " or ".join(f"'{f.prefix}' ({f.name})" for f in key_formats(family) if not f.original)


def file_sha256(path: str | Path) -> str:
    digest = hashlib.sha256()
    with open(Path(path).expanduser(), "rb") as f:
        for block in iter(lambda: f.read(1 << 24), b""):
            digest.update(block)
    return digest.hexdigest()


def lora_records(loras: list[dict]) -> list[dict]:
    """What a run records of its teacher LoRAs: file name, sha256, weight (in order)."""
    return [{"name": Path(x["path"]).name, "sha256": file_sha256(x["path"]), "weight": x["weight"]} for x in loras]


def _layer_names(net: nn.Module, family: str) -> dict[str, list[Part]]:
    """Every way a key format may name a mergeable layer -> the diffusers layers (rows) it holds."""
    from ..teachers.base import family_teacher  # (imported here: the teachers import this module)

    own = {name: [Part(name)] for name, m in net.named_modules()
           if isinstance(m, (nn.Linear, nn.Conv2d)) and ".lora_" not in name}
    teacher = family_teacher(family)
    formats = teacher.lora_key_formats
    original = teacher.original_layer_names(net) if any(f.original for f in formats) else {}
    names = {}
    for fmt in formats:
        for spelt, parts in (original if fmt.original else own).items():
            names[fmt.prefix + (spelt.replace(".", "_") if fmt.underscores else spelt)] = parts
    return names


def read_deltas(path: str, family: str, net: nn.Module, field: str) -> dict[str, torch.Tensor]:
    """module name -> float32 delta (alpha / rank applied) of every layer of a LoRA file; refuses partial files."""
    from safetensors.torch import load_file

    try:
        tensors = load_file(str(Path(path).expanduser()))
    except Exception as e:  # a missing, foreign or damaged file: one line naming it
        raise ConfigError(f"{field} {shown(path)} cannot be read as a LoRA safetensors file ({e})") from None
    names = _layer_names(net, family)
    deltas, used = {}, set()
    for key in tensors:
        for down_suffix, up_suffix in FACTOR_SUFFIXES:
            if not key.endswith(down_suffix):
                continue
            stem = key[: -len(down_suffix)]
            up_key, alpha_key = stem + up_suffix, stem + ".alpha"
            if stem not in names or up_key not in tensors:
                break
            down, up = tensors[key].float(), tensors[up_key].float()
            scale = float(tensors[alpha_key]) / down.shape[0] if alpha_key in tensors else 1.0
            fused = (up.flatten(1) @ down.flatten(1)).reshape(up.shape[0], *down.shape[1:]) * scale
            for part in names[stem]:
                weight = net.get_submodule(part.module).weight
                delta = fused[part.start: part.start + (part.size or fused.shape[0])]
                if part.swap:  # (scale, shift) -> (shift, scale)
                    delta = torch.cat(delta.chunk(2)[::-1])
                if delta.shape != weight.shape:
                    raise ConfigError(f"{field} {shown(path)}: layer {part.module} has shape {tuple(weight.shape)} but "
                                      f"the file's factors make {tuple(delta.shape)}; is it a LoRA of this {family} model?")
                deltas[part.module] = delta
            used |= {key, up_key, alpha_key}
            break
    rest = sorted(k for k in tensors if k not in used)
    if rest:
        matched = f"only {len(deltas)} layers matched" if deltas else "no key matched a layer"
        prefix = re.match(r"[a-z_]+[._]?", rest[0])
        raise ConfigError(f"{field} {shown(path)}: {matched}; {len(rest)} of its {len(tensors)} tensors did not "
                          f"(e.g. {rest[0]!r}{', prefix ' + repr(prefix[0]) if prefix else ''}). A {family} "
                          f"denoiser LoRA's keys start with {expected_prefixes(family)}; text-encoder parts are not "
                          "merged: give a LoRA of the denoiser only")
    if not deltas:
        raise ConfigError(f"{field} {shown(path)} holds no LoRA factors; expected keys starting with "
                          f"{expected_prefixes(family)}")
    return deltas


@torch.no_grad()
def merge_loras(net: nn.Module, loras: list[dict], family: str) -> nn.Module:
    """Merge ``loras`` ([{path, weight}], in order) into ``net``'s weights in place; returns ``net``."""
    if loras and not key_formats(family):
        raise ConfigError(f"teacher.loras is not available for {family} teachers (no LoRA key formats in its "
                          "teacher's lora_key_formats); remove it")
    for i, lora in enumerate(loras):
        field = f"teacher.loras[{i}].path"
        for module, delta in read_deltas(lora["path"], family, net, field).items():
            weight = net.get_submodule(module).weight
            weight.copy_((weight.float() + lora["weight"] * delta).to(weight.dtype))
    return net
