"""The certifier's Test_ProviderInfo and ``faas-cli version``: GET /system/info."""

from __future__ import annotations

import re

from platform_fixture import Platform


def test_provider_and_gateway_versions_carry_a_release_and_a_sha(shared_platform: Platform) -> None:
    r = shared_platform.http.get(f"{shared_platform.url}/system/info")
    assert r.status_code == 200
    info = r.json()
    provider = info["provider"]
    assert provider["provider"] and provider["orchestration"]
    for version in (provider["version"], info["version"]):
        assert version["release"]
        assert re.fullmatch(r"[0-9a-f]{40}", version["sha"]), version
        assert "commit_message" not in version  # omitempty, and we have none
    assert info["arch"]
    # Computed once: the same on every call.
    assert shared_platform.http.get(f"{shared_platform.url}/system/info").json() == info
