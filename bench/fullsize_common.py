"""Full-size random-weight teachers and measured DP-DMD iterations: the code fullsize_cpu.py and gpu_check.py share.

A teacher folder is a real diffusers folder: a public network config of `dpdmd plan`'s table (distill_core.plan
REFERENCES: SD3.5, SDXL, Z-Image, FLUX.2 [klein]) with random bf16 weights, the real VAE config, and text
encoders whose outputs have the real shapes (one-layer CLIP-L 768, CLIP-G 1280, pooled 2048; T5 4096; SDXL
2048 + pooled 1280; Qwen3 at its real width with as few narrow layers as the pipeline reads), so the prompt
embeddings the trainer caches are what the real pipelines produce in shape. The iterations are the
project's own Trainer (its fake_update and student_update, optimiser steps included); each phase's seconds and
peak memory are recorded by a Meter (host RSS on a CPU, torch.cuda.max_memory_allocated on a GPU) and set
against ``dpdmd plan``'s parts for the same config.
"""
from __future__ import annotations

import ctypes
import ctypes.util
import dataclasses
import gc
import json
import os
import sys
import threading
import time
from contextlib import contextmanager
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))  # the tiny tokenizers of tests/tiny_diffusers.py

from distill_core import method as method_module  # noqa: E402
from distill_core import plan as planning  # noqa: E402
from distill_core import presets  # noqa: E402
from distill_core.config import Config, resolve  # noqa: E402
from distill_core.runfolder import atomic_write_text  # noqa: E402

GB = 1e9
PROMPTS = ["a photo of a cat", "the dog", "a painting of the sea"]
# Per family, a few-layer network of the same class and widths where the text meets it: the same code path in
# seconds (SD3: width 64 x depth, as ComfyUI infers the depth).
TINY = {"sd3": {"num_layers": 2, "num_attention_heads": 2, "caption_projection_dim": 128, "dual_attention_layers": [0]},
        "sdxl": {"block_out_channels": [32, 64, 64], "transformer_layers_per_block": [1, 1, 1],
                 "attention_head_dim": [2, 4, 4], "norm_num_groups": 16},
        "zimage": {"dim": 128, "n_heads": 1, "n_kv_heads": 1, "n_layers": 1, "n_refiner_layers": 1},  # head 128
        "flux2": {"num_layers": 1, "num_single_layers": 1, "num_attention_heads": 1}}  # head 128, as ComfyUI reads
TINY_VAE = {"block_out_channels": [32, 32, 32, 32], "layers_per_block": 1}  # the same 8x downsampling
VAE_FACTORS = {"sd3": {"scaling_factor": 1.5305, "shift_factor": 0.0609}, "sdxl": {"scaling_factor": 0.13025},
               "zimage": {"scaling_factor": 0.3611, "shift_factor": 0.1159}}  # Z-Image: FLUX.1's VAE


def network_config(name: str, tiny: bool = False) -> dict:
    ref = planning.REFERENCES[name]
    return {**ref["network"], **(TINY[ref["family"]] if tiny else {})}


def reference_report(name: str, resolution: int, tiny: bool = False) -> planning.Report:
    """``dpdmd plan --architecture NAME`` at ``resolution``; ``tiny``: of the few-layer networks the bench builds
    (its one-layer text encoders are left out: next to nothing)."""
    arch = planning.architecture_from_reference(name)
    if tiny:
        arch = dataclasses.replace(arch, network=network_config(name, tiny), text_encoders={},
                                   vae={**arch.vae, **TINY_VAE})
    return planning.Report(arch, name, planning.Options(resolution=resolution), planning.Planner(arch))


def _qwen3_encoder(width: int, layers: int, causal_lm: bool = True) -> dict:
    """A Qwen3 at its real width with narrow layers: as many as the pipeline reads (FLUX.2: 28, for hidden
    states 9, 18 and 27, the transformer seeing the real 3 x width; Z-Image: 2, for hidden_states[-2], a
    Qwen3Model)."""
    from tiny_flux2 import tiny_qwen_tokenizer
    from transformers import Qwen3Config, Qwen3ForCausalLM, Qwen3Model

    tok = tiny_qwen_tokenizer()
    config = Qwen3Config(vocab_size=len(tok), hidden_size=width, intermediate_size=64, num_hidden_layers=layers,
                         num_attention_heads=2, num_key_value_heads=1, head_dim=128, pad_token_id=tok.pad_token_id,
                         tie_word_embeddings=True)
    return {"text_encoder": (Qwen3ForCausalLM if causal_lm else Qwen3Model)(config), "tokenizer": tok}


def _text_encoders(family: str) -> dict:
    """One-layer CLIP-L / CLIP-G (and T5) whose hidden and pooled widths are the real ones."""
    from tiny_diffusers import tiny_clip_tokenizer, tiny_t5_tokenizer
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection, T5Config, T5EncoderModel

    def clip(cls, width: int):
        tok = tiny_clip_tokenizer()
        config = CLIPTextConfig(bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id,
                                pad_token_id=tok.pad_token_id, vocab_size=len(tok), hidden_size=width,
                                intermediate_size=64, num_attention_heads=8, num_hidden_layers=1,
                                projection_dim=width, hidden_act="gelu")
        return cls(config), tok

    first, tok = clip(CLIPTextModelWithProjection if family == "sd3" else CLIPTextModel, 768)
    second, tok2 = clip(CLIPTextModelWithProjection, 1280)
    parts = {"text_encoder": first, "tokenizer": tok, "text_encoder_2": second, "tokenizer_2": tok2}
    if family == "sd3":
        t5_tok = tiny_t5_tokenizer()
        parts["text_encoder_3"] = T5EncoderModel(T5Config(vocab_size=len(t5_tok), d_model=4096, d_kv=64, d_ff=64,
                                                          num_layers=1, num_heads=2, decoder_start_token_id=0,
                                                          relative_attention_num_buckets=8))
        parts["tokenizer_3"] = t5_tok
    return parts


def build_teacher_folder(name: str, path: Path, tiny: bool = False, seed: int = 0, device: str = "cpu") -> Path:
    """Write a random-weight diffusers teacher folder of a reference architecture (skipped if it exists).
    ``device``: where the denoiser's random weights are drawn (a GPU draws 8 B parameters in a second)."""
    import diffusers

    if (path / "model_index.json").is_file():
        return path
    ref = planning.REFERENCES[name]
    family = ref["family"]
    torch.manual_seed(seed)
    previous = torch.get_default_dtype()
    torch.set_default_dtype(torch.bfloat16)  # built in bf16: no fp32 copy of 2.5 B parameters on the way
    try:
        with torch.device(device):
            net = getattr(diffusers, ref["network_class"]).from_config(network_config(name, tiny))
    finally:
        torch.set_default_dtype(previous)
    vae = getattr(diffusers, ref.get("vae_class", "AutoencoderKL")).from_config(
        {**ref["vae"], **VAE_FACTORS.get(family, {}), **(TINY_VAE if tiny else {})})
    if family == "flux2":
        width = ref["text_encoders"]["text_encoder"][1]["hidden_size"]
        scheduler = diffusers.FlowMatchEulerDiscreteScheduler(shift=3.0, use_dynamic_shifting=True,
                                                              time_shift_type="exponential")
        pipe = diffusers.Flux2KleinPipeline(transformer=net, vae=vae, scheduler=scheduler,
                                            **_qwen3_encoder(width, layers=28))
    elif family == "zimage":
        width = ref["text_encoders"]["text_encoder"][1]["hidden_size"]
        scheduler = diffusers.FlowMatchEulerDiscreteScheduler(shift=3.0, use_dynamic_shifting=False)
        pipe = diffusers.ZImagePipeline(transformer=net, vae=vae, scheduler=scheduler,
                                        **_qwen3_encoder(width, layers=2, causal_lm=False))
    elif family == "sd3":
        pipe = diffusers.StableDiffusion3Pipeline(transformer=net, vae=vae, **_text_encoders(family),
                                                  scheduler=diffusers.FlowMatchEulerDiscreteScheduler(shift=3.0))
    else:
        scheduler = diffusers.EulerDiscreteScheduler(beta_start=0.00085, beta_end=0.012, steps_offset=1,
                                                     beta_schedule="scaled_linear", timestep_spacing="leading")
        pipe = diffusers.StableDiffusionXLPipeline(unet=net, vae=vae, scheduler=scheduler, **_text_encoders(family))
    tmp = path.with_name(path.name + ".tmp")
    pipe.save_pretrained(str(tmp))
    tmp.rename(path)
    return path


def bench_config(folder: Path, name: str, out: Path, resolution: int, preset: str, device: str,
                 fake_updates: int = 1, teacher_steps: int = 8, anchor_step: int = 2, batch_size: int = 1) -> Config:
    """A DP-DMD run of a preset (its batch if it names one, else ``batch_size``); previews and evaluation off."""
    cfg = Config()
    cfg.teacher.family, cfg.teacher.path = planning.REFERENCES[name]["family"], str(folder)
    cfg.teacher.resolution, cfg.teacher.num_steps, cfg.method.anchor_step = resolution, teacher_steps, anchor_step
    cfg.method.fake_updates = fake_updates
    cfg.data.prompts, cfg.data.batch_size = list(PROMPTS), batch_size
    presets.apply(cfg, preset)
    cfg.run.output_dir, cfg.run.device, cfg.run.max_steps, cfg.run.checkpoint_every = str(out), device, 1, 1
    cfg.eval.diversity_every, cfg.eval.grid_every, cfg.eval.features = 0, 0, ""
    cfg.eval.prompts, cfg.eval.max_prompts = PROMPTS[:1], 1
    return resolve(cfg)


# ---- meters ---------------------------------------------------------------------------------------------------
def rss_bytes() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


MMAP_THRESHOLD = 128 * 1024  # bytes: glibc serves every allocation from this size on with its own mapping


def fixed_mmap_threshold() -> bool:
    """Make glibc return freed tensor memory to the system at once, so that RSS follows live memory.

    glibc's default threshold grows with the largest block freed: after the first large tensors are freed,
    later ones come from the heap, and freed heap space below a live block stays resident. At 512 px that
    retained 2.3 GB on SD3.5-M (peak RSS 11.34 GB against 9.11 GB with a fixed threshold, the same work):
    RSS then measured glibc, not the tensors the planner counts (a GPU's caching allocator is modelled by the
    planner's fragmentation factor instead). M_MMAP_THRESHOLD fixed at 128 KiB is what MALLOC_MMAP_THRESHOLD_
    does, set from inside the process before any model is built. False where the C library is not glibc.
    """
    name = ctypes.util.find_library("c")
    try:
        libc = ctypes.CDLL(name) if name else None
        return bool(libc and libc.mallopt(-3, MMAP_THRESHOLD))  # -3: M_MMAP_THRESHOLD (malloc.h)
    except (OSError, AttributeError):
        return False


class HostMeter:
    """Peak resident memory of this process per phase, sampled every 20 ms in a thread."""

    kind = "peak RSS"

    def __init__(self) -> None:
        if fixed_mmap_threshold():  # before any model: RSS follows live memory
            self.kind = f"peak RSS (glibc mmap threshold fixed at {MMAP_THRESHOLD // 1024} KiB)"
        self.baseline = rss_bytes()  # the interpreter and its libraries, before any model
        self._peak, self._stop = 0, threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)
        self._thread.start()

    def _sample(self) -> None:
        while not self._stop.is_set():
            self._peak = max(self._peak, rss_bytes())
            time.sleep(0.02)

    def start(self) -> None:
        self._peak = rss_bytes()

    def peak(self) -> int:
        time.sleep(0.05)
        return max(self._peak, rss_bytes())

    def peak_reserved(self) -> None:
        return None  # no allocator cache to tell apart on the host

    def sync(self) -> None:
        pass

    def close(self) -> None:
        self._stop.set()


class CudaMeter:
    """torch.cuda.max_memory_allocated per phase (what the planner estimates, without the context), and
    max_memory_reserved (the caching allocator's hold: allocated plus its fragmentation)."""

    kind = "max_memory_allocated"
    baseline = 0

    def start(self) -> None:
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()

    def peak(self) -> int:
        torch.cuda.synchronize()
        return torch.cuda.max_memory_allocated()

    def peak_reserved(self) -> int:
        return torch.cuda.max_memory_reserved()

    def sync(self) -> None:
        """Wait for queued kernels, so that a phase's seconds are its kernels' and not their launches'."""
        torch.cuda.synchronize()

    def close(self) -> None:
        pass


class Phases:
    """Seconds and peak memory of named phases (a phase entered twice keeps its total time and larger peak)."""

    def __init__(self, meter) -> None:
        self.meter = meter
        self.rows: dict[str, dict] = {}
        self._active: list[str] = []

    @contextmanager
    def phase(self, name: str):
        if self._active:  # nested: the outer phase keeps its own peak running
            t0 = time.perf_counter()
            yield
            self.meter.sync()
            self._add(name, time.perf_counter() - t0, None, None)
            return
        self._active.append(name)
        self.meter.start()
        t0 = time.perf_counter()
        try:
            yield
        finally:
            self._add(name, time.perf_counter() - t0, self.meter.peak(), self.meter.peak_reserved())
            self._active.pop()

    def take(self) -> dict[str, dict]:
        """The rows so far, and a fresh start (one measurement per call, e.g. per iteration)."""
        rows, self.rows = self.rows, {}
        return rows

    def _add(self, name: str, seconds: float, peak: int | None, reserved: int | None) -> None:
        row = self.rows.setdefault(name, {"seconds": 0.0, "peak_gb": None, "count": 0})
        row["seconds"] += seconds
        row["count"] += 1
        if peak is not None:
            row["peak_gb"] = max(row["peak_gb"] or 0.0, peak / GB)
        if reserved is not None:
            row["reserved_gb"] = max(row.get("reserved_gb", 0.0), reserved / GB)


def _timed(phases: Phases, name: str, fn):
    def wrapped(*args, **kwargs):
        with phases.phase(name):
            return fn(*args, **kwargs)
    return wrapped


# ---- the measured run -------------------------------------------------------------------------------------------
@contextmanager
def timed_trainer(cfg: Config, phases: Phases):
    """The run's Trainer, built inside the phase 'load + prompts' (teacher, prompt cache, adapters, optimisers),
    with its 'fake update' (student sample, fake-score loss, backward, AdamW step) and 'student update' (anchor
    rollout, student rollout, DMD and diversity losses, backward, AdamW step) timed as phases, and 'anchor rollout'
    (the teacher's k CFG steps) inside the latter. The trainer is deleted on the way out."""
    from distill_core.training.trainer import Trainer

    original_anchor = method_module.teacher_anchor
    method_module.teacher_anchor = _timed(phases, "anchor rollout (in student update)", original_anchor)
    trainer = None
    try:
        with phases.phase("load + prompts"):
            trainer = Trainer(cfg, progress=False)
            trainer.run.create()
            atomic_write_text(trainer.run.config_path, trainer.cfg.to_toml())
        trainer.fake_update = _timed(phases, "fake update", trainer.fake_update)
        trainer.student_update = _timed(phases, "student update", trainer.student_update)
        yield trainer
    finally:
        method_module.teacher_anchor = original_anchor
        del trainer
        gc.collect()


def measure(cfg: Config, meter, iterations: int = 1, checkpoint: bool = True) -> dict:
    """Build the run's Trainer, train ``iterations`` DP-DMD steps, write a checkpoint (``checkpoint``); seconds and
    peaks per phase (timed_trainer's); seconds per iteration from the last one (the first also warms kernels up)."""
    from distill_core.training.recorder import Recorder

    phases = Phases(meter)
    with timed_trainer(cfg, phases) as trainer:
        logs = []
        for _ in range(iterations):
            t0 = time.perf_counter()
            logs.append(trainer.train_step())
            seconds_per_iteration = time.perf_counter() - t0
        if checkpoint:
            with phases.phase("checkpoint"):
                trainer.save_checkpoint(Recorder())
    return {"phases": phases.rows, "sec_per_iter": seconds_per_iteration, "baseline_gb": meter.baseline / GB,
            "meter": meter.kind, "logs": logs}


def planned(cfg: Config, host: bool) -> dict:
    """The planner's parts and peak for the same config (plan_summary)."""
    report = planning.plan(cfg)
    return plan_summary(report.planner.estimate(report.options), host)


def plan_summary(e: planning.Estimate, host: bool) -> dict:
    """An estimate's parts in GB, without the VAE (previews are off in the bench, it is never loaded). Not ``host``
    (a GPU run): also the planner's own peaks, with the CUDA context and allocator fragmentation (and the VAE)."""
    parts = {k: v / GB for k, v in e.parts.items()}
    parts["VAE (previews)"] = 0.0
    out = {"parts_gb": parts, "parts_sum_gb": sum(parts.values()), "prompt_gb": e.encode_peak / GB}
    return out if host else {**out, "peak_gb": e.peak / GB, "train_peak_gb": e.train_peak / GB}


def write_json(path: Path, data: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data, indent=1, default=str))
