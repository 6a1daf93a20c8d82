"""What OpenFaaS's Go clients put on the wire and what they accept back, restated for replay.

Read from faas-cli (proxy/, commands/), go-sdk (functions.go, client.go) and faas-provider
(types/, logs/): the paths, query parameters, headers and JSON they send, the status codes
they take as success, and how they decode a response.
"""

from __future__ import annotations

import base64
import datetime as dt
import json
import re
from typing import Any
from urllib.parse import urlencode

DEFAULT_NAMESPACE = "openfaas-fn"

# go-sdk's InvokeFunction: POST /function/NAME.NAMESPACE (the namespace defaults to openfaas-fn),
# with the headers faas-cli's invoke sets on the request it hands to the SDK.
FAAS_CLI_INVOKE_HEADERS = {
    "Content-Type": "text/plain",
    "User-Agent": "faas-cli/dev (openfaas; linux; amd64)",
}

# What each call takes as success (the switch on res.StatusCode in faas-cli's proxy/ and go-sdk).
INVOKE_OK = {200, 201}
INVOKE_ASYNC_OK = {202}
SECRET_CREATE_OK = {200, 201, 202}
SECRET_UPDATE_OK = {200, 202}
SECRET_REMOVE_OK = {200, 202}
DEPLOY_OK = {200, 201, 202}

# Go's time.Time.UnmarshalJSON: RFC 3339, with an optional fraction; nothing else decodes.
_RFC3339 = re.compile(r"\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}(\.\d{1,9})?(Z|[+-]\d{2}:\d{2})")


def go_time(value: Any) -> dt.datetime:
    """``value`` decoded as a Go ``time.Time`` field is, or AssertionError as Go's decoder fails."""
    assert isinstance(value, str) and _RFC3339.fullmatch(value), f"not an RFC 3339 time: {value!r}"
    return dt.datetime.fromisoformat(value)


def go_json(value: Any) -> bytes:
    """JSON as Go's encoding/json.Marshal writes it (compact)."""
    return json.dumps(value, separators=(",", ":")).encode()


def secret_json(name: str, *, value: str = "", raw: bytes = b"", namespace: str = "") -> bytes:
    """faas-provider's types.Secret marshalled: every field but name is omitempty, and []byte
    is written as standard base64."""
    body: dict[str, Any] = {"name": name}
    if namespace:
        body["namespace"] = namespace
    if value:
        body["value"] = value
    if raw:
        body["rawValue"] = base64.b64encode(raw).decode()
    return go_json(body)


def rfc3339(t: dt.datetime) -> str:
    """Go's time.Format(time.RFC3339): whole seconds, Z for UTC."""
    return t.astimezone(dt.UTC).replace(microsecond=0).isoformat().replace("+00:00", "Z")


def faas_cli_logs_query(name: str, *, follow: bool = True, lines: int = -1, since: dt.datetime | None = None, namespace: str = "") -> str:
    """faas-cli's reqAsQueryValues: name, namespace if set, follow always, since if set, tail
    unless 0. ``faas-cli logs NAME`` follows (--tail defaults to true) with --lines -1."""
    query: dict[str, str] = {"name": name}
    if namespace:
        query["namespace"] = namespace
    query["follow"] = "true" if follow else "false"
    if since is not None:
        query["since"] = rfc3339(since)
    if lines != 0:
        query["tail"] = str(lines)
    return urlencode(sorted(query.items()))  # url.Values.Encode sorts by key


def go_sdk_logs_query(name: str, *, follow: bool, tail: int = 0, since: dt.datetime | None = None) -> str:
    """go-sdk's generateLogRequest: follow as 1 or 0."""
    query = {"name": name, "follow": "1" if follow else "0"}
    if since is not None:
        query["since"] = rfc3339(since)
    if tail != 0:
        query["tail"] = str(tail)
    return urlencode(sorted(query.items()))


def log_message(line: bytes | str) -> dict[str, Any]:
    """One NDJSON line decoded into faas-provider's logs.Message as faas-cli decodes it: every
    field a string, the timestamp an RFC 3339 time."""
    message = json.loads(line)
    assert isinstance(message, dict), message
    for key in ("name", "namespace", "instance", "text"):
        assert isinstance(message.get(key, ""), str), (key, message)
    go_time(message.get("timestamp"))
    return message
