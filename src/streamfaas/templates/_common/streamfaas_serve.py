"""Serve a WSGI app with waitress, tuned for streaming. Copied into every build by streamfaas.

The watchdog hands the listening socket over in STREAMFAAS_LISTEN_FD; without it (in a
container, say) the server listens on PORT (default 5000) like OpenFaaS's templates do.
"""

import os
import socket

from waitress import serve


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
    }
    fd = os.environ.get("STREAMFAAS_LISTEN_FD")
    if fd:
        serve(app, sockets=[socket.socket(fileno=int(fd))], **options)
    else:
        serve(app, host="0.0.0.0", port=int(os.environ.get("PORT", "5000")), **options)
