"""Names a caller makes up: anyone may call ``/function/ANY-NAME`` and get a 404, and that must
cost the gateway nothing that lasts (a metric series per name would grow its memory and
``/metrics`` without bound)."""

from __future__ import annotations

import uuid

import httpx

from platform_fixture import Platform


def test_calls_to_unknown_functions_leave_no_metric_series(shared_platform: Platform) -> None:
    names = [f"x{uuid.uuid4().hex}" for _ in range(50)]
    with httpx.Client(timeout=10) as anonymous:
        for name in names:
            r = anonymous.get(f"{shared_platform.url}/function/{name}", headers={"Accept": "text/event-stream"})
            assert r.status_code == 404, r.text
            r = anonymous.post(f"{shared_platform.url}/function/{name}.openfaas-fn/deeper?q=1", content=b"x")
            assert r.status_code == 404, r.text
    exposed = shared_platform.http.get(shared_platform.url + "/metrics")
    exposed.raise_for_status()
    assert "gateway_function_ttfb_seconds" in exposed.text  # the families are there, just not these names
    leaked = [name for name in names if name in exposed.text]
    assert leaked == [], f"{len(leaked)} made-up names have metric series"
