"""Errors in OpenAI's shape: ``{"error": {"message", "type", "param", "code"}}`` with its status.

OpenAI's SDKs read ``type`` and ``code`` to decide what to raise and whether to retry, so each
error here uses the values OpenAI uses for the same situation.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from ..errors import StreamfaasError


class OpenAIError(StreamfaasError):
    """An error a client of the OpenAI-compatible API sees, with its HTTP status."""

    def __init__(
        self,
        message: str,
        *,
        status: int = 400,
        type: str = "invalid_request_error",
        param: str | None = None,
        code: str | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.http_status = status
        self.type = type
        self.param = param
        self.code = code

    def to_json(self) -> dict[str, Any]:
        return {
            "error": {
                "message": self.message,
                "type": self.type,
                "param": self.param,
                "code": self.code,
            }
        }


def invalid_json() -> OpenAIError:
    return OpenAIError(
        "We could not parse the JSON body of your request. The body must be a JSON object "
        "sent with Content-Type: application/json."
    )


def missing_parameter(param: str) -> OpenAIError:
    return OpenAIError(
        f"Missing required parameter: '{param}'.", param=param, code="missing_required_parameter"
    )


def invalid_type(param: str, expected: str, value: object) -> OpenAIError:
    got = json_type_name(value)
    return OpenAIError(
        f"Invalid type for '{param}': expected {expected}, but got {got} instead.",
        param=param,
        code="invalid_type",
    )


def invalid_value(param: str, message: str) -> OpenAIError:
    return OpenAIError(f"Invalid value for '{param}': {message}", param=param, code="invalid_value")


def unknown_parameter(param: str) -> OpenAIError:
    return OpenAIError(f"Unknown parameter: '{param}'.", param=param, code="unknown_parameter")


def unsupported_parameter(param: str, hint: str = "") -> OpenAIError:
    return OpenAIError(
        f"Unsupported parameter: '{param}' is not supported by this server.{hint}",
        param=param,
        code="unsupported_parameter",
    )


def model_not_found(model: str) -> OpenAIError:
    return OpenAIError(
        f"The model `{model}` does not exist or you do not have access to it.",
        status=404,
        param="model",
        code="model_not_found",
    )


def missing_api_key() -> OpenAIError:
    return OpenAIError(
        "You didn't provide an API key. Send it in the Authorization header as "
        "'Authorization: Bearer YOUR_KEY'.",
        status=401,
    )


def invalid_api_key() -> OpenAIError:
    return OpenAIError("Incorrect API key provided.", status=401, code="invalid_api_key")


def server_busy(running: int, queued: int) -> OpenAIError:
    return OpenAIError(
        f"The server is busy ({running} generating, {queued} waiting); retry shortly, "
        "or start it with a larger --parallel or --queue-size.",
        status=429,
        type="requests",
        code="rate_limit_exceeded",
    )


def shutting_down() -> OpenAIError:
    return OpenAIError(
        "The server is shutting down; the generation was stopped.",
        status=503,
        type="server_error",
    )


def internal_error() -> OpenAIError:
    return OpenAIError(
        "The server had an error while processing your request; its log has the details.",
        status=500,
        type="server_error",
    )


def from_engine(error: Mapping[str, Any]) -> OpenAIError:
    """An error llama.cpp's server reported (``{"code", "message", "type"}``)."""
    status = error.get("code")
    if not isinstance(status, int) or not 400 <= status <= 599:
        status = 500
    message = error.get("message")
    kind = error.get("type")
    code = kind if isinstance(kind, str) and kind else None
    if code == "exceed_context_size_error":
        code = "context_length_exceeded"  # OpenAI's code for the same refusal
    return OpenAIError(
        message if isinstance(message, str) and message else "the model failed to generate",
        status=status,
        type="invalid_request_error" if status < 500 else "server_error",
        code=None if code == "invalid_request_error" else code,
    )


def json_type_name(value: object) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, int):
        return "an integer"
    if isinstance(value, float):
        return "a decimal"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, list):
        return "an array"
    if isinstance(value, dict):
        return "an object"
    return type(value).__name__
