"""SD3 / SD3.5 (flow) and SDXL (epsilon) teachers read from local diffusers folders.

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
from ..integrity import require_safetensors
from ..schedules import FlowSchedule, NoiseSchedule, VPSchedule
from .base import Cond, PromptBank, Teacher
from .prompt_store import EmbeddingStore, StoredPromptBank

MAX_SEQUENCE_LENGTH = 256  # SD3 pipelines' T5 default
ENCODE_BATCH = 16


def dtype_kwarg(dtype: torch.dtype) -> dict:
    """``dtype=`` for diffusers versions that renamed ``torch_dtype`` (0.4x), ``torch_dtype=`` before."""
    try:
        from diffusers.utils.deprecation_utils import _resolve_dtype  # noqa: F401  (present where renamed)
    except ImportError:
        return {"torch_dtype": dtype}
    return {"dtype": dtype}


def _read_json(path: Path, field: str = "teacher.path") -> dict:
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

    def __init__(self, cfg: Config, dtype: torch.dtype) -> None:
        self.cfg = cfg
        self.path = Path(cfg.teacher.path).expanduser()
        self.index = check_folder(self.path, type(self))
        self.dtype = dtype
        self.resolution = int(cfg.teacher.resolution)
        self.max_sample_batch = int(cfg.data.batch_size)  # what fits in training fits in sampling (no grad)
        self.vae_config = _read_json(self.path / "vae" / "config.json")
        check_resolution(self.path, type(self), self.resolution)  # before the weights load: configs only
        network = self._network_class().from_pretrained(
            str(self.path), subfolder=self.net_folder, **dtype_kwarg(dtype), use_safetensors=True, local_files_only=True)
        self.scheduler_config = _read_json(self.path / "scheduler" / "scheduler_config.json")
        super().__init__(network, self._schedule(self.scheduler_config))
        self.store = EmbeddingStore(self._fingerprint())
        self._text_pipe = None
        self._text_device: torch.device | None = None  # where the encoders run if not next to the network
        self._vae = None

    # ---- family hooks ----------------------------------------------------------------------
    def _schedule(self, scheduler_config: dict) -> NoiseSchedule:
        raise NotImplementedError

    def _encode_with(self, pipe, prompts: list[str]) -> Cond:
        raise NotImplementedError

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

    def _fingerprint(self) -> dict:
        return {"family": self.family, "path": str(self.path.resolve()), "dtype": str(self.dtype),
                "max_sequence_length": MAX_SEQUENCE_LENGTH, "format": 1}

    def make_trainable_copy(self) -> nn.Module:
        """A float32 copy read from disk (not upcast from a bf16 teacher), on the CPU until prepared."""
        net = self._network_class().from_pretrained(
            str(self.path), subfolder=self.net_folder, **dtype_kwarg(torch.float32), use_safetensors=True,
            local_files_only=True)
        return net.requires_grad_(True).eval()

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
        return {k: torch.cat([p[k] for p in parts]).to(self.dtype).cpu() for k in parts[0]}

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
            from diffusers import AutoencoderKL

            vae = AutoencoderKL.from_pretrained(str(self.path), subfolder="vae", **dtype_kwarg(torch.float32),
                                                use_safetensors=True, local_files_only=True)
            self._vae = vae.requires_grad_(False).eval().to(self.device)
        return self._vae

    @torch.no_grad()
    def decode(self, latents: torch.Tensor) -> torch.Tensor:
        vae = self._vae_model()
        scale, shift = vae.config.scaling_factor, vae.config.shift_factor or 0.0
        chunk = max(1, (512 * 512) // (self.resolution * self.resolution))  # one 1024 px image at a time
        out = []
        for start in range(0, latents.shape[0], chunk):
            lat = latents[start:start + chunk].to(self.device, torch.float32) / scale + shift
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


class SD3Teacher(DiffusersTeacher):
    """StableDiffusion3Pipeline folders (SD3-Medium, SD3.5-Medium / Large): rectified flow, velocity prediction."""

    family = "sd3"
    pipeline_class = "StableDiffusion3Pipeline"
    net_folder = "transformer"
    net_class = "SD3Transformer2DModel"
    required = ("scheduler", "vae", "text_encoder", "tokenizer", "text_encoder_2", "tokenizer_2")

    def _schedule(self, sc: dict) -> NoiseSchedule:
        shift = self.cfg.teacher.shift
        if shift is None:
            if sc.get("use_dynamic_shifting"):
                raise ConfigError(f"teacher.path {str(self.path)!r}: the scheduler uses resolution-dependent "
                                  "(dynamic) shifting; set teacher.shift to the static shift to distil with")
            shift = float(sc.get("shift", 1.0))
        return FlowSchedule(shift=shift, num_train_timesteps=int(sc.get("num_train_timesteps", 1000)))

    def _encode_with(self, pipe, prompts: list[str]) -> Cond:
        embeds, _, pooled, _ = pipe.encode_prompt(prompt=prompts, prompt_2=None, prompt_3=None, device=self.text_device,
                                                  do_classifier_free_guidance=False,
                                                  max_sequence_length=MAX_SEQUENCE_LENGTH)
        return {"encoder_hidden_states": embeds, "pooled_projections": pooled}

    def call_network(self, net: nn.Module, x: torch.Tensor, levels: torch.Tensor, cond: Cond) -> torch.Tensor:
        dtype = self._net_dtype(net)
        out = net(hidden_states=x.to(dtype), timestep=self.schedule.model_timestep(levels).to(x.device),
                  encoder_hidden_states=cond["encoder_hidden_states"].to(x.device, dtype),
                  pooled_projections=cond["pooled_projections"].to(x.device, dtype), return_dict=False)[0]
        return out.to(x.dtype)


class SDXLTeacher(DiffusersTeacher):
    """StableDiffusionXLPipeline folders: discrete VP schedule, epsilon prediction, added time ids."""

    family = "sdxl"
    pipeline_class = "StableDiffusionXLPipeline"
    net_folder = "unet"
    net_class = "UNet2DConditionModel"
    required = ("scheduler", "vae", "text_encoder_2", "tokenizer_2")

    def _schedule(self, sc: dict) -> NoiseSchedule:
        where = f"teacher.path {str(self.path)!r}: scheduler/scheduler_config.json"
        if self.cfg.teacher.shift is not None:
            raise ConfigError("teacher.shift applies to flow (sd3) teachers; remove it for an sdxl teacher")
        if sc.get("prediction_type", "epsilon") != "epsilon":
            raise ConfigError(f"{where} has prediction_type {sc.get('prediction_type')!r}; only epsilon-prediction "
                              "SDXL teachers are supported")
        if sc.get("rescale_betas_zero_snr") or sc.get("trained_betas"):
            raise ConfigError(f"{where} uses zero-SNR rescaling or trained betas, which are not supported")
        schedule = sc.get("beta_schedule", "scaled_linear")
        if schedule not in ("scaled_linear", "linear"):
            raise ConfigError(f"{where} has beta_schedule {schedule!r}; supported: 'scaled_linear', 'linear'")
        return VPSchedule(beta_start=float(sc.get("beta_start", 0.00085)), beta_end=float(sc.get("beta_end", 0.012)),
                          beta_schedule=schedule, num_train_timesteps=int(sc.get("num_train_timesteps", 1000)))

    def _encode_with(self, pipe, prompts: list[str]) -> Cond:
        embeds, _, pooled, _ = pipe.encode_prompt(prompt=prompts, device=self.text_device,
                                                  do_classifier_free_guidance=False)
        return {"encoder_hidden_states": embeds, "text_embeds": pooled}

    def teacher_levels(self, num_steps: int) -> list[float]:
        """Trailing (from pure noise, as the student), or the folder's own 'leading' spacing with its steps_offset."""
        if self.cfg.teacher.timestep_spacing == "leading":
            return self.schedule.sampling_levels(num_steps, "leading", int(self.scheduler_config.get("steps_offset", 0)))
        return super().teacher_levels(num_steps)

    def null_condition(self) -> Cond:
        """SDXL pipelines use zeros for an empty negative prompt when force_zeros_for_empty_prompt (the default)."""
        empty = self.encode_prompts([""])
        if self.index.get("force_zeros_for_empty_prompt", True):
            return {k: torch.zeros_like(v) for k, v in empty.items()}
        return empty

    def time_ids(self, n: int, device, dtype) -> torch.Tensor:
        """(original size, crop top-left, target size) as the pipeline builds them for a square image."""
        r = self.resolution
        return torch.tensor([[r, r, 0, 0, r, r]], device=device, dtype=dtype).expand(n, 6)

    def call_network(self, net: nn.Module, x: torch.Tensor, levels: torch.Tensor, cond: Cond) -> torch.Tensor:
        dtype = self._net_dtype(net)
        added = {"text_embeds": cond["text_embeds"].to(x.device, dtype),
                 "time_ids": self.time_ids(x.shape[0], x.device, dtype)}
        out = net(x.to(dtype), self.schedule.model_timestep(levels).to(x.device),
                  encoder_hidden_states=cond["encoder_hidden_states"].to(x.device, dtype),
                  added_cond_kwargs=added, return_dict=False)[0]
        return out.to(x.dtype)


TEACHERS: dict[str, type[DiffusersTeacher]] = {"sd3": SD3Teacher, "sdxl": SDXLTeacher}


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
    index = _read_json(path / "model_index.json")
    found = str(index.get("_class_name", ""))
    for family, other in TEACHERS.items():
        if other is not kind and found.startswith(other.pipeline_class.removesuffix("Pipeline")):
            raise ConfigError(f"{where} holds a {found}; set teacher.family = {family!r} (or point to a "
                              f"{kind.pipeline_class} folder)")
    if not found.startswith(kind.pipeline_class.removesuffix("Pipeline")):
        raise ConfigError(f"{where} holds a {found or 'unknown pipeline'}; expected {expected}")
    for sub in (kind.net_folder, *kind.required):
        entry = index.get(sub)
        if not (path / sub).is_dir() or not entry or entry[0] is None:
            raise ConfigError(f"{where} lacks the {sub}/ component; expected {expected}")
    require_safetensors(path / kind.net_folder, where)
    for sub in index:  # the other models (text encoders, VAE), not tokenizers or the scheduler
        if not sub.startswith("_") and sub != kind.net_folder and (path / sub / "config.json").is_file():
            require_safetensors(path / sub, where)
    return index


def _vae_factor(vae_config: dict) -> int:
    return 2 ** (len(vae_config["block_out_channels"]) - 1)


def check_resolution(path: Path, kind: type[DiffusersTeacher], resolution: int) -> None:
    """Refuse a teacher.resolution the folder's network cannot take, from its configs alone (no weights): a
    multiple of what the VAE, the patches and the UNet's levels divide, and for SD3 no larger than its position
    embedding covers (diffusers refuses a larger image only at the first forward pass, after minutes of loading)."""
    vae, net = (_read_json(path / sub / "config.json") for sub in ("vae", kind.net_folder))
    factor, patch = _vae_factor(vae), int(net.get("patch_size", 1) or 1)
    multiple = factor * patch * (2 ** (len(net.get("block_out_channels", [0])) - 1))
    if resolution % multiple:
        raise ConfigError(f"teacher.resolution = {resolution} must be a multiple of {multiple} for this "
                          f"{kind.family} teacher (VAE factor {factor}, patch {patch})")
    if net.get("pos_embed_max_size"):
        largest = int(net["pos_embed_max_size"]) * patch * factor
        if resolution > largest:
            raise ConfigError(f"teacher.resolution = {resolution} is larger than this {kind.family} teacher can "
                              f"take ({largest} px: its pos_embed_max_size {net['pos_embed_max_size']} x patch "
                              f"{patch} x VAE factor {factor}); give {largest} or less")


def load(cfg: Config, dtype: torch.dtype) -> Teacher:
    """The teacher of a resolved config whose family is 'sd3' or 'sdxl'."""
    return TEACHERS[cfg.teacher.family](cfg, dtype)
