"""/ui/chat in headless Chromium against a test chat function that streams SSE deltas."""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from playwright.sync_api import BrowserContext, Page, expect

from platform_fixture import Platform, Signals

OpenBrowser = Callable[..., BrowserContext]
SLOW_TOKENS = 30

# What the prompt asks for decides the answer: "slow" streams 30 tokens 0.25 s apart (its
# `finally` marks "slow-closed" with how many it sent, so the test sees the request end), "fail"
# sends a token and then `event: error`, "cut" three tokens and an `event: done` that says the
# token limit ended them, "quiet" only keep-alive comments (no token) for up to 30 s, "refuse"
# an HTTP 400 before any token, anything else echoes the prompt quickly and ends with
# `event: done`. Every request is marked "requests" with its headers, so the test can check what
# the page sent.
CHAT = """
import json, os, time, urllib.request
from flask import Response, request

def content(text):
    return f"data: {json.dumps({'content': text})}\\n\\n"

def mark(name, body):
    urllib.request.urlopen(os.environ["SIGNALS"] + "/mark/" + name, body.encode()).read()

def handle(req):
    entry = {"content_type": request.headers.get("Content-Type"), "accept": request.headers.get("Accept"), "body": req}
    mark("requests", json.dumps(entry))
    prompt = json.loads(req)["messages"][-1]["content"]

    def slow():
        sent = 0
        try:
            for i in range(int(os.environ["TOKENS"])):
                yield content(f"tok{i} ")
                sent += 1
                time.sleep(0.25)
            yield "event: done\\ndata: {}\\n\\n"
        finally:
            mark("slow-closed", str(sent))

    def fail():
        yield content("partial ")
        yield 'event: error\\ndata: {"error": {"message": "model overloaded", "status": 503}}\\n\\n'

    def cut():
        for word in ("one ", "two ", "three "):
            yield content(word)
        yield 'event: done\\ndata: {"finish_reason": "length", "usage": {"completion_tokens": 3}}\\n\\n'

    def quiet():
        for _ in range(150):
            yield ": waiting\\n\\n"
            time.sleep(0.2)

    if "refuse" in prompt:
        error = {"error": {"message": "the model endpoint answered 400: too long", "status": 400}}
        return json.dumps(error), 400, {"Content-Type": "application/json"}

    def echo():
        for word in f"you said: {prompt}".split(" "):
            yield content(word + " ")
        yield "event: done\\ndata: {}\\n\\n"

    answers = {"slow": slow, "fail": fail, "cut": cut, "quiet": quiet}
    answer = next((f for word, f in answers.items() if word in prompt), echo)
    return Response(answer(), mimetype="text/event-stream")
"""


@pytest.fixture(scope="module")
def chat_signals(
    shared_platform: Platform, shared_signals: Signals, tmp_path_factory: pytest.TempPathFactory
) -> Signals:
    """A test chat function deployed as `chat` (the page's default), and the signals it marks."""
    root = tmp_path_factory.mktemp("chat")
    shared_platform.deploy(
        "chat",
        shared_platform.write_function(root, "chat", CHAT),
        env={"SIGNALS": shared_signals.url, "TOKENS": str(SLOW_TOKENS)},
    )
    return shared_signals


@pytest.fixture
def page(shared_platform: Platform, chat_signals: Signals, open_browser: OpenBrowser) -> Iterator[Page]:
    page = open_browser(("admin", shared_platform.password)).pages[0]
    page.goto(shared_platform.url + "/ui/chat")
    yield page


def send(page: Page, prompt: str) -> None:
    page.fill("#prompt", prompt)
    page.press("#prompt", "Enter")


def requests(signals: Signals) -> list[dict[str, Any]]:
    return [json.loads(mark) for mark in signals.marks("requests")]


def test_chat_renders_tokens_as_they_arrive_and_stop_ends_the_request(
    page: Page, chat_signals: Signals, screenshot: Callable[[BrowserContext, str], None]
) -> None:
    closed_before = len(chat_signals.marks("slow-closed"))
    send(page, "go slow please")
    answer = page.locator(".turn.assistant .content").last
    state = page.locator(".turn.assistant .state").last

    # The rendered answer grows between DOM polls while the function is still streaming.
    lengths = [0]
    for _ in range(3):
        page.wait_for_function(
            "([el, n]) => el.textContent.length > n", arg=[answer.element_handle(), lengths[-1]]
        )
        lengths.append(len(answer.text_content() or ""))
    assert lengths == sorted(set(lengths)), lengths
    expect(state).to_have_text("streaming…")
    assert len(chat_signals.marks("slow-closed")) == closed_before
    expect(page.locator(".turn.assistant .ttft").last).to_have_text(
        re.compile(r"^TTFT \d+(\.\d+)? m?s$")
    )
    expect(page.locator(".turn.assistant .tps").last).to_have_text(re.compile(r"^\d+\.\d tok/s$"))
    screenshot(page.context, "chat-streaming")

    page.click("#stop")
    expect(state).to_have_text("stopped")
    expect(page.locator("#stop")).to_be_disabled()
    # The abort reached the function: its generator's `finally` ran before all tokens were sent.
    sent = int(chat_signals.wait_marks("slow-closed", closed_before + 1, timeout=10)[closed_before])
    assert sent < SLOW_TOKENS
    shown = answer.text_content() or ""
    assert shown.startswith("tok0 tok1 tok2 ") and "tok29" not in shown
    count = page.locator(".turn.assistant .tokens").last.text_content() or ""
    assert re.fullmatch(r"\d+ tokens", count) and int(count.split()[0]) < SLOW_TOKENS
    screenshot(page.context, "chat-stopped")


def test_chat_sends_the_conversation_as_json_and_keeps_prior_turns(
    page: Page, chat_signals: Signals, screenshot: Callable[[BrowserContext, str], None]
) -> None:
    before = len(requests(chat_signals))
    send(page, "hello there")
    first = page.locator(".turn.assistant").nth(0)
    expect(first.locator(".state")).to_have_text("done")
    expect(first.locator(".content")).to_have_text("you said: hello there ")
    expect(first.locator(".tokens")).to_have_text("4 tokens")
    expect(first.locator(".ttft")).to_have_text(re.compile(r"^TTFT \d"))

    send(page, "and again")
    second = page.locator(".turn.assistant").nth(1)
    expect(second.locator(".state")).to_have_text("done")
    expect(page.locator(".turn.user .bubble")).to_have_text(["hello there", "and again"])
    expect(page.locator(".turn.assistant .content")).to_have_text(
        ["you said: hello there ", "you said: and again "]
    )

    sent = requests(chat_signals)[before:]
    assert len(sent) == 2
    assert all(
        r["content_type"] == "application/json" and r["accept"] == "text/event-stream" for r in sent
    )
    assert json.loads(sent[1]["body"]) == {
        "messages": [
            {"role": "user", "content": "hello there"},
            {"role": "assistant", "content": "you said: hello there "},
            {"role": "user", "content": "and again"},
        ]
    }
    screenshot(page.context, "chat-conversation")


def test_chat_shows_an_error_event(
    page: Page, screenshot: Callable[[BrowserContext, str], None]
) -> None:
    send(page, "please fail")
    turn = page.locator(".turn.assistant").last
    expect(turn.locator(".error")).to_be_visible()
    expect(turn.locator(".error")).to_have_text("model overloaded")
    expect(turn.locator(".state")).to_have_text("error")
    expect(turn.locator(".content")).to_have_text("partial ")
    expect(page.locator("#send")).to_be_enabled()
    screenshot(page.context, "chat-error")


def test_chat_shows_an_unknown_function_as_an_error(page: Page) -> None:
    page.fill("#chat-function", "no-such-function")
    send(page, "hello")
    turn = page.locator(".turn.assistant").last
    expect(turn.locator(".error")).to_have_text("HTTP 404: function 'no-such-function' not found")
    expect(turn.locator(".state")).to_have_text("error")


def test_sse_parser_handles_any_chunking(page: Page) -> None:
    """The page's SSE parser gives the same events however the stream is split into chunks."""
    stream = (
        '\ufeff: keep-alive\r\ndata: {"content": "a"}\r\n\r\n'
        "data: line one\ndata: line two\n\n"
        'event: error\rdata:{"error": {"message": "x"}}\r\r'
        "id: 7\nevent: done\n\n"
        "data: unfinished"
    )
    expected = [
        {"event": "message", "data": '{"content": "a"}', "id": None},
        {"event": "message", "data": "line one\nline two", "id": None},
        {"event": "error", "data": '{"error": {"message": "x"}}', "id": None},
        {"event": "done", "data": "", "id": "7"},
    ]
    results = page.evaluate(
        """async (stream) => {
            const { SSEParser } = await import("/ui/static/sse.js");
            const out = [];
            for (let size = 1; size <= stream.length; size++) {
                const parser = new SSEParser();
                const events = [];
                for (let i = 0; i < stream.length; i += size) events.push(...parser.push(stream.slice(i, i + size)));
                events.push(...parser.end());
                out.push(events);
            }
            return out;
        }""",
        stream,
    )
    for size, events in enumerate(results, start=1):
        assert events == expected, f"chunks of {size}"


def test_chat_says_where_the_token_limit_cut_an_answer(page: Page) -> None:
    send(page, "cut it short")
    turn = page.locator(".turn.assistant").last
    expect(turn.locator(".state")).to_have_text("cut at 3 tokens")
    expect(turn.locator(".state")).to_have_class(re.compile(r"\bcut\b"))
    expect(turn.locator(".content")).to_have_text("one two three ")


PLACEHOLDER = "(el) => getComputedStyle(el, '::before').content"


def test_waiting_placeholder_goes_away_on_stop_and_on_error(page: Page) -> None:
    send(page, "be quiet")
    turn = page.locator(".turn.assistant").last
    content = turn.locator(".content")
    expect(turn.locator(".state")).to_have_text("streaming…")
    assert content.evaluate(PLACEHOLDER) == '"…"'  # waiting for the first token
    page.click("#stop")
    expect(turn.locator(".state")).to_have_text("stopped")
    assert content.evaluate(PLACEHOLDER) == "none"
    expect(turn.locator(".bubble")).to_be_hidden()  # nothing came: no empty bubble

    send(page, "please refuse")
    turn = page.locator(".turn.assistant").last
    expect(turn.locator(".error")).to_have_text("HTTP 400: the model endpoint answered 400: too long")
    expect(turn.locator(".state")).to_have_text("error")
    assert turn.locator(".content").evaluate(PLACEHOLDER) == "none"
