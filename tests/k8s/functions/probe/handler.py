"""A function for the Kubernetes tests: one replica, so its module state is what a test reads
back through the gateway (no shared files or signals server needed between a pod and the test).

- ``POST /`` (``?id=X``): streams ``first``, then waits for ``/release?id=X``, then ``n`` more
  events (``?n=``, 0.05 s apart) and ``event: done``; its ``finally`` counts in FINALLIES.
- ``/release?id=X``, ``/finallies``, ``/secret?name=S`` (the file under /var/openfaas/secrets),
  ``/log?line=L`` (a line to stdout), ``/whoami`` (the pod's hostname and VERSION env).
"""

import json
import os
import socket
import sys
import threading
import time

from flask import Response, request

RELEASED = {}
FINALLIES = []
LOCK = threading.Lock()


def _release_event(key):
    with LOCK:
        return RELEASED.setdefault(key, threading.Event())


def handle(req):
    path = request.path
    if path == "/release":
        _release_event(request.args.get("id", "")).set()
        return "released"
    if path == "/finallies":
        return str(len(FINALLIES))
    if path == "/secret":
        try:
            with open(os.path.join("/var/openfaas/secrets", request.args["name"])) as f:
                return f.read()
        except OSError as exc:
            return f"cannot read: {type(exc).__name__}", 404
    if path == "/log":
        print(request.args.get("line", ""), flush=True)
        return "logged"
    if path == "/whoami":
        return json.dumps({"pod": socket.gethostname(), "version": os.environ.get("VERSION", "")})

    key = request.args.get("id", "")
    n = int(request.args.get("n", "5"))
    gate = request.args.get("gate", "1") == "1"

    def events():
        try:
            yield f"data: first {socket.gethostname()}\n\n"
            if gate and not _release_event(key).wait(60):
                yield "event: error\ndata: never released\n\n"
                return
            for i in range(n):
                yield f"data: {i}\n\n"
                time.sleep(0.05)
            yield "event: done\ndata: {}\n\n"
        finally:
            FINALLIES.append(key)
            print(f"finally {key}", file=sys.stderr, flush=True)

    return Response(events(), mimetype="text/event-stream")
