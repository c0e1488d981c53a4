"""Checkpoints that resume exactly and cannot be half-read.

A checkpoint is a folder ``checkpoints/step_XXXXXXXX`` holding safetensors files
only (networks, optimiser states, RNG states) and ``state.json``. It is written
under a temporary name and renamed into place once complete; ``COMPLETE``, written
last, lists every file's size and sha256, so a truncated, partial or damaged folder
is recognised and skipped (and reported) for the previous one; NaN weights or
optimiser states make a checkpoint unusable too. Nothing is ever unpickled.
"""
from __future__ import annotations

import errno
import json
import os
import shutil
from collections.abc import Callable, Mapping
from pathlib import Path

import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file

from ..errors import CheckpointError, DiskFull
from ..integrity import file_tensors, first_nonfinite, nonfinite_message, sha256_file

MARKER = "COMPLETE"
PREFIX = "step_"


def step_dir_name(step: int) -> str:
    return f"{PREFIX}{step:08d}"


def save_tensors(path: Path, tensors: Mapping[str, torch.Tensor], metadata: dict[str, str] | None = None) -> None:
    """safetensors' save_file; a full disk is a DiskFull naming the file and the space it needs (safetensors
    reports it as its own error, not an OSError)."""
    tensors = {k: v.detach().contiguous().cpu() for k, v in tensors.items()}
    try:
        save_file(tensors, str(path), metadata=metadata)
    except Exception as e:  # SafetensorError, or an OSError from a full or failing disk; the caller's
        # staging folder or temporary name holds the partial file and goes with it
        if getattr(e, "errno", None) in (errno.ENOSPC, errno.EDQUOT) or any(
                s in str(e) for s in ("No space left", "StorageFull", "QuotaExceeded", "code: 28")):
            needed = sum(v.numel() * v.element_size() for v in tensors.values())
            free = shutil.disk_usage(path.parent).free
            raise DiskFull(f"no space left on the disk writing {path} (it needs {needed / 2**20:,.1f} MB, "
                           f"{free / 2**20:,.1f} MB are free there)") from None
        raise


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


def _layout_file(path: Path) -> bool:
    """A file a checkpoint is made of; anything else in staging (safetensors' own ``.tmpXXXXXX`` from an
    interrupted write, a stray copy) is not part of it."""
    return path.is_file() and not path.name.startswith(".") and (path.suffix == ".safetensors"
                                                                 or path.name == "state.json")


def finalize(checkpoints: Path, step: int, state: dict, keep: int) -> Path:
    """Mark the staged checkpoint complete, move it into place, and prune old ones (main rank only).

    The marker lists each file's size and sha256, so damage of any kind is found on load.
    """
    tmp = checkpoints / f".{step_dir_name(step)}.tmp"
    (tmp / "state.json").write_text(json.dumps(state, indent=1))
    files = {}
    for path in sorted(tmp.iterdir()):
        if _layout_file(path):
            files[path.name] = {"size": path.stat().st_size, "sha256": sha256_file(path)}
        elif path.is_dir():
            shutil.rmtree(path)
        else:
            path.unlink()
    marker = tmp / MARKER
    with open(marker, "w") as f:
        f.write(json.dumps({"step": step, "files": files}))
        f.flush()
        os.fsync(f.fileno())
    final = checkpoints / step_dir_name(step)
    if final.exists():
        shutil.rmtree(final)
    os.replace(tmp, final)
    for old in list_complete(checkpoints)[:-keep]:
        shutil.rmtree(old, ignore_errors=True)
    return final


def _listed(folder: Path) -> dict[str, dict]:
    """The marker's files as {name: {"size": ..., "sha256": ...}} (checkpoints written before checksums: size only)."""
    info = json.loads((folder / MARKER).read_text())
    return {name: v if isinstance(v, dict) else {"size": v} for name, v in info["files"].items()}


def copy_listed(source: Path, target: Path) -> None:
    """Copy a complete checkpoint's own files (those its marker lists, and the marker) into ``target``.

    Nothing else in the folder travels, and a listed name that is not a plain file of ``source`` (a path with
    a separator, a symlink) refuses the copy: a branch must not carry other files into the run folder.
    """
    names = [*_listed(source), MARKER]
    target.mkdir(parents=True)
    for name in names:
        path = source / name
        if Path(name).name != name or name in (".", "..") or path.is_symlink() or not path.is_file():
            raise CheckpointError(f"its marker lists {name!r}, which is not a plain file of the checkpoint folder")
        shutil.copyfile(path, target / name)


def is_complete(folder: Path) -> bool:
    """True when the marker exists and every file it lists has its recorded size and readable header.

    Cheap (no data is read): for listing and pruning. ``check`` is what a resume trusts.
    """
    try:
        for name, entry in _listed(folder).items():
            path = folder / name
            if path.stat().st_size != entry["size"]:
                return False
            if name.endswith(".safetensors"):
                with safe_open(str(path), framework="pt"):
                    pass
        return True
    except Exception:  # any unreadable marker, size or header means: not complete
        return False


def check(folder: Path) -> str | None:
    """Refuse (CheckpointError naming the file and why) a checkpoint that cannot be resumed from.

    Every listed file must have its recorded checksum, the state must be readable and the tensors finite
    (a NaN network or optimiser state is not a usable checkpoint). Returns a note for a checkpoint
    written before checksums were recorded (it is checked for sizes and finite values only).
    """
    if not is_complete(folder):
        raise CheckpointError("incomplete (no completion marker, a file missing or cut short)")
    listed = _listed(folder)
    for name, entry in listed.items():
        if "sha256" in entry and sha256_file(folder / name) != entry["sha256"]:
            raise CheckpointError(f"{name} does not match its checksum (damaged after it was written)")
    read_state(folder)
    for name in listed:
        if name.endswith(".safetensors"):
            bad = first_nonfinite(file_tensors(folder / name))
            if bad is not None:
                raise CheckpointError(nonfinite_message(name, bad))
    if not all("sha256" in entry for entry in listed.values()):
        return f"note: checkpoint {folder.name} was written before checksums were recorded; checked for sizes " \
               "and finite values only"
    return None


def list_complete(checkpoints: Path) -> list[Path]:
    """Complete checkpoints, oldest first."""
    return [d for d in _step_dirs(checkpoints) if is_complete(d)]


def _step_dirs(checkpoints: Path) -> list[Path]:
    if not checkpoints.is_dir():
        return []
    return sorted(d for d in checkpoints.iterdir() if d.is_dir() and d.name.startswith(PREFIX))


def latest(checkpoints: Path, report: Callable[[str], None] | None = None) -> Path | None:
    """The newest checkpoint that passes ``check``; each newer one skipped is reported with why."""
    for folder in reversed(_step_dirs(checkpoints)):
        try:
            note = check(folder)
        except CheckpointError as e:
            if report:
                report(f"skipping checkpoint {folder.name}: {e}")
            continue
        if note and report:
            report(note)
        return folder
    return None


def resume_point(checkpoints: Path, report: Callable[[str], None] | None = None) -> Path | None:
    """``latest``, but a folder with checkpoints none of which is usable stops the run instead of restarting it."""
    skipped: list[str] = []

    def note(message: str) -> None:
        skipped.append(message)
        if report:
            report(message)

    found = latest(checkpoints, note)
    if found is None and _step_dirs(checkpoints):
        reasons = "; ".join(m.removeprefix("skipping checkpoint ") for m in skipped)
        raise CheckpointError(f"none of the checkpoints in {checkpoints} can be resumed from ({reasons}); run the "
                              "same `dpdmd train` command with --restart to start over from step 0 (this deletes "
                              "them), or restore the folder from a copy")
    return found


def discard(checkpoints: Path) -> None:
    """Delete every checkpoint and staging folder (a run started over with --restart)."""
    if checkpoints.is_dir():
        for d in checkpoints.iterdir():
            if d.is_dir() and (d.name.startswith(PREFIX) or d.name.startswith(f".{PREFIX}")):
                shutil.rmtree(d)


def read_state(folder: Path) -> dict:
    """state.json, with its step; CheckpointError for anything unreadable (never a traceback)."""
    try:
        state = json.loads((folder / "state.json").read_text(encoding="utf-8"))
    except (OSError, ValueError) as e:  # JSONDecodeError and UnicodeDecodeError are ValueErrors
        raise CheckpointError(f"checkpoint {folder} has no readable state.json ({e})") from None
    if not isinstance(state, dict) or not isinstance(state.get("step"), int):
        raise CheckpointError(f"checkpoint {folder} has a state.json without its step")
    return state
