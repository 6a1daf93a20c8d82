// The functions page: list what is deployed, invoke one, and show its response as it streams.
import { atBottom, el, formatBytes, formatMs, functionUrl, isAbort, listFunctions, readText } from "./common.js";

const $ = (id) => document.getElementById(id);
const table = $("functions");
const select = $("invoke-function");
const form = $("invoke-form");
const stopButton = $("invoke-stop");
const invokeButton = $("invoke");
const output = $("invoke-output");
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
        el("td", { class: "muted mono" }, fn.image),
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

async function invoke(event) {
  event.preventDefault();
  const name = select.value;
  if (!name || running) return;
  const controller = new AbortController();
  running = controller;
  invokeButton.disabled = true;
  stopButton.disabled = false;
  output.textContent = "";
  output.classList.remove("failed");
  const sink = document.createTextNode("");
  output.append(sink);

  const started = performance.now();
  let firstByte = null;
  let bytes = 0;
  let head = "";
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
    });
    head = `HTTP ${resp.status}`;
    if (!resp.ok) output.classList.add("failed");
    setStatus(`${progress()} · streaming…`, "busy");
    const encoder = new TextEncoder();
    await readText(resp, (text) => {
      if (firstByte === null) firstByte = performance.now();
      bytes += encoder.encode(text).length;
      const follow = atBottom(output);
      sink.appendData(text);
      if (follow) output.scrollTop = output.scrollHeight;
      setStatus(`${progress()} · streaming…`, "busy");
    });
    setStatus(`${progress()} · done in ${formatMs(performance.now() - started)}`, resp.ok ? "ok" : "bad");
  } catch (err) {
    if (isAbort(err)) {
      setStatus(`${progress()} · stopped after ${formatMs(performance.now() - started)}`, "stopped");
    } else {
      setStatus(`${head ? head + " · " : ""}failed: ${err.message}`, "bad");
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
$("refresh").addEventListener("click", refresh);
refresh();
