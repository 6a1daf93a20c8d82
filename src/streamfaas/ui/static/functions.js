// The functions page: list what is deployed, invoke one, and show its response as it streams.
import { atBottom, el, formatBytes, formatMs, functionUrl, isAbort, listFunctions, readText, REDIRECT_NOT_FOLLOWED } from "./common.js";
import { SSEParser, cutNote, deltaOf, errorMessage } from "./sse.js";
import { startStreamCharts } from "./charts.js";

const $ = (id) => document.getElementById(id);
const table = $("functions");
const select = $("invoke-function");
const form = $("invoke-form");
const stopButton = $("invoke-stop");
const invokeButton = $("invoke");
const output = $("invoke-output");
const rawOutput = $("invoke-raw-output");
const rawToggle = $("invoke-raw");
const kindLine = $("invoke-kind");
const statusLine = $("invoke-status");

let running = null; // the AbortController of the request in flight

async function refresh() {
  const errorBox = $("functions-error");
  try {
    const functions = await listFunctions();
    errorBox.hidden = true;
    render(functions);
  } catch (err) {
    errorBox.textContent = `Could not list functions: ${err.message}`;
    errorBox.hidden = false;
  }
}

function render(functions) {
  const body = table.tBodies[0];
  body.replaceChildren(
    ...functions.map((fn) => {
      // Counts of 0 are left out of the JSON (omitempty, as in OpenFaaS).
      const available = fn.availableReplicas ?? 0;
      const desired = fn.replicas ?? 0;
      const ready = available >= Math.max(1, desired);
      const replicas = el("span", { class: ready ? "pill ok" : "pill warn" }, `${available}/${desired}`);
      const pick = el("button", { type: "button", class: "secondary small", textContent: "Invoke" });
      pick.addEventListener("click", () => {
        select.value = fn.name;
        $("invoke-body").focus();
      });
      return el(
        "tr",
        { "data-function": fn.name },
        el("td", { class: "name" }, fn.name),
        el("td", { class: "muted mono image" }, fn.image),
        el("td", { class: "num" }, replicas),
        el("td", { class: "num" }, String(fn.invocationCount ?? 0)),
        el("td", { class: "num" }, pick),
      );
    }),
  );
  $("functions-empty").hidden = functions.length > 0;
  table.hidden = functions.length === 0;

  const chosen = select.value;
  select.replaceChildren(...functions.map((fn) => el("option", { value: fn.name }, fn.name)));
  if (functions.some((fn) => fn.name === chosen)) select.value = chosen;
}

function setStatus(text, kind = "") {
  statusLine.textContent = text;
  statusLine.className = `status ${kind}`;
}

/** Where the response goes: the text as read (an event stream's `data:` joined, as the chat page
 * joins `{"content": …}` deltas) and the raw bytes, with the toggle choosing which is shown. */
class OutputView {
  constructor() {
    this.rendered = document.createTextNode("");
    this.raw = document.createTextNode("");
    output.replaceChildren(this.rendered);
    rawOutput.replaceChildren(this.raw);
    output.classList.remove("failed");
    rawOutput.classList.remove("failed");
    $("invoke-error").hidden = true;
    this.follow = null; // set by the reader of each chunk, before it changes the status line
  }

  shown() {
    return rawToggle.checked ? rawOutput : output;
  }

  /** Whether the reader is following the output: the box scrolled to its end, and its end on
   * screen (on a phone the page scrolls to show it). */
  following() {
    const box = this.shown();
    return { box: atBottom(box), page: box.getBoundingClientRect().bottom <= window.innerHeight + 40 };
  }

  /** Append, keeping the newest output in view for a reader who was following it. */
  write(rendered, raw) {
    const box = this.shown();
    const follow = this.follow ?? this.following();
    if (rendered) this.rendered.appendData(rendered);
    if (raw) this.raw.appendData(raw);
    if (follow.box) box.scrollTop = box.scrollHeight;
    if (follow.page && box.getBoundingClientRect().bottom > window.innerHeight) box.scrollIntoView({ block: "end" });
  }

  fail(message) {
    const box = $("invoke-error");
    box.textContent = message;
    box.hidden = false;
  }
}

/** Reads an event stream into text: `data:` of JSON deltas joined, other data a line each. */
class EventText {
  constructor(view) {
    this.view = view;
    this.parser = new SSEParser();
    this.deltas = 0;
    this.error = null; // the message of `event: error`
    this.cut = null; // "cut at N tokens" from `event: done`
  }

  push(text) {
    this.render(this.parser.push(text), text);
  }

  end() {
    this.render(this.parser.end(), "");
  }

  render(events, raw) {
    let text = "";
    for (const ev of events) {
      if (ev.event === "error") {
        this.error = errorMessage(ev.data);
      } else if (ev.event === "done") {
        this.cut = cutNote(ev.data, this.deltas);
      } else if (ev.event === "message") {
        const delta = deltaOf(ev.data);
        if (delta === null) text += ev.data + "\n";
        else if (delta) {
          text += delta;
          this.deltas += 1;
        }
      } else {
        text += `[${ev.event}] ${ev.data}\n`;
      }
    }
    this.view.write(text, raw);
  }
}

async function invoke(event) {
  event.preventDefault();
  const name = select.value;
  if (!name || running) return;
  const controller = new AbortController();
  running = controller;
  invokeButton.disabled = true;
  stopButton.disabled = false;
  const view = new OutputView();
  kindLine.textContent = "";
  output.scrollIntoView({ block: "nearest" });

  const started = performance.now();
  let firstByte = null;
  let bytes = 0;
  let head = "";
  let events = null; // an EventText when the response is an event stream
  const progress = () => {
    const parts = [head, `${formatBytes(bytes)}`];
    if (firstByte !== null) parts.push(`first byte ${formatMs(firstByte - started)}`);
    return parts.join(" · ");
  };
  setStatus("Connecting…", "busy");
  try {
    const resp = await fetch(functionUrl(name), {
      method: "POST",
      headers: { "Content-Type": $("invoke-content-type").value || "text/plain" },
      body: $("invoke-body").value,
      signal: controller.signal,
      // Not followed: a function's redirect to another function on this origin would be sent
      // again with the admin's browser credentials, which a private function takes.
      redirect: "manual",
    });
    if (resp.type === "opaqueredirect") throw new Error(REDIRECT_NOT_FOLLOWED);
    head = `HTTP ${resp.status}`;
    const type = resp.headers.get("Content-Type") || "";
    if (type.startsWith("text/event-stream")) events = new EventText(view);
    rawToggle.disabled = events === null;
    kindLine.textContent = events ? "Event stream, shown as text" : type;
    if (!resp.ok) {
      output.classList.add("failed");
      rawOutput.classList.add("failed");
    }
    setStatus(`${progress()} · streaming…`, "busy");
    const encoder = new TextEncoder();
    await readText(resp, (text) => {
      if (firstByte === null) firstByte = performance.now();
      bytes += encoder.encode(text).length;
      // Where the output is, before the status line (which may wrap and move it) changes.
      view.follow = view.following();
      setStatus(`${progress()} · streaming…`, "busy");
      if (events) events.push(text);
      else view.write(text, text);
    });
    events?.end();
    const took = `${progress()} · ${events?.cut ?? "done"} in ${formatMs(performance.now() - started)}`;
    if (events?.error) {
      view.fail(events.error);
      setStatus(`${progress()} · error event after ${formatMs(performance.now() - started)}`, "bad");
    } else {
      setStatus(took, !resp.ok ? "bad" : events?.cut ? "stopped" : "ok");
    }
  } catch (err) {
    if (isAbort(err)) {
      setStatus(`${progress()} · stopped after ${formatMs(performance.now() - started)}`, "stopped");
    } else {
      view.fail(err.message);
      setStatus(`${head ? head + " · " : ""}failed`, "bad");
    }
  } finally {
    running = null;
    invokeButton.disabled = false;
    stopButton.disabled = true;
    refresh(); // the invocation count changed
  }
}

form.addEventListener("submit", invoke);
stopButton.addEventListener("click", () => running?.abort());
rawToggle.addEventListener("change", () => {
  output.hidden = rawToggle.checked;
  rawOutput.hidden = !rawToggle.checked;
  const shown = rawToggle.checked ? rawOutput : output;
  shown.scrollTop = shown.scrollHeight;
});
$("refresh").addEventListener("click", refresh);
refresh();
startStreamCharts({ container: $("stream-charts"), empty: $("streams-empty"), error: $("streams-error"), window: $("streams-window") });
