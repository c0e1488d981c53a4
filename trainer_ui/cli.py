"""``dpdmd ui`` / ``python -m trainer_ui``: launch the trainer UI, local-only unless asked otherwise.

``dpdmd ui`` reaches ``main`` through the ``dpdmd.commands`` entry point (pyproject.toml): the core's
CLI never imports the UI itself.
"""
from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

LOCAL_HOSTS = ("127.0.0.1", "localhost", "::1")


def _port(text: str) -> int:
    if not text.isdigit() or not 1 <= int(text) <= 65535:
        raise argparse.ArgumentTypeError(f"{text!r} is not a TCP port; give a number from 1 to 65535")
    return int(text)


def _seconds(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = float("nan")
    if not 0.1 <= value <= 3600:  # also refuses nan
        raise argparse.ArgumentTypeError(f"{text!r} is not a refresh interval; give seconds from 0.1 to 3600")
    return value


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="dpdmd ui", description="The DP-DMD Studio trainer UI (Gradio).")
    p.add_argument("--runs-dir", default="runs", help="the runs folder: runs are written and served only from here "
                   "(default: ./runs)")
    p.add_argument("--allowed-root", action="append", default=[], metavar="FOLDER",
                   help="a folder the UI may read teachers, prompt files and feature models from (repeatable)")
    p.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1: this machine only; "
                   "for remote use prefer an SSH tunnel)")
    p.add_argument("--port", type=_port, default=7860)
    p.add_argument("--share", action="store_true", help="also open a public gradio.live link (anyone with it can "
                   "start runs on this machine; combine with --auth)")
    p.add_argument("--auth", metavar="USER:PASSWORD", help="require this login (or set DPDMD_UI_AUTH, which keeps "
                   "the password out of the process list)")
    p.add_argument("--refresh", type=_seconds, default=2.0, help="monitor refresh interval in seconds (default 2)")
    return p


def parse_auth(text: str | None) -> tuple[str, str] | None:
    if not text:
        return None
    user, sep, password = text.partition(":")
    if not sep or not user or not password:
        raise SystemExit("error: --auth must look like USER:PASSWORD")
    return user, password


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    os.environ["GRADIO_ANALYTICS_ENABLED"] = "False"  # before gradio is imported
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
    auth = parse_auth(args.auth or os.environ.get("DPDMD_UI_AUTH"))
    if args.share:
        print("WARNING: --share opens a public link to this UI; anyone who has it can start training on this "
              "machine and see your runs folder." + ("" if auth else " Add --auth USER:PASSWORD."), file=sys.stderr)
    if args.host not in LOCAL_HOSTS and not auth:
        print(f"WARNING: binding {args.host} without --auth: anyone on the network can use this UI.", file=sys.stderr)

    import torch

    try:
        from .app import CSS, Settings, build_app
    except ImportError as e:  # gradio (or pandas) missing: the [ui] extra is not installed
        print(f"error: the trainer UI is not available ({e}); install it with `pip install 'dp-dmd-studio[ui]'`",
              file=sys.stderr)
        return 2
    from .paths import Roots

    runs_dir = Path(args.runs_dir).expanduser()
    try:
        runs_dir.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        print(f"error: --runs-dir {str(runs_dir)!r} cannot be the runs folder ({e.strerror}); give a folder",
              file=sys.stderr)
        return 2
    roots = Roots(runs_dir, [Path(p) for p in args.allowed_root])
    settings = Settings(roots, refresh_seconds=args.refresh, device="cuda" if torch.cuda.is_available() else "cpu")
    print(f"runs folder: {roots.runs}; readable folders: {roots.describe()}")
    build_app(settings).queue().launch(
        server_name=args.host, server_port=args.port, share=args.share, auth=auth,
        allowed_paths=[str(roots.runs)], css=CSS, run_history=False, show_error=True,
        footer_links=["gradio", "settings"])
    return 0
