"""Whether a request was started by a web page on another origin (the admin API's and the model
server's check against cross-site requests)."""

from __future__ import annotations

from urllib.parse import urlsplit

from aiohttp import web

from .config import is_loopback

_DEFAULT_PORTS = {"http": 80, "https": 443}


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
        return f"refused a request from origin {origin.strip()!r} to {what} of {request.host!r}"
    # The scheme is not compared, only used for the default port: behind a TLS-terminating
    # proxy the browser's https origin reaches the server as plain http.
    if parts.scheme in _DEFAULT_PORTS and parts.path == "":
        own = host_port(parts.scheme, request.host)
        if own is not None and host_port(parts.scheme, parts.netloc) == own:
            return None
    return f"refused a request from origin {origin.strip()!r} to {what} of {request.host!r}"


def addressed_to_loopback(request: web.Request) -> bool:
    """Whether the request's ``Host`` names this machine (``localhost``, ``*.localhost``, a
    loopback address). A DNS-rebinding page reaches a loopback listener under its own name, and
    its requests are then same-origin: the name is what tells them apart. A request with no
    ``Host`` (HTTP/1.0) is not from a browser."""
    host = request.headers.get("Host")
    if host is None:
        return True
    own = host_port("http", host.strip())
    if own is None:
        return False
    name = own[0].rstrip(".").lower()
    return name.endswith(".localhost") or is_loopback(name)
