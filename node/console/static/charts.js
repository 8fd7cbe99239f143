// Hand-written SVG charts: a line chart with several series, axes with ticks
// and a legend; a small bar chart for finality times. No library: the console
// ships offline and these two shapes are all it draws.

const SVG = "http://www.w3.org/2000/svg";

function svg(tag, attrs = {}, ...children) {
  const node = document.createElementNS(SVG, tag);
  for (const [key, value] of Object.entries(attrs)) {
    if (value !== undefined && value !== null) node.setAttribute(key, String(value));
  }
  for (const child of children) {
    if (child !== null && child !== undefined) node.append(child instanceof Node ? child : document.createTextNode(String(child)));
  }
  return node;
}

/** Round tick values covering [lo, hi]: 1, 2 or 5 times a power of ten apart. */
export function niceTicks(lo, hi, count = 5) {
  if (!Number.isFinite(lo) || !Number.isFinite(hi)) return [0, 1];
  if (lo === hi) {
    const pad = Math.abs(lo) > 0 ? Math.abs(lo) * 0.1 : 1;
    lo -= pad;
    hi += pad;
  }
  const raw = (hi - lo) / Math.max(1, count);
  const power = 10 ** Math.floor(Math.log10(raw));
  const step = [1, 2, 5, 10].map((m) => m * power).find((s) => s >= raw) ?? 10 * power;
  const first = Math.floor(lo / step) * step;
  const ticks = [];
  for (let v = first; v <= hi + step * 0.5; v += step) ticks.push(Number(v.toPrecision(12)));
  if (ticks[ticks.length - 1] < hi) ticks.push(Number((ticks[ticks.length - 1] + step).toPrecision(12)));
  return ticks;
}

function fmtTick(value) {
  const abs = Math.abs(value);
  if (abs >= 1e9) return `${(value / 1e9).toPrecision(3)}G`;
  if (abs >= 1e6) return `${(value / 1e6).toPrecision(3)}M`;
  if (abs >= 1e4) return `${(value / 1e3).toPrecision(3)}k`;
  return String(Number(value.toPrecision(6)));
}

export const PALETTE = ["#1f5fbf", "#b3401a", "#1d7a3a", "#7a3aa8", "#8a6a00", "#00707a"];

/**
 * A line chart. series: [{name, values: [number|null], color?, dashed?, testid?, data?}]
 * over shared x positions `labels` (strings: periods). `legend` items may add
 * text after a series' name (slope and direction for trends). Gaps (null)
 * break a line. Returns an <figure> holding the SVG and an HTML legend.
 */
export function lineChart({ title, labels, series, width = 640, height = 260, yLabel = "", testid = "line-chart", extraLegend = [] }) {
  const margin = { top: 12, right: 16, bottom: 40, left: 64 };
  const plotW = width - margin.left - margin.right;
  const plotH = height - margin.top - margin.bottom;
  const all = series.flatMap((s) => s.values.filter((v) => v !== null && Number.isFinite(v)));
  const ticks = all.length ? niceTicks(Math.min(...all), Math.max(...all)) : niceTicks(0, 1);
  const yMin = ticks[0];
  const yMax = ticks[ticks.length - 1];
  const n = labels.length;
  const x = (i) => margin.left + (n <= 1 ? plotW / 2 : (i * plotW) / (n - 1));
  const y = (v) => margin.top + plotH - ((v - yMin) / (yMax - yMin || 1)) * plotH;

  const root = svg("svg", {
    viewBox: `0 0 ${width} ${height}`, width: "100%", role: "img", "aria-label": title, class: "chart",
    preserveAspectRatio: "xMidYMid meet",
  }, svg("title", {}, title));

  // y axis: grid lines with value ticks
  const yAxis = svg("g", { class: "axis y-axis" });
  for (const t of ticks) {
    yAxis.append(svg("line", { x1: margin.left, x2: margin.left + plotW, y1: y(t), y2: y(t), class: "grid" }),
      svg("text", { x: margin.left - 6, y: y(t), "text-anchor": "end", "dominant-baseline": "middle" }, fmtTick(t)));
  }
  if (yLabel) {
    yAxis.append(svg("text", { x: 12, y: margin.top + plotH / 2, transform: `rotate(-90 12 ${margin.top + plotH / 2})`,
      "text-anchor": "middle", class: "axis-label" }, yLabel));
  }
  // x axis: at most ~8 labelled ticks, always the first and the last, none
  // overlapping: labels are ~6.5 units a character at the 11 px axis font.
  const xAxis = svg("g", { class: "axis x-axis" },
    svg("line", { x1: margin.left, x2: margin.left + plotW, y1: margin.top + plotH, y2: margin.top + plotH, class: "axis-line" }));
  const labelW = labels.reduce((w, l) => Math.max(w, String(l).length), 1) * 6.5 + 8;
  const step = n > 1 ? plotW / (n - 1) : plotW;
  const every = Math.max(1, Math.ceil(n / 8), Math.ceil(labelW / step));
  labels.forEach((label, i) => {
    if (i % every !== 0 && i !== n - 1) return;
    // the end labels are anchored inwards, so a middle label needs a label and a half of room from them
    if (i !== 0 && i !== n - 1 && (i * step < 1.5 * labelW || (n - 1 - i) * step < 1.5 * labelW)) return;
    xAxis.append(svg("line", { x1: x(i), x2: x(i), y1: margin.top + plotH, y2: margin.top + plotH + 5, class: "tick" }),
      // the end labels are anchored inwards so they are not cut at the edges
      svg("text", { x: x(i), y: margin.top + plotH + 18, "text-anchor": n > 1 && i === n - 1 ? "end" : n > 1 && i === 0 ? "start" : "middle" }, label));
  });
  root.append(yAxis, xAxis);

  series.forEach((s, k) => {
    const color = s.color || PALETTE[k % PALETTE.length];
    let d = "";
    let pen = false;
    s.values.forEach((v, i) => {
      if (v === null || !Number.isFinite(v)) {
        pen = false;
        return;
      }
      d += `${pen ? "L" : "M"}${x(i).toFixed(1)},${y(v).toFixed(1)}`;
      pen = true;
    });
    const path = svg("path", {
      d, fill: "none", stroke: color, "stroke-width": s.dashed ? 2 : 2.5, "stroke-dasharray": s.dashed ? "6 4" : null,
      class: "series", "data-testid": s.testid || "chart-series", "data-series": s.name,
    }, svg("title", {}, s.name));
    for (const [key, value] of Object.entries(s.data || {})) path.dataset[key] = value;
    root.append(path);
    // points: visible markers (a lone value would draw no line) with values in their titles
    if (!s.dashed) {
      s.values.forEach((v, i) => {
        if (v === null || !Number.isFinite(v)) return;
        root.append(svg("circle", { cx: x(i), cy: y(v), r: 3, fill: color, class: "point" },
          svg("title", {}, `${s.name} ${labels[i]}: ${v}`)));
      });
    }
  });

  const legend = document.createElement("ul");
  legend.className = "legend";
  legend.dataset.testid = "chart-legend";
  series.forEach((s, k) => {
    const item = document.createElement("li");
    const swatch = document.createElement("span");
    swatch.className = s.dashed ? "swatch dashed" : "swatch";
    swatch.style.borderColor = s.color || PALETTE[k % PALETTE.length];
    swatch.setAttribute("aria-hidden", "true");
    item.append(swatch, s.name);
    legend.append(item);
  });
  for (const text of extraLegend) {
    const item = document.createElement("li");
    item.className = "legend-note";
    item.append(text);
    legend.append(item);
  }
  const figure = document.createElement("figure");
  figure.className = "chart-figure";
  figure.dataset.testid = testid;
  const caption = document.createElement("figcaption");
  caption.textContent = title;
  figure.append(caption, root, legend);
  return figure;
}

/**
 * Small bars, one per value (finality time of a block): labels under the
 * first and last bars, the largest value on the axis, each bar titled.
 */
export function barChart({ title, values, labels, unit = "ms", format = null, width = 480, height = 120, testid = "bar-chart" }) {
  const margin = { top: 10, right: 8, bottom: 22, left: 56 };
  const show = format || ((v) => `${fmtTick(v)} ${unit}`);
  const plotW = width - margin.left - margin.right;
  const plotH = height - margin.top - margin.bottom;
  const max = Math.max(1, ...values.filter(Number.isFinite));
  const top = niceTicks(0, max, 2);
  const yMax = top[top.length - 1];
  const slot = plotW / Math.max(1, values.length);
  const root = svg("svg", { viewBox: `0 0 ${width} ${height}`, width: "100%", role: "img", "aria-label": title, class: "chart bars" },
    svg("title", {}, title));
  root.append(
    svg("line", { x1: margin.left, x2: margin.left + plotW, y1: margin.top + plotH, y2: margin.top + plotH, class: "axis-line" }),
    svg("line", { x1: margin.left, x2: margin.left + plotW, y1: margin.top, y2: margin.top, class: "grid" }),
    svg("text", { x: margin.left - 6, y: margin.top, "text-anchor": "end", "dominant-baseline": "middle", class: "axis" }, show(yMax)),
    svg("text", { x: margin.left - 6, y: margin.top + plotH, "text-anchor": "end", "dominant-baseline": "middle", class: "axis" }, "0"),
  );
  values.forEach((v, i) => {
    const h = Number.isFinite(v) ? (v / yMax) * plotH : 0;
    root.append(svg("rect", {
      x: margin.left + i * slot + slot * 0.15, y: margin.top + plotH - h, width: Math.max(1, slot * 0.7), height: h,
      class: "bar", "data-testid": "finality-bar",
    }, svg("title", {}, `${labels[i]}: ${show(v)}`)));
  });
  if (values.length) {
    root.append(svg("text", { x: margin.left + slot / 2, y: height - 6, "text-anchor": "start", class: "axis" }, labels[0]),
      svg("text", { x: margin.left + plotW, y: height - 6, "text-anchor": "end", class: "axis" }, labels[labels.length - 1]));
  }
  const figure = document.createElement("figure");
  figure.className = "chart-figure small";
  figure.dataset.testid = testid;
  const caption = document.createElement("figcaption");
  caption.textContent = title;
  figure.append(caption, root);
  return figure;
}
