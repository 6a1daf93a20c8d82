"""Serve the web UI: the functions page at ``/ui/``, the chat page at ``/ui/chat``, and their
assets at ``/ui/static/``. Plain files, no build step; the gateway's auth middleware guards
every path under ``/ui``.
"""

from __future__ import annotations

from pathlib import Path

from aiohttp import web

STATIC_DIR = Path(__file__).resolve().parent / "static"

# The files change with the package. "no-cache" makes the browser revalidate (a cheap 304 by
# ETag) so an upgraded gateway never runs a stale script against a newer API.
# No other site may frame the UI: its buttons invoke functions and change the platform with
# the admin's credentials, and a framing page could trick a click onto them.
_HEADERS = {
    "Cache-Control": "no-cache",
    "Content-Security-Policy": "frame-ancestors 'none'",
    "X-Frame-Options": "DENY",
    "X-Content-Type-Options": "nosniff",
}


def _asset(filename: str) -> web.FileResponse:
    path = STATIC_DIR / filename
    # Only plain files directly in static/: no "..", no sub-folders, no dotfiles.
    if "/" in filename or filename.startswith(".") or not path.is_file():
        raise web.HTTPNotFound(text=f"no such UI file: {filename}\n")
    return web.FileResponse(path, headers=_HEADERS)


async def functions_page(request: web.Request) -> web.FileResponse:
    return _asset("index.html")


async def chat_page(request: web.Request) -> web.FileResponse:
    return _asset("chat.html")


async def static_asset(request: web.Request) -> web.FileResponse:
    return _asset(request.match_info["filename"])


async def redirect_to_index(request: web.Request) -> web.StreamResponse:
    raise web.HTTPFound("/ui/")


def add_ui_routes(app: web.Application) -> None:
    """Register the UI's routes on the gateway's application."""
    r = app.router
    r.add_get("/ui", redirect_to_index)
    r.add_get("/ui/", functions_page)
    r.add_get("/ui/chat", chat_page)
    r.add_get("/ui/static/{filename}", static_asset)
