"""The built-in default: distil the shipped digits teacher into a 4-step student on a CPU."""
from __future__ import annotations

from pathlib import Path

from .config import Config


def demo_config(output_dir: str | Path = "runs/demo", quick: bool = False, method: str = "dpdmd") -> Config:
    """The demo's config: the paper's defaults on the built-in teacher (6 min 48 s measured on 2 idle cores).

    ``quick`` is a smoke run of about a minute: same pipeline, few steps, fewer samples.
    """
    cfg = Config()
    cfg.run.output_dir = str(output_dir)
    cfg.method.name = method
    if quick:
        cfg.run.max_steps = 12
        cfg.run.checkpoint_every = 6
        cfg.eval.diversity_every = 6
        cfg.eval.grid_every = 6
        cfg.eval.fd_samples_per_prompt = 20
        cfg.data.batch_size = 32
    return cfg
