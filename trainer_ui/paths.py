"""The folders the UI may touch, and the checks every typed path goes through.

A web page is reachable by whoever can reach the port, so a path typed into it
is untrusted input: it is resolved (``~``, ``..``, symlinks) and refused unless it
lies inside the runs folder or a folder the user allowed on the command line. The
files of a run are shown or served only where they resolve inside that run's folder
(``RunFolder.file``), and only run folders that resolve inside the runs folder are
listed: the same rule (``runfolder.within``) everywhere.
"""
from __future__ import annotations

import os
import re
from dataclasses import dataclass, field
from pathlib import Path

from distill_core.errors import DPDMDError
from distill_core.runfolder import within

RUN_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,99}")


class PathRefused(DPDMDError):
    """A typed path outside the allowed folders, or a run name that is not a plain folder name."""


@dataclass
class Roots:
    """The runs folder (read, write, served to the browser) and extra read-only roots (models, data)."""

    runs: Path
    extra: list[Path] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.runs = Path(self.runs).expanduser().resolve()
        self.extra = [Path(p).expanduser().resolve() for p in self.extra]

    @property
    def readable(self) -> list[Path]:
        return [self.runs, *self.extra]

    def describe(self) -> str:
        return ", ".join(str(p) for p in self.readable)

    def inside(self, text: str, what: str) -> Path:
        """Resolve a typed path and refuse it unless it lies in one of the readable roots."""
        text = text.strip()
        if not text:
            raise PathRefused(f"{what} is empty")
        path = within(text, self.readable)
        if path is None:
            raise PathRefused(f"{what} {text!r} (= {os.path.realpath(os.path.expanduser(text))}) is outside the "
                              f"folders this UI may read ({self.describe()}); start the UI with --allowed-root "
                              "FOLDER to allow another folder")
        return path

    def _run_folder(self, path: Path) -> Path | None:
        """``path`` resolved, if it is a folder directly in the runs folder (a symlink elsewhere is not)."""
        found = within(path, [self.runs])
        return found if found is not None and found.parent == self.runs else None

    def run_folders(self) -> list[Path]:
        """The run folders of the runs folder, as listed there."""
        if not self.runs.is_dir():
            return []
        return [d for d in self.runs.iterdir() if d.is_dir() and self._run_folder(d) is not None]

    def run_dir(self, name: str) -> Path:
        """The folder of run ``name``: a plain folder name directly under the runs folder."""
        name = name.strip()
        if not RUN_NAME.fullmatch(name) or name in (".", ".."):
            raise PathRefused(f"run name {name!r} is not a plain folder name; use letters, digits, '.', '-' "
                              f"and '_' (up to 100 characters); the run is written to {self.runs}/<name>")
        path = self._run_folder(self.runs / name)
        if path is None:
            raise PathRefused(f"run name {name!r} leads outside the runs folder {self.runs} (a symlink?); "
                              "choose another name")
        return path
