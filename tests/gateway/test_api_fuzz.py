"""The OpenAPI document is valid, and fuzzing the API finds no server error and no traceback."""

from __future__ import annotations

import base64
import shutil
import subprocess
import sys
from pathlib import Path

import httpx

from platform_fixture import Platform


def test_openapi_document_lists_every_system_route(shared_platform: Platform) -> None:
    doc = httpx.get(shared_platform.url + "/openapi.json", timeout=10).json()
    assert doc["openapi"].startswith("3.")
    for path in ("/system/functions", "/system/function/{functionName}", "/system/scale-function/{functionName}",
                 "/system/secrets", "/system/info", "/system/namespaces", "/system/logs"):
        assert path in doc["paths"], path


def test_fuzzing_finds_no_server_errors(tmp_path: Path) -> None:
    platform = Platform(tmp_path / "state").start()
    try:
        handler = platform.write_function(tmp_path, "fuzzed", "def handle(req):\n    return req\n")
        platform.images.build("fuzzed:latest", "python3-flask", handler)
        auth = base64.b64encode(f"admin:{platform.password}".encode()).decode()
        cmd = [shutil.which("schemathesis") or str(Path(sys.executable).with_name("schemathesis")), "run",
               platform.url + "/openapi.json", "--url", platform.url, "-H", f"Authorization: Basic {auth}",
               "--checks", "not_a_server_error", "--max-examples", "30", "--seed", "1", "--no-color"]
        run = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
        assert run.returncode == 0, run.stdout[-3000:]
        assert "passed" in run.stdout
    finally:
        platform.close()
    log = platform.log_path.read_text()
    assert "Traceback" not in log, log[-3000:]
