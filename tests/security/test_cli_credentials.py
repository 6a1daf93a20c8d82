"""The local admin password (STATE/auth/admin-password) goes to the gateway that owns the state
directory and nowhere else: not to a stack.yaml's gateway, not to whatever listens on a port
after its gateway stopped."""

from __future__ import annotations

import http.server
import subprocess
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from platform_fixture import Platform, streamfaas_cmd


class _Recorder(http.server.BaseHTTPRequestHandler):
    """Answers like a gateway that accepts everything, and keeps every request's headers."""

    seen: list[tuple[str, str, dict[str, str]]]

    def _answer(self) -> None:
        self.seen.append((self.command, self.path, dict(self.headers.items())))
        self.rfile.read(int(self.headers.get("Content-Length") or 0))
        body = b"[]" if self.command == "GET" else b""
        self.send_response(200 if self.command == "GET" else 202)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    do_GET = do_POST = do_PUT = do_DELETE = _answer

    def log_message(self, format: str, *args: object) -> None:
        pass


class Recorder:
    def __init__(self, port: int = 0) -> None:
        self.seen: list[tuple[str, str, dict[str, str]]] = []
        handler = type("Handler", (_Recorder,), {"seen": self.seen})
        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", port), handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()
        self.thread.join()

    def authorizations(self) -> list[str]:
        return [h[k] for _, _, h in self.seen for k in h if k.lower() == "authorization"]


@pytest.fixture
def recorder() -> Iterator[Recorder]:
    r = Recorder()
    try:
        yield r
    finally:
        r.close()


def _cli_env(platform: Platform, tmp_path: Path) -> dict[str, str]:
    """The admin's own shell: the platform's state directory, no login, no OPENFAAS_URL."""
    env = platform.env()
    env.pop("OPENFAAS_URL")
    env["OPENFAAS_CONFIG"] = str(tmp_path / "openfaas")
    return env


def _cli(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(streamfaas_cmd(*args), capture_output=True, text=True, env=env, timeout=60)


def test_deploy_to_a_stack_files_gateway_never_sends_the_local_password(
    platform: Platform, recorder: Recorder, tmp_path: Path
) -> None:
    stack = tmp_path / "stack.yaml"
    stack.write_text(
        f"version: 1.0\nprovider:\n  name: openfaas\n  gateway: {recorder.url}\n"
        "functions:\n  victim:\n    image: victim:latest\n    skip_build: true\n"
    )
    env = _cli_env(platform, tmp_path)
    deployed = _cli(env, "deploy", "-f", str(stack), "--no-wait")
    assert deployed.returncode == 0, deployed.stderr
    assert [(m, p) for m, p, _ in recorder.seen] == [("PUT", "/system/functions")]
    assert recorder.authorizations() == []
    # The gateway that owns the state directory still needs no login.
    listed = _cli(env, "list", "--gateway", platform.url)
    assert listed.returncode == 0, listed.stderr


def test_gateway_records_its_url_owner_only(platform: Platform) -> None:
    record = platform.state_dir / "auth" / "gateway-url"
    assert record.read_text().split() == [platform.url]
    assert record.stat().st_mode & 0o777 == 0o600


def test_cli_sends_no_password_to_a_server_on_a_stopped_gateways_port(tmp_path: Path) -> None:
    platform = Platform(tmp_path / "state").start()
    try:
        env = _cli_env(platform, tmp_path)
        port = int(platform.url.rsplit(":", 1)[1])
    finally:
        platform.close()
    assert not (platform.state_dir / "auth" / "gateway-url").exists()
    squatter = Recorder(port)  # another program takes the port the gateway left
    try:
        listed = _cli(env, "list", "--gateway", squatter.url)
    finally:
        squatter.close()
    assert listed.returncode == 0, listed.stderr
    assert squatter.seen and squatter.authorizations() == []


def test_gateway_on_all_interfaces_records_the_loopback_url_the_cli_uses(tmp_path: Path) -> None:
    platform = Platform(tmp_path / "state", ("--host", "0.0.0.0")).start()
    try:
        assert (platform.state_dir / "auth" / "gateway-url").read_text().split() == [platform.url]
        listed = _cli(_cli_env(platform, tmp_path), "list", "--gateway", platform.url)
        assert listed.returncode == 0, listed.stderr
    finally:
        platform.close()


def test_credentials_in_the_gateway_url_are_used_and_never_printed(platform: Platform, tmp_path: Path) -> None:
    env = _cli_env(platform, tmp_path)
    env["STREAMFAAS_STATE_DIR"] = str(tmp_path / "elsewhere")  # no local password: only the URL's
    origin = platform.url.removeprefix("http://")
    right = _cli(env, "list", "--gateway", f"http://admin:{platform.password}@{origin}")
    assert right.returncode == 0, right.stderr
    assert right.stdout.startswith("Function")
    secret = "Wr0ng-s3cret-in-the-url"
    for url in (f"http://admin:{secret}@{origin}", "http://admin:" + secret + "@127.0.0.1:1"):
        wrong = _cli(env, "list", "--gateway", url)
        assert wrong.returncode == 1, wrong
        assert "unauthorized at http://127.0.0.1" in wrong.stderr or "cannot reach the gateway at http://127.0.0.1:1 " in wrong.stderr
        assert secret not in wrong.stderr + wrong.stdout
    # The same from the environment (OPENFAAS_URL), through the prompt of a destructive command.
    purged = _cli({**env, "OPENFAAS_URL": f"http://admin:{secret}@{origin}"}, "queue", "purge", "--failed")
    assert purged.returncode != 0 and secret not in purged.stderr + purged.stdout
