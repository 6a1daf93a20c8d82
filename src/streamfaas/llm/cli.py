"""``streamfaas llm``: start the OpenAI-compatible model server."""

from __future__ import annotations

import logging
import sys
from pathlib import Path

import click

from ..errors import ConfigError
from ._serve import serve
from ._settings import LLMSettings

_FILE = click.Path(dir_okay=False, path_type=Path)


@click.command("llm")
@click.option(
    "--host",
    default="127.0.0.1",
    show_default=True,
    envvar="STREAMFAAS_LLM_HOST",
    help="Address to listen on.",
)
@click.option(
    "--port",
    type=click.IntRange(0, 65535),
    default=8000,
    show_default=True,
    envvar="STREAMFAAS_LLM_PORT",
    help="Port to listen on; 0 picks a free one.",
)
@click.option(
    "--model",
    "model_path",
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    envvar="STREAMFAAS_LLM_MODEL",
    help="A GGUF model file. Default: the bundled SmolLM2-135M-Instruct.",
)
@click.option(
    "--model-name",
    envvar="STREAMFAAS_LLM_MODEL_NAME",
    help="Name reported in /v1/models. Default: from the file name.",
)
@click.option(
    "--api-key-file",
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    envvar="STREAMFAAS_LLM_API_KEY_FILE",
    help="File holding the API key that clients must send as a Bearer token.",
)
@click.option(
    "--parallel",
    type=click.IntRange(min=1),
    default=2,
    show_default=True,
    envvar="STREAMFAAS_LLM_PARALLEL",
    help="Generations decoded together.",
)
@click.option(
    "--queue-size",
    type=click.IntRange(min=0),
    default=8,
    show_default=True,
    envvar="STREAMFAAS_LLM_QUEUE_SIZE",
    help="Requests that may wait for a free slot; past that the server answers 429.",
)
@click.option(
    "--ctx-size",
    type=click.IntRange(min=64),
    default=2048,
    show_default=True,
    envvar="STREAMFAAS_LLM_CTX_SIZE",
    help="Context (prompt + completion) of each slot.",
)
@click.option(
    "--threads",
    type=click.IntRange(min=0),
    default=0,
    show_default=True,
    envvar="STREAMFAAS_LLM_THREADS",
    help="CPU threads for the model; 0 = one less than the CPUs (at least 1).",
)
@click.option("--port-file", type=_FILE, help="Write the port here once listening.")
@click.option("-v", "--verbose", is_flag=True, help="Log model loading and errors in detail.")
def llm_command(
    host: str,
    port: int,
    model_path: Path | None,
    model_name: str | None,
    api_key_file: Path | None,
    parallel: int,
    queue_size: int,
    ctx_size: int,
    threads: int,
    port_file: Path | None,
    verbose: bool,
) -> None:
    """Serve a local model with OpenAI's API: /v1/models, /v1/chat/completions (streamed or
    not; structured output and tool calls), /v1/completions. No API key or network needed."""
    logging.basicConfig(
        level=logging.INFO if verbose else logging.WARNING,
        stream=sys.stderr,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    try:
        settings = LLMSettings(
            host=host,
            port=port,
            model_path=model_path,
            model_name=model_name,
            api_key_file=api_key_file,
            parallel=parallel,
            queue_size=queue_size,
            ctx_size=ctx_size,
            threads=threads,
            port_file=port_file,
        )
    except ConfigError as exc:  # flags that each parsed but do not go together: a bad argument
        raise click.UsageError(str(exc), click.get_current_context()) from None
    try:
        serve(settings)
    except ConfigError as exc:
        raise click.ClickException(str(exc)) from None
    except OSError as exc:  # e.g. the port is taken
        raise click.ClickException(f"cannot listen on {host}:{port}: {exc.strerror}") from None
