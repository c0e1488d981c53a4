"""Errors a user can act on.

Every error raised for bad input derives from DPDMDError and carries a message
that names the field or file and the fix; the CLI prints it without a traceback.
"""
from __future__ import annotations

import sys
from collections.abc import Callable


def shown(value: object, limit: int = 200) -> str:
    """``repr(value)`` cut to ``limit`` characters, so a 5 MB prompt or path never fills an error line."""
    text = repr(value)
    return text if len(text) <= limit else f"{text[:limit - 20]}... ({len(text):,} characters)"


class DPDMDError(Exception):
    """Base class: a problem the user can fix, reported without a traceback."""


class ConfigError(DPDMDError):
    """A run config that cannot be used; the message names the field."""


class PromptError(DPDMDError):
    """A prompt the teacher cannot condition on."""


class CheckpointError(DPDMDError):
    """A checkpoint or student file that is missing, incomplete or not ours."""


class TrainingDiverged(DPDMDError):
    """A loss became NaN or infinite; the last good checkpoint is kept."""


class DiskFull(DPDMDError):
    """A write that ran out of space; what was written before it (the previous checkpoint) is intact."""


class RunRefused(ConfigError):
    """A start refused before it changed the run folder: another process trains in it, or it holds another run."""


def exit_code(command: Callable[[], object]) -> int:
    """Run a command line's work: 0, or 2 after one ``error:`` line for a DPDMDError (bad input, no traceback).

    An OSError no check foresaw (a permission, a full disk, a vanished file) gets the same one line naming its
    file: the last resort; the commands name the field or flag themselves where they can.
    """
    try:
        command()
    except DPDMDError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except OSError as e:
        where = f"{shown(e.filename)}: " if e.filename else ""
        print(f"error: {where}{e.strerror or e}; check the path, its permissions and the free disk space",
              file=sys.stderr)
        return 2
    return 0
