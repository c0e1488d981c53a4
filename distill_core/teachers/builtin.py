"""The built-in teachers (shapes, digits) behind the Teacher interface."""
from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from pathlib import Path

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import load_file
from torch import nn

from ..builtin.kinds import KINDS, data_module
from ..builtin.networks import TEACHER_CONFIGS, build_teacher_network
from ..errors import CheckpointError
from ..families import FAMILIES
from ..schedules import FlowSchedule
from .base import Cond, Teacher

WEIGHTS_DIR = Path(__file__).resolve().parent.parent / "builtin" / "weights"
REBUILD = "python -m distill_core.builtin.train_weights"


def verify_shipped(path: Path) -> None:
    """Refuse a shipped weights file whose sha256 differs from weights/SHA256SUMS."""
    sums = WEIGHTS_DIR / "SHA256SUMS"
    if path.parent.resolve() != WEIGHTS_DIR or not sums.exists():
        return
    expected = dict(line.split()[::-1] for line in sums.read_text().splitlines() if line.strip())
    if path.name in expected and hashlib.sha256(path.read_bytes()).hexdigest() != expected[path.name]:
        raise CheckpointError(f"{path} does not match its recorded sha256 (weights/SHA256SUMS); "
                              f"restore it with git or rebuild it with `{REBUILD}`")


def load_builtin_weights(path: Path) -> tuple[dict, dict[str, str]]:
    if not path.is_file():
        raise CheckpointError(f"built-in teacher weights {str(path)!r} are missing; rebuild them with `{REBUILD}`")
    verify_shipped(path)
    try:
        with safe_open(str(path), framework="pt") as f:
            meta = f.metadata() or {}
        return load_file(str(path)), meta
    except (SafetensorError, OSError) as e:
        raise CheckpointError(f"teacher.path {str(path)!r} is not a safetensors file of the built-in teacher ({e}); "
                              "leave teacher.path empty for the shipped weights") from None


IMAGE_FORMAT = ("sample_size", "in_channels", "out_channels", "num_embeds_ada_norm")  # what a kind's data fixes


def kind_of(network_config: dict) -> str | None:
    """Which built-in teacher a network config (a student file's, a weights file's) belongs to, if any."""
    return next((kind for kind, config in TEACHER_CONFIGS.items() if config == network_config), None)


class BuiltinTeacher(Teacher):
    """Class-conditional flow-matching DiT on generated shapes (16x16 RGB) or on 8x8 digits; prompts name a class.

    ``kind`` picks the data (config: teacher.builtin); the default stays digits for callers that predate shapes.
    """

    family = "builtin"
    lora_targets = ("to_q", "to_k", "to_v", "to_out.0", "ff.net.0.proj", "ff.net.2")
    modelspec_arch = "dpdmd-builtin-digits"

    def __init__(self, path: str | Path = "", shift: float | None = None, dtype: torch.dtype = torch.float32,
                 kind: str = "digits"):
        self.kind = kind
        self.data = data_module(kind)
        self.path = Path(path) if path else WEIGHTS_DIR / KINDS[kind].teacher_file
        state, meta = load_builtin_weights(self.path)
        self._config = json.loads(meta["config"]) if "config" in meta else None
        if self._config is not None and any(self._config.get(k) != TEACHER_CONFIGS[kind][k] for k in IMAGE_FORMAT):
            raise CheckpointError(f"teacher.path {str(self.path)!r} draws other images than the {kind} teacher "
                                  f"({kind_of(self._config) or 'another format'}); set teacher.builtin to match it "
                                  "or leave teacher.path empty")
        net = build_teacher_network(self._config)
        try:
            net.load_state_dict(state)
        except RuntimeError as e:
            raise CheckpointError(f"teacher.path {str(self.path)!r} holds other weights than the built-in teacher's "
                                  f"({str(e).splitlines()[0]}); leave teacher.path empty for the shipped ones") from None
        if dtype != torch.float32:
            net = net.to(dtype)
        super().__init__(net, FlowSchedule(shift=FAMILIES[self.family].shift if shift is None else shift))

    def call_network(self, net: nn.Module, x: torch.Tensor, levels: torch.Tensor, cond: Cond) -> torch.Tensor:
        dtype = next(net.parameters()).dtype
        t = self.schedule.model_timestep(levels).to(x.device)
        out = net(x.to(dtype), timestep=t, class_labels=cond["class_labels"].to(x.device)).sample
        return out.to(x.dtype)

    def encode_prompts(self, prompts: Sequence[str]) -> Cond:
        return {"class_labels": torch.tensor([self.data.parse_prompt(p) for p in prompts], dtype=torch.long)}

    def null_condition(self) -> Cond:
        return {"class_labels": torch.tensor([self.data.NULL_LABEL], dtype=torch.long)}

    def latent_shape(self) -> tuple[int, int, int]:
        channels = TEACHER_CONFIGS[self.kind]["in_channels"]
        return (channels, self.data.IMAGE_SIZE, self.data.IMAGE_SIZE)

    def decode(self, latents: torch.Tensor) -> torch.Tensor:
        images = ((latents.float() + 1) / 2).clamp(0, 1)
        return images if images.shape[1] == 3 else images.repeat(1, 3, 1, 1)

    def network_config(self) -> dict:
        return dict(self._config or {})

    def describe(self) -> dict:
        return {"family": self.family, "builtin": self.kind, "path": str(self.path),
                "architecture": "DiTTransformer2DModel",
                "prediction_type": self.schedule.prediction_type, "schedule": self.schedule.describe()}


TEACHER = BuiltinTeacher
