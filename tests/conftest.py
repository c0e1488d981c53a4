"""Shared fixtures: tiny, fast configs of the built-in teacher in temporary run folders."""
from __future__ import annotations

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")

import pytest  # noqa: E402

from distill_core.config import Config  # noqa: E402


def tiny_config(out, **overrides) -> Config:
    """A built-in-teacher run that takes a few seconds: small batch, 2 fake updates, no periodic evals.

    On the digits teacher (whose prompts "0", "1", "2" the tests use); tests of the shapes teacher set
    teacher__builtin="shapes" and shapes prompts."""
    cfg = Config()
    cfg.teacher.builtin = "digits"
    cfg.run.output_dir = str(out)
    cfg.run.max_steps = 4
    cfg.run.checkpoint_every = 2
    cfg.data.batch_size = 8
    cfg.method.fake_updates = 2
    cfg.teacher.num_steps = 8
    cfg.method.anchor_step = 3
    cfg.eval.diversity_every = 0
    cfg.eval.grid_every = 0
    cfg.eval.prompts = ["0", "1", "2"]
    cfg.eval.seeds = 3
    cfg.eval.grid_prompts = 2
    cfg.eval.grid_seeds = 2
    cfg.eval.fd_samples_per_prompt = 4
    for key, value in overrides.items():
        section, name = key.split("__")
        assert hasattr(getattr(cfg, section), name), f"no config field {section}.{name}"
        setattr(getattr(cfg, section), name, value)
    return cfg


@pytest.fixture
def tiny(tmp_path):
    return lambda name="run", **kw: tiny_config(tmp_path / name, **kw)


def assert_same_checkpoint(a, b) -> None:
    """Two checkpoint folders hold bit-identical networks and optimiser states (a resume against an unbroken run)."""
    import torch
    from safetensors.torch import load_file

    for name in ("student", "fake", "optim_student", "optim_fake"):
        x, y = load_file(str(a / f"{name}.safetensors")), load_file(str(b / f"{name}.safetensors"))
        assert x.keys() == y.keys() and all(torch.equal(x[k], y[k]) for k in x), name


def require(available: bool, what: str, how: str) -> None:
    """Skip a test whose tool is missing locally, but fail it in CI (CI must run every test)."""
    if available:
        return
    if os.environ.get("CI"):
        pytest.fail(f"{what} is missing in CI: {how}")
    pytest.skip(f"{what} is not available here ({how})")


@pytest.fixture(scope="session")
def tiny_pipelines(tmp_path_factory):
    """Tiny random SD3 and SDXL diffusers folders, built offline once per session: {'sd3': path, 'sdxl': path}."""
    from tiny_diffusers import build_tiny_sd3_pipeline, build_tiny_sdxl_pipeline

    root = tmp_path_factory.mktemp("tiny_pipelines")
    build_tiny_sd3_pipeline(root / "sd3")
    build_tiny_sdxl_pipeline(root / "sdxl")
    return {"sd3": root / "sd3", "sdxl": root / "sdxl"}


@pytest.fixture(scope="session")
def tiny_qwen_pipelines(tmp_path_factory):
    """Tiny random Z-Image and FLUX.2 [klein] base folders (Qwen3 prompts), built offline once per session:
    {'zimage': path, 'flux2': path}."""
    from tiny_flux2 import build_tiny_flux2_pipeline
    from tiny_zimage import build_tiny_zimage_pipeline

    root = tmp_path_factory.mktemp("tiny_qwen_pipelines")
    build_tiny_zimage_pipeline(root / "zimage")
    build_tiny_flux2_pipeline(root / "flux2")
    return {"zimage": root / "zimage", "flux2": root / "flux2"}


@pytest.fixture(scope="module")
def one_thread():
    """One torch thread for a module's tests: on a shared 2-core machine extra threads only wait for each other."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
