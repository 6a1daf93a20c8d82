"""The model: llama.cpp's server, embedded through xllamacpp, driven from worker threads.

xllamacpp's ``Server`` runs llama.cpp's own scheduler (continuous batching over ``parallel``
slots) on its threads. A ``handle_*`` call blocks its caller and hands each streamed chunk to a
callback; the callback returning True makes xllamacpp drop the response, which cancels the task
inside llama.cpp before it decodes another token.
"""

from __future__ import annotations

import logging
import os
import secrets
import time
from pathlib import Path
from typing import Any

from ..errors import ConfigError
from . import _errors as errors
from ._generation import Generation
from ._metrics import LLMMetrics
from ._settings import LLMSettings
from ._vocab import load_tokenizer, longest_token

log = logging.getLogger("streamfaas.llm")


class Engine:
    """One loaded model. ``load``, ``generate`` and ``close`` block: call them off the loop."""

    def __init__(self, settings: LLMSettings, model_path: Path, metrics: LLMMetrics | None = None) -> None:
        self._settings = settings
        self._metrics = metrics
        self._model_path = model_path
        self._server: Any = None
        self.loaded_at = 0
        # llguidance's tokenizer of the model, to check grammars with (None: not available).
        self.tokenizer: Any = None
        # The bytes of text the model's longest token covers (None: not known), which bounds
        # from below how many tokens a prompt takes (``_requests.check_prompt_fits``).
        self.longest_token: int | None = None

    def load(self) -> None:
        try:
            import xllamacpp
        except ImportError:
            raise ConfigError(
                "xllamacpp is not installed: `pip install 'streamfaas[llm]'`"
            ) from None
        settings = self._settings
        params = xllamacpp.CommonParams()
        params.model.path = str(self._model_path)
        params.n_parallel = settings.parallel
        # llama.cpp splits n_ctx between the slots; ctx_size is what each slot gets.
        params.n_ctx = settings.ctx_size * settings.parallel
        # llama.cpp's threads spin-wait on each other: on a machine where the gateway and the
        # functions share the cores, one thread per core collapses (138 → 1.5 tokens/s with a
        # single busy process beside it, bench/bench_chat.py). Leave one core to the rest.
        threads = settings.threads or max(1, (os.cpu_count() or 2) - 1)
        params.cpuparams.n_threads = threads
        params.cpuparams_batch.n_threads = threads
        params.verbosity = 0
        # A generation ends when its slot's context is full (no shifting the context to go on):
        # that, not max_tokens, bounds what one request can cost; set here, not left to the default.
        params.ctx_shift = False
        params.endpoint_metrics = True
        # xllamacpp also starts llama.cpp's own HTTP listener. Keep it on loopback, on a port
        # nobody is told, behind a key nobody knows: only this process talks to the model.
        params.hostnames = ["127.0.0.1"]
        params.port = 0
        params.n_threads_http = 1
        params.api_keys = [secrets.token_urlsafe(32)]
        started = time.perf_counter()
        try:
            self._server = xllamacpp.Server(params)
        except RuntimeError:
            raise ConfigError(
                f"could not load model {str(self._model_path)!r}: is it a GGUF file llama.cpp can read?"
            ) from None
        self.tokenizer = load_tokenizer(self._model_path)
        self.longest_token = longest_token(self._model_path)
        self.loaded_at = int(time.time())
        log.info("model %s loaded in %.2fs", self._model_path.name, time.perf_counter() - started)

    def close(self) -> None:
        # Dropping the last reference runs xllamacpp's destructor, which stops llama.cpp's loop
        # and joins its threads.
        self._server = None

    def generate(self, generation: Generation) -> None:
        """Run one generation to its end, its cancellation, or its error (worker thread)."""
        server = self._server
        if server is None:
            generation.error = errors.shutting_down()
            return
        request = generation.request
        chat = request.kind == "chat"
        metrics = self._metrics

        def on_chunk(chunk: dict[str, Any]) -> bool:
            # Runs on this worker thread for every chunk llama.cpp streams; True stops it.
            if generation.cancelled:
                return True
            error = chunk.get("error")
            if error is not None:
                generation.error = errors.from_engine(error if isinstance(error, dict) else chunk)
                return True
            choices = chunk.get("choices")
            if choices:
                choice = choices[0]
                text = choice["delta"].get("content") if chat else choice.get("text")
                if text:
                    if metrics is not None:
                        now = time.perf_counter()
                        if generation.tokens:
                            metrics.itl.observe(now - generation.last_token_at)
                        else:
                            metrics.ttft.observe(now - generation.arrived_at)
                        generation.last_token_at = now
                    generation.tokens += 1
                    if not generation.emit(text):
                        return True
                reason = choice.get("finish_reason")
                if reason:
                    generation.finish_reason = reason
            usage = chunk.get("usage")
            if usage:
                generation.usage = usage
            return False

        handle = server.handle_chat_completions if chat else server.handle_completions
        try:
            handle(request.engine_body, on_chunk)
        except ValueError as exc:
            # llama.cpp rejects some requests only once it renders the prompt (a chat template
            # that refuses a role order, a context it cannot fit): the client's mistake.
            generation.error = errors.OpenAIError(str(exc))
        finally:
            generation.stopped_at = time.perf_counter()
        if generation.usage is not None:
            # A chunk may carry more than one token (text held back while it might begin a
            # stop sequence); the final count is llama.cpp's.
            counted = generation.usage.get("completion_tokens")
            if isinstance(counted, int) and counted > generation.tokens:
                generation.tokens = counted

    def busy_slots(self) -> int | None:
        """How many of llama.cpp's slots are decoding now (blocks for up to one decode step)."""
        server = self._server
        if server is None:
            return None
        try:
            text: str = server.handle_metrics()
        except Exception:  # the metrics are a nicety; never fail a stats request on them
            return None
        for line in text.splitlines():
            if line.startswith("llamacpp:requests_processing "):
                try:
                    return int(float(line.rsplit(" ", 1)[1]))
                except ValueError:
                    return None
        return None
