"""``dpdmd plan``: GPU memory of a run before it starts, and which memory preset fits 16 / 24 / 48 / 80 GB.

Parameter counts come from the teacher folder's configs (models built on the
meta device, nothing loaded). Activations are *measured* on the meta device:
one forward pass with gradient of the denoiser at the run's resolution, adding
up the memory autograd's saved tensors keep (each base tensor once, parameters
and views of them not at all; attention counted as a fused flash-style kernel
saves it: q, k, v, output and log-sum-exp). With gradient
checkpointing the saved set is what stays outside the checkpointed blocks,
their inputs, and the largest block re-run during backward. The rest is
arithmetic on the training loop:

- each trainable network (student, fake score): float32 master weights,
  AdamW's two float32 moments, and float32 gradients for one network at a time
  (the two updates alternate); LoRA keeps a frozen base in the base dtype and
  trains only the adapters; a shared base (student.lora_mode) is the teacher's
  own weights, so the two frozen copies disappear; FSDP divides these across GPUs;
- the frozen teacher in teacher.dtype; the VAE (float32) for previews; with teacher.quantize = "fp8" the
  linear weights of every frozen base and of the text encoders take one byte (+ a float32 scale per output
  channel) and the rest stays in its dtype (the upcast happens one layer at a time: a transient, not counted);
- activations: the student update keeps N graphs alive (the first step for the
  diversity loss and N-1 steps after the detach), one-step backprop keeps 2;
  the fake-score update keeps 1;
- before training, the text encoders alone encode the prompts: the denoiser
  moves to the GPU only after they are released (teachers.load_teacher_with_prompts),
  so that phase peaks at the encoders' weights (a separate peak from training's);
- 1.5 GB for the CUDA context and 10 % for allocator fragmentation.
It is an estimate: check it with the peak memory the run reports.
"""
from __future__ import annotations

import json
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from . import presets
from .config import Config, field_value, resolve
from .errors import ConfigError
from .reference_configs import REFERENCES
from .teachers.diffusers_base import teacher_class

GB = 1e9
BUDGETS = (16, 24, 48, 80)
CONTEXT_BYTES = 1.5 * GB
FRAGMENTATION = 1.10
BYTES = {"float32": 4, "bfloat16": 2}


@dataclass
class Architecture:
    """What memory depends on: the denoiser's config, the text encoders', the VAE's."""
    family: str
    network_class: str
    network: dict
    text_encoders: dict[str, tuple[str, dict]]
    vae: dict
    vae_class: str = "AutoencoderKL"

    @property
    def text_tokens(self) -> int:
        return teacher_class(self.family).plan_text_tokens

    @property
    def vae_factor(self) -> int:
        """Pixels per side of one latent position the network sees (the VAE's factor x any packing)."""
        return 2 ** (len(self.vae["block_out_channels"]) - 1) * teacher_class(self.family).patch


def _json(path: Path) -> dict:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as e:
        raise ConfigError(f"teacher.path: cannot read {path} ({e}); plan reads the folder's config files") from None


def architecture_from_folder(path: Path, family: str) -> Architecture:
    """Configs only: a folder without weights plans as well as a full one."""
    index = _json(path / "model_index.json")
    net = teacher_class(family).net_folder
    encoders = {name: (entry[1], _json(path / name / "config.json")) for name, entry in index.items()
                if name.startswith("text_encoder") and isinstance(entry, list) and entry[0] == "transformers"}
    return Architecture(family, index[net][1], _json(path / net / "config.json"), encoders,
                        _json(path / "vae" / "config.json"), index["vae"][1])


def architecture_from_reference(name: str) -> Architecture:
    if name not in REFERENCES:
        raise ConfigError(f"--architecture {name!r} is not one of {', '.join(REFERENCES)}")
    ref = REFERENCES[name]
    return Architecture(ref["family"], ref["network_class"], ref["network"], ref["text_encoders"], ref["vae"],
                        ref.get("vae_class", "AutoencoderKL"))


# ---- counting on the meta device --------------------------------------------------------------------
def _clean(config: dict) -> dict:
    return {k: v for k, v in config.items() if not k.startswith("_")}


def build_meta_network(arch: Architecture) -> nn.Module:
    import diffusers

    with torch.device("meta"):
        return getattr(diffusers, arch.network_class).from_config(_clean(arch.network))


def _numel(module: nn.Module, buffers: bool = True) -> int:
    n = sum(p.numel() for p in module.parameters())
    return n + (sum(b.numel() for b in module.buffers()) if buffers else 0)


def linear_params(module: nn.Module) -> tuple[int, int]:
    """(weights, output channels) of the linear layers ``teacher.quantize = "fp8"`` stores in one byte each, with a
    float32 scale per output channel."""
    linears = [m for m in module.modules() if isinstance(m, nn.Linear)]
    return sum(m.weight.numel() for m in linears), sum(m.out_features for m in linears)


def text_encoder_params(arch: Architecture) -> tuple[int, int, int]:
    """(all parameters and buffers, linear weights, linear output channels) of the text encoders."""
    import transformers

    total = linear = channels = 0
    for cls_name, config in arch.text_encoders.values():
        cls = getattr(transformers, cls_name)
        with torch.device("meta"):
            model = cls(cls.config_class(**_clean(config)))
        total += _numel(model)
        weights, outs = linear_params(model)
        linear, channels = linear + weights, channels + outs
    return total, linear, channels


def vae_params(arch: Architecture) -> int:
    import diffusers

    with torch.device("meta"):
        return _numel(getattr(diffusers, arch.vae_class).from_config(_clean(arch.vae)))


def lora_params(net: nn.Module, family: str, rank: int) -> int:
    from .training.lora import target_modules

    modules = dict(net.named_modules())
    return sum(rank * (modules[name].in_features + modules[name].out_features)
               for name in target_modules(net, family))


# ---- activations: what autograd saves, measured on the meta device ------------------------------------------
class _FlashAttention(torch.autograd.Function):
    """Shape-only attention that saves what fused (flash / memory-efficient) kernels save."""

    @staticmethod
    def forward(ctx, q, k, v):
        out = torch.empty_like(q)
        ctx.save_for_backward(q, k, v, out, q.new_empty(q.shape[:-1], dtype=torch.float32))
        return out

    @staticmethod
    def backward(ctx, grad):
        q, k, v, *_ = ctx.saved_tensors
        return torch.empty_like(q), torch.empty_like(k), torch.empty_like(v)


@contextmanager
def flash_attention_counted():
    """Inside the with block, F.scaled_dot_product_attention is the stand-in that saves what fused kernels save."""
    original = F.scaled_dot_product_attention
    F.scaled_dot_product_attention = _flash_attention
    try:
        yield
    finally:
        F.scaled_dot_product_attention = original


def _flash_attention(*args, **kwargs) -> torch.Tensor:
    """F.scaled_dot_product_attention's stand-in, called positionally (SD3) or by keyword (diffusers' dispatcher)."""
    q, k, v = (list(args) + [kwargs[n] for n in ("query", "key", "value") if n in kwargs])[:3]
    return _FlashAttention.apply(q, k, v)


class _SavedBytes:
    """Counts the memory autograd's saved tensors keep alive: each distinct base tensor once, whole (a saved view
    keeps its base), parameters and their views (a linear layer saves its weight transposed) not at all."""

    def __init__(self) -> None:
        self.seen: dict[int, torch.Tensor] = {}

    def pack(self, t: torch.Tensor):
        base = t if t._base is None else t._base
        if not isinstance(base, nn.Parameter):
            self.seen[id(base)] = base
        return t

    @property
    def total(self) -> int:
        return _bytes(self.seen.values())


def _bytes(tensors) -> int:
    return sum(t.untyped_storage().nbytes() for t in tensors)


def _inputs(arch: Architecture, resolution: int, dtype: torch.dtype) -> dict:
    """The forward arguments of one sample at ``resolution``, as the family's teacher passes them."""
    side = resolution // arch.vae_factor
    x = torch.empty(1, arch.network["in_channels"], side, side, dtype=dtype)
    return teacher_class(arch.family).plan_inputs(arch.network, x, torch.empty(1), arch.text_tokens)


def activation_bytes(arch: Architecture, resolution: int, dtype: torch.dtype, checkpointing: bool,
                     net: nn.Module | None = None) -> int:
    """Bytes autograd keeps for one training forward pass of one sample."""
    net = nn.Module.to(net or build_meta_network(arch), dtype).requires_grad_(True)  # not diffusers .to (warns)
    outside, inputs, largest = _SavedBytes(), _SavedBytes(), [0]

    def checkpointed(module, *args):  # diffusers' hook: one block under activation checkpointing
        for a in args:
            if isinstance(a, torch.Tensor):
                inputs.pack(a)
        region = _SavedBytes()
        with torch.autograd.graph.saved_tensors_hooks(region.pack, lambda t: t):
            out = module(*args)
        largest[0] = max(largest[0], region.total)
        return out

    if checkpointing:
        net.enable_gradient_checkpointing(gradient_checkpointing_func=checkpointed)
    try:
        with flash_attention_counted(), torch.device("meta"), \
                torch.autograd.graph.saved_tensors_hooks(outside.pack, lambda t: t):
            net(**_inputs(arch, resolution, dtype))
    finally:
        if checkpointing:
            net.disable_gradient_checkpointing()
    outside_only = {k: t for k, t in outside.seen.items() if k not in inputs.seen}
    return _bytes(outside_only.values()) + inputs.total + largest[0]


# ---- the estimate -----------------------------------------------------------------------------------------------
# The config fields memory depends on, and their names in Options.
OPTION_FIELDS = {"teacher.resolution": "resolution", "data.batch_size": "batch_size",
                 "student.num_steps": "student_steps", "method.backprop": "backprop",
                 "student.lora_rank": "lora_rank", "student.gradient_checkpointing": "gradient_checkpointing",
                 "run.mixed_precision": "mixed_precision", "teacher.dtype": "teacher_dtype",
                 "student.lora_mode": "lora_mode", "teacher.quantize": "quantize"}


@dataclass
class Options:
    """The memory-relevant choices of a run."""
    resolution: int = 1024
    batch_size: int = 4
    student_steps: int = 4
    backprop: str = "all"  # all | one_step
    lora_rank: int = 0
    gradient_checkpointing: bool = False
    mixed_precision: str = "bf16"  # bf16 | no
    teacher_dtype: str = "bfloat16"
    lora_mode: str = "auto"  # auto | shared | copies (auto: shared, as for sd3 / sdxl runs on one GPU or DDP)
    quantize: str = "none"  # none | fp8 (the frozen bases' and text encoders' linear weights)
    fsdp: int = 1  # FSDP shards the networks' states over this many GPUs (1 = one GPU, or DDP)

    @classmethod
    def from_config(cls, cfg: Config, fsdp: int = 1) -> Options:
        return cls(fsdp=fsdp, **{name: field_value(cfg, key) for key, name in OPTION_FIELDS.items()})

    def with_settings(self, values: dict) -> Options:
        """These options with config fields ({"section.field": value}, e.g. a preset's) applied."""
        return replace(self, **{OPTION_FIELDS[key]: value for key, value in values.items()})

    @property
    def shared(self) -> bool:
        """LoRA adapters on the teacher's own weights (training.lora.lora_mode: never under FSDP)."""
        return bool(self.lora_rank) and self.lora_mode != "copies" and self.fsdp == 1

    def describe(self) -> str:
        memory = {key: getattr(self, name) for key, name in OPTION_FIELDS.items() if key in presets.BASE}
        memory["student.lora_mode"] = "shared" if self.shared else "copies"
        parts = presets.describe(memory)
        if self.fsdp > 1:
            parts.append(f"FSDP over {self.fsdp} GPUs")
        return f"{', '.join(parts)}, batch {self.batch_size}"


@dataclass
class Estimate:
    parts: dict[str, float]  # bytes per GPU during training
    encode_peak: float  # bytes while the prompts are encoded (the text encoders alone, before the denoiser)
    notes: dict[str, str] = field(default_factory=dict)

    @property
    def train_peak(self) -> float:
        return (sum(self.parts.values()) + CONTEXT_BYTES) * FRAGMENTATION

    @property
    def peak(self) -> float:
        return max(self.train_peak, (self.encode_peak + CONTEXT_BYTES) * FRAGMENTATION)

    def fits(self, budget_gb: float) -> bool:
        return self.peak <= budget_gb * GB


class Planner:
    """Counts once, measures activations per (dtype, checkpointing), estimates any Options."""

    def __init__(self, arch: Architecture) -> None:
        self.arch = arch
        self.net = build_meta_network(arch)
        self.net_params = _numel(self.net, buffers=False)
        self.net_buffers = sum(b.numel() for b in self.net.buffers())
        self.linear_params, self.linear_channels = linear_params(self.net)
        self.text_params, self.text_linear, self.text_channels = text_encoder_params(arch)
        self.vae_params = vae_params(arch)
        self._activations: dict[tuple, int] = {}

    def activations(self, resolution: int, dtype: torch.dtype, checkpointing: bool) -> int:
        key = (resolution, dtype, checkpointing)
        if key not in self._activations:
            self._activations[key] = activation_bytes(self.arch, resolution, dtype, checkpointing, self.net)
        return self._activations[key]

    def frozen_bytes(self, o: Options, dtype_bytes: int, params: int, linear: int, channels: int) -> float:
        """Bytes of frozen weights in ``dtype_bytes`` each, their linear weights one byte (+ a float32 scale per
        output channel) under fp8."""
        if o.quantize != "fp8":
            return params * dtype_bytes
        return (params - linear) * dtype_bytes + linear + channels * 4

    def estimate(self, o: Options) -> Estimate:
        p, buffers = self.net_params, self.net_buffers
        teacher_bytes = BYTES[o.teacher_dtype]
        net_linear = (self.linear_params, self.linear_channels)
        shard = max(1, o.fsdp)
        if o.lora_rank:
            base = BYTES["bfloat16" if (o.teacher_dtype == "bfloat16" and o.mixed_precision == "bf16") else "float32"]
            trainable = lora_params(self.net, self.arch.family, o.lora_rank)
            frozen = 0.0 if o.shared else (self.frozen_bytes(o, base, p, *net_linear) + buffers * 4) / shard
        else:
            trainable, frozen = p, buffers * 4 / shard
        act_dtype = torch.bfloat16 if o.mixed_precision == "bf16" else torch.float32
        graphs = 2 if o.backprop == "one_step" else o.student_steps
        per_sample = self.activations(o.resolution, act_dtype, o.gradient_checkpointing)
        parts = {
            "teacher weights": self.frozen_bytes(o, teacher_bytes, p + buffers, *net_linear),
            "student + fake weights": 2 * (trainable * 4 / shard + (0.0 if o.lora_rank else frozen)),
            "frozen LoRA copies": 2 * frozen if o.lora_rank else 0.0,
            "AdamW states (both)": 2 * trainable * 8 / shard,
            "gradients (one network)": trainable * 4 / shard,
            # autocast keeps a bf16 copy of each fp32 weight it casts, for both networks, until the update ends
            # (FSDP casts per gathered block instead)
            "autocast weight copies": 2 * p * 2 if (o.mixed_precision == "bf16" and not o.lora_rank and shard == 1)
            else 0.0,
            "activations": graphs * o.batch_size * per_sample,
            "VAE (previews)": self.vae_params * 4,
        }
        notes = {"activations": f"{graphs} graphs x batch {o.batch_size} x {per_sample / GB:.2f} GB"}
        if o.shared:
            notes["teacher weights"] = "the shared base: teacher, student and fake score"
        if o.quantize == "fp8":
            notes["teacher weights"] = notes.get("teacher weights", "the frozen base") + "; linear weights in fp8"
        encode = self.frozen_bytes(o, teacher_bytes, self.text_params, self.text_linear, self.text_channels)
        return Estimate(parts, encode, notes)


def summary(o: Options, e: Estimate) -> dict[str, float]:
    """An estimate's GB by kind: weights (frozen and full), LoRA adapters, optimiser, gradients, activations, and
    the prompt-encoding phase before training (a separate peak, not part of the sum)."""
    weights = sum(v for k, v in e.parts.items() if k not in ("AdamW states (both)", "gradients (one network)",
                                                              "activations", "student + fake weights"))
    trainable = e.parts["student + fake weights"]
    return {k: round(v / GB, 3) for k, v in {
        "weights": weights + (0.0 if o.lora_rank else trainable), "adapters": trainable if o.lora_rank else 0.0,
        "optimiser": e.parts["AdamW states (both)"], "gradients": e.parts["gradients (one network)"],
        "activations": e.parts["activations"], "prompt_encoding": e.encode_peak}.items()}


def preset_options(base: Options, name: str) -> Options:
    """A preset on top of the run's resolution and steps; presets always use bf16 autocast and a bf16 teacher."""
    return base.with_settings(presets.settings(name))


def preset_toml(name: str) -> str:
    """The config lines of a preset (besides run.mixed_precision = 'bf16' and teacher.dtype = 'bfloat16')."""
    return ", ".join(f"{k} = {json.dumps(v)}" for k, v in presets.settings(name).items()
                     if k not in ("run.mixed_precision", "teacher.dtype"))


@dataclass
class Report:
    arch: Architecture
    source: str
    options: Options
    planner: Planner
    rows: dict[str, Estimate] = field(default_factory=dict)

    def text(self) -> str:
        pl, o, gb = self.planner, self.options, lambda b: f"{b / GB:6.1f} GB"
        side = o.resolution // self.arch.vae_factor
        lines = [f"teacher: {self.source} ({self.arch.network_class}, {pl.net_params / 1e9:.2f} B parameters "
                 f"+ {pl.net_buffers / 1e6:.0f} M buffer values; text encoders {pl.text_params / 1e9:.2f} B, "
                 f"released after encoding; VAE {pl.vae_params / 1e6:.0f} M)",
                 f"{o.resolution} px -> latent {self.arch.network['in_channels']}x{side}x{side}; "
                 f"{o.student_steps} student steps; per GPU",
                 "", f"this config: {o.describe()}"]
        est = pl.estimate(o)
        for name, value in est.parts.items():
            note = f"  ({est.notes[name]})" if name in est.notes else ""
            lines.append(f"  {name:<26}{gb(value)}{note}")
        lines.append(f"  {'prompt encoding (start)':<26}{gb(est.encode_peak)}  "
                     "(text encoders alone, before the denoiser arrives)")
        lines.append(f"  {'peak estimate':<26}{gb(est.peak)}  (+1.5 GB CUDA context, +10 % fragmentation)")
        lines.append("  fits: " + ", ".join(f"{b} GB {'yes' if est.fits(b) else 'no'}" for b in BUDGETS))
        width = max(map(len, presets.PRESETS)) + 1
        lines += ["", f"presets (bf16 autocast with fp32 masters, bf16 teacher, batch {o.batch_size} unless named):",
                  f"  {'preset':<{width}}{'peak':>9}  " + "  ".join(f"{b} GB" for b in BUDGETS)]
        for name in presets.PRESETS:
            e = self.estimate(name)
            lines.append(f"  {name:<{width}}{gb(e.peak):>9}  " + "  ".join(f"{'yes' if e.fits(b) else ' - ':>5}"
                                                                     for b in BUDGETS))
        lines.append("")
        for budget in BUDGETS:
            pick = self.best(budget)
            lines.append(f"{budget} GB: " + (f"{pick} ({preset_toml(pick)})" if pick else
                                             "no preset fits on one GPU; shard with FSDP (--fsdp N) or lower "
                                             "teacher.resolution"))
        lines.append("\nAn estimate (see docs/performance.md); compare with the peak memory of a real run.")
        return "\n".join(lines)

    def best(self, budget_gb: float) -> str | None:
        """The first preset (most memory first) that fits ``budget_gb`` on one GPU."""
        return next((n for n in presets.PRESETS if self.estimate(n).fits(budget_gb)), None)

    def estimate(self, name: str) -> Estimate:
        if name not in self.rows:
            self.rows[name] = self.planner.estimate(preset_options(self.options, name))
        return self.rows[name]

    def json(self) -> dict:
        """One object a script can read: this config's and every preset's peak and parts, the best preset per budget."""
        def entry(o: Options, e: Estimate) -> dict:
            return {"peak_gb": round(e.peak / GB, 3), "train_peak_gb": round(e.train_peak / GB, 3),
                    "parts_gb": summary(o, e), "detail_gb": {k: round(v / GB, 3) for k, v in e.parts.items()}}

        pl, o = self.planner, self.options
        out = {"architecture": self.source, "network_class": self.arch.network_class,
               "parameters": pl.net_params, "resolution": o.resolution, "student_steps": o.student_steps,
               "config": {"options": o.describe(), **entry(o, pl.estimate(o))}, "presets": {}}
        for name in presets.PRESETS:
            out["presets"][name] = {"settings": presets.settings(name),
                                    **entry(preset_options(o, name), self.estimate(name))}
        out["best"] = {str(b): self.best(b) for b in BUDGETS}
        return out


def plan(cfg: Config | None = None, *, architecture: str | None = None, fsdp: int = 1) -> Report:
    """The memory report of a config (its teacher folder's configs), or of a reference architecture."""
    if cfg is not None:
        cfg = resolve(cfg)
        if cfg.teacher.family == "builtin":
            raise ConfigError("dpdmd plan is for diffusers teachers; teacher.family = 'builtin' trains on a CPU "
                              "in minutes")
        options = Options.from_config(cfg, fsdp)
        if architecture:
            arch, source = architecture_from_reference(architecture), architecture
        else:
            from .teachers.diffusers_base import check_folder

            path = Path(cfg.teacher.path).expanduser()
            check_folder(path, teacher_class(cfg.teacher.family))
            arch, source = architecture_from_folder(path, cfg.teacher.family), str(path)
    else:
        if not architecture:
            raise ConfigError(f"give a run config (dpdmd plan CONFIG) or --architecture {' | '.join(REFERENCES)}")
        arch, source = architecture_from_reference(architecture), architecture
        options = Options(fsdp=fsdp)
    if fsdp < 1:
        raise ConfigError(f"--fsdp {fsdp} must be at least 1")
    return Report(arch, source, options, Planner(arch))
