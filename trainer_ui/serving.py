"""What the UI's web server adds around Gradio: a login before anything, and run files that cannot run script.

Two small ASGI middlewares, given to Gradio's FastAPI app at launch (``app_kwargs``):
- ``LoginFirst``: with --auth, every request (pages, API, queue, files, streams) needs the login, checked
  before Gradio sees it. Gradio's own login page still embeds the app's API schema and the runs path, and
  some of its routes answer without a session; HTTP Basic in front of all of it leaks nothing.
- ``SandboxedFiles``: files served from the runs folder come with ``Content-Security-Policy: sandbox``, so a
  report.html or .svg planted in an imported run folder opens without script and without the UI's origin
  (the images the pages embed still show: an <img> ignores the header).
"""
from __future__ import annotations

import base64
import binascii
import secrets
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

Scope = dict[str, Any]
Receive = Callable[[], Awaitable[dict]]
Send = Callable[[dict], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]

FILE_ROUTE = "/file="  # Gradio's route for files (…/gradio_api/file=PATH)
# Answered without the login: Gradio's launch() calls it on itself, and it says only whether the app's start-up
# hooks had run (they have, by then), nothing about the app.
LAUNCH_CHECK = "/gradio_api/startup-events"
REALM = "DP-DMD Studio"


class SandboxedFiles:
    """Add ``Content-Security-Policy: sandbox`` and ``nosniff`` to every file Gradio serves."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or FILE_ROUTE not in scope.get("path", ""):
            await self.app(scope, receive, send)
            return

        async def sandboxed(message: dict) -> None:
            if message["type"] == "http.response.start":
                kept = [(k, v) for k, v in message.get("headers", [])
                        if k.lower() not in (b"content-security-policy", b"x-content-type-options")]
                message = {**message, "headers": [*kept, (b"content-security-policy", b"sandbox"),
                                                  (b"x-content-type-options", b"nosniff")]}
            await send(message)

        await self.app(scope, receive, sandboxed)


def basic_credentials(headers: list[tuple[bytes, bytes]]) -> tuple[str, str] | None:
    """(user, password) from an ``Authorization: Basic`` header, or None."""
    for key, value in headers:
        if key.lower() == b"authorization" and value[:6].lower() == b"basic ":
            try:
                user, _, password = base64.b64decode(value[6:].strip(), validate=True).decode("utf-8").partition(":")
            except (binascii.Error, UnicodeDecodeError):
                return None
            return user, password
    return None


class LoginFirst:
    """Refuse every request without the configured login (HTTP Basic), before Gradio answers it."""

    def __init__(self, app: ASGIApp, login: tuple[str, str]) -> None:
        self.app = app
        self.login = login

    def _allowed(self, scope: Scope) -> bool:
        if scope["type"] == "http" and scope.get("method") == "GET" and scope.get("path") == LAUNCH_CHECK:
            return True
        given = basic_credentials(scope.get("headers", []))
        if given is None:
            return False
        # both compared, always: the time taken says nothing about which part was wrong
        user_ok = secrets.compare_digest(given[0].encode(), self.login[0].encode())
        password_ok = secrets.compare_digest(given[1].encode(), self.login[1].encode())
        return user_ok and password_ok

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] not in ("http", "websocket") or self._allowed(scope):
            await self.app(scope, receive, send)
            return
        if scope["type"] == "websocket":
            await send({"type": "websocket.close", "code": 1008})
            return
        await send({"type": "http.response.start", "status": 401,
                    "headers": [(b"www-authenticate", f'Basic realm="{REALM}", charset="UTF-8"'.encode()),
                                (b"content-type", b"text/plain; charset=utf-8")]})
        await send({"type": "http.response.body", "body": b"login required\n"})


def launch_options(runs: Path, login: tuple[str, str] | None) -> dict[str, Any]:
    """What ``Blocks.launch`` needs to serve safely: only the runs folder, sandboxed, behind the login (if any).

    Gradio's own ``auth`` stays off: ``LoginFirst`` (outermost) replaces it."""
    from starlette.middleware import Middleware

    login_first = [Middleware(LoginFirst, login=login)] if login else []
    return {"allowed_paths": [str(runs)], "run_history": False,
            "app_kwargs": {"middleware": [*login_first, Middleware(SandboxedFiles)]}}
