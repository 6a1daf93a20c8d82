"""The streaming chat, end to end: client → gateway → watchdog → examples/chat → `streamfaas llm`."""

from __future__ import annotations

import json
import os
import select
import signal
import subprocess
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from httpx_sse import connect_sse
from llm_server import LLMServer

from platform_fixture import REPO, Platform, streamfaas_cmd, wait_for

LONG_PROMPT = "Count from 1 to 200, one number per line."


@pytest.fixture(scope="module")
def llm_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LLMServer]:
    workdir = tmp_path_factory.mktemp("chat-llm")
    key = workdir / "key"
    key.write_text("sk-local-chat-key\n")
    server = LLMServer(workdir, "--parallel", "2", "--api-key-file", str(key)).start()
    try:
        yield server
    finally:
        server.close()


@pytest.fixture(scope="module")
def chat(shared_platform: Platform, llm_server: LLMServer) -> Platform:
    p = shared_platform
    assert p.http.post(p.url + "/system/secrets", json={"name": "openai-api-key", "value": "sk-local-chat-key"}).status_code == 201
    p.images.build("chat:latest", "python3-flask", REPO / "examples" / "chat")
    body = {
        "service": "chat", "image": "chat:latest", "secrets": ["openai-api-key"],
        "envVars": {"OPENAI_BASE_URL": llm_server.url + "/v1", "MAX_TOKENS": "400", "TEMPERATURE": "0"},
    }
    assert p.http.post(p.url + "/system/functions", json=body).status_code == 202
    p.wait_ready("chat")
    return p


def _stats(server: LLMServer) -> dict[str, int]:
    return server.stats({"Authorization": "Bearer sk-local-chat-key"})


def test_first_token_arrives_while_the_model_is_still_generating(chat: Platform, llm_server: LLMServer) -> None:
    with httpx.Client(timeout=60) as client, connect_sse(client, "POST", chat.function_url("chat"), content=LONG_PROMPT.encode()) as es:
        events = es.iter_sse()
        first = next(events)
        assert json.loads(first.data)["content"]
        # Ordering, not timing: when token 1 is in our hands the model has not finished.
        at_first = _stats(llm_server)
        assert at_first["active_generations"] >= 1
        rest = list(events)
    assert rest[-1].event == "done"
    text = json.loads(first.data)["content"] + "".join(json.loads(e.data)["content"] for e in rest[:-1])
    # Greedy decoding (TEMPERATURE=0) makes the small model count rather than answer in a few words.
    assert len(rest) > 5 and text.strip()
    assert _stats(llm_server)["tokens_generated_total"] > at_first["tokens_generated_total"]


def test_client_disconnect_stops_generation(chat: Platform, llm_server: LLMServer) -> None:
    before = _stats(llm_server)
    with httpx.Client(timeout=60) as client, connect_sse(client, "POST", chat.function_url("chat"), content=LONG_PROMPT.encode()) as es:
        events = es.iter_sse()
        for _ in range(3):
            next(events)
    # The chain closes: gateway → watchdog → function (its generator's finally closes the
    # OpenAI stream) → model server, which stops generating.
    wait_for(lambda: _stats(llm_server)["cancelled_total"] > before["cancelled_total"], 10, what="the model to see the cancel")
    wait_for(lambda: _stats(llm_server)["active_generations"] == 0, 10, what="generation to stop")
    stopped_at = _stats(llm_server)["tokens_generated_total"]
    assert stopped_at - before["tokens_generated_total"] < 400  # far from the 400-token budget


def test_json_messages_and_cli_plain_text(chat: Platform) -> None:
    body = json.dumps({"messages": [{"role": "user", "content": "Say hello."}]}).encode()
    proc = subprocess.run(streamfaas_cmd("invoke", "chat", "--content-type", "application/json"), input=body,
                          capture_output=True, env=chat.env(), timeout=120)
    assert proc.returncode == 0, proc.stderr
    out = proc.stdout.decode()
    assert out.strip() and "data:" not in out and out.endswith("\n")


def test_cli_chat_session(chat: Platform) -> None:
    proc = subprocess.run(streamfaas_cmd("chat", "chat"), input=b"Say hello.\nSay goodbye.\n",
                          capture_output=True, env=chat.env(), timeout=180)
    assert proc.returncode == 0, proc.stderr
    assert len(proc.stdout.decode().strip().splitlines()) >= 2
    assert proc.stderr.decode().count("[first token") == 2


def test_bad_base_url_gives_error_event(chat: Platform, tmp_path: Path) -> None:
    p = chat
    p.images.build("chat-broken:latest", "python3-flask", REPO / "examples" / "chat")
    body = {"service": "chat-broken", "image": "chat-broken:latest", "envVars": {"OPENAI_BASE_URL": "http://127.0.0.1:9/v1"}}
    assert p.http.post(p.url + "/system/functions", json=body).status_code == 202
    p.wait_ready("chat-broken")
    with httpx.Client(timeout=60) as client, connect_sse(client, "POST", p.function_url("chat-broken"), content=b"hi") as es:
        events = list(es.iter_sse())
    assert [e.event for e in events] == ["error"]
    assert json.loads(events[0].data)["error"]["message"] == "cannot reach the model at http://127.0.0.1:9/v1"
    proc = subprocess.run(streamfaas_cmd("invoke", "chat-broken"), input=b"hi", capture_output=True, env=p.env(), timeout=60)
    assert proc.returncode == 1
    assert proc.stderr.decode() == "Error: cannot reach the model at http://127.0.0.1:9/v1\n"


def test_missing_api_key_secret_is_reported(chat: Platform, llm_server: LLMServer) -> None:
    p = chat
    p.images.build("chat-nokey:latest", "python3-flask", REPO / "examples" / "chat")
    body = {"service": "chat-nokey", "image": "chat-nokey:latest", "envVars": {"OPENAI_BASE_URL": llm_server.url + "/v1"}}
    assert p.http.post(p.url + "/system/functions", json=body).status_code == 202
    p.wait_ready("chat-nokey")
    with httpx.Client(timeout=60) as client, connect_sse(client, "POST", p.function_url("chat-nokey"), content=b"hi") as es:
        events = list(es.iter_sse())
    assert events[-1].event == "error"
    error = json.loads(events[-1].data)["error"]
    assert error["status"] == 401
    assert "sk-local-chat-key" not in events[-1].data


def test_langchain_example_streams_the_same_events(chat: Platform, llm_server: LLMServer) -> None:
    p = chat
    p.images.build("chat-langchain:latest", "python3-flask", REPO / "examples" / "chat-langchain")
    body = {
        "service": "chat-langchain", "image": "chat-langchain:latest", "secrets": ["openai-api-key"],
        "envVars": {"OPENAI_BASE_URL": llm_server.url + "/v1", "MAX_TOKENS": "40"},
    }
    r = p.http.post(p.url + "/system/functions", json=body, timeout=600)  # langchain-openai: from the platform (the langchain extra)
    assert r.status_code == 202, r.text
    p.wait_ready("chat-langchain")
    with httpx.Client(timeout=60) as client, connect_sse(client, "POST", p.function_url("chat-langchain"), content=b"Say hi.") as es:
        events = list(es.iter_sse())
    assert events[-1].event == "done", events[-1]
    assert "".join(json.loads(e.data)["content"] for e in events[:-1]).strip()


def test_cli_chat_ctrl_c_stops_the_answer_and_keeps_chatting(chat: Platform, llm_server: LLMServer) -> None:
    before = _stats(llm_server)["cancelled_total"]
    proc = subprocess.Popen(streamfaas_cmd("chat", "chat", "--no-stats"), stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, env=chat.env())
    try:
        assert proc.stdin is not None and proc.stdout is not None and proc.stderr is not None
        proc.stdin.write(LONG_PROMPT.encode() + b"\n")
        proc.stdin.flush()
        # Some of the answer is on screen: the answer is under way.
        assert select.select([proc.stdout], [], [], 60)[0]
        assert os.read(proc.stdout.fileno(), 100)
        proc.send_signal(signal.SIGINT)
        wait_for(lambda: _stats(llm_server)["cancelled_total"] > before, 20, what="the model to stop")
        proc.stdin.write(b"Say OK.\n")
        proc.stdin.close()
        assert proc.wait(120) == 0
        assert "[stopped]" in proc.stderr.read().decode()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def test_openai_api_key_secret_names_another_secret(chat: Platform, llm_server: LLMServer) -> None:
    p = chat
    assert p.http.post(p.url + "/system/secrets", json={"name": "team-llm-key", "value": "sk-local-chat-key"}).status_code == 201
    p.images.build("chat-otherkey:latest", "python3-flask", REPO / "examples" / "chat")
    body = {
        "service": "chat-otherkey", "image": "chat-otherkey:latest", "secrets": ["team-llm-key"],
        "envVars": {"OPENAI_BASE_URL": llm_server.url + "/v1", "MAX_TOKENS": "20", "OPENAI_API_KEY_SECRET": "team-llm-key"},
    }
    assert p.http.post(p.url + "/system/functions", json=body).status_code == 202
    p.wait_ready("chat-otherkey")
    with httpx.Client(timeout=60) as client, connect_sse(client, "POST", p.function_url("chat-otherkey"), content=b"Say hi.") as es:
        events = list(es.iter_sse())
    assert events[-1].event == "done", events[-1]  # the key came from team-llm-key: the model accepted it
