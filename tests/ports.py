"""A free TCP port on this machine, for the servers and process groups the tests start.

Standard library only: the ComfyUI layers import it from ComfyUI's own interpreter.
"""
from __future__ import annotations

import socket


def free_port() -> int:
    """A port the OS just handed out and released (another process may take it first; none does in practice)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]
