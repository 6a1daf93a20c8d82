"""The exception hierarchy. Every error that reaches a user carries a message a user can act on.

The HTTP layer maps these to status codes in one place (``http_status``).
"""

from __future__ import annotations


class StreamfaasError(Exception):
    """Base of every error streamfaas raises on purpose."""

    http_status = 500


class ConfigError(StreamfaasError):
    """A setting, flag or file is invalid."""

    http_status = 400


class StackError(ConfigError):
    """stack.yaml is invalid; the message names the file, the key and the line."""


class BadRequest(StreamfaasError):
    http_status = 400


class Unauthorized(StreamfaasError):
    http_status = 401


class FunctionNotFound(StreamfaasError):
    http_status = 404

    def __init__(self, name: str) -> None:
        super().__init__(f"function {name!r} not found")
        self.name = name


class NamespaceNotFound(StreamfaasError):
    http_status = 404


class ImageNotFound(StreamfaasError):
    http_status = 400

    def __init__(self, image: str) -> None:
        super().__init__(
            f"image {image!r} not found: build it first with `streamfaas build` (or `streamfaas up`)"
        )
        self.image = image


class SecretNotFound(StreamfaasError):
    http_status = 404


class Conflict(StreamfaasError):
    http_status = 409


class DeployError(StreamfaasError):
    """A function could not be built or started."""

    http_status = 500


class FunctionNotReady(StreamfaasError):
    http_status = 503


class UpstreamTimeout(StreamfaasError):
    http_status = 504


class UpstreamError(StreamfaasError):
    http_status = 502


class PayloadTooLarge(StreamfaasError):
    http_status = 413


class RequestTimeout(StreamfaasError):
    """The client did not send its request body in time."""

    http_status = 408


class GatewayUnreachable(StreamfaasError):
    """The CLI could not reach the gateway."""


def http_status(exc: BaseException) -> int:
    """The HTTP status for an error: the one place that maps errors to statuses."""
    if isinstance(exc, StreamfaasError):
        return exc.http_status
    return 500
