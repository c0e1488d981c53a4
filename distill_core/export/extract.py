"""``dpdmd extract-lora``: an existing fine-tune (a turbo, a style model) as a LoRA of the layers the student trains.

The delta (tuned - base) of every layer the student's adapter covers (its teacher's lora_targets) is factored by a
truncated SVD (the best rank-r approximation, Eckart-Young), so ``student.init_lora`` / ``fake.init_lora`` can
start a run from it. What a LoRA cannot hold is measured and printed rather than hidden: the relative Frobenius
error per layer group and overall (from the discarded singular values), and the share of the delta's squared
norm that lies outside the covered layers (norms, embeddings, convolutions). Both models are read one tensor
at a time from their safetensors files, so memory stays near one layer pair however large the models are.
"""
from __future__ import annotations

import json
import math
import sys
from collections import defaultdict
from contextlib import ExitStack
from dataclasses import dataclass, field
from pathlib import Path

import torch

from ..errors import ConfigError, shown
from ..families import FAMILIES
from ..integrity import require_safetensors
from ..runfolder import atomic_target
from ..teachers.base import family_teacher
from ..teachers.diffusers_base import teacher_classes
from .student_file import CHECKSUM, PREFIX, StudentInfo, read_metadata

NET_FOLDERS = ("transformer", "unet")  # where a pipeline folder keeps the denoiser (sd3 | sdxl)


def network_files(path: str, flag: str) -> list[Path]:
    """The safetensors files of a denoiser: a file, a component folder (transformer/, unet/, sharded or not), or a
    pipeline folder holding one."""
    p = Path(path).expanduser()
    if p.is_file():
        if p.suffix not in (".safetensors", ".sft"):
            raise ConfigError(f"{flag} {shown(path)} is not a .safetensors file (pickled checkpoints are refused)")
        return [p]
    if not p.is_dir():
        raise ConfigError(f"{flag} {shown(path)} does not exist; give a diffusers folder or a .safetensors file")
    for sub in NET_FOLDERS:
        if (p / sub).is_dir():
            p = p / sub
            break
    require_safetensors(p, flag)
    files = sorted(p.glob("*.safetensors"))
    if not files:
        raise ConfigError(f"{flag} {shown(path)} holds no .safetensors weights (expected a diffusers folder with "
                          f"{' or '.join(NET_FOLDERS)}/, or a .safetensors file)")
    return files


def detect_family(path: str) -> str | None:
    """The family a folder's model_index.json or a student file's metadata names; None if neither says."""
    p = Path(path).expanduser()
    if p.is_file():
        family = read_metadata(p).get(f"{PREFIX}family")
        return json.loads(family) if family else None
    index = p / "model_index.json"
    if index.is_file():
        name = json.loads(index.read_text(encoding="utf-8")).get("_class_name", "")
        return next((family for family, cls in teacher_classes().items() if cls.pipeline_class == name), None)
    return None


class Weights:
    """name -> tensor of one network's safetensors files, read lazily (one tensor at a time)."""

    def __init__(self, files: list[Path], stack: ExitStack) -> None:
        from safetensors import safe_open

        self.where: dict[str, object] = {}
        for f in files:
            handle = stack.enter_context(safe_open(str(f), framework="pt"))
            self.where.update({k: handle for k in handle.keys()})

    def keys(self) -> set[str]:
        return set(self.where)

    def __getitem__(self, key: str) -> torch.Tensor:
        return self.where[key].get_tensor(key).float()


def group_of(module: str, family: str) -> str:
    """The layer group a covered module belongs to: its target suffix (to_q, ff.net.2, ...)."""
    return next(s for s in family_teacher(family).lora_targets if module == s or module.endswith("." + s))


@dataclass
class Extraction:
    """What was factored and what was lost, in squared Frobenius norms."""
    factors: dict[str, tuple[torch.Tensor, torch.Tensor]] = field(default_factory=dict)
    delta: dict[str, float] = field(default_factory=lambda: defaultdict(float))  # per group: ||D||^2
    residual: dict[str, float] = field(default_factory=lambda: defaultdict(float))  # per group: ||D - BA||^2
    outside: float = 0.0  # ||D||^2 of the layers the adapter does not cover
    group: dict[str, str] = field(default_factory=dict)  # covered module -> its group

    @property
    def covered(self) -> float:
        return sum(self.delta.values())

    def relative_error(self, group: str | None = None) -> float:
        d, r = (self.delta[group], self.residual[group]) if group else (self.covered, sum(self.residual.values()))
        return math.sqrt(r / d) if d > 0 else 0.0

    @property
    def outside_share(self) -> float:
        total = self.covered + self.outside
        return self.outside / total if total > 0 else 0.0

    def lines(self) -> list[str]:
        out = [f"  {'layer group':<24}{'layers':>7}{'relative error':>16}"]
        counts = defaultdict(int)
        for module in self.factors:
            counts[self.group[module]] += 1
        for group in sorted(self.delta):
            out.append(f"  {group:<24}{counts[group]:>7}{self.relative_error(group):>16.6g}")
        out.append(f"  {'all covered layers':<24}{len(self.factors):>7}{self.relative_error():>16.6g}")
        out.append(f"delta outside the covered layers: {100 * self.outside_share:.4f} % of its squared norm "
                   "(not in the LoRA)")
        return out


def extract(base: str, tuned: str, rank: int, family: str, progress: bool = True) -> Extraction:
    """The truncated SVD of (tuned - base) for every covered layer, and the errors it leaves."""
    from tqdm import tqdm

    targets = family_teacher(family).lora_targets
    result = Extraction()
    with ExitStack() as stack:
        a, b = (Weights(network_files(p, flag), stack) for p, flag in ((base, "--base"), (tuned, "--tuned")))
        if a.keys() != b.keys():
            diff = sorted(a.keys() ^ b.keys())
            raise ConfigError(f"--base and --tuned are not the same architecture: {len(diff)} tensors are in one "
                              f"only (e.g. {diff[0]!r}); give the tuned model's base")
        for key in tqdm(sorted(a.keys()), desc="extract-lora", unit="tensor", disable=not progress, file=sys.stderr):
            base_w, tuned_w = a[key], b[key]
            if base_w.shape != tuned_w.shape:
                raise ConfigError(f"--base and --tuned differ in the shape of {key} ({tuple(base_w.shape)} vs "
                                  f"{tuple(tuned_w.shape)}); give the tuned model's base")
            delta = tuned_w - base_w
            module = key.removesuffix(".weight")
            covered = key.endswith(".weight") and delta.dim() == 2 and any(
                module == s or module.endswith("." + s) for s in targets)
            if not covered:
                result.outside += float(delta.pow(2).sum())
                continue
            u, s, vh = torch.linalg.svd(delta, full_matrices=False)
            r = min(rank, s.numel())
            result.factors[module] = (vh[:r].contiguous(), (u[:, :r] * s[:r]).contiguous())
            group = result.group[module] = group_of(module, family)
            result.delta[group] += float(s.pow(2).sum())
            result.residual[group] += float(s[r:].pow(2).sum())
    if not result.factors:
        raise ConfigError(f"--base has none of the {family} layers the student's adapter covers "
                          f"({', '.join(targets[:4])}, ...); is --family right?")
    return result


def extract_lora(base: str, tuned: str, rank: int, out: str, family: str | None = None,
                 dtype: torch.dtype = torch.float32, progress: bool = True) -> Extraction:
    """Write the rank-``rank`` LoRA of (tuned - base) to ``out`` (the project's LoRA format) and return the report."""
    from safetensors.torch import save_file

    from ..integrity import tensors_sha256
    from .exporters import lora_keys

    if rank < 1:
        raise ConfigError(f"--rank {rank} must be at least 1")
    family = family or detect_family(base) or detect_family(tuned)
    if family is None:
        raise ConfigError(f"--family is needed: neither {shown(base)} nor {shown(tuned)} says which family it is "
                          f"(one of {', '.join(FAMILIES)})")
    if family not in FAMILIES:
        raise ConfigError(f"--family {family!r} is not one of {', '.join(FAMILIES)}")
    result = extract(base, tuned, rank, family, progress)
    tensors: dict[str, torch.Tensor] = {}
    for module, (a, b) in result.factors.items():
        tensors.update({k: v.to(dtype).contiguous() for k, v in lora_keys(family, module, a, b).items()})
    meta = {"modelspec.sai_model_spec": "1.0.0", "modelspec.title": f"LoRA extracted from {Path(tuned).name}",
            f"{PREFIX}kind": "extracted_lora"}
    tuned_meta = read_metadata(Path(tuned)) if Path(tuned).is_file() else {}
    if f"{PREFIX}format_version" in tuned_meta:  # a DP-DMD student: keep its schedule and training record
        info = StudentInfo.from_metadata(tuned_meta)
        meta.update(StudentInfo(**{**info.__dict__, "extra": {**info.extra, "kind": "lora"}}).to_metadata())
    meta.update({f"{PREFIX}{k}": json.dumps(v) for k, v in {
        "family": family, "rank": rank, "base": str(base), "tuned": str(tuned),
        "relative_error": result.relative_error(), "outside_share": result.outside_share,
        "group_errors": {g: result.relative_error(g) for g in sorted(result.delta)}}.items()})
    meta[CHECKSUM] = tensors_sha256(sorted(tensors.items()))
    try:
        with atomic_target(Path(out)) as tmp:
            save_file(tensors, str(tmp), metadata=meta)
    except OSError as e:
        raise ConfigError(f"--out {shown(out)} cannot be written ({e.strerror or e}); give a path in a folder you "
                          "can write to") from None
    return result
