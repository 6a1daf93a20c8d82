"""``streamfaas chat`` exits 1 when an answer failed, so a script piping prompts sees it."""

from __future__ import annotations

import subprocess
from pathlib import Path

from platform_fixture import Platform, streamfaas_cmd

# A chat function: one delta, then `event: done`, or `event: error` when the prompt says "fail".
CHAT = """
import json
from flask import Response

def handle(req):
    def events():
        yield 'data: {"content": "partial"}\\n\\n'
        if "fail" in req:
            yield 'event: error\\ndata: ' + json.dumps({"error": {"message": "the model went away", "status": 502}}) + '\\n\\n'
        else:
            yield "event: done\\ndata: {}\\n\\n"
    return Response(events(), mimetype="text/event-stream")
"""


def chat(platform: Platform, prompts: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(streamfaas_cmd("chat", "fakechat", "--no-stats"), input=prompts, env=platform.env(),
                          capture_output=True, text=True, timeout=60)


def test_chat_exits_1_after_a_failed_answer(shared_platform: Platform, tmp_path: Path) -> None:
    shared_platform.deploy("fakechat", shared_platform.write_function(tmp_path, "fakechat", CHAT))
    ok = chat(shared_platform, "hello\n")
    assert ok.returncode == 0, ok.stderr
    assert ok.stdout.strip() == "partial"

    failed = chat(shared_platform, "please fail\nhello again\n")
    assert failed.returncode == 1, failed.stderr
    assert "[error] the model went away" in failed.stderr
    assert failed.stderr.rstrip().endswith("Error: 1 answer failed (see above)")
    assert failed.stdout.count("partial") == 2  # the chat went on after the error
