"""Whether a request was started by a web page on another origin (the admin API's and the model
server's check against cross-site requests)."""

from __future__ import annotations

import re
from urllib.parse import urlsplit

from aiohttp import hdrs, web

from .config import is_loopback

_DEFAULT_PORTS = {"http": 80, "https": 443}
# A Host header as a browser sends it: a name or an IPv4 address, or an IPv6 one in brackets, and
# a port. Nothing else (no user, path, query, fragment or zone) is read as a host.
_HOST = re.compile(r"(?:\[([0-9A-Fa-f:.]+)\]|([A-Za-z0-9.-]+))(?::[0-9]{1,5})?")


def named_host(request: web.Request) -> str:
    """The host the client named: its ``Host`` header (aiohttp's ``request.host`` prefers an
    absolute-form target's authority, which browsers send only to proxies)."""
    return request.headers.get(hdrs.HOST) or request.host


def host_port(scheme: str, netloc: str) -> tuple[str, int] | None:
    try:
        parts = urlsplit(f"{scheme}://{netloc}")
        port = parts.port or _DEFAULT_PORTS[scheme]
    except (ValueError, KeyError):
        return None
    return (parts.hostname or "", port)


def cross_site_reason(request: web.Request, what: str = "the admin API") -> str | None:
    """Why this request looks started by a page on another origin, or None.

    Browsers send ``Sec-Fetch-Site`` and ``Origin`` on such requests and a page cannot forge
    them; clients that send neither (curl, faas-cli, the streamfaas CLI) are not browsers.
    ``same-site`` is refused too: another port on the same host is another origin.
    """
    site = request.headers.get("Sec-Fetch-Site")
    if site is not None and site.strip().lower() not in {"same-origin", "none"}:
        return f"refused a {site.strip()} request to {what} (Sec-Fetch-Site)"
    origin = request.headers.get("Origin")
    if origin is None:
        return None
    try:
        parts = urlsplit(origin.strip())
    except ValueError:  # "http://[": no origin this server serves
        return f"refused a request from origin {origin.strip()!r} to {what} of {named_host(request)!r}"
    # The scheme is not compared, only used for the default port: behind a TLS-terminating
    # proxy the browser's https origin reaches the server as plain http.
    if parts.scheme in _DEFAULT_PORTS and parts.path == "":
        own = host_port(parts.scheme, named_host(request))
        if own is not None and host_port(parts.scheme, parts.netloc) == own:
            return None
    return f"refused a request from origin {origin.strip()!r} to {what} of {named_host(request)!r}"


def addressed_to_loopback(request: web.Request) -> bool:
    """Whether the request's ``Host`` names this machine (``localhost``, ``*.localhost``, a
    loopback address). A DNS-rebinding page reaches a loopback listener under its own name, and
    its requests are then same-origin: the name is what tells them apart. A request with no
    ``Host`` (HTTP/1.0) is not from a browser."""
    host = request.headers.get(hdrs.HOST)
    if host is None:
        return True
    shape = _HOST.fullmatch(host.strip())
    if shape is None:
        return False
    name = (shape[1] or shape[2]).rstrip(".").lower()
    return name.endswith(".localhost") or is_loopback(name)
