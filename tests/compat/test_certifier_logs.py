"""The certifier's Test_FunctionLogs: deploy ``fprocess=cat``, invoke it with the namespace as
the body, then read GET /system/logs (follow=false) for the classic watchdog's two lines per
request, ``Forking fprocess.`` and ``Wrote N Bytes - Duration: …``.

The certifier deploys them from the image ``functions/alpine:latest``, which the local provider
cannot have; here a local image with the forking modes stands in for it.
"""

from __future__ import annotations

from pathlib import Path

import httpx
import pytest

from go_wire import DEFAULT_NAMESPACE, DEPLOY_OK, faas_cli_logs_query, log_message
from platform_fixture import Platform


def _recorded(texts: list[str], expected: str) -> bool:
    """The certifier's checkIfLogIsRecorded."""
    return any(text.lstrip("0123456789/: ").startswith(expected) for text in texts)


@pytest.mark.parametrize("mode", ["serializing", "streaming"])
def test_a_forked_request_logs_forking_and_bytes_written(shared_platform: Platform, tmp_path: Path, mode: str) -> None:
    name = f"test-logger-{mode}"
    (tmp_path / "fn").mkdir()
    shared_platform.images.build(f"{name}:latest", "python3-flask", tmp_path / "fn")
    body = {"service": name, "image": f"{name}:latest", "network": "func_functions", "envProcess": "cat",
            "namespace": DEFAULT_NAMESPACE, "envVars": {"mode": mode}}
    r = shared_platform.http.post(f"{shared_platform.url}/system/functions", json=body)
    assert r.status_code in DEPLOY_OK, r.text
    try:
        shared_platform.wait_ready(name)
        r = httpx.post(f"{shared_platform.function_url(name)}.{DEFAULT_NAMESPACE}", timeout=30, content=DEFAULT_NAMESPACE.encode())
        assert (r.status_code, r.text) == (200, DEFAULT_NAMESPACE)
        # faas-cli's proxy.GetLogs, as the certifier calls it: Follow false, Tail 0.
        query = faas_cli_logs_query(name, follow=False, lines=0, namespace=DEFAULT_NAMESPACE)
        r = shared_platform.http.get(f"{shared_platform.url}/system/logs?{query}")
        assert r.status_code == 200, r.text
        messages = [log_message(line) for line in r.text.splitlines()]
        assert all(m["name"] == name for m in messages)
        texts = [str(m["text"]) for m in messages]
        assert _recorded(texts, "Forking fprocess"), texts
        assert _recorded(texts, f"Wrote {len(DEFAULT_NAMESPACE)} Bytes - Duration: "), texts
        [wrote] = [m for m in messages if str(m["text"]).startswith("Wrote ")]
        assert str(wrote["instance"]).startswith(f"{name}["), wrote
    finally:
        shared_platform.http.request("DELETE", f"{shared_platform.url}/system/functions", json={"functionName": name})
