"""A browser's own ``EventSource`` resumes a journalled stream (issue 14): the connection is
cut mid-answer between Chromium and the gateway, the browser reconnects by itself with
``Last-Event-ID``, and the page shows the answer whole, the function having run once."""

from __future__ import annotations

import socket
import sys
import threading
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from playwright.sync_api import BrowserContext, expect

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "e2e"))
from test_resume import ANSWER, RESUME  # noqa: E402

from platform_fixture import Platform, Signals  # noqa: E402

OpenBrowser = Callable[..., BrowserContext]


class CuttingRelay:
    """A TCP relay on 127.0.0.1 in front of the gateway whose connections the test can cut,
    as a proxy or a phone network drops them."""

    def __init__(self, target_port: int) -> None:
        self.target_port = target_port
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        self.sockets: list[socket.socket] = []
        self.lock = threading.Lock()
        self.threads: list[threading.Thread] = []
        self._start(self._accept)

    def _start(self, target: Callable[..., None], *args: object) -> None:
        thread = threading.Thread(target=target, args=args, daemon=True)
        self.threads.append(thread)
        thread.start()

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self.listener.accept()
            except OSError:
                return
            upstream = socket.create_connection(("127.0.0.1", self.target_port))
            with self.lock:
                self.sockets += [client, upstream]
            self._start(self._pipe, client, upstream)
            self._start(self._pipe, upstream, client)

    @staticmethod
    def _pipe(src: socket.socket, dst: socket.socket) -> None:
        try:
            while data := src.recv(65536):
                dst.sendall(data)
        except OSError:
            pass
        finally:
            for s in (src, dst):
                try:
                    s.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass

    def cut_all(self) -> None:
        with self.lock:
            cut, self.sockets = self.sockets, []
        for s in cut:
            try:
                s.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass

    def close(self) -> None:
        self.listener.close()
        self.cut_all()
        for thread in self.threads:
            thread.join(5)


@pytest.fixture
def relay(shared_platform: Platform) -> Iterator[CuttingRelay]:
    r = CuttingRelay(int(shared_platform.url.rsplit(":", 1)[1]))
    try:
        yield r
    finally:
        r.close()


def test_an_eventsource_resumes_after_the_connection_is_cut_mid_answer(
    shared_platform: Platform, shared_signals: Signals, relay: CuttingRelay, open_browser: OpenBrowser, tmp_path: Path
) -> None:
    shared_platform.deploy("answer", shared_platform.write_function(tmp_path, "answer", ANSWER), env={
        "SIGNALS": shared_signals.url, **RESUME})
    page = open_browser(credentials=("admin", shared_platform.password)).new_page()
    page.goto(f"http://127.0.0.1:{relay.port}/ui/")
    page.evaluate("""() => {
        const out = document.createElement('pre');
        out.id = 'answer';
        document.body.prepend(out);
        const source = new EventSource('/function/answer?gate=browser');
        source.addEventListener('token', (e) => { out.textContent += e.data.trim() + ' '; });
        source.addEventListener('done', () => { out.textContent += '[done]'; source.close(); });
    }""")
    answer = page.locator("#answer")
    expect(answer).to_have_text("1 2 3 ")  # the function now waits for the gate
    relay.cut_all()  # the connection drops mid-answer; the browser reconnects by itself
    shared_signals.open("browser")
    expect(answer).to_have_text("1 2 3 4 5 6 [done]")
    assert len(shared_signals.marks("run-browser")) == 1
    metrics = shared_platform.http.get(f"{shared_platform.url}/metrics").text
    assert 'gateway_stream_resumes_total{function_name="answer",result="resumed"}' in metrics
