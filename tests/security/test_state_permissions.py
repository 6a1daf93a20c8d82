"""The state directory is the gateway's alone: queued bodies, logs, deployments, credentials."""

from __future__ import annotations

import os
import stat
from pathlib import Path

from platform_fixture import Platform, wait_for


def test_state_directory_and_its_files_are_owner_only(platform: Platform, tmp_path: Path) -> None:
    p = platform
    p.deploy("perm", p.write_function(tmp_path, "perm", "def handle(req):\n    print('logged', flush=True)\n    return 'ok'\n"))
    assert p.http.post(p.url + "/async-function/perm", content=b"queued body").status_code == 202
    assert p.http.post(p.url + "/system/secrets", json={"name": "perm-key", "value": "v"}).status_code == 201
    wait_for(lambda: p.http.get(p.url + "/system/queue").json()["depth"]["pending"] == 0, what="the async job to run")
    assert stat.S_IMODE(p.state_dir.stat().st_mode) & 0o077 == 0
    exposed = []
    for folder, _dirs, files in os.walk(p.state_dir):
        rel = Path(folder).relative_to(p.state_dir)
        # Images and venvs are code, opened up for functions' uids; they sit inside this 0700 folder.
        if rel.parts[:1] in {("images",), ("venvs",)}:
            continue
        for name in files:
            path = Path(folder, name)
            if path.name in {"gateway.log", "gateway.port"}:
                continue  # written by the test harness, not the gateway
            mode = stat.S_IMODE(path.lstat().st_mode)
            if mode & 0o077:
                exposed.append((str(path.relative_to(p.state_dir)), oct(mode)))
    assert not exposed, exposed
    for required in ("queue.db", "functions/perm.json", "logs/perm.log"):
        assert (p.state_dir / required).exists(), required
