// The chat page: POST the conversation to a function with Accept: text/event-stream and render
// its SSE deltas as they arrive. Events: `data: {"content": "…"}` (one token each),
// `event: done` with `{"finish_reason", "usage"}`, and `event: error` with `{"error": {"message": …}}`.
import { atBottom, el, formatMs, functionUrl, isAbort, listFunctions, readText, REDIRECT_NOT_FOLLOWED } from "./common.js";
import { SSEParser, cutNote, deltaOf, errorMessage } from "./sse.js";

const $ = (id) => document.getElementById(id);
const transcript = $("transcript");
const prompt = $("prompt");
const sendButton = $("send");
const stopButton = $("stop");
const functionInput = $("chat-function");

const messages = []; // the conversation so far, sent whole with every turn
let running = null; // the AbortController of the answer being streamed
let conversation = 0; // bumped by "New chat", so an answer cut short by it is not kept

const requested = new URLSearchParams(location.search).get("function");
if (requested) functionInput.value = requested;

listFunctions()
  .then((functions) => {
    $("chat-functions").replaceChildren(...functions.map((fn) => el("option", { value: fn.name })));
  })
  .catch(() => {}); // only suggestions; typing a name still works

function scrollToEnd(follow) {
  if (follow) transcript.scrollTop = transcript.scrollHeight;
}

function addUserTurn(text) {
  $("chat-empty")?.remove();
  const follow = atBottom(transcript);
  transcript.append(el("div", { class: "turn user" }, el("div", { class: "bubble" }, text)));
  scrollToEnd(follow);
}

/** An assistant turn: its text, an error slot, and a footer with the timing figures. */
function addAssistantTurn(name) {
  const text = document.createTextNode("");
  const content = el("div", { class: "content" }, text);
  const error = el("div", { class: "error", hidden: true, role: "alert" });
  const ttft = el("span", { class: "ttft" }, "TTFT –");
  const tokens = el("span", { class: "tokens" }, "0 tokens");
  const rate = el("span", { class: "tps" }, "– tok/s");
  const state = el("span", { class: "state busy" }, "waiting…");
  const stats = el("div", { class: "stats" }, el("span", { class: "fn" }, name), ttft, tokens, rate, state);
  const bubble = el("div", { class: "bubble" }, content, error);
  const turn = el("div", { class: "turn assistant streaming" }, bubble, stats);
  transcript.append(turn);
  scrollToEnd(true);
  return { turn, bubble, text, error, ttft, tokens, rate, state };
}

/** Timing of one answer: time to first token, and the decode rate between first and last. */
class Meter {
  constructor(view) {
    this.view = view;
    this.sent = performance.now();
    this.first = null;
    this.last = null;
    this.count = 0;
  }

  token() {
    const now = performance.now();
    if (this.first === null) {
      this.first = now;
      this.view.ttft.textContent = `TTFT ${formatMs(now - this.sent)}`;
    }
    this.last = now;
    this.count += 1;
    this.view.tokens.textContent = `${this.count} token${this.count === 1 ? "" : "s"}`;
    const span = (this.last - this.first) / 1000;
    if (this.count > 1 && span > 0) {
      this.view.rate.textContent = `${((this.count - 1) / span).toFixed(1)} tok/s`;
    }
  }
}

function setState(view, text, kind) {
  view.state.textContent = text;
  view.state.className = `state ${kind}`;
  view.turn.classList.remove("streaming");
  view.turn.classList.add(kind);
  // Stopped or failed before the first token: no empty bubble is left behind.
  view.bubble.hidden = view.text.length === 0 && view.error.hidden;
}

function showError(view, message) {
  view.error.textContent = message;
  view.error.hidden = false;
}

async function send(event) {
  event.preventDefault();
  const text = prompt.value.trim();
  const name = functionInput.value.trim();
  if (!text || !name || running) return;
  prompt.value = "";
  messages.push({ role: "user", content: text });
  addUserTurn(text);

  const view = addAssistantTurn(name);
  const meter = new Meter(view);
  const thisConversation = conversation;
  const controller = new AbortController();
  running = controller;
  sendButton.disabled = true;
  stopButton.disabled = false;
  let answer = "";
  let outcome = null; // "done" | "error"; null when the stream just ended
  let cut = null; // "cut at N tokens" when `event: done` says the token limit ended the answer

  const append = (delta) => {
    if (!delta) return;
    const follow = atBottom(transcript);
    answer += delta;
    view.text.appendData(delta);
    meter.token();
    scrollToEnd(follow);
  };

  try {
    const resp = await fetch(functionUrl(name), {
      method: "POST",
      headers: { "Content-Type": "application/json", Accept: "text/event-stream" },
      body: JSON.stringify({ messages }),
      signal: controller.signal,
      redirect: "manual", // see functions.js: never re-sent elsewhere with the admin's credentials
    });
    if (resp.type === "opaqueredirect") throw new Error(REDIRECT_NOT_FOLLOWED);
    if (!resp.ok) {
      const body = (await resp.text()).trim();
      throw new Error(`HTTP ${resp.status}: ${errorMessage(body) || resp.statusText}`);
    }
    view.state.textContent = "streaming…";
    const isEventStream = (resp.headers.get("Content-Type") || "").startsWith("text/event-stream");
    const parser = new SSEParser();
    const handle = (ev) => {
      if (outcome) return;
      if (ev.event === "error") {
        outcome = "error";
        showError(view, errorMessage(ev.data));
      } else if (ev.event === "done") {
        outcome = "done";
        cut = cutNote(ev.data, meter.count);
      } else if (ev.event === "message") {
        append(deltaOf(ev.data) ?? ev.data); // data that is not JSON is text as it is
      }
    };
    await readText(resp, (chunk) => {
      if (!isEventStream) return append(chunk); // a plain-text answer streams as it is
      for (const ev of parser.push(chunk)) handle(ev);
    });
    for (const ev of parser.end()) handle(ev);
    if (outcome === "error") setState(view, "error", "failed");
    else if (cut) setState(view, cut, "cut");
    else setState(view, "done", "done");
  } catch (err) {
    if (isAbort(err)) {
      setState(view, "stopped", "stopped");
    } else {
      showError(view, err.message);
      setState(view, "error", "failed");
    }
  } finally {
    // Keep what was shown, even when stopped, so the next turn has the same context the user sees.
    if (answer && thisConversation === conversation) messages.push({ role: "assistant", content: answer });
    running = null;
    sendButton.disabled = false;
    stopButton.disabled = true;
    prompt.focus();
  }
}

$("composer").addEventListener("submit", send);
prompt.addEventListener("keydown", (event) => {
  if (event.key === "Enter" && !event.shiftKey && !event.isComposing) {
    event.preventDefault();
    $("composer").requestSubmit();
  }
});
stopButton.addEventListener("click", () => running?.abort());
$("chat-clear").addEventListener("click", () => {
  running?.abort();
  conversation += 1;
  messages.length = 0;
  transcript.replaceChildren(el("p", { id: "chat-empty", class: "muted empty" }, "Ask something. The answer streams in token by token."));
  prompt.focus();
});
prompt.focus();
