"""Where students live: ComfyUI's model folders, looked up by name (never a free path).

Students are listed from models/dpdmd (a folder this pack registers; every
.safetensors there is offered) and from models/diffusion_models (only files that
carry DP-DMD metadata, so ordinary models stay out of the list).
"""
from __future__ import annotations

import functools
import os
from pathlib import Path

import folder_paths

from distill_core.errors import CheckpointError, DPDMDError
from distill_core.export.student_file import StudentInfo, check_complete, read_student_info

FOLDER = "dpdmd"
EXTENSIONS = {".safetensors", ".sft"}


def register_folder() -> None:
    """Add models/dpdmd to ComfyUI's folders (paths from extra_model_paths.yaml are kept)."""
    default = os.path.join(folder_paths.models_dir, FOLDER)
    folder_paths.add_model_folder_path(FOLDER, default, is_default=True)
    folder_paths.folder_names_and_paths[FOLDER][1].update(EXTENSIONS)
    os.makedirs(default, exist_ok=True)


@functools.lru_cache(maxsize=1024)
def _has_metadata(path: str, mtime: float, size: int) -> bool:
    try:
        read_student_info(path)
        return True
    except DPDMDError:
        return False


def list_students() -> list[str]:
    """Names for the loader's list: everything in dpdmd/, students among diffusion_models/."""
    names = list(folder_paths.get_filename_list(FOLDER))
    for name in folder_paths.get_filename_list("diffusion_models"):
        path = folder_paths.get_full_path("diffusion_models", name)
        if name not in names and path and Path(path).suffix in EXTENSIONS:
            st = os.stat(path)
            if _has_metadata(path, st.st_mtime, st.st_size):
                names.append(name)
    return sorted(names)


def resolve(name: str) -> Path:
    """The file of a listed student; the name is resolved inside the model folders only."""
    for folder in (FOLDER, "diffusion_models"):
        path = folder_paths.get_full_path(folder, name)
        if path:
            return Path(path)
    raise CheckpointError(f"no student named {name!r} in models/{FOLDER} or models/diffusion_models; put the "
                          "exported .safetensors there and refresh the node list (press R)")


def open_student(name: str) -> tuple[Path, StudentInfo]:
    """Resolve, read the metadata and check the file is complete: every problem a clear message."""
    path = resolve(name)
    info = read_student_info(path)
    check_complete(path)
    return path, info
