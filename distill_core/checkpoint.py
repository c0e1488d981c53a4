"""Checkpoints that resume exactly and cannot be half-read.

A checkpoint is a folder ``checkpoints/step_XXXXXXXX`` holding safetensors files
only (networks, optimiser states, RNG states) and ``state.json``. It is written
under a temporary name and renamed into place once complete; ``COMPLETE``, written
last, lists every file's size, so a truncated or partial folder is recognised and
skipped for the previous one. Nothing is ever unpickled.
"""
from __future__ import annotations

import json
import os
import shutil
from collections.abc import Mapping
from pathlib import Path

import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file

from .errors import CheckpointError

MARKER = "COMPLETE"
PREFIX = "step_"


def step_dir_name(step: int) -> str:
    return f"{PREFIX}{step:08d}"


def save_tensors(path: Path, tensors: Mapping[str, torch.Tensor], metadata: dict[str, str] | None = None) -> None:
    save_file({k: v.detach().contiguous().cpu() for k, v in tensors.items()}, str(path), metadata=metadata)


def non_finite(tensors: Mapping[str, torch.Tensor]) -> list[str]:
    """Names of floating-point tensors holding NaN or inf (a checkpoint must never keep them)."""
    return [k for k, v in tensors.items() if v.is_floating_point() and not bool(torch.isfinite(v).all())]


def optimizer_tensors(optimizer: torch.optim.Optimizer | dict) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """Flatten an optimiser state dict (keyed by index or by parameter name) into tensors plus JSON metadata."""
    sd = optimizer.state_dict() if isinstance(optimizer, torch.optim.Optimizer) else optimizer
    tensors: dict[str, torch.Tensor] = {}
    scalars: dict[str, dict] = {}
    for pid, state in sd["state"].items():
        for name, value in state.items():
            if torch.is_tensor(value):
                tensors[f"state.{pid}.{name}"] = value
            else:
                scalars.setdefault(str(pid), {})[name] = value
    return tensors, {"param_groups": json.dumps(sd["param_groups"]), "scalars": json.dumps(scalars)}


def optimizer_state_from(path: Path) -> dict:
    """Inverse of ``optimizer_tensors`` for ``optimizer.load_state_dict``."""
    with safe_open(str(path), framework="pt") as f:
        meta = f.metadata()
    tensors = load_file(str(path))
    state: dict[int | str, dict] = {}

    def param_id(pid: str) -> int | str:  # an index, or a parameter name (which may contain dots)
        return int(pid) if pid.isdigit() else pid

    for key, value in tensors.items():
        pid, name = key[len("state."):].rsplit(".", 1)
        state.setdefault(param_id(pid), {})[name] = value
    for pid, values in json.loads(meta["scalars"]).items():
        state.setdefault(param_id(pid), {}).update(values)
    return {"state": state, "param_groups": json.loads(meta["param_groups"])}


def rng_tensors(generators: Mapping[str, torch.Generator]) -> dict[str, torch.Tensor]:
    out = {f"gen.{name}": g.get_state() for name, g in generators.items()}
    out["torch.cpu"] = torch.get_rng_state()
    if torch.cuda.is_available():
        out.update({f"torch.cuda.{i}": s for i, s in enumerate(torch.cuda.get_rng_state_all())})
    return out


def restore_rng(path: Path, generators: Mapping[str, torch.Generator]) -> None:
    states = load_file(str(path))
    for name, g in generators.items():
        g.set_state(states[f"gen.{name}"])
    torch.set_rng_state(states["torch.cpu"])
    cuda = [states[k] for k in sorted(states) if k.startswith("torch.cuda.")]
    if cuda and torch.cuda.is_available() and len(cuda) == torch.cuda.device_count():
        torch.cuda.set_rng_state_all(cuda)


def staging_dir(checkpoints: Path, step: int) -> Path:
    """The temporary folder every rank writes into before ``finalize``."""
    d = checkpoints / f".{step_dir_name(step)}.tmp"
    d.mkdir(parents=True, exist_ok=True)
    return d


def finalize(checkpoints: Path, step: int, state: dict, keep: int) -> Path:
    """Mark the staged checkpoint complete, move it into place, and prune old ones (main rank only)."""
    tmp = checkpoints / f".{step_dir_name(step)}.tmp"
    (tmp / "state.json").write_text(json.dumps(state, indent=1))
    sizes = {p.name: p.stat().st_size for p in sorted(tmp.iterdir()) if p.is_file()}
    marker = tmp / MARKER
    with open(marker, "w") as f:
        f.write(json.dumps({"step": step, "files": sizes}))
        f.flush()
        os.fsync(f.fileno())
    final = checkpoints / step_dir_name(step)
    if final.exists():
        shutil.rmtree(final)
    os.replace(tmp, final)
    for old in list_complete(checkpoints)[:-keep]:
        shutil.rmtree(old, ignore_errors=True)
    return final


def is_complete(folder: Path) -> bool:
    """True when the marker exists and every file it lists has its recorded size and readable header."""
    marker = folder / MARKER
    try:
        info = json.loads(marker.read_text())
        for name, size in info["files"].items():
            path = folder / name
            if path.stat().st_size != size:
                return False
            if name.endswith(".safetensors"):
                with safe_open(str(path), framework="pt"):
                    pass
        return True
    except Exception:  # any unreadable marker, size or header means: not complete
        return False


def list_complete(checkpoints: Path) -> list[Path]:
    """Complete checkpoints, oldest first."""
    if not checkpoints.is_dir():
        return []
    dirs = sorted(d for d in checkpoints.iterdir() if d.is_dir() and d.name.startswith(PREFIX))
    return [d for d in dirs if is_complete(d)]


def latest(checkpoints: Path) -> Path | None:
    found = list_complete(checkpoints)
    return found[-1] if found else None


def read_state(folder: Path) -> dict:
    try:
        return json.loads((folder / "state.json").read_text())
    except (OSError, json.JSONDecodeError) as e:
        raise CheckpointError(f"checkpoint {folder} has no readable state.json ({e})") from None
