"""GET /dpdmd/student?name=...: a student's metadata for the loader node's display (web/dpdmd.js).

Names are resolved inside ComfyUI's model folders only, like the loader's list.
"""
from __future__ import annotations

from aiohttp import web

from distill_core.errors import DPDMDError

from . import library
from .compute import describe, student_sigmas, summary

_registered = False


async def student_info(request: web.Request) -> web.Response:
    name = request.query.get("name", "")
    try:
        _, info = library.open_student(name)
        student_sigmas(info)
    except DPDMDError as e:
        return web.json_response({"ok": False, "error": str(e)}, status=404)
    return web.json_response({"ok": True, "name": name, "summary": summary(info), "text": describe(info)})


def register_routes() -> None:
    """Add the route to the running server once (no server: nothing to do, e.g. in tests)."""
    global _registered
    try:
        from server import PromptServer
    except ImportError:
        return
    if _registered or getattr(PromptServer, "instance", None) is None:
        return
    PromptServer.instance.routes.get("/dpdmd/student")(student_info)
    _registered = True
