"""Basic auth on ``/system/*`` and ``/ui/``; optional per-function auth on ``/function/*``.

The admin password is generated on first start into a file only its owner can read (or read
from a file the operator names). Every comparison runs in constant time.
"""

from __future__ import annotations

import base64
import binascii
import hmac
import os
import secrets
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path

from aiohttp import web
from aiohttp.typedefs import Middleware

from ..errors import ConfigError, Unauthorized

PASSWORD_FILE = Path("auth") / "admin-password"
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
        if not header or not header.startswith("Basic "):
            return False
        try:
            decoded = base64.b64decode(header[6:].strip(), validate=True).decode("utf-8")
        except (binascii.Error, UnicodeDecodeError):
            return False
        user, sep, password = decoded.partition(":")
        # Evaluate both comparisons, always, so timing says nothing about which part was wrong.
        ok_user = hmac.compare_digest(user.encode(), self.user.encode())
        ok_password = hmac.compare_digest(password.encode(), self.password.encode())
        return bool(sep) and ok_user and ok_password


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


def unauthorized(message: str = "authentication required") -> web.Response:
    return web.Response(status=401, text=message + "\n", headers={"WWW-Authenticate": REALM})


def function_token_matches(header: str | None, token: str) -> bool:
    if not header or not header.startswith("Bearer "):
        return False
    return hmac.compare_digest(header[7:].strip().encode(), token.encode())


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
) -> bool:
    """Let a call to a function through, or raise Unauthorized: a private function takes its
    bearer token or the admin's basic auth. Returns whether the function is private."""
    if not is_private(labels, annotations):
        return False
    if credentials is not None and credentials.matches(header):
        return True
    if not function_token_matches(header, token()):
        raise Unauthorized(f"function {name!r} is private: send its token as 'Authorization: Bearer …'")
    return True


def is_admin_path(path: str) -> bool:
    return path.startswith("/system/") or path == "/system" or path == "/ui" or path.startswith("/ui/")


def auth_middleware(credentials: Credentials | None) -> Middleware:
    @web.middleware
    async def check(request: web.Request, handler: Handler) -> web.StreamResponse:
        if credentials is not None and is_admin_path(request.path):
            if not credentials.matches(request.headers.get("Authorization")):
                return unauthorized()
        return await handler(request)

    return check
