"""Streams binary data as base64 lines, one chunk per line (e.g. pieces of a generated file)."""

import base64
import hashlib

from flask import Response


def handle(req):
    size = int(req.strip() or "65536")
    chunk = 4096

    def chunks():
        digest = hashlib.sha256()
        for offset in range(0, size, chunk):
            # Deterministic bytes, so a client can check what it got.
            block = bytes((offset + i) % 251 for i in range(min(chunk, size - offset)))
            digest.update(block)
            yield base64.b64encode(block) + b"\n"
        yield b"sha256:" + digest.hexdigest().encode() + b"\n"

    return Response(chunks(), mimetype="application/x-ndjson")
