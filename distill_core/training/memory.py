"""The first training step as the check that the batch fits: an allocation failure there names data.batch_size."""
from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import torch

from ..errors import ConfigError

# What PyTorch's allocators say when they cannot give memory (CUDA raises torch.OutOfMemoryError; the CPU
# allocator a RuntimeError whose text says so).
ALLOCATION_FAILED = ("can't allocate memory", "out of memory", "cannot allocate memory")


@contextmanager
def batch_fits(batch_size: int, device: torch.device | str) -> Iterator[None]:
    """Turn an allocation failure inside the block into one line naming data.batch_size and the fix."""
    try:
        yield
    except (torch.OutOfMemoryError, MemoryError, RuntimeError) as e:
        text = str(e)
        if not isinstance(e, (torch.OutOfMemoryError, MemoryError)) and not any(
                s in text.lower() for s in ALLOCATION_FAILED):
            raise
        if torch.cuda.is_available():
            torch.cuda.empty_cache()
        raise ConfigError(f"data.batch_size = {batch_size} does not fit in memory on {device} ("
                          f"{text.splitlines()[0][:160] if text else type(e).__name__}); lower it "
                          "(`dpdmd plan CONFIG` estimates what fits)") from None
