"""Serve a WSGI app with waitress, tuned for streaming. Copied into every build by streamfaas.

The watchdog hands the listening socket over in STREAMFAAS_LISTEN_FD; without it (in a
container, say) the server listens on PORT (default 5000) like OpenFaaS's templates do.
"""

import logging
import os
import socket
import sys
import traceback

from waitress.channel import HTTPChannel
from waitress.server import BaseWSGIServer, create_server
from waitress.task import WSGITask

# Connections accepted in one turn of waitress's loop. Its loop polls every open connection on
# each turn, so accepting one connection a turn makes a burst of N connections cost N² checks.
ACCEPT_BATCH = 64


class KeepAliveTask(WSGITask):
    """waitress closes the connection after every response without a Content-Length, streams
    included: it sends them chunked and then, whatever the client asked, ``Connection: close``
    (``Task.build_response_header`` calls ``set_close_on_finish`` whenever it chooses chunked).
    The chunked framing already ends the body, so the connection can carry the next request,
    and the watchdog need not connect again for every stream.

    It still closes where the body's end is not marked: HTTP/1.0, ``Connection: close``, a
    response to HEAD (waitress would send the last chunk a HEAD client does not expect), and a
    stream that fails or loses its client half-way (waitress closes those itself)."""

    _choosing_framing = False

    def build_response_header(self):
        self._choosing_framing = True
        try:
            return super().build_response_header()
        finally:
            self._choosing_framing = False

    def set_close_on_finish(self):
        if self._choosing_framing and self.chunked_response and self.request.command != "HEAD":
            return
        super().set_close_on_finish()


class KeepAliveChannel(HTTPChannel):
    task_class = KeepAliveTask


def accept_in_batches(server):
    """Accept up to ACCEPT_BATCH waiting connections per turn of the loop, within the
    connection limit; waitress's own ``handle_accept`` takes one."""
    accept_one = server.handle_accept

    def handle_accept():
        for _ in range(ACCEPT_BATCH):
            before = len(server._map)
            if before >= server.adj.connection_limit:
                return
            accept_one()
            if len(server._map) == before:  # nothing was waiting (or that accept failed)
                return

    server.handle_accept = handle_accept


def listen_backlog():
    """The system's longest listen queue (``net.core.somaxconn``; the kernel caps at it)."""
    try:
        with open("/proc/sys/net/core/somaxconn") as f:
            return max(int(f.read()), 128)
    except (OSError, ValueError):
        return 4096


def text_errors(app):
    """A handler that raises answers 500 with one line of text naming the exception's type,
    not Flask's HTML error page;
    the traceback goes to stderr, which is the function's log. HTTP errors the handler raised
    on purpose (``abort(404)``) are answered as Flask answers them."""
    from flask import Response
    from werkzeug.exceptions import HTTPException

    @app.errorhandler(Exception)
    def handler_failed(exc):
        if isinstance(exc, HTTPException):
            return exc
        traceback.print_exception(type(exc), exc, exc.__traceback__, file=sys.stderr)
        sys.stderr.flush()
        # The type only: a message often quotes what the handler held (a URL with its API key,
        # a secret's value), and any caller can make a call fail.
        text = f"handler failed: {type(exc).__name__[:100]} (the traceback is in the function's logs)\n"
        return Response(text, status=500, mimetype="text/plain")


def serve_app(app):
    # A streaming response holds one waitress thread for as long as it lasts, so the thread
    # count is the number of streams a replica can hold at once.
    options = {
        "threads": int(os.environ.get("threads", "64")),
        "connection_limit": int(os.environ.get("connection_limit", "4096")),
        "channel_timeout": 3600,
        "cleanup_interval": 30,
        "ident": None,
        "clear_untrusted_proxy_headers": False,
        # Keep reading the connection while a request runs, so a client that goes away is
        # noticed at once (the next write fails) instead of one write later.
        "channel_request_lookahead": 1,
        # The most output a stream queues before its writer waits (waitress's default: 16 MiB,
        # in a temp file past 1 MiB). A write to a client that went away fails quietly in the
        # writer's thread; only waitress's main loop then closes the channel, which stops the
        # generator, and it gets the channel when the writer waits. So a producer that never
        # pauses ran on, long after its client left, until it had queued 16 MiB.
        "outbuf_high_watermark": 256 * 1024,
        # waitress listens again with this (its default: 1024); a burst of connections must
        # wait in the queue, not overflow it.
        "backlog": listen_backlog(),
        # select() cannot watch a descriptor numbered 1024 or more, and a replica may hold
        # thousands of connections.
        "asyncore_use_poll": True,
    }
    fd = os.environ.get("STREAMFAAS_LISTEN_FD")
    if fd:
        server = create_server(app, sockets=[socket.socket(fileno=int(fd))], **options)
    else:
        server = create_server(app, host="0.0.0.0", port=int(os.environ.get("PORT", "5000")), **options)
    # One listening socket: create_server returns its server (several would come in a
    # MultiSocketServer, which the platform never asks for; those keep waitress's behaviour).
    if isinstance(server, BaseWSGIServer):
        server.channel_class = KeepAliveChannel
        if hasattr(server, "_map"):  # waitress's private socket map: where its channels live
            accept_in_batches(server)
    logging.basicConfig()  # as waitress.serve does: its warnings reach the function's log
    server.print_listen("Serving on http://{}:{}")
    server.run()
