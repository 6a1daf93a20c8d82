// Small pieces both pages use: the functions list, formatting, and reading a body as it streams.

/** GET /system/functions; the browser already holds the basic-auth credentials for /ui/. */
export async function listFunctions() {
  const resp = await fetch("/system/functions", { headers: { Accept: "application/json" } });
  if (!resp.ok) {
    throw new Error(`GET /system/functions: HTTP ${resp.status} ${(await resp.text()).trim()}`);
  }
  const items = await resp.json();
  return items.sort((a, b) => a.name.localeCompare(b.name));
}

// What the pages say of a function's 3xx, which they do not follow (fetch's redirect: "manual").
export const REDIRECT_NOT_FOLLOWED = "the function answered with a redirect, which this page does not follow";

export function functionUrl(name) {
  return "/function/" + encodeURIComponent(name);
}

/** Read a fetch Response body as text, calling onText for each decoded chunk as it arrives. */
export async function readText(resp, onText) {
  const reader = resp.body.getReader();
  const decoder = new TextDecoder();
  try {
    for (;;) {
      const { value, done } = await reader.read();
      if (done) break;
      const text = decoder.decode(value, { stream: true });
      if (text) onText(text);
    }
    const rest = decoder.decode();
    if (rest) onText(rest);
  } finally {
    reader.releaseLock();
  }
}

export function isAbort(err) {
  return err instanceof DOMException && err.name === "AbortError";
}

export function formatMs(ms) {
  return ms < 1000 ? `${Math.round(ms)} ms` : `${(ms / 1000).toFixed(2)} s`;
}

export function formatBytes(n) {
  if (n < 1024) return `${n} B`;
  if (n < 1024 * 1024) return `${(n / 1024).toFixed(1)} kB`;
  return `${(n / 1024 / 1024).toFixed(1)} MB`;
}

/** document.createElement with properties and children, to build DOM without innerHTML. */
export function el(tag, props = {}, ...children) {
  const node = document.createElement(tag);
  for (const [key, value] of Object.entries(props)) {
    if (key === "class") node.className = value;
    else if (key.startsWith("data-")) node.setAttribute(key, value);
    else node[key] = value;
  }
  for (const child of children) node.append(child);
  return node;
}

/** True when the element is scrolled (nearly) to its end, so new output should keep it there. */
export function atBottom(node) {
  return node.scrollHeight - node.scrollTop - node.clientHeight < 40;
}
