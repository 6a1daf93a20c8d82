"""of-watchdog's ``static`` mode: serve a folder of the function's image.

The watchdog serves the files itself (no function process), so it keeps to the folder: a path
that climbs out of it (``..``, encoded or not) or a symlink that points outside is not found,
and when the platform sandboxes functions the folder must lie in the function's own image.
"""

from __future__ import annotations

import os
from collections.abc import Mapping

from aiohttp import hdrs, web

from ..config import WatchdogConfig
from ..errors import ConfigError
from ..sandbox import spec_from_env

# An OpenFaaS image's working folder; a streamfaas image's folder stands in for it (the
# handler is at function/ in both), so of-watchdog's paths keep their meaning.
IMAGE_HOME = "/home/app"
# A streamfaas image holds the template and the handler only: the handler's public/ folder is
# where a function's files can be (of-watchdog's default, /home/app/public, holds none of them).
DEFAULT_FOLDER = "function/public"
NOT_FOUND = "404 page not found\n"  # as Go's file server words it


def static_root(config: WatchdogConfig, settings: Mapping[str, str]) -> str:
    """The folder to serve, resolved (symlinks followed) and checked; a ConfigError says why not."""
    spec = spec_from_env(settings)
    if spec is not None and spec.root:
        # This watchdog runs on the host: paths of an OCI image's own (its WorkingDir, /…) would
        # name the host's files here.
        raise ConfigError("static mode serves a streamfaas folder image; for an OCI image run a command (mode streaming)")
    image = spec.chdir if spec is not None else os.getcwd()
    raw = config.static_path or DEFAULT_FOLDER
    if raw == IMAGE_HOME or raw.startswith(IMAGE_HOME + "/"):
        path = os.path.join(image, raw[len(IMAGE_HOME):].lstrip("/"))
    else:
        path = os.path.join(image, raw)  # an absolute raw replaces image
    root = os.path.realpath(path)
    if spec is not None and not _inside(root, os.path.realpath(image)):
        raise ConfigError(f"static_path {raw!r}: must lie in the function's image ({IMAGE_HOME}/…), not at {root}")
    if not os.path.isdir(root):
        raise ConfigError(
            f"static_path {raw!r}: no folder at {path} (in a streamfaas image {IMAGE_HOME} is the image's "
            f"folder and your handler is at {IMAGE_HOME}/function)"
        )
    return root


def _inside(path: str, root: str) -> bool:
    return path == root or path.startswith(root.rstrip("/") + "/")


def _resolve(root: str, url_path: str) -> tuple[str, bool] | None:
    """The real path of the file ``url_path`` names below ``root`` (a folder's index.html),
    and whether it named a folder; None if there is none."""
    parts = url_path.split("/")
    if any(part == ".." or "\0" in part for part in parts):
        return None
    real = os.path.realpath(os.path.join(root, *(p for p in parts if p and p != ".")))
    folder = os.path.isdir(real)
    if folder:
        real = os.path.realpath(os.path.join(real, "index.html"))
    if not _inside(real, root) or not os.path.isfile(real):
        return None
    return real, folder


async def serve_static(request: web.Request, root: str) -> web.StreamResponse:
    if request.method not in (hdrs.METH_GET, hdrs.METH_HEAD):
        return web.Response(status=405, text="method not allowed\n", headers={hdrs.ALLOW: "GET, HEAD"})
    path = request.path
    found = _resolve(root, path)
    if found is None:
        return web.Response(status=404, text=NOT_FOUND)
    real, folder = found
    if folder and not path.endswith("/"):
        # A folder's links are relative to it: send the client to its URL with the slash, as
        # Go's file server does (a relative Location, so the gateway's prefix stays).
        target = request.rel_url.raw_path.rsplit("/", 1)[-1] + "/"
        if request.rel_url.raw_query_string:
            target += "?" + request.rel_url.raw_query_string
        return web.Response(status=301, headers={hdrs.LOCATION: target})
    return web.FileResponse(real)
