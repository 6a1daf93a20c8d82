"""``streamfaas chat``: an interactive chat in the terminal with a streaming chat function."""

from __future__ import annotations

import json
import sys
import time

import click

from ..errors import StreamfaasError
from ._options import Context, gateway_option, pass_ctx
from ._sse import StreamEnd, StreamFailed, http_error_text, print_deltas
from ._text import lines_printable


@click.command()
@click.argument("function", default="chat")
@gateway_option
@click.option("--token", envvar="STREAMFAAS_FUNCTION_TOKEN", default=None, help="Bearer token of a private function.")
@click.option("--stats/--no-stats", default=True, show_default=True, help="Show time to first token and tokens/s.")
@pass_ctx
def chat(ctx: Context, function: str, token: str | None, stats: bool) -> None:
    """Chat with a function that streams {"content": ...} events; Ctrl-C stops an answer.

    Ctrl-D (or Ctrl-C at the prompt) ends the chat; it exits 1 if an answer failed, or at
    once when the function is missing or refuses the caller (HTTP 401, 403, 404, 405).
    """
    client = ctx.client()
    messages: list[dict[str, str]] = []
    headers = {"Content-Type": "application/json", "Accept": "text/event-stream"}
    if token:
        headers["Authorization"] = f"Bearer {token}"
    interactive = sys.stdin.isatty()
    failed = 0  # answers that ended in an error: the chat then exits 1, for scripts
    while True:
        try:
            prompt = input("you> " if interactive else "")
        except (EOFError, KeyboardInterrupt):
            click.echo("", err=interactive)
            if failed:
                raise click.ClickException(f"{failed} answer{'s' if failed > 1 else ''} failed (see above)") from None
            return
        if not prompt.strip():
            continue
        messages.append({"role": "user", "content": prompt})
        body = json.dumps({"messages": messages}).encode()
        started = time.perf_counter()
        first: float | None = None
        pieces = 0
        answer = ""
        end = StreamEnd()
        try:
            with client.stream("POST", f"/function/{function}", content=body, headers=headers) as resp:
                if resp.status_code >= 400:
                    error = f"HTTP {resp.status_code}: {http_error_text(resp)}"
                    if resp.status_code in _FATAL_STATUSES:
                        raise click.ClickException(f"{function}: {error}")
                    raise StreamFailed(error)
                out = _CountingWriter()
                answer = print_deltas(resp, out, end)
                first, pieces = out.first, out.pieces
        except KeyboardInterrupt:
            # Leaving the `with` closed the connection: the gateway, the function and the
            # model all stop. Keep what arrived as the answer.
            click.echo("\n[stopped]", err=True)
        except StreamFailed as exc:
            click.echo(f"\n[error] {lines_printable(str(exc))}", err=True)  # the function's or gateway's words
            messages.pop()
            failed += 1
            continue
        except StreamfaasError:
            raise
        sys.stdout.write("\n")
        sys.stdout.flush()
        if note := end.cut_note():
            click.echo(f"[{note}]", err=True)  # the answer stopped at the function's token limit
        messages.append({"role": "assistant", "content": answer})
        if stats and first is not None:
            total = time.perf_counter() - started
            rate = pieces / (total - (first - started)) if total > first - started else 0.0
            click.echo(f"[first token {1000 * (first - started):.0f} ms, {rate:.1f} tokens/s]", err=True)


# No such function, or not allowed to call it: no later prompt can do better. Any other status
# (the model refused this conversation, was busy or unreachable) fails this answer only.
_FATAL_STATUSES = frozenset({401, 403, 404, 405})


class _CountingWriter:
    """stdout that notes when the first token arrived and how many came."""

    def __init__(self) -> None:
        self.first: float | None = None
        self.pieces = 0

    def write(self, text: str) -> int:
        if self.first is None:
            self.first = time.perf_counter()
        self.pieces += 1
        return sys.stdout.write(text)

    def flush(self) -> None:
        sys.stdout.flush()


COMMANDS = [chat]
