"""Teacher and student measured the same way: diversity (Eq. 9), quality, modes and seconds per image."""
from __future__ import annotations

import time
from dataclasses import dataclass

import torch
from torch import nn

from ..builtin import shape_modes
from ..builtin.modes import mode_metrics
from ..config import Config
from ..progress import phase
from ..sampling import sample_grid
from ..teachers.base import Teacher
from .evaluate import DigitsExtractor, FeatureExtractor, ShapesExtractor, evaluate_images, load_extractor


def prompt_labels(teacher: Teacher, prompts: list[str], per_prompt: int) -> torch.Tensor | None:
    """Class labels of prompt-major samples, where the teacher has classes (the built-in one)."""
    if teacher.family != "builtin":
        return None
    labels = teacher.encode_prompts(prompts)["class_labels"]
    return labels.repeat_interleave(per_prompt)


def seconds_per_image(teacher: Teacher, net: nn.Module, prompts: list[str], levels: list[float], guidance: float,
                      batch: int, device, repeats: int = 3) -> float:
    """Best-of-``repeats`` wall time per image for one batch, after a warm-up (robust to a busy host)."""
    seeds = list(range(max(1, batch // len(prompts))))
    sample_grid(teacher, net, prompts[:1], seeds[:1], levels, guidance, batch, device)  # warm-up
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        lat = sample_grid(teacher, net, prompts, seeds, levels, guidance, batch, device)
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        best = min(best, (time.perf_counter() - start) / lat.shape[0])
    return best


def measure(teacher: Teacher, net: nn.Module, cfg: Config, extractor: FeatureExtractor | None, *,
            levels: list[float], guidance: float, device, who: str = "the student") -> tuple[dict, torch.Tensor]:
    """Sample the eval prompts from fixed seeds, compute the metrics, and time the sampler.

    Returns the metrics and the images (prompt-major), for comparisons across models.
    """
    e = cfg.eval
    per_prompt = max(e.seeds, e.fd_samples_per_prompt if teacher.family == "builtin" else 0)
    batch = max(cfg.data.batch_size, 64) if teacher.family == "builtin" else cfg.data.batch_size
    with phase(f"evaluation: sampling {who}", len(e.prompts) * per_prompt, "img") as p:
        latents = sample_grid(teacher, net, e.prompts, list(range(per_prompt)), levels, guidance, batch, device,
                              progress=p.advance)
    with phase(f"evaluation: timing {who}'s sampler"):
        seconds = seconds_per_image(teacher, net, e.prompts, levels, guidance, batch, device)
    out = {"steps": len(levels) - 1, "guidance": guidance, "nfe": (len(levels) - 1) * (2 if guidance != 1 else 1),
           "seconds_per_image": seconds}
    images = teacher.decode(latents)
    if extractor is not None:
        out.update(evaluate_images(images, per_prompt, extractor, prompt_labels(teacher, e.prompts, per_prompt),
                                   diversity_seeds=e.seeds))
    return out, images


@dataclass
class Reference:
    """The teacher's measurement, kept to compare several students with it (the demo measures it once)."""

    metrics: dict
    images: torch.Tensor
    extractor: FeatureExtractor | None


def measure_teacher(cfg: Config, teacher: Teacher, device) -> Reference:
    """The teacher with its own steps and CFG, on the eval prompts and seeds."""
    extractor = load_extractor(cfg.eval.features, cfg.teacher.builtin) if cfg.eval.features else None
    metrics, images = measure(teacher, teacher.network, cfg, extractor,
                              levels=teacher.teacher_levels(cfg.teacher.num_steps),
                              guidance=cfg.teacher.guidance_scale, device=device,
                              who="the teacher's reference images")
    return Reference(metrics, images, extractor)


def compare(cfg: Config, teacher: Teacher, student: nn.Module, device, reference: Reference | None = None) -> dict:
    """Teacher (its steps, CFG) and student (its steps, no CFG) measured identically.

    ``reference``: the teacher's measurement under the same eval settings, when it is already taken.
    """
    ref = reference or measure_teacher(cfg, teacher, device)
    extractor, t, t_images = ref.extractor, dict(ref.metrics), ref.images
    levels = teacher.student_levels(cfg.student.num_steps, cfg.student.shift)
    s, s_images = measure(teacher, student, cfg, extractor, levels=levels, guidance=1.0, device=device)
    ratios = {"sampling_speedup": t["seconds_per_image"] / max(s["seconds_per_image"], 1e-12)}
    if "diversity" in t:
        ratios["diversity_student_over_teacher"] = s["diversity"] / max(t["diversity"], 1e-12)
    if "diversity_valid" in t and t["diversity_valid"] and s["diversity_valid"] is not None:
        ratios["diversity_valid_student_over_teacher"] = s["diversity_valid"] / t["diversity_valid"]
    if isinstance(extractor, (DigitsExtractor, ShapesExtractor)):
        t_modes, s_modes = builtin_mode_metrics(extractor, teacher, cfg.eval.prompts, t_images, s_images)
        t.update(t_modes)
        s.update(s_modes)
    return {"teacher": t, "student": s, "ratios": ratios}


def builtin_mode_metrics(extractor: DigitsExtractor | ShapesExtractor, teacher: Teacher, prompts: list[str],
                         teacher_images: torch.Tensor, student_images: torch.Tensor) -> tuple[dict, dict]:
    """The built-in teachers' mode metrics of teacher and student from the same noises (prompt-major images)."""
    per_prompt = teacher_images.shape[0] // len(prompts)
    labels = prompt_labels(teacher, prompts, per_prompt)
    if isinstance(extractor, ShapesExtractor):  # counted by the decoder
        return shape_modes.mode_metrics(teacher_images, student_images, labels, per_prompt)
    return mode_metrics(extractor, teacher_images, student_images, labels, per_prompt)  # the digits' style clusters
