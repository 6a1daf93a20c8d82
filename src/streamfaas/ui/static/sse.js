// An incremental Server-Sent Events parser (the WHATWG "event stream" rules), fed text as it
// arrives. Chunks may split a line, a field or a CRLF anywhere; push() keeps the unfinished
// tail and returns only the events a chunk completed.

const LINE_END = /\r\n|\r|\n/g;

export class SSEParser {
  constructor() {
    this.buffer = "";
    this.started = false;
    this.resetEvent();
  }

  resetEvent() {
    this.type = "";
    this.data = [];
    this.id = null;
  }

  /** Parse `text` (already decoded) and return the events it completed: {event, data, id}. */
  push(text) {
    if (!this.started && text.length > 0) {
      this.started = true;
      if (text.charCodeAt(0) === 0xfeff) text = text.slice(1);
    }
    const buf = this.buffer + text;
    const events = [];
    let pos = 0;
    LINE_END.lastIndex = 0;
    for (;;) {
      const m = LINE_END.exec(buf);
      if (m === null) break;
      // A CR at the very end may be the first half of a CRLF split across chunks.
      if (m[0] === "\r" && m.index === buf.length - 1) break;
      this.line(buf.slice(pos, m.index), events);
      pos = m.index + m[0].length;
    }
    this.buffer = buf.slice(pos);
    return events;
  }

  /** The stream ended: a last CR-terminated line still counts; an unfinished event does not. */
  end() {
    const events = [];
    if (this.buffer.endsWith("\r")) this.line(this.buffer.slice(0, -1), events);
    this.buffer = "";
    this.resetEvent();
    return events;
  }

  line(line, events) {
    if (line === "") {
      // The spec drops events without data; "event: done" on its own is still worth reporting.
      if (this.data.length > 0 || this.type !== "") {
        events.push({ event: this.type || "message", data: this.data.join("\n"), id: this.id });
      }
      this.resetEvent();
      return;
    }
    if (line.charCodeAt(0) === 58 /* ":" */) return; // a comment, often a keep-alive
    const colon = line.indexOf(":");
    const field = colon === -1 ? line : line.slice(0, colon);
    let value = colon === -1 ? "" : line.slice(colon + 1);
    if (value.charCodeAt(0) === 32 /* " " */) value = value.slice(1);
    if (field === "data") this.data.push(value);
    else if (field === "event") this.type = value;
    else if (field === "id" && !value.includes("\0")) this.id = value;
    // "retry" and unknown fields do not matter to a fetch-based reader.
  }
}

// What a chat function's events mean, for both pages (and as `streamfaas chat` reads them).

/** The text a `data:` event adds: `{"content": …}`, a JSON string, or an OpenAI chunk's delta
 * ("" when it has none, and for `[DONE]`); null when the data is not one of those. */
export function deltaOf(data) {
  if (data === "[DONE]") return "";
  let parsed;
  try {
    parsed = JSON.parse(data);
  } catch {
    return null;
  }
  if (typeof parsed === "string") return parsed;
  if (parsed && typeof parsed.content === "string") return parsed.content;
  if (Array.isArray(parsed?.choices)) {
    const delta = parsed.choices[0]?.delta?.content ?? parsed.choices[0]?.text;
    return typeof delta === "string" ? delta : "";
  }
  return null;
}

/** The message of `{"error": {"message": …}}` (an `event: error`, or an HTTP error's body). */
export function errorMessage(data) {
  try {
    const parsed = JSON.parse(data);
    const message = parsed?.error?.message ?? parsed?.message;
    return typeof message === "string" ? message : data;
  } catch {
    return data || "unknown error";
  }
}

/** From `event: done`'s `{"finish_reason", "usage"}`: "cut at N tokens" when the answer
 * stopped at its token limit (N from usage, else the deltas counted), otherwise null. */
export function cutNote(data, counted) {
  let parsed = null;
  try {
    parsed = JSON.parse(data);
  } catch {
    return null;
  }
  if (parsed?.finish_reason !== "length") return null;
  const reported = parsed.usage?.completion_tokens;
  const n = Number.isInteger(reported) ? reported : counted;
  return `cut at ${n} token${n === 1 ? "" : "s"}`;
}
