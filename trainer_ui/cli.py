"""``dpdmd ui`` / ``python -m trainer_ui``: launch the trainer UI, local-only unless asked otherwise.

``dpdmd ui`` reaches ``main`` through the ``dpdmd.commands`` entry point (pyproject.toml): the core's
CLI never imports the UI itself.
"""
from __future__ import annotations

import argparse
import os
import socket
import sys
import threading
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


def _count(text: str) -> int:
    if not text.isdigit() or not 1 <= int(text) <= 64:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number of runs; give a whole number from 1 to 64")
    return int(text)


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
    p.add_argument("--runs-per-device", type=_count, default=1, metavar="N",
                   help="runs training at once on one device (default 1); a Start beyond that waits in the device's "
                   "queue and starts when a run ends")
    return p


def busy_port(host: str, port: int) -> str | None:
    """Why ``host:port`` cannot be served (it is taken), as the one line ``dpdmd ui`` prints; None when free."""
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except socket.gaierror as e:
        return f"error: --host {host!r} is not an address of this machine ({e.strerror}); give e.g. 127.0.0.1"
    family, _, _, _, address = infos[0]
    with socket.socket(family, socket.SOCK_STREAM) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as the server binds: a closed UI's port is free
        try:
            s.bind(address)
        except OSError as e:
            return (f"error: port {port} on {host} is busy ({e.strerror}: another UI or program serves it); "
                    f"start with --port {port + 1} (or another free port)")
    return None


def banner(url: str, share_url: str | None) -> str:
    """Where the UI is, in this command's words (--share, not gradio's launch() arguments)."""
    if share_url:
        return f"* Running on local URL: {url}\n* Public link (--share): {share_url}"
    return f"* Running on local URL: {url}\n* For a public link, start again with --share (and --auth USER:PASSWORD)"


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
    busy = busy_port(args.host, args.port)
    if busy:  # before anything loads: gradio's own refusal is a traceback naming launch() arguments
        print(busy, file=sys.stderr)
        return 2

    import torch

    try:
        from .app import CSS, Settings, build_app
    except ImportError as e:  # gradio (or pandas) missing: the [ui] extra is not installed
        print(f"error: the trainer UI is not available ({e}); install it with `pip install 'dp-dmd-studio[ui]'`",
              file=sys.stderr)
        return 2
    from .launcher import dispatch_forever
    from .paths import Roots
    from .serving import launch_options

    runs_dir = Path(args.runs_dir).expanduser()
    try:
        runs_dir.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        print(f"error: --runs-dir {str(runs_dir)!r} cannot be the runs folder ({e.strerror}); give a folder",
              file=sys.stderr)
        return 2
    roots = Roots(runs_dir, [Path(p) for p in args.allowed_root])
    settings = Settings(roots, refresh_seconds=args.refresh, device="cuda" if torch.cuda.is_available() else "cpu",
                        runs_per_device=args.runs_per_device)
    print(f"runs folder: {roots.runs}; readable folders: {roots.describe()}")
    demo = build_app(settings).queue()
    try:
        demo.launch(server_name=args.host, server_port=args.port, share=args.share, css=CSS, show_error=True,
                    **launch_options(roots.runs, auth),
                    footer_links=["gradio", "settings"], quiet=True, prevent_thread_lock=True)
    except OSError:  # taken between the check and the bind
        print(busy_port(args.host, args.port) or f"error: cannot serve port {args.port}; try another --port",
              file=sys.stderr)
        return 2
    print(banner(demo.local_url, demo.share_url), flush=True)
    threading.Thread(target=dispatch_forever, args=(settings.devices,), name="run-queue", daemon=True).start()
    demo.block_thread()
    return 0
