"""Basic auth on ``/system/*`` and ``/ui/``; optional per-function auth on ``/function/*``.

The admin password is generated on first start into a file only its owner can read (or read
from a file the operator names). Every comparison runs in constant time.

A browser attaches the admin's cached basic credentials to any request to the gateway, even one
a page on another site starts, so state-changing ``/system`` calls must also come from the
gateway's own origin and carry JSON (which a cross-site form cannot send).
"""

from __future__ import annotations

import base64
import binascii
import hmac
import os
import secrets
import sys
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path

from aiohttp import web
from aiohttp.typedefs import Middleware

from .._origin import addressed_to_loopback, cross_site_reason, named_host
from ..errors import ConfigError, Unauthorized

PASSWORD_FILE = Path("auth") / "admin-password"
# The URL of the gateway that owns the state directory: the CLI hands the password above only
# to this exact scheme, host and port.
GATEWAY_URL_FILE = Path("auth") / "gateway-url"
# A function is private when this label or annotation is "true"; callers then need the
# function's token (Bearer) or the admin's basic auth.
PRIVATE_KEY = "streamfaas.auth/private"
REALM = 'Basic realm="streamfaas", charset="UTF-8"'

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


@dataclass(frozen=True)
class Credentials:
    user: str
    password: str

    def matches(self, header: str | None) -> bool:
        encoded = _auth_param(header, "basic")
        if encoded is None:
            return False
        try:
            decoded = base64.b64decode(encoded, validate=True).decode("utf-8")
        except (binascii.Error, UnicodeDecodeError):
            return False
        user, sep, password = decoded.partition(":")
        # Evaluate both comparisons, always, so timing says nothing about which part was wrong.
        ok_user = hmac.compare_digest(user.encode(), self.user.encode())
        ok_password = hmac.compare_digest(password.encode(), self.password.encode())
        return bool(sep) and ok_user and ok_password

    def anywhere_in(self, values: list[str]) -> bool:
        """Whether the admin's password rides in any of these Authorization values, in any part
        of one (``Bearer x, Basic …``, a second header, padding or case a strict check refuses):
        such a request's Authorization never reaches a function."""
        secret = self.password.encode()
        for value in values:
            for part in value.split(","):
                encoded = _auth_param(part, "basic")
                if encoded is None:
                    continue
                token = (encoded.split() or [""])[0]
                try:
                    decoded = base64.b64decode(token + "=" * (-len(token) % 4))
                except (binascii.Error, ValueError):
                    continue
                if secret and secret in decoded:
                    return True
        return False


def _auth_param(header: str | None, scheme: str) -> str | None:
    """What follows ``scheme`` in an Authorization header; the scheme's case does not matter
    (RFC 9110 section 11.1), so ``basic`` and ``BEARER`` count."""
    if not header:
        return None
    name, sep, rest = header.strip().partition(" ")
    if not sep or name.lower() != scheme:
        return None
    return rest.strip()


def _write_owner_only(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    os.chmod(path.parent, 0o700)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(text)


def load_credentials(state_dir: Path, user: str, password_file: Path | None) -> tuple[Credentials, Path]:
    """The admin credentials, and the file the password came from."""
    path = password_file or state_dir / PASSWORD_FILE
    if password_file is None and not path.exists():
        try:
            _write_owner_only(path, secrets.token_urlsafe(24) + "\n")
        except FileExistsError:
            pass  # another gateway on the same state dir was quicker
    try:
        password = path.read_text().strip()
    except OSError as exc:
        raise ConfigError(f"cannot read the admin password file {path}: {exc.strerror}") from None
    if not password:
        raise ConfigError(f"the admin password file {path} is empty")
    return Credentials(user, password), path


def record_gateway_url(state_dir: Path, url: str) -> None:
    """Say which gateway owns ``state_dir`` (owner-only, replaced whole so a reader never sees
    half a URL)."""
    path = state_dir / GATEWAY_URL_FILE
    path.parent.mkdir(parents=True, exist_ok=True)
    os.chmod(path.parent, 0o700)
    tmp = path.with_name(f".{path.name}.{os.getpid()}")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(url + "\n")
    os.replace(tmp, path)


def forget_gateway_url(state_dir: Path, url: str) -> None:
    """On the way out: whatever takes the port next must not receive the password. Another
    gateway may have started on the same state directory since; its record stays."""
    path = state_dir / GATEWAY_URL_FILE
    try:
        if path.read_text().strip() == url:
            path.unlink()
    except OSError:
        pass


def unauthorized(message: str = "authentication required") -> web.Response:
    return web.Response(status=401, text=message + "\n", headers={"WWW-Authenticate": REALM})


def function_token_matches(header: str | None, token: str) -> bool:
    presented = _auth_param(header, "bearer")
    if presented is None:
        return False
    return hmac.compare_digest(presented.encode(), token.encode())


def is_private(labels: dict[str, str], annotations: dict[str, str]) -> bool:
    value = labels.get(PRIVATE_KEY) or annotations.get(PRIVATE_KEY) or ""
    return value.strip().lower() in {"true", "1", "yes"}


def check_function_access(
    name: str,
    labels: dict[str, str],
    annotations: dict[str, str],
    header: str | None,
    credentials: Credentials | None,
    token: Callable[[], str],
    cross_site: Callable[[], str | None] = lambda: None,
) -> bool:
    """Let a call to a function through, or raise Unauthorized: a private function takes its
    bearer token or the admin's basic auth. Returns whether the function is private.

    ``cross_site`` (``cross_site_reason`` of the request, asked only of a private function's
    caller, as ``token`` is read only for one): the admin's basic auth is not taken
    from a request another site's page started, whatever its method: the browser would add the
    admin's cached password to it, and a function's GET may act as much as a POST."""
    if not is_private(labels, annotations):
        return False
    if credentials is not None and credentials.matches(header):
        if cross_site() is not None:
            raise Unauthorized(
                f"function {name!r} is private, and the admin's password is not taken from a request "
                "another site started (Origin, Sec-Fetch-Site): send the function's token as 'Authorization: Bearer …'"
            )
        return True
    if not function_token_matches(header, token()):
        raise Unauthorized(f"function {name!r} is private: send its token as 'Authorization: Bearer …'")
    return True


def is_admin_path(path: str) -> bool:
    return path.startswith("/system/") or path == "/system" or path == "/ui" or path.startswith("/ui/")


_SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})
# Form bodies, which a cross-site HTML form can send, and which clients such as Airflow's
# OpenFaaS hook (``requests.post(url, dict)``) send by accident.
_FORM_TYPES = frozenset({"application/x-www-form-urlencoded", "multipart/form-data"})


def _not_json(content_type: str) -> web.Response:
    text = f"send the body as JSON, with 'Content-Type: application/json' (got {content_type!r})"
    if content_type in _FORM_TYPES:
        text += ": a form-encoded body is not read; in Python, requests.post(url, json=body), not data=body"
    return web.Response(status=415, text=text + "\n")


def auth_middleware(credentials: Credentials | None, *, metrics_auth: bool = False,
                    loopback_names_only: bool = False) -> Middleware:
    """``credentials`` None: ``--auth none``, no password asked (the cross-site and JSON checks
    stay). ``metrics_auth``: ``/metrics`` needs the admin's basic auth too.
    ``loopback_names_only``: the admin API answers only requests addressed to a loopback name
    (``--auth none`` on loopback, where no password stops a DNS-rebinding page)."""

    @web.middleware
    def check(request: web.Request, handler: Handler) -> Awaitable[web.StreamResponse]:
        if is_admin_path(request.path) or request.path == "/metrics":
            return guarded(request, handler)
        # Returned, not awaited: a function's stream (hours, maybe) holds no frame of this
        # middleware for its whole life.
        return handler(request)

    async def guarded(request: web.Request, handler: Handler) -> web.StreamResponse:
        if not is_admin_path(request.path):
            if metrics_auth and credentials is not None and not credentials.matches(request.headers.get("Authorization")):
                return unauthorized()
            return await handler(request)
        if loopback_names_only and not addressed_to_loopback(request):
            return web.Response(status=403, text=(
                f"refused a request addressed to {named_host(request)!r}: with --auth none the admin API answers "
                "only requests to localhost or a loopback address (another name may be a DNS-rebinding page)\n"))
        changes_state = request.method not in _SAFE_METHODS
        # Before the password check, so a cross-site page cannot make the browser ask for it.
        reason = cross_site_reason(request) if changes_state else None
        if reason is not None:
            return web.Response(status=403, text=reason + "\n")
        if credentials is not None and not credentials.matches(request.headers.get("Authorization")):
            return unauthorized()
        # A state-changing /system body is JSON. Demanding the JSON media type keeps out HTML
        # forms and no-cors fetches, whose bodies need no CORS preflight.
        routed = request.match_info.http_exception is None
        if changes_state and routed and request.body_exists and request.content_type != "application/json":
            return _not_json(request.content_type)
        return await handler(request)

    return check


def warn_no_auth(url: str) -> None:
    """``--auth none``: say so, loudly, on stderr, where an operator's terminal or log shows it."""
    bar = "!" * 78
    print(
        f"{bar}\n"
        f"streamfaas gateway: WARNING: --auth none: NO AUTHENTICATION on {url}\n"
        "Anyone who can reach this address can deploy, run and remove functions, read their\n"
        "logs and set secrets, through /system and /ui. Use it only on a machine or network you\n"
        "trust (Airflow's OpenFaaS hook, which sends no credentials, needs it).\n"
        f"{bar}",
        file=sys.stderr,
        flush=True,
    )
