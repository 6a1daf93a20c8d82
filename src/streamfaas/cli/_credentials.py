"""Where the CLI keeps gateway credentials: faas-cli's own file (``~/.openfaas/config.yml``,
or ``$OPENFAAS_CONFIG/config.yml``), so one ``login`` serves both tools.

Without a login, the admin password in the local state directory goes to one gateway only: the
one that owns that directory, as it recorded on start. A stack.yaml or flag naming any other
server gets no credentials from here."""

from __future__ import annotations

import base64
import os
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlsplit, urlunsplit

from ruamel.yaml import YAML

from ..errors import ConfigError

ADMIN_PASSWORD = Path("auth") / "admin-password"
GATEWAY_URL = Path("auth") / "gateway-url"  # written by the gateway that owns the state directory
_DEFAULT_PORTS = {"http": 80, "https": 443}


def config_file() -> Path:
    folder = os.environ.get("OPENFAAS_CONFIG") or os.path.join(os.path.expanduser("~"), ".openfaas")
    return Path(folder) / "config.yml"


def split_credentials(url: str) -> tuple[str, tuple[str, str] | None]:
    """``http://user:password@host:port/`` as the URL without them and ``(user, password)``;
    a URL without credentials (or one that does not parse) as it is, and None."""
    try:
        parts = urlsplit(url)
        has = parts.username is not None
    except ValueError:
        return url, None
    if not has:
        return url, None
    host = parts.netloc.rpartition("@")[2]
    return urlunsplit(parts._replace(netloc=host)), (unquote(parts.username or ""), unquote(parts.password or ""))


def _normalise(url: str) -> str:
    return url.rstrip("/")


def _load(path: Path) -> dict[str, Any]:
    if not path.exists():
        return {}
    try:
        data = YAML(typ="safe").load(path.read_text()) or {}
    except Exception as exc:  # noqa: BLE001 - any parse failure is the same user error
        raise ConfigError(f"{path}: not valid YAML ({exc.__class__.__name__}); fix or delete it") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: expected a mapping")
    return data


def _save(path: Path, data: dict[str, Any]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    os.chmod(path.parent, 0o700)
    tmp = path.with_suffix(".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        YAML().dump(data, f)
    os.replace(tmp, path)


def store(gateway: str, user: str, password: str) -> Path:
    path = config_file()
    data = _load(path)
    auths = [a for a in data.get("auths") or [] if _normalise(str(a.get("gateway", ""))) != _normalise(gateway)]
    token = base64.b64encode(f"{user}:{password}".encode()).decode()
    auths.append({"gateway": _normalise(gateway), "auth": "basic", "token": token})
    data["auths"] = auths
    _save(path, data)
    return path


def forget(gateway: str) -> bool:
    path = config_file()
    data = _load(path)
    auths = data.get("auths") or []
    kept = [a for a in auths if _normalise(str(a.get("gateway", ""))) != _normalise(gateway)]
    if len(kept) == len(auths):
        return False
    data["auths"] = kept
    _save(path, data)
    return True


def lookup(gateway: str, state_dir: Path) -> tuple[str, str] | None:
    """Stored credentials for this gateway; else, when it is the gateway that owns
    ``state_dir``, the admin password file there (readable only by the user who runs it)."""
    for entry in _load(config_file()).get("auths") or []:
        if _normalise(str(entry.get("gateway", ""))) == _normalise(gateway) and entry.get("auth") == "basic":
            try:
                user, _, password = base64.b64decode(str(entry.get("token", ""))).decode().partition(":")
            except ValueError:
                raise ConfigError(f"{config_file()}: the stored token for {gateway} is damaged; log in again") from None
            return user, password
    if not owns_state_dir(gateway, state_dir):
        return None
    try:
        password = (state_dir / ADMIN_PASSWORD).read_text().strip()
    except OSError:
        return None
    return ("admin", password) if password else None


def _origin(url: str) -> tuple[str, str, int] | None:
    try:
        parts = urlsplit(url.strip())
        scheme = parts.scheme.lower()
        return scheme, (parts.hostname or "").lower(), parts.port or _DEFAULT_PORTS[scheme]
    except (ValueError, KeyError):
        return None


def owns_state_dir(gateway: str, state_dir: Path) -> bool:
    """Whether ``gateway`` is the gateway that recorded itself in ``state_dir``: same scheme,
    host and port, exactly (no name resolution: ``localhost`` is not ``127.0.0.1``)."""
    try:
        recorded = (state_dir / GATEWAY_URL).read_text().split()
    except OSError:
        return False
    target = _origin(gateway)
    return target is not None and any(_origin(url) == target for url in recorded)
