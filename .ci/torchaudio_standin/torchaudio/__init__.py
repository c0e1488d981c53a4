"""A stand-in for torchaudio in the ComfyUI 0.33 test venv only (never part of the pack).

ComfyUI 0.33 imports torchaudio at start-up (comfy/sd.py's audio VAEs, the audio
nodes), but no torchaudio build on PyPI loads next to the CPU torch of the test
venv. The pack uses no audio: every name here is a class that cannot be built,
so start-up works and any real audio use fails with a clear message.
"""
from torch import nn


class Unavailable(nn.Module):
    """What every torchaudio name is here: subclassable at import time, never constructed."""

    def __init__(self, *args, **kwargs):
        raise RuntimeError("torchaudio is a stand-in in this test venv: audio nodes are unavailable")


def __getattr__(name: str):
    if name.startswith("__"):
        raise AttributeError(name)
    return Unavailable


from . import functional, transforms  # noqa: E402,F401
