"""of-watchdog's forking modes: ``streaming`` and ``serializing``, one process per request.

Each request starts ``fprocess`` afresh, sandboxed as the HTTP mode's function server is, with
the request's CGI variables (``Http_Method``, ``Http_Path``, ``Http_X_Call_Id`` …) added to the
function's environment. The request body goes to its stdin. ``streaming`` sends its stdout to
the client chunk by chunk as it is written (of-watchdog buffers it); ``serializing`` reads it
whole and sends it with ``Content-Length``. However a request ends (answered, timed out, the
client gone), the process's whole group is killed.
"""

from __future__ import annotations

import asyncio
import signal
import subprocess
import sys
import time
from collections.abc import Mapping

import aiohttp
from aiohttp import hdrs, web
from multidict import CIMultiDict

from .._process import kill_group
from ..config import WatchdogConfig
from ..errors import BadRequest, StreamfaasError, UpstreamError
from ..proxy import (
    StreamTimeout,
    _fail_after_headers,
    _IdleWatch,
    error_response,
    is_event_stream,
    prepare_unsized,
    read_capped,
)
from ..upstream import body_stalled, next_piece
from .function_process import log_prefix, process_exit, pump_output
from .spawn import RequestCommand

READ_SIZE = 1 << 16  # a pipe's capacity: one read takes all a writer has written so far
STDERR_GRACE = 1.0  # after the exit, how long stderr may still take to reach its end
_TOKEN = frozenset("!#$%&'*+-.^_`|~0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ")


def _canonical(name: str) -> str:
    """A header name as Go's ``net/http`` keys it (``x-call-id`` → ``X-Call-Id``), so the
    variables are named as of-watchdog names them."""
    if not name or not set(name) <= _TOKEN:
        return name
    return "-".join(part[:1].upper() + part[1:].lower() for part in name.split("-"))


def cgi_environment(request: web.Request) -> dict[str, str]:
    """The variables of-watchdog gives a forked process: each header as ``Http_<Name>`` (its
    first value; ``Host`` and ``Transfer-Encoding`` are not headers to Go), then
    ``Http_Method``, ``Http_Query``, ``Http_Path`` and ``Http_Transfer_Encoding``."""
    env: dict[str, str] = {}
    for name, value in request.headers.items():
        key = _canonical(name)
        # Proxy would be Http_Proxy, which Python's HTTP clients (urllib, requests, httpx) take
        # for the function's own proxy, whatever its case ("httpoxy"): a caller could read and
        # answer every http:// call the function makes. Go's net/http/cgi drops it too.
        if key in ("Host", "Transfer-Encoding", "Proxy"):
            continue
        env.setdefault("Http_" + key.replace("-", "_"), value)
    env["Http_Method"] = request.method
    if request.rel_url.raw_query_string:
        env["Http_Query"] = request.rel_url.raw_query_string
    if "\0" in request.path:
        # Decoded from %00: no environment variable can hold it (and in a sandbox's argument
        # list it would split one argument in two).
        raise BadRequest("the request path holds a NUL character (%00)")
    if request.path:
        env["Http_Path"] = request.path
    encoding = request.headers.get(hdrs.TRANSFER_ENCODING)
    if encoding:
        env["Http_Transfer_Encoding"] = encoding.split(",", 1)[0].strip()
    return env


class _StdinPipe(asyncio.BaseProtocol):
    """Flow control for the write end of a process's stdin."""

    def __init__(self) -> None:
        self.lost = False
        self._resumed: asyncio.Future[None] | None = None

    def pause_writing(self) -> None:
        self._resumed = asyncio.get_running_loop().create_future()

    def resume_writing(self) -> None:
        self._wake()

    def connection_lost(self, exc: Exception | None) -> None:
        self.lost = True  # the process closed its stdin or exited: the rest of the body is unread
        self._wake()

    def _wake(self) -> None:
        if self._resumed is not None and not self._resumed.done():
            self._resumed.set_result(None)
        self._resumed = None

    async def drain(self) -> None:
        if self._resumed is not None:
            await self._resumed


class RequestProcess:
    """One request's process: its stdin, stdout and stderr, its exit, and its group."""

    def __init__(self, popen: subprocess.Popen[bytes]) -> None:
        self.popen = popen
        self.stdout = asyncio.StreamReader(limit=READ_SIZE)
        self._stderr = asyncio.StreamReader(limit=1 << 20)
        self._stdin: asyncio.WriteTransport | None = None
        self._stdin_pipe = _StdinPipe()
        self._transports: list[asyncio.BaseTransport] = []
        self._tasks: list[asyncio.Task[None]] = []
        self._exited = asyncio.get_running_loop().create_future()
        self.returncode: int | None = None
        self.last_error = b""
        self.stalled = 0.0  # the read_timeout a streamed body went past (the process was killed)

    @classmethod
    async def start(cls, command: RequestCommand, request_env: Mapping[str, str], config: WatchdogConfig) -> RequestProcess:
        self = cls(command.start(request_env))
        loop = asyncio.get_running_loop()
        try:
            for reader, pipe in ((self.stdout, self.popen.stdout), (self._stderr, self.popen.stderr)):
                transport, _ = await loop.connect_read_pipe(lambda r=reader: asyncio.StreamReaderProtocol(r), pipe)  # type: ignore[misc]
                self._transports.append(transport)
            stdin, _ = await loop.connect_write_pipe(lambda: self._stdin_pipe, self.popen.stdin)
            self._stdin = stdin
            self._transports.append(stdin)
        except BaseException:
            await self.close()
            raise
        self._tasks.append(asyncio.create_task(pump_output(self._stderr, log_prefix(config, "stderr"), self._note)))
        self._tasks.append(asyncio.create_task(self._watch_exit()))
        return self

    def _note(self, line: bytes) -> None:
        if line.strip():
            self.last_error = line[:1000]

    async def _watch_exit(self) -> None:
        await process_exit(self.popen.pid)
        # The leader is a zombie until reaped, so its group's id cannot have been reused yet:
        # whatever the process left running in its group goes with it.
        kill_group(self.popen.pid, signal.SIGKILL)
        self.returncode = self.popen.wait()
        self._exited.set_result(None)

    async def feed(self, body: bytes | aiohttp.StreamReader | None, idle: float = 0.0) -> None:
        """Write the request body to stdin, then close it (the process sees its end). A streamed
        body that sends nothing for ``idle`` seconds kills the process (``stalled``): a caller
        that withholds its body would hold a process for as long as it liked, and a process
        given the body's end early would take a part for the whole."""
        stdin, pipe = self._stdin, self._stdin_pipe
        assert stdin is not None
        try:
            if isinstance(body, bytes):
                if body:
                    stdin.write(body)
            elif body is not None:
                while True:
                    chunk = await next_piece(body, idle)
                    if chunk is None:
                        self.stalled = idle
                        if self.returncode is None:
                            kill_group(self.popen.pid, signal.SIGKILL)  # reaped by _watch_exit
                        return
                    if not chunk or pipe.lost:
                        break
                    stdin.write(chunk)
                    await pipe.drain()
        finally:
            if not stdin.is_closing():
                stdin.close()

    async def wait(self) -> int:
        """The exit code, once the process has exited and its stderr reached the log."""
        await asyncio.shield(self._exited)
        assert self.returncode is not None
        try:
            async with asyncio.timeout(STDERR_GRACE):
                await asyncio.shield(self._tasks[0])
        except TimeoutError:
            pass  # something outside its group holds stderr open; the last line so far will do
        return self.returncode

    def failure(self, code: int) -> str:
        """What went wrong, in the process's own words: its stderr's last line."""
        line = self.last_error.decode(errors="replace").strip()
        if line:
            return line
        return f"function was killed by signal {-code}" if code < 0 else f"function exited with code {code}"

    async def close(self) -> None:
        """Kill the process's group at once (if it still runs), reap it, release its pipes."""
        if self.returncode is None:
            kill_group(self.popen.pid, signal.SIGKILL)
            if self._tasks:
                await asyncio.shield(self._exited)
            else:  # start() failed before the watcher ran
                self.returncode = self.popen.wait()
        for transport in self._transports:
            transport.close()
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        for pipe in (self.popen.stdin, self.popen.stdout, self.popen.stderr):
            if pipe is not None:
                pipe.close()


def _headers_limit(config: WatchdogConfig) -> float:
    """The longest wait for the response's headers, as in HTTP mode: write_timeout, within
    exec_timeout (0 for neither)."""
    limits = [x for x in (config.write_timeout, config.exec_timeout) if x]
    return min(limits) if limits else 0.0


async def read_body(request: web.Request, config: WatchdogConfig) -> bytes:
    """A request body read whole, within ``read_timeout`` and ``max_body``: the gateway holds
    bodies to ``max_body`` too, but on Kubernetes other pods can reach a watchdog directly."""
    too_large = f"request body is larger than this function's max_body of {config.max_body} bytes"
    return await read_capped(request, config.max_body, too_large, read_timeout=config.read_timeout,
                             too_slow=f"request body not received within {config.read_timeout:g}s")


def _log_request(config: WatchdogConfig, text: str) -> None:
    """One of the two lines OpenFaaS's classic watchdog logs per request, ``Forking fprocess.``
    and ``Wrote N Bytes - Duration: S seconds``: the certifier's Test_FunctionLogs looks for
    them. Stamped and prefixed as the process's own lines are, so they carry its replica."""
    stamp = time.strftime("%Y-%m-%dT%H:%M:%SZ ", time.gmtime()).encode()
    out = sys.stdout.buffer
    out.write(stamp + f"{config.function_name}[{config.replica_id}] {text}\n".encode())
    out.flush()


def _log_wrote(config: WatchdogConfig, size: int, started: float) -> None:
    _log_request(config, f"Wrote {size} Bytes - Duration: {time.monotonic() - started:f} seconds")


async def _stop_feeding(feeder: asyncio.Task[None]) -> None:
    feeder.cancel()
    await asyncio.gather(feeder, return_exceptions=True)


async def invoke_streaming(request: web.Request, config: WatchdogConfig, command: RequestCommand) -> web.StreamResponse:
    """Streaming mode: headers go out with the first bytes of stdout, then each chunk as the
    process writes it. A nonzero exit before any output is a 500 with stderr's last line; after
    output, as a failure after the headers (``event: error``, or an aborted body)."""
    started = time.monotonic()
    body: bytes | aiohttp.StreamReader | None = request.content if request.body_exists else None
    if config.buffer_body:
        body = await read_body(request, config)
    _log_request(config, "Forking fprocess.")
    process = await RequestProcess.start(command, cgi_environment(request), config)
    feeder = asyncio.create_task(process.feed(body, config.read_timeout))
    try:
        limit = _headers_limit(config)
        try:
            async with asyncio.timeout(limit or None):
                first = await process.stdout.read(READ_SIZE)
                if not first:
                    code = await process.wait()
        except TimeoutError:
            return error_response(f"function wrote nothing within {limit:g}s", 504)
        if not first:
            if process.stalled:
                return error_response(body_stalled(process.stalled), 408)
            if code != 0:
                return error_response(process.failure(code), 500)
            _log_wrote(config, 0, started)
            return web.Response(body=b"", headers={hdrs.CONTENT_TYPE: config.content_type})
        return await _stream(request, config, process, first, started)
    finally:
        await _stop_feeding(feeder)
        await process.close()


async def _stream(
    request: web.Request, config: WatchdogConfig, process: RequestProcess, first: bytes, started: float
) -> web.StreamResponse:
    sse = is_event_stream(config.content_type)
    headers = CIMultiDict({hdrs.CONTENT_TYPE: config.content_type})
    if sse:
        headers[hdrs.CACHE_CONTROL] = "no-cache"
        headers["X-Accel-Buffering"] = "no"
    resp = web.StreamResponse(headers=headers)  # unsized: chunked (closed after, for HTTP/1.0)
    await prepare_unsized(resp, request)
    await resp.write(first)
    written = len(first)
    last = first
    total = config.exec_timeout
    remaining = max(total - (time.monotonic() - started), 0.001) if total else 0.0
    try:
        async with asyncio.timeout(remaining or None) as cm:
            idle = _IdleWatch(config.idle_timeout, cm)
            try:
                read = process.stdout.read
                write = resp.write
                while chunk := await read(READ_SIZE):
                    await write(chunk)
                    last = chunk
                    written += len(chunk)
                    idle.chunks += 1
                code = await process.wait()
            finally:
                idle.stop()
    except TimeoutError:
        failure: StreamfaasError = StreamTimeout(
            f"stream stopped: no output for {config.idle_timeout:g}s"
            if idle.fired
            else f"stream stopped: exceeded the {total:g}s limit (exec_timeout)"
        )
        await process.close()  # the process goes before the client hears why
        await _fail_after_headers(request, resp, sse, failure, None, last)
        return resp
    if code != 0:
        why = body_stalled(process.stalled) if process.stalled else f"function failed mid-stream: {process.failure(code)}"
        failure = UpstreamError(why)
        await _fail_after_headers(request, resp, sse, failure, None, last)
        return resp
    # Logged before the body's end goes out, as serializing mode logs before it answers: a
    # client that reads the logs once its answer is complete (the certifier) finds the line.
    _log_wrote(config, written, started)
    await resp.write_eof()
    return resp


MAX_SERIALIZED = 64 << 20  # the most stdout serializing mode holds for one answer


async def invoke_serializing(request: web.Request, config: WatchdogConfig, command: RequestCommand) -> web.StreamResponse:
    """Serializing mode: the body read whole into stdin, stdout read whole, then one sized
    response (500 with stderr's last line if the process failed)."""
    started = time.monotonic()
    body = await read_body(request, config)
    _log_request(config, "Forking fprocess.")
    process = await RequestProcess.start(command, cgi_environment(request), config)
    feeder = asyncio.create_task(process.feed(body))
    try:
        limit = _headers_limit(config)
        try:
            async with asyncio.timeout(limit or None):
                held = bytearray()
                while chunk := await process.stdout.read(READ_SIZE):
                    held += chunk
                    if len(held) > MAX_SERIALIZED:
                        # Held whole before it is sent: a process that writes without end grew
                        # the watchdog by 3 GiB in 10 s. A bigger answer streams (mode: streaming).
                        return error_response(
                            f"the function's output is larger than {MAX_SERIALIZED} bytes, which serializing "
                            "mode holds whole: use mode streaming", 502)
                output = bytes(held)
                code = await process.wait()
        except TimeoutError:
            return error_response(f"function did not finish within {limit:g}s", 504)
        if code != 0:
            return error_response(process.failure(code), 500)
        _log_wrote(config, len(output), started)
        return web.Response(
            body=output,
            headers={hdrs.CONTENT_TYPE: config.content_type, "X-Duration-Seconds": f"{time.monotonic() - started:.6f}"},
        )
    finally:
        await _stop_feeding(feeder)
        await process.close()
