"""What every teacher read from a local diffusers folder shares; each family's own module (named after
its row in distill_core.families: sd3.py, sdxl.py, ...) defines its ``TEACHER`` class on top.

Only the denoiser is kept on the accelerator for training. Prompts are encoded
with the pipeline's own ``encode_prompt`` (so conditioning equals what the
pipeline would feed the network), cached in an EmbeddingStore, and the text
encoders are released; the VAE is loaded only to decode previews and
evaluation samples. Nothing is fetched from a hub: ``teacher.path`` must be a
diffusers folder on disk, or a ConfigError says what is missing.
"""
from __future__ import annotations

import gc
import json
from collections.abc import Sequence
from pathlib import Path

import torch
from torch import nn

from ..config import Config
from ..errors import ConfigError, PromptError, shown
from ..families import FAMILIES
from ..integrity import require_safetensors
from ..schedules import FlowSchedule, NoiseSchedule
from ..training.merge import merge_loras
from .base import Cond, PromptBank, Teacher, family_teacher, pad_cat
from .prompt_store import EmbeddingStore, StoredPromptBank

ENCODE_BATCH = 16


def dtype_kwarg(dtype: torch.dtype) -> dict:
    """``dtype=`` for diffusers versions that renamed ``torch_dtype`` (0.4x), ``torch_dtype=`` before."""
    try:
        from diffusers.utils.deprecation_utils import _resolve_dtype  # noqa: F401  (present where renamed)
    except ImportError:
        return {"torch_dtype": dtype}
    return {"dtype": dtype}


def read_json(path: Path, field: str = "teacher.path") -> dict:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as e:
        raise ConfigError(f"{field}: cannot read {path} ({e})") from None


class DiffusersTeacher(Teacher):
    """What SD3 and SDXL share: folder checks, prompt store, VAE decode, trainable copies."""

    pipeline_class: str
    net_folder: str  # "transformer" | "unet"
    net_class: str
    required: tuple[str, ...]  # components the folder must have (besides the network)
    vae_class: str = "AutoencoderKL"
    max_sequence_length: int = 256  # text tokens kept (part of the prompt cache's fingerprint)
    plan_text_tokens: int  # text tokens `dpdmd plan` measures activations with (the pipeline's longest)
    patch: int = 1  # latent pixels per side the pipeline packs into one token before the network (FLUX.2: 2)

    @staticmethod
    def plan_inputs(config: dict, x: torch.Tensor, t: torch.Tensor, tokens: int) -> dict:
        """Forward keyword arguments of the network (``config``) for latents ``x`` (1, C, H, W) and timestep ``t``,
        with ``tokens`` text tokens: what `dpdmd plan` measures activations with (on the meta device)."""
        raise NotImplementedError

    def __init__(self, cfg: Config, dtype: torch.dtype) -> None:
        self.cfg = cfg
        self.path = Path(cfg.teacher.path).expanduser()
        self.index = check_folder(self.path, type(self))
        self.dtype = dtype
        self.resolution = int(cfg.teacher.resolution)
        self.max_sample_batch = int(cfg.data.batch_size)  # what fits in training fits in sampling (no grad)
        self.vae_config = read_json(self.path / "vae" / "config.json")
        check_resolution(self.path, type(self), self.resolution)  # before the weights load: configs only
        network = merge_loras(self._network_class().from_pretrained(
            str(self.path), subfolder=self.net_folder, **dtype_kwarg(dtype), use_safetensors=True, local_files_only=True),
            cfg.teacher.loras, self.family)
        self.scheduler_config = read_json(self.path / "scheduler" / "scheduler_config.json")
        super().__init__(network, self._schedule(self.scheduler_config))
        self._check_resolution()  # what the family's loaded network adds (its own patch, position tables)
        self.store = EmbeddingStore(self._fingerprint())
        self._text_pipe = None
        self._text_device: torch.device | None = None  # where the encoders run if not next to the network
        self._vae = None

    # ---- family hooks ----------------------------------------------------------------------
    @classmethod
    def check_index(cls, index: dict, where: str) -> None:
        """Refuse a folder of the right pipeline that this family still cannot distil (default: none)."""

    def _schedule(self, scheduler_config: dict) -> NoiseSchedule:
        raise NotImplementedError

    def _encode_with(self, pipe, prompts: list[str]) -> Cond:
        raise NotImplementedError

    def _flow_schedule(self, sc: dict) -> FlowSchedule:
        """A flow family's schedule: teacher.shift, else the scheduler's static shift (dynamic shifting is refused);
        levels spaced as the family's pipeline spaces them (its row's ``spacing``)."""
        shift = self.cfg.teacher.shift
        if shift is None:
            if sc.get("use_dynamic_shifting"):
                raise ConfigError(f"teacher.path {str(self.path)!r}: the scheduler uses resolution-dependent "
                                  "(dynamic) shifting; set teacher.shift to the static shift to distil with")
            shift = float(sc.get("shift", 1.0))
        return FlowSchedule(shift=shift, num_train_timesteps=int(sc.get("num_train_timesteps", 1000)),
                            spacing=FAMILIES[self.family].spacing)

    # ---- loading ---------------------------------------------------------------------------
    def _network_class(self):
        import diffusers

        return getattr(diffusers, self.net_class)

    @property
    def device(self) -> torch.device:
        return next(self.network.parameters()).device

    @property
    def vae_scale_factor(self) -> int:
        return _vae_factor(self.vae_config)

    def _patch_size(self) -> int:
        """The network's spatial patch (pixels of latent per token side)."""
        return int(self.network.config.get("patch_size", 1) or 1)

    def _check_resolution(self) -> None:
        _check_multiple(self.resolution, self.family, self.vae_config, dict(self.network.config), self._patch_size())

    def _fingerprint(self) -> dict:
        quantized = {"quantize": self.cfg.teacher.quantize} if self.cfg.teacher.quantize != "none" else {}
        return {"family": self.family, "path": str(self.path.resolve()), "dtype": str(self.dtype),
                "max_sequence_length": self.max_sequence_length, "format": 1, **quantized}

    def make_trainable_copy(self) -> nn.Module:
        """A float32 copy read from disk (not upcast from a bf16 teacher; teacher.loras merged), on the CPU until
        prepared."""
        net = self._network_class().from_pretrained(
            str(self.path), subfolder=self.net_folder, **dtype_kwarg(torch.float32), use_safetensors=True,
            local_files_only=True)
        return merge_loras(net, self.cfg.teacher.loras, self.family).requires_grad_(True).eval()

    # ---- prompts ---------------------------------------------------------------------------
    @property
    def text_device(self) -> torch.device:
        return self._text_device or self.device

    def _text_pipeline(self):
        """The teacher's pipeline without its denoiser and VAE, for ``encode_prompt``."""
        if self._text_pipe is None:
            import diffusers

            cls = getattr(diffusers, self.pipeline_class)
            pipe = cls.from_pretrained(str(self.path), **{self.net_folder: None, "vae": None}, **dtype_kwarg(self.dtype),
                                       use_safetensors=True, local_files_only=True)
            if self.cfg.teacher.quantize == "fp8":  # T5-XXL is most of SD3's start-up peak
                from ..training.fp8 import quantize_linears
                for name, module in pipe.components.items():
                    if name.startswith("text_encoder") and module is not None:
                        quantize_linears(module.requires_grad_(False))
            self._text_pipe = pipe.to(self.text_device)
        return self._text_pipe

    def release_text_encoders(self) -> None:
        """Free the text encoders (T5-XXL alone is 9.5 GB in bf16); they reload on a new prompt."""
        self._text_pipe = None
        gc.collect()
        if torch.cuda.is_available():
            torch.cuda.empty_cache()

    @torch.no_grad()
    def _encode(self, prompts: list[str]) -> Cond:
        bad = [p for p in prompts if not isinstance(p, str)]
        if bad:
            raise PromptError(f"prompts must be strings, got {shown(bad[0])}")
        pipe = self._text_pipeline()
        parts = [self._encode_with(pipe, prompts[i:i + ENCODE_BATCH]) for i in range(0, len(prompts), ENCODE_BATCH)]
        joined = {k: pad_cat([p[k] for p in parts]) for k in parts[0]}
        return {k: (v.to(self.dtype) if v.is_floating_point() else v).cpu() for k, v in joined.items()}

    def encode_prompts(self, prompts: Sequence[str]) -> Cond:
        prompts = list(prompts)
        self.store.ensure(prompts, self._encode)
        return self.store.get(prompts)

    def null_condition(self) -> Cond:
        """The empty prompt's embedding, as the pipeline's default negative prompt."""
        return self.encode_prompts([""])

    def prompt_bank(self, prompts: Sequence[str], device: torch.device | str | None = None) -> PromptBank:
        """Encode every training, evaluation and empty prompt once (on ``device``), into the run folder; then free
        the encoders."""
        folder = Path(self.cfg.run.output_dir) / "prompt_cache"
        store = EmbeddingStore(self._fingerprint(), folder)
        self.release_text_encoders()  # any encoders loaded earlier sit on the network's device
        self._text_device = torch.device(device) if device is not None else None
        try:
            store.ensure(list(prompts) + list(self.cfg.eval.prompts) + [""], self._encode)
        finally:
            self._text_device = None
            self.release_text_encoders()
        self.store = store
        return StoredPromptBank(prompts, store, self.null_condition())

    # ---- images ---------------------------------------------------------------------------
    def latent_shape(self) -> tuple[int, int, int]:
        side = self.resolution // self.vae_scale_factor
        return (int(self.network.config.in_channels), side, side)

    def _vae_model(self):
        if self._vae is None:
            import diffusers

            vae = getattr(diffusers, self.vae_class).from_pretrained(str(self.path), subfolder="vae", **dtype_kwarg(torch.float32),
                                                use_safetensors=True, local_files_only=True)
            self._vae = vae.requires_grad_(False).eval().to(self.device)
        return self._vae

    def _vae_input(self, vae, latents: torch.Tensor) -> torch.Tensor:
        """What the VAE decodes of the project's latents (here: undo the pipeline's scaling and shift)."""
        return latents / vae.config.scaling_factor + (vae.config.shift_factor or 0.0)

    @torch.no_grad()
    def decode(self, latents: torch.Tensor) -> torch.Tensor:
        vae = self._vae_model()
        chunk = max(1, (512 * 512) // (self.resolution * self.resolution))  # one 1024 px image at a time
        out = []
        for start in range(0, latents.shape[0], chunk):
            lat = self._vae_input(vae, latents[start:start + chunk].to(self.device, torch.float32))
            out.append((vae.decode(lat).sample.float() / 2 + 0.5).clamp(0, 1).cpu())
        return torch.cat(out)

    # ---- facts ------------------------------------------------------------------------------
    def network_config(self) -> dict:
        config = {k: v for k, v in self.network.config.items() if not k.startswith("_")}
        return {"_class_name": self.net_class, **json.loads(json.dumps(config))}

    def describe(self) -> dict:
        return {"family": self.family, "path": str(self.path), "architecture": self.net_class,
                "pipeline": self.pipeline_class, "prediction_type": self.schedule.prediction_type,
                "schedule": self.schedule.describe(), "resolution": self.resolution,
                "parameters": sum(p.numel() for p in self.network.parameters())}

    @staticmethod
    def _net_dtype(net: nn.Module) -> torch.dtype:
        return next(net.parameters()).dtype


def check_folder(path: Path, kind: type[DiffusersTeacher]) -> dict:
    """The folder's model_index.json, after checking it is a local diffusers folder of the right family."""
    where = f"teacher.path {str(path)!r}"
    expected = (f"a local diffusers {kind.pipeline_class} folder (model_index.json, {kind.net_folder}/, "
                f"{', '.join(kind.required)})")
    if path.is_file():
        raise ConfigError(f"{where} is a file; expected {expected}. Convert a single-file checkpoint once with "
                          f"diffusers: {kind.pipeline_class}.from_single_file(FILE).save_pretrained(FOLDER)")
    if not (path / "model_index.json").is_file():
        raise ConfigError(f"{where} has no model_index.json; expected {expected}")
    index = read_json(path / "model_index.json")
    found = str(index.get("_class_name", ""))
    for family, other in teacher_classes().items():
        if other is not kind and found.startswith(other.pipeline_class.removesuffix("Pipeline")):
            raise ConfigError(f"{where} holds a {found}; set teacher.family = {family!r} (or point to a "
                              f"{kind.pipeline_class} folder)")
    if not found.startswith(kind.pipeline_class.removesuffix("Pipeline")):
        raise ConfigError(f"{where} holds a {found or 'unknown pipeline'}; expected {expected}")
    for sub in (kind.net_folder, *kind.required):
        entry = index.get(sub)
        if not (path / sub).is_dir() or not entry or entry[0] is None:
            raise ConfigError(f"{where} lacks the {sub}/ component; expected {expected}")
    kind.check_index(index, where)
    require_safetensors(path / kind.net_folder, where)
    for sub in index:  # the other models (text encoders, VAE), not tokenizers or the scheduler
        if not sub.startswith("_") and sub != kind.net_folder and (path / sub / "config.json").is_file():
            require_safetensors(path / sub, where)
    return index


def _vae_factor(vae_config: dict) -> int:
    return 2 ** (len(vae_config["block_out_channels"]) - 1)


def _check_multiple(resolution: int, family: str, vae_config: dict, net_config: dict, patch: int) -> None:
    """A resolution the VAE, the patches and a UNet's levels all divide."""
    factor = _vae_factor(vae_config)
    multiple = factor * patch * (2 ** (len(net_config.get("block_out_channels", [0])) - 1))
    if resolution % multiple:
        raise ConfigError(f"teacher.resolution = {resolution} must be a multiple of {multiple} for this "
                          f"{family} teacher (VAE factor {factor}, patch {patch})")


def check_resolution(path: Path, kind: type[DiffusersTeacher], resolution: int) -> None:
    """Refuse a teacher.resolution the folder's network cannot take, from its configs alone (no weights): a
    multiple of what the VAE, the patches and the UNet's levels divide, and for SD3 no larger than its position
    embedding covers (diffusers refuses a larger image only at the first forward pass, after minutes of loading)."""
    vae, net = (read_json(path / sub / "config.json") for sub in ("vae", kind.net_folder))
    factor, patch = _vae_factor(vae), int(net.get("patch_size", 1) or 1)
    _check_multiple(resolution, kind.family, vae, net, patch)
    if net.get("pos_embed_max_size"):
        largest = int(net["pos_embed_max_size"]) * patch * factor
        if resolution > largest:
            raise ConfigError(f"teacher.resolution = {resolution} is larger than this {kind.family} teacher can "
                              f"take ({largest} px: its pos_embed_max_size {net['pos_embed_max_size']} x patch "
                              f"{patch} x VAE factor {factor}); give {largest} or less")


def teacher_class(family: str) -> type[DiffusersTeacher]:
    """The teacher class of a diffusers family: ``TEACHER`` of its module, distill_core/teachers/<family>.py."""
    return family_teacher(family)


def teacher_classes() -> dict[str, type[DiffusersTeacher]]:
    """Every diffusers family's teacher class (every row of FAMILIES but the built-in teacher)."""
    return {name: teacher_class(name) for name in FAMILIES if name != "builtin"}
