// Live stream charts for the functions page: per function, open streams, TTFB p50/p99 and
// disconnects over the last minutes, drawn as inline SVG from GET /system/stream-history
// (the gateway samples its own stream metrics; this page only draws what it keeps).
import { el, formatMs } from "./common.js";

// Taken from markup: an xmlns attribute is the one place the UI's files may name a URL
// (tests/ui/test_routes.py checks that nothing is loaded from another origin).
const SVG_NS = new DOMParser().parseFromString('<svg xmlns="http://www.w3.org/2000/svg"/>', "image/svg+xml")
  .documentElement.namespaceURI;
const W = 300; // viewBox units; the SVG stretches to its box, lines keep 1.5 px (non-scaling)
const H = 60;
const SIDES = ["client", "function", "timeout"];

function svg(tag, attrs = {}) {
  const node = document.createElementNS(SVG_NS, tag);
  for (const [key, value] of Object.entries(attrs)) node.setAttribute(key, String(value));
  return node;
}

/** The last value in `values` that is not null, or null. */
export function latest(values) {
  for (let i = values.length - 1; i >= 0; i -= 1) if (values[i] !== null) return values[i];
  return null;
}

const sum = (values) => values.reduce((a, b) => a + b, 0);

/** Maps a sample time (Unix s) and a value to viewBox units; each sample covers the interval
 * before it, so a value is drawn from `t - interval` to `t`. */
class Scale {
  constructor(history, top) {
    this.end = history.now;
    this.span = history.window_s;
    this.interval = history.interval_s;
    this.top = top > 0 ? top : 1;
  }

  x(t) {
    return Math.min(W, Math.max(0, ((t - (this.end - this.span)) / this.span) * W));
  }

  y(v) {
    return H - (v / this.top) * (H - 2);
  }
}

/** A step line through the non-null values: one horizontal run per sample, joined where
 * samples follow each other, broken where a value is missing. */
function stepPath(scale, times, values) {
  let d = "";
  let joined = false;
  for (let i = 0; i < values.length; i += 1) {
    const v = values[i];
    if (v === null) {
      joined = false;
      continue;
    }
    const x0 = scale.x(times[i] - scale.interval).toFixed(1);
    const x1 = scale.x(times[i]).toFixed(1);
    const y = scale.y(v).toFixed(1);
    d += `${joined ? "L" : "M"}${x0} ${y}L${x1} ${y}`;
    joined = true;
  }
  return d;
}

/** One small chart: a caption with the figure now, the SVG, and its axis labels in HTML (text
 * inside a stretched SVG would be stretched too). */
function chart({ kind, title, now, scale, topLabel, legend, draw, label, data }) {
  const figure = el("figure", { class: "chart", "data-chart": kind });
  for (const [key, value] of Object.entries(data)) figure.setAttribute(`data-${key}`, String(value));
  const plot = svg("svg", { viewBox: `0 0 ${W} ${H}`, preserveAspectRatio: "none", role: "img", "aria-label": label });
  plot.append(svg("line", { class: "grid", x1: 0, y1: H - 0.5, x2: W, y2: H - 0.5, "vector-effect": "non-scaling-stroke" }));
  draw(plot);
  figure.append(
    el("figcaption", {}, el("span", { class: "chart-title" }, title), el("span", { class: "chart-now" }, now)),
    el("div", { class: "chart-plot" }, el("span", { class: "chart-top" }, topLabel), plot),
    el("div", { class: "chart-axis" }, el("span", {}, `−${Math.round(scale.span / 60)} min`), el("span", {}, "now")),
  );
  if (legend.length) {
    figure.append(el("div", { class: "chart-legend" }, ...legend.map(([cls, text]) => el("span", { class: `key ${cls}` }, text))));
  }
  return figure;
}

function openChart(history, series) {
  const top = Math.max(1, ...series.open);
  const scale = new Scale(history, top);
  const now = series.open.at(-1) ?? 0;
  return chart({
    kind: "open",
    title: "Open streams",
    now: `${now} now`,
    scale,
    topLabel: String(top),
    legend: [],
    label: `Open streams: ${now} now, at most ${top} in the window`,
    data: { now, max: top },
    draw: (plot) => plot.append(svg("path", { class: "line open", d: stepPath(scale, series.t, series.open), "vector-effect": "non-scaling-stroke" })),
  });
}

function ttfbChart(history, series) {
  const p50 = latest(series.ttfb_p50_s);
  const p99 = latest(series.ttfb_p99_s);
  const top = Math.max(0.001, ...series.ttfb_p99_s.filter((v) => v !== null), ...series.ttfb_p50_s.filter((v) => v !== null));
  const scale = new Scale(history, top);
  const shown = (v) => (v === null ? "–" : formatMs(v * 1000));
  return chart({
    kind: "ttfb",
    title: "Time to first byte",
    now: p50 === null ? "no streams" : `p50 ${shown(p50)} · p99 ${shown(p99)}`,
    scale,
    topLabel: formatMs(top * 1000),
    legend: [["p50", "p50"], ["p99", "p99"]],
    label: p50 === null ? "Time to first byte: no stream started in the window" : `Time to first byte, latest: p50 ${shown(p50)}, p99 ${shown(p99)}`,
    data: { p50: p50 ?? "", p99: p99 ?? "" },
    draw: (plot) => {
      for (const [cls, values] of [["p99", series.ttfb_p99_s], ["p50", series.ttfb_p50_s]]) {
        plot.append(svg("path", { class: `line ${cls}`, d: stepPath(scale, series.t, values), "vector-effect": "non-scaling-stroke" }));
      }
    },
  });
}

function disconnectsChart(history, series) {
  const per = series.disconnects;
  const stacked = series.t.map((_, i) => sum(SIDES.map((side) => per[side][i])));
  const top = Math.max(1, ...stacked);
  const scale = new Scale(history, top);
  const totals = Object.fromEntries(SIDES.map((side) => [side, sum(per[side])]));
  const text = SIDES.map((side) => `${side} ${totals[side]}`).join(" · ");
  return chart({
    kind: "disconnects",
    title: "Disconnects",
    now: `${sum(Object.values(totals))} in window`,
    scale,
    topLabel: `${top} per ${history.interval_s} s`,
    legend: SIDES.map((side) => [side, `${side} ${totals[side]}`]),
    label: `Disconnects in the window: ${text}`,
    data: totals,
    draw: (plot) => {
      series.t.forEach((t, i) => {
        const x0 = scale.x(t - scale.interval);
        const width = Math.max(scale.x(t) - x0, 1);
        let base = 0;
        for (const side of SIDES) {
          const n = per[side][i];
          if (!n) continue;
          const y = scale.y(base + n);
          plot.append(svg("rect", { class: `bar ${side}`, x: x0.toFixed(1), y: y.toFixed(1), width: width.toFixed(1), height: (scale.y(base) - y).toFixed(1) }));
          base += n;
        }
      });
    },
  });
}

/** The charts of every function with streams in the window, sorted by name. */
export function renderHistory(container, history) {
  container.replaceChildren(
    ...Object.entries(history.functions).map(([name, series]) =>
      el(
        "article",
        { class: "function-charts", "data-function": name },
        el("h3", {}, name),
        el("div", { class: "charts" }, openChart(history, series), ttfbChart(history, series), disconnectsChart(history, series)),
      ),
    ),
  );
  return Object.keys(history.functions).length;
}

/** Fetch and redraw every few seconds (as often as the gateway samples, 1–5 s), while the
 * page is visible. */
export function startStreamCharts({ container, empty, error, window: windowLabel }) {
  let timer = null;
  let delay = 5000;

  async function refresh() {
    clearTimeout(timer);
    try {
      const resp = await fetch("/system/stream-history", { headers: { Accept: "application/json" } });
      if (!resp.ok) throw new Error(`GET /system/stream-history: HTTP ${resp.status} ${(await resp.text()).trim()}`);
      const history = await resp.json();
      delay = Math.min(Math.max(history.interval_s, 1), 5) * 1000;
      const shown = renderHistory(container, history);
      empty.hidden = shown > 0;
      windowLabel.textContent = `last ${Math.round(history.window_s / 60)} minutes, every ${history.interval_s} s`;
      error.hidden = true;
    } catch (err) {
      error.textContent = `Could not load stream charts: ${err.message}`;
      error.hidden = false;
    }
    if (!document.hidden) timer = setTimeout(refresh, delay);
  }

  document.addEventListener("visibilitychange", () => {
    if (!document.hidden) refresh();
    else clearTimeout(timer);
  });
  refresh();
  return { refresh };
}
