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
# What the cancel tests ask for: the small model writes its whole 400-token budget (8 s on a quiet
# machine). The counting answer ends by itself after ~120 tokens (2.4 s), which a loaded machine
# can reach before a cancel gets through: the model then finishes rather than stops.
STORY_PROMPT = "Tell me a very long story about a dragon, at least 2000 words."


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
    end = json.loads(rest[-1].data)
    assert end["finish_reason"] in ("stop", "length")
    assert end["usage"]["prompt_tokens"] > 0 and end["usage"]["completion_tokens"] >= len(rest) - 1
    text = json.loads(first.data)["content"] + "".join(json.loads(e.data)["content"] for e in rest[:-1])
    # Greedy decoding (TEMPERATURE=0) makes the small model count rather than answer in a few words.
    assert len(rest) > 5 and text.strip()
    assert _stats(llm_server)["tokens_generated_total"] > at_first["tokens_generated_total"]


def test_client_disconnect_stops_generation(chat: Platform, llm_server: LLMServer) -> None:
    before = _stats(llm_server)
    with httpx.Client(timeout=60) as client, connect_sse(client, "POST", chat.function_url("chat"), content=STORY_PROMPT.encode()) as es:
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


def test_unreachable_model_is_a_502_before_any_token(chat: Platform, tmp_path: Path) -> None:
    p = chat
    p.images.build("chat-broken:latest", "python3-flask", REPO / "examples" / "chat")
    # A password or token in the URL is the function's, never shown to its callers.
    body = {"service": "chat-broken", "image": "chat-broken:latest",
            "envVars": {"OPENAI_BASE_URL": "http://user:url-password@127.0.0.1:9/v1?token=url-token"}}
    assert p.http.post(p.url + "/system/functions", json=body).status_code == 202
    p.wait_ready("chat-broken")
    r = httpx.post(p.function_url("chat-broken"), content=b"hi", headers={"Accept": "text/event-stream"}, timeout=60)
    assert r.status_code == 502
    assert r.headers["content-type"] == "application/json"
    assert r.json()["error"]["message"] == "cannot reach the model at http://127.0.0.1:9/v1"
    proc = subprocess.run(streamfaas_cmd("invoke", "chat-broken"), input=b"hi", capture_output=True, env=p.env(), timeout=60)
    assert proc.returncode == 1
    assert "HTTP 502" in proc.stderr.decode() and "cannot reach the model at http://127.0.0.1:9/v1" in proc.stderr.decode()
    # `streamfaas chat` reports the failed answer and goes on to the next prompt.
    proc = subprocess.run(streamfaas_cmd("chat", "chat-broken", "--no-stats"), input=b"hi\nhello\n", capture_output=True,
                          env=p.env(), timeout=60)
    assert proc.returncode == 1
    err = proc.stderr.decode()
    assert err.count("[error] HTTP 502: cannot reach the model at http://127.0.0.1:9/v1") == 2, err
    assert "url-password" not in err and "url-token" not in err
    assert err.rstrip().endswith("Error: 2 answers failed (see above)")


def test_missing_api_key_secret_is_reported(chat: Platform, llm_server: LLMServer) -> None:
    p = chat
    p.images.build("chat-nokey:latest", "python3-flask", REPO / "examples" / "chat")
    body = {"service": "chat-nokey", "image": "chat-nokey:latest", "envVars": {"OPENAI_BASE_URL": llm_server.url + "/v1"}}
    assert p.http.post(p.url + "/system/functions", json=body).status_code == 202
    p.wait_ready("chat-nokey")
    r = httpx.post(p.function_url("chat-nokey"), content=b"hi", timeout=60)
    # The function's own key is wrong, not the caller's: 502 saying so, without the model's
    # words (OpenAI's quote part of the key).
    assert r.status_code == 502
    error = r.json()["error"]
    assert error["status"] == 401
    assert error["message"] == "the model endpoint refused this function's API key (401)"
    assert "sk-local-chat-key" not in r.text


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
    assert json.loads(events[-1].data)["finish_reason"] in ("stop", "length")
    assert "".join(json.loads(e.data)["content"] for e in events[:-1]).strip()
    # The same end and error contract as examples/chat.
    with httpx.Client(timeout=60) as client, connect_sse(
        client, "GET", p.function_url("chat-langchain"), params={"prompt": LONG_PROMPT, "max_tokens": "3"}
    ) as es:
        events = list(es.iter_sse())
    end = json.loads(events[-1].data)
    assert events[-1].event == "done" and end["finish_reason"] == "length", events[-1]
    assert end["usage"]["completion_tokens"] == 3
    r = _post_json(p, {"messages": []}, "chat-langchain")
    assert r.status_code == 400 and r.json()["error"]["message"] == "messages is empty: send at least one message"
    r = _post_json(p, {"messages": [{"role": "user", "content": IMAGE_PART}]}, "chat-langchain")
    assert r.status_code == 400 and r.json()["error"]["message"] == "messages[0].content must be a string"


def test_cli_chat_ctrl_c_stops_the_answer_and_keeps_chatting(chat: Platform, llm_server: LLMServer) -> None:
    before = _stats(llm_server)["cancelled_total"]
    # The CLI gets Ctrl-C as a terminal's user does. A test run started in the background of a
    # non-interactive shell has SIGINT ignored, and an ignored signal stays ignored across exec
    # (the CLI then rightly goes on, as under nohup); a handled one is reset to the default.
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        proc = subprocess.Popen(streamfaas_cmd("chat", "chat", "--no-stats"), stdin=subprocess.PIPE,
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=chat.env())
    finally:
        signal.signal(signal.SIGINT, previous)
    try:
        assert proc.stdin is not None and proc.stdout is not None and proc.stderr is not None
        proc.stdin.write(STORY_PROMPT.encode() + b"\n")
        proc.stdin.flush()
        # Some of the answer is on screen: the answer is under way.
        assert select.select([proc.stdout], [], [], 60)[0]
        assert os.read(proc.stdout.fileno(), 100)
        proc.send_signal(signal.SIGINT)
        try:
            wait_for(lambda: _stats(llm_server)["cancelled_total"] > before, 20, what="the model to stop")
        except AssertionError as exc:  # say what the model, the CLI and the function did instead
            proc.kill()
            _, err = proc.communicate(timeout=10)
            logs = subprocess.run(streamfaas_cmd("logs", "chat", "--tail", "20"), env=chat.env(), capture_output=True,
                                  text=True, stdin=subprocess.DEVNULL, timeout=30).stdout
            raise AssertionError(f"{exc}\nmodel: {_stats(llm_server)}\nCLI stderr: {err.decode()[-2000:]}\nlogs:\n{logs}") from None
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


def _post_json(p: Platform, body: object, name: str = "chat") -> httpx.Response:
    return httpx.post(p.function_url(name), json=body, headers={"Accept": "text/event-stream"}, timeout=60)


def test_answer_cut_by_max_tokens_ends_with_length(chat: Platform) -> None:
    with httpx.Client(timeout=60) as client, connect_sse(
        client, "POST", chat.function_url("chat"), json={"prompt": LONG_PROMPT, "max_tokens": 8}
    ) as es:
        events = list(es.iter_sse())
    assert events[-1].event == "done"
    end = json.loads(events[-1].data)
    assert end["finish_reason"] == "length"
    assert end["usage"]["completion_tokens"] == 8
    assert all(e.event == "message" for e in events[:-1]) and len(events) > 2


def test_get_with_a_prompt_streams_the_answer(chat: Platform) -> None:
    with httpx.Client(timeout=60) as client, connect_sse(
        client, "GET", chat.function_url("chat"), params={"prompt": "Say hello.", "max_tokens": "20"}
    ) as es:
        assert es.response.status_code == 200
        events = list(es.iter_sse())
    assert events[-1].event == "done"
    assert "".join(json.loads(e.data)["content"] for e in events[:-1]).strip()


def test_a_browser_event_source_reads_the_function(chat: Platform) -> None:
    """What GET with ?prompt= is for: a page's EventSource calls the function directly."""
    from playwright.sync_api import sync_playwright

    chromium = Path("/usr/bin/chromium")
    if not chromium.exists():  # CI=true refuses to start without it (tests/conftest.py)
        pytest.skip(f"{chromium} is missing (apt-get install chromium)")
    read = """(url) => new Promise((resolve) => {
        const source = new EventSource(url);
        const text = [];
        source.onmessage = (e) => text.push(JSON.parse(e.data).content);
        // A server's `event: done` or `event: error`, or a failed connection: EventSource would
        // reconnect and ask again, so the page closes it.
        source.addEventListener("done", (e) => { source.close(); resolve({ text: text.join(""), end: JSON.parse(e.data) }); });
        source.addEventListener("error", (e) => { source.close(); resolve({ error: e.data ?? "connection failed" }); });
    })"""
    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=str(chromium), args=["--no-sandbox", "--disable-gpu"])
        try:
            page = browser.new_page()
            page.goto(chat.url + "/healthz")  # the gateway's origin, no login needed
            result = page.evaluate(read, "/function/chat?prompt=Say+hello.&max_tokens=12")
        finally:
            browser.close()
    assert "error" not in result, result
    assert result["text"].strip()
    assert result["end"]["finish_reason"] in ("stop", "length")


@pytest.mark.parametrize(
    ("method", "kwargs", "reason"),
    [
        ("POST", {"json": {"messages": []}}, "messages is empty: send at least one message"),
        ("POST", {"json": {}}, "send a prompt: POST text"),
        ("POST", {"json": {"prompt": 5}}, "prompt must be a string, not a number"),
        ("POST", {"json": {"prompt": "  "}}, "prompt is empty"),
        ("POST", {"json": {"messages": ["hi"]}}, "messages[0] must be an object with role and content, not a string"),
        ("POST", {"json": {"messages": [{"content": "hi"}]}}, "messages[0].role must be a string, not null"),
        ("POST", {"json": {"messages": [{"role": "user", "content": "hi"}, {"role": "user", "content": 5}]}},
         "messages[1].content must be a string or a list of content parts, not a number"),
        ("POST", {"json": {"messages": {"role": "user"}}}, "messages must be a list, not an object"),
        ("POST", {"json": {"prompt": "hi", "max_tokens": 0}}, "max_tokens must be between 1 and 400"),
        ("POST", {"json": ["hi"]}, "the JSON body must be an object, not a list"),
        ("POST", {"content": b"{not json", "headers": {"Content-Type": "application/json"}}, "the body is not valid JSON"),
        ("POST", {"content": b"  \n"}, "send a prompt: POST text"),
        ("GET", {}, "send a prompt: POST text"),
        ("GET", {"params": {"prompt": "hi", "max_tokens": "many"}}, "max_tokens must be a whole number"),
    ],
)
def test_bad_requests_are_400_with_a_one_line_reason(
    chat: Platform, llm_server: LLMServer, method: str, kwargs: dict[str, object], reason: str
) -> None:
    before = _stats(llm_server)
    r = httpx.request(method, chat.function_url("chat"), timeout=60, **kwargs)  # type: ignore[arg-type]
    assert r.status_code == 400, r.text
    assert r.headers["content-type"] == "application/json"
    message = r.json()["error"]["message"]
    assert message.startswith(reason) and "\n" not in message, message
    assert _stats(llm_server).get("requests_total") == before.get("requests_total")  # the model never saw it


def test_other_methods_are_405(chat: Platform) -> None:
    r = httpx.put(chat.function_url("chat"), content=b"hi", timeout=60)
    assert r.status_code == 405
    assert r.headers["allow"] == "GET, POST"
    assert r.json()["error"]["message"].startswith("PUT is not supported")


IMAGE_PART = [{"type": "image_url", "image_url": {"url": "data:image/png;base64,iVBORw0KGgo="}}]


def test_a_model_refusal_keeps_its_status_and_the_callers_message_indexes(chat: Platform) -> None:
    # The function puts its system prompt in front; the model's error must still name the
    # caller's own messages[2], not messages[3].
    history = [{"role": "user", "content": "Hi."}, {"role": "assistant", "content": "Hello!"}, {"role": "user", "content": IMAGE_PART}]
    r = _post_json(chat, {"messages": history})
    assert r.status_code == 400, r.text
    error = r.json()["error"]
    assert error["status"] == 400
    assert error["param"].startswith("messages[2]"), error
    assert "messages[2]" in error["message"] and "messages[3]" not in error["message"], error
    # With its own system message the caller's list goes to the model as it is.
    r = _post_json(chat, {"messages": [{"role": "system", "content": "Be brief."}, {"role": "user", "content": IMAGE_PART}]})
    assert r.status_code == 400
    assert r.json()["error"]["param"].startswith("messages[1]"), r.text


@pytest.fixture(scope="module")
def short_chat(chat: Platform, llm_server: LLMServer) -> Platform:
    """examples/chat with an 8-token limit, for answers that the limit cuts."""
    body = {
        "service": "chat-short", "image": "chat:latest", "secrets": ["openai-api-key"],
        "envVars": {"OPENAI_BASE_URL": llm_server.url + "/v1", "MAX_TOKENS": "8", "TEMPERATURE": "0"},
    }
    assert chat.http.post(chat.url + "/system/functions", json=body).status_code == 202
    chat.wait_ready("chat-short")
    return chat


def test_cli_chat_says_where_the_token_limit_cut_the_answer(short_chat: Platform) -> None:
    proc = subprocess.run(streamfaas_cmd("chat", "chat-short", "--no-stats"), input=LONG_PROMPT.encode() + b"\n",
                          capture_output=True, env=short_chat.env(), timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.decode().strip()
    assert "[cut at 8 tokens]" in proc.stderr.decode()
