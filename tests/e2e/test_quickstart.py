"""scripts/quickstart.sh as the README runs it (setup.sh stubbed: the venv is already there):
the model server and the gateway on the ports PORT/LLM_PORT pick, examples/ deployed, a real
answer streamed through `chat`, and everything stopped when run from a script."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
from pathlib import Path

from platform_fixture import REPO


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _listening(port: int) -> bool:
    with socket.socket() as s:
        return s.connect_ex(("127.0.0.1", port)) == 0


def test_quickstart_streams_an_answer_and_stops_when_scripted(tmp_path: Path) -> None:
    root = tmp_path / "checkout"
    (root / "scripts").mkdir(parents=True)
    shutil.copy(REPO / "scripts" / "quickstart.sh", root / "scripts" / "quickstart.sh")
    (root / "scripts" / "setup.sh").write_text("true\n")
    shutil.copytree(REPO / "examples", root / "examples", ignore=shutil.ignore_patterns("__pycache__"))
    (root / ".venv").symlink_to(REPO / ".venv")
    port, llm_port = _free_port(), _free_port()
    env = {**os.environ, "PORT": str(port), "LLM_PORT": str(llm_port), "STREAMFAAS_STATE_DIR": str(tmp_path / "state")}
    r = subprocess.run(["bash", "scripts/quickstart.sh"], cwd=root, env=env, stdin=subprocess.DEVNULL,
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stdout + r.stderr
    assert f"on 127.0.0.1:{llm_port}" in r.stdout and f"http://127.0.0.1:{port}" in r.stdout
    answer = r.stdout.split('$ streamfaas invoke chat <<< "What are some calorie dense foods?"', 1)[1]
    answer = answer.split("The same as raw Server-Sent Events:", 1)[0].strip()
    assert len(answer.split()) > 3, r.stdout  # the model's words, printed as plain text
    assert "event: error" not in answer and "Error" not in answer
    assert not _listening(port) and not _listening(llm_port)  # stopped when the demo ends
