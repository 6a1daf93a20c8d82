"""A function cannot reach another function's replica except through the gateway: replicas and
function servers listen on Unix sockets in folders no sandbox can see, not on loopback ports."""

from __future__ import annotations

from pathlib import Path

import httpx
import pytest

from platform_fixture import Platform
from streamfaas.sandbox import bwrap_path

SCANNER = """
import json, os, socket

def _listening_tcp():
    ports = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            lines = open(table).read().splitlines()[1:]
        except OSError:
            continue
        for line in lines:
            fields = line.split()
            if fields[3] == "0A":  # LISTEN
                ports.add(int(fields[1].rsplit(":", 1)[1], 16))
    return sorted(ports)

def _unix_paths():
    try:
        lines = open("/proc/net/unix").read().splitlines()[1:]
    except OSError:
        return []
    return sorted({l.split()[-1] for l in lines if len(l.split()) >= 8 and l.split()[-1].startswith(("/", "@"))})

def _ask(family, address):
    s = socket.socket(family, socket.SOCK_STREAM)
    s.settimeout(2)
    try:
        s.connect(address)
        s.sendall(b"GET / HTTP/1.0\\r\\nHost: x\\r\\n\\r\\n")
        data = b""
        while len(data) < 65536:
            chunk = s.recv(65536)
            if not chunk:
                break
            data += chunk
        return data.decode(errors="replace")
    except OSError as exc:
        return "refused: " + type(exc).__name__
    finally:
        s.close()

def handle(req):
    answers = {}
    for port in _listening_tcp():
        answers["tcp:%d" % port] = _ask(socket.AF_INET, ("127.0.0.1", port))
    for path in _unix_paths():
        address = "\\0" + path[1:] if path.startswith("@") else path
        answers["unix:" + path] = _ask(socket.AF_UNIX, address)
    return json.dumps(answers)
"""

PRIVATE = """
def handle(req):
    return "PRIVATE-FUNCTION-ANSWER"
"""


@pytest.mark.skipif(bwrap_path() is None, reason="bubblewrap (bwrap) is not usable here; .ci/run installs it")
def test_function_cannot_call_a_private_replica_directly(tmp_path: Path) -> None:
    # Without the sandbox a function is the platform's own user and nothing stops it (README).
    p = Platform(tmp_path / "state", sandbox=True).start()
    try:
        p.deploy("secretive", p.write_function(tmp_path, "secretive", PRIVATE), labels={"streamfaas.auth/private": "true"})
        assert httpx.get(p.function_url("secretive"), timeout=30).status_code == 401
        p.deploy("scanner", p.write_function(tmp_path, "scanner", SCANNER))
        r = httpx.get(p.function_url("scanner"), timeout=60)
        assert r.status_code == 200, r.text
        answers = r.json()
        reached = [where for where, text in answers.items() if "PRIVATE-FUNCTION-ANSWER" in text]
        assert not reached, reached
        # The replicas' sockets are not even visible inside the sandbox.
        assert not [w for w in answers if w.startswith("unix:/") and "streamfaas" in w and "refused" not in answers[w]]
    finally:
        p.close()
