"""LoRA for the student and the fake score (peft); the state dicts around it are in ``adapters``.

With ``student.lora_rank > 0`` both trainable networks keep the teacher's
weights frozen (in bf16 when the run uses bf16 autocast with a bf16 teacher)
and train low-rank adapters in float32 on every attention and feed-forward
linear layer. B starts at zero, so both networks start exactly at the teacher,
as in full fine-tuning. Checkpoints hold only the adapters (the frozen part is
re-read from the teacher folder, bit-identical); exports merge them, so every
exported student has the teacher's layout.

Two ways to hold the frozen part (``student.lora_mode``): ``copies`` gives the
student and the fake score a frozen copy each; ``shared`` puts both adapters,
named ``student`` and ``fake``, on the teacher's own network, which predicts as
the teacher while both are off (two frozen copies less memory). Each network is
then an ``AdapterView`` of the base whose state reads as a copy's would, so
checkpoints and exports of the two modes are the same files.
"""
from __future__ import annotations

import warnings
from collections.abc import Iterator, Sequence
from contextlib import contextmanager, nullcontext

import torch
from torch import nn

from ..config import Config
from ..errors import CheckpointError, ConfigError
from ..teachers.base import family_teacher
from .adapters import ADAPTER

STUDENT, FAKE = "student", "fake"  # the adapters of a shared base


def target_modules(net: nn.Module, family: str) -> list[str]:
    """The Linear layers of ``net`` LoRA adapts: the family teacher's ``lora_targets``, as module-name suffixes."""
    suffixes = family_teacher(family).lora_targets
    return [name for name, m in net.named_modules()
            if isinstance(m, nn.Linear) and any(name == s or name.endswith("." + s) for s in suffixes)]


def add_lora(net: nn.Module, rank: int, family: str, dtype: torch.dtype = torch.float32, seed: int = 0,
             names: Sequence[str] = (ADAPTER,), fp8: bool = False) -> nn.Module:
    """Freeze ``net`` (cast to ``dtype``; ``fp8``: its linear layers quantised, see fp8.py) and inject trainable
    float32 rank-``rank`` adapters ``names`` in place.

    Each adapter's random A matrices are drawn from ``seed`` (not the global RNG), so a run and its resumed
    twin start from the same adapters, and the adapters of a shared base start as the copies' do.
    """
    from peft import LoraConfig, inject_adapter_in_model

    targets = target_modules(net, family)
    if not targets:
        raise CheckpointError(f"no LoRA target layers found in the {family} network")
    nn.Module.to(net.requires_grad_(False), dtype)  # nn.Module's: diffusers' .to warns on dtype casts
    if fp8:  # before the adapters, as a shared base is (the teacher's, quantised at load)
        from .fp8 import quantize_linears
        quantize_linears(net)
    config = LoraConfig(r=rank, lora_alpha=rank, target_modules=targets, init_lora_weights=True, lora_dropout=0.0)
    for name in names:
        with torch.random.fork_rng(devices=[]), warnings.catch_warnings():
            warnings.filterwarnings("ignore", "Already found a `peft_config`")  # a second adapter is the point
            torch.manual_seed(seed)
            inject_adapter_in_model(config, net, adapter_name=name)
    for name, p in net.named_parameters():
        if ".lora_" in name:
            p.data = p.data.float()
            p.requires_grad_(True)
    return net


def lora_mode(cfg: Config, sharded: bool) -> str:
    """'shared' or 'copies' for a LoRA run ('auto': shared for sd3 / sdxl where it can be: see the refusals)."""
    s = cfg.student
    bf16_without_autocast = cfg.teacher.dtype == "bfloat16" and cfg.run.mixed_precision != "bf16"
    if s.lora_mode == "auto":
        shared = cfg.teacher.family != "builtin" and not (s.ema_decay or sharded or bf16_without_autocast)
        return "shared" if shared else "copies"
    if s.lora_mode == "shared" and s.ema_decay:
        raise ConfigError("student.lora_mode = 'shared' keeps no EMA (its copy would be a whole base network); "
                          "set student.ema_decay = 0, or lora_mode = 'copies'")
    if s.lora_mode == "shared" and sharded:
        raise ConfigError("student.lora_mode = 'shared' is not available under FSDP (each process would hold a shard "
                          "of the teacher); use lora_mode = 'copies' (or 'auto'), or train with DDP")
    if s.lora_mode == "shared" and bf16_without_autocast:
        raise ConfigError("student.lora_mode = 'shared' trains float32 adapters on the teacher's bfloat16 weights, "
                          "which needs run.mixed_precision = 'bf16'; set it, or teacher.dtype = 'float32', or "
                          "lora_mode = 'copies'")
    return s.lora_mode


def _adapter_segment(key: str) -> int | None:
    """Index of the adapter name in a dotted peft key ('...lora_A.<name>.weight'), None for other keys."""
    parts = key.split(".")
    return next((i + 1 for i, p in enumerate(parts[:-1]) if p.startswith("lora_")), None)


def adapter_of(key: str) -> str | None:
    """The adapter a peft key belongs to; None for the base's keys."""
    i = _adapter_segment(key)
    return None if i is None else key.split(".")[i]


def rename_adapter(key: str, old: str, new: str) -> str | None:
    """``key`` with adapter ``old`` called ``new``; None for another adapter's key; other keys unchanged."""
    i = _adapter_segment(key)
    if i is None:
        return key
    parts = key.split(".")
    if parts[i] != old:
        return None
    parts[i] = new
    return ".".join(parts)


def set_active(layers: Sequence[nn.Module], name: str | None) -> None:
    """Switch every peft layer to adapter ``name`` (None: adapters off), leaving requires_grad alone
    (peft's own set_adapter / enable_adapters also freeze the inactive adapters)."""
    for layer in layers:
        layer._active_adapter = [name] if name else layer._active_adapter
        layer._disable_adapters = name is None


class AdapterView(nn.Module):
    """One adapter of a shared frozen base, used as a network of its own (the student or the fake score).

    The base's adapters are off except inside this view's forward pass (and ``active``), so the base
    predicts as the teacher everywhere else.
    """

    def __init__(self, base: nn.Module, adapter: str) -> None:
        super().__init__()
        from peft.tuners.tuners_utils import BaseTunerLayer

        self.base, self.adapter = base, adapter
        self._layers = [m for m in base.modules() if isinstance(m, BaseTunerLayer)]
        set_active(self._layers, None)

    @contextmanager
    def active(self) -> Iterator[None]:
        set_active(self._layers, self.adapter)
        try:
            yield
        finally:
            set_active(self._layers, None)

    def forward(self, *args, **kwargs):
        with self.active():
            return self.base(*args, **kwargs)

    def adapter_parameters(self) -> list[nn.Parameter]:
        """This adapter's parameters, in the order a copy's ``parameters()`` lists them."""
        return [p for k, p in self.base.named_parameters() if adapter_of(k) == self.adapter]

    def copy_name(self, name: str) -> str | None:
        """A parameter name of this view as a LoRA copy calls it (None: the other adapter's)."""
        return rename_adapter(name.removeprefix("base."), self.adapter, ADAPTER)

    def view_name(self, name: str) -> str:
        """Inverse of ``copy_name``."""
        return "base." + rename_adapter(name, ADAPTER, self.adapter)

    def copy_state(self) -> dict[str, torch.Tensor]:
        """The state dict a LoRA copy holding this adapter would have (base weights + adapter as 'default')."""
        out = {}
        for key, value in self.base.state_dict().items():
            key = rename_adapter(key, self.adapter, ADAPTER)
            if key is not None:
                out[key] = value
        return out

    def load_adapter(self, state: dict[str, torch.Tensor]) -> None:
        """Set this adapter from a copy-layout adapter state (a checkpoint of either mode)."""
        params = {self.copy_name(k): p for k, p in self.base.named_parameters(prefix="base")
                  if adapter_of(k) == self.adapter}
        if set(state) != set(params):
            diff = sorted(set(state) ^ set(params))
            raise CheckpointError(f"the checkpoint's LoRA adapters do not match student.lora_rank / the network "
                                  f"({len(diff)} tensors differ, e.g. {diff[0]!r})")
        with torch.no_grad():
            for key, p in params.items():
                p.copy_(state[key])


def training(net: nn.Module):
    """The context a backward pass through ``net`` runs in: its adapter on (gradient checkpointing recomputes
    the forward pass then); nothing for a network of its own."""
    return net.active() if isinstance(net, AdapterView) else nullcontext()


def trainable_parameters(net: nn.Module) -> list[nn.Parameter]:
    """What ``net``'s optimiser steps: a view's own adapter, or every parameter that requires grad."""
    if isinstance(net, AdapterView):
        return net.adapter_parameters()
    return [p for p in net.parameters() if p.requires_grad]


def init_from_lora(net: nn.Module, path: str, family: str, field: str = "student.init_lora") -> None:
    """Start ``net``'s adapter (a LoRA copy's, or a view's) from a LoRA file: B A equals the file's product.

    A file of lower rank fills the first rows of A and columns of B; the other B columns keep peft's zero start
    (so the product is the file's) and their A rows keep their random start (so they still learn).
    """
    from .adapters import read_lora_file

    root, name = (net.base, net.adapter) if isinstance(net, AdapterView) else (net, ADAPTER)
    layers = {k: m for k, m in root.named_modules() if hasattr(m, "lora_A") and name in m.lora_A}
    rank = next(iter(layers.values())).lora_A[name].weight.shape[0]
    with torch.no_grad():
        for module, (a, b) in read_lora_file(path, family, list(layers), field).items():
            if a.shape[0] > rank:
                raise ConfigError(f"{field} {path!r} has rank {a.shape[0]}; set student.lora_rank to "
                                  f"at least {a.shape[0]} (now {rank})")
            layer, r = layers[module], a.shape[0]
            if a.shape[1:] != layer.lora_A[name].weight.shape[1:] or b.shape[0] != layer.lora_B[name].weight.shape[0]:
                raise ConfigError(f"{field} {path!r} does not fit this teacher: layer {module} has "
                                  f"factors {tuple(b.shape)} x {tuple(a.shape)}; give a LoRA of this teacher")
            layer.lora_A[name].weight[:r] = a
            layer.lora_B[name].weight[:, :r] = b  # its other columns keep their zero start


def average_gradients(net: nn.Module, processes: int) -> None:
    """Average a view's adapter gradients over the processes as DDP does (divide, then sum: the same numbers);
    a network of its own is DDP's."""
    if not isinstance(net, AdapterView) or processes == 1:
        return
    import torch.distributed as dist

    grads = [p.grad for p in net.adapter_parameters() if p.grad is not None]
    flat = torch.cat([g.flatten() for g in grads]).div_(processes)
    dist.all_reduce(flat)
    for g, part in zip(grads, flat.split([g.numel() for g in grads])):
        g.copy_(part.view_as(g))
