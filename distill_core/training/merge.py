"""``teacher.loras``: LoRA files merged into the frozen teacher at load, W += weight * (alpha / rank) * up @ down.

Family-generic: a file's keys are matched to the layers of any ``nn.Module`` by name, through the per-family
key formats of ``KEY_FORMATS`` (the prefixes LoRA trainers write); a new family adds its row. A file is
merged whole or not at all: keys that match no layer (a text-encoder part, another family's names, a format
this table lacks) refuse the file, naming how many matched and the prefix expected, so a LoRA is never
silently half applied. Merging is done in float32 and cast back to the layer's dtype.
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


KEY_FORMATS: dict[str, tuple[KeyFormat, ...]] = {
    "sd3": (KeyFormat("diffusers", "transformer.", False), KeyFormat("PEFT", "base_model.model.", False),
            KeyFormat("kohya / OneTrainer", "lora_transformer_", True), KeyFormat("ComfyUI", "diffusion_model.", False)),
    "sdxl": (KeyFormat("diffusers", "unet.", False), KeyFormat("PEFT", "base_model.model.", False),
             KeyFormat("kohya", "lora_unet_", True), KeyFormat("ComfyUI", "diffusion_model.", False)),
}


LDM_BLOCKS = ("input_blocks", "middle_block", "output_blocks", "joint_blocks")  # original-checkpoint layer names


def expected_prefixes(family: str) -> str:
    return " or ".join(f"'{f.prefix}' ({f.name})" for f in KEY_FORMATS[family])


def file_sha256(path: str | Path) -> str:
    digest = hashlib.sha256()
    with open(Path(path).expanduser(), "rb") as f:
        for block in iter(lambda: f.read(1 << 24), b""):
            digest.update(block)
    return digest.hexdigest()


def lora_records(loras: list[dict]) -> list[dict]:
    """What a run records of its teacher LoRAs: file name, sha256, weight (in order)."""
    return [{"name": Path(x["path"]).name, "sha256": file_sha256(x["path"]), "weight": x["weight"]} for x in loras]


def _layer_names(net: nn.Module, family: str) -> dict[str, str]:
    """Every way a key format may name a mergeable layer -> the layer's module name."""
    names = {}
    for name, m in net.named_modules():
        if isinstance(m, (nn.Linear, nn.Conv2d)) and ".lora_" not in name:
            for fmt in KEY_FORMATS[family]:
                names[fmt.prefix + (name.replace(".", "_") if fmt.underscores else name)] = name
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
            weight = net.get_submodule(names[stem]).weight
            delta = (up.flatten(1) @ down.flatten(1)).reshape(weight.shape[0], *down.shape[1:]) * scale
            if delta.shape != weight.shape:
                raise ConfigError(f"{field} {shown(path)}: layer {names[stem]} has shape {tuple(weight.shape)} but the "
                                  f"file's factors make {tuple(delta.shape)}; is it a LoRA of this {family} model?")
            deltas[names[stem]] = delta
            used |= {key, up_key, alpha_key}
            break
    rest = sorted(k for k in tensors if k not in used)
    if rest and any(part in rest[0] for part in LDM_BLOCKS):
        raise ConfigError(f"{field} {shown(path)} names its layers by the original (LDM / SGM) block names "
                          f"(e.g. {rest[0]!r}), which teacher.loras does not map yet; give a LoRA with diffusers layer "
                          f"names, keys starting with {expected_prefixes(family)}")
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
    for i, lora in enumerate(loras):
        field = f"teacher.loras[{i}].path"
        for module, delta in read_deltas(lora["path"], family, net, field).items():
            weight = net.get_submodule(module).weight
            weight.copy_((weight.float() + lora["weight"] * delta).to(weight.dtype))
    return net
