// A trend-analysis result (node/cage/trend.py: [group,] period, rows, value,
// moving_average, change, slope, direction; ordered by group then period) as
// one line chart per group: the value and its moving average over the
// periods, the group's slope and direction in the legend.
import { el, tid } from "../app.js";
import { lineChart } from "../charts.js";

const ARROWS = { up: "↑ up", down: "↓ down", flat: "→ flat" };

/** Whether a result table has the trend columns (whatever the job type says). */
export function isTrendResult(result) {
  const names = (result.columns || []).map((c) => (Array.isArray(c) ? c[0] : c));
  return ["period", "value", "moving_average", "slope", "direction"].every((n) => names.includes(n));
}

function toNumber(cell) {
  if (cell === null || cell === undefined || cell === "") return null;
  const n = Number(cell);
  return Number.isFinite(n) ? n : null;
}

/** {group -> {periods, values, averages, slope, direction}} in the order of the rows. */
export function trendGroups(result) {
  const names = result.columns.map((c) => (Array.isArray(c) ? c[0] : c));
  const at = Object.fromEntries(names.map((n, i) => [n, i]));
  const groups = new Map();
  for (const row of result.rows || []) {
    const key = "group" in at ? row[at.group] : null;
    if (!groups.has(key)) groups.set(key, { periods: [], values: [], averages: [], slope: null, direction: null });
    const g = groups.get(key);
    g.periods.push(String(row[at.period]));
    g.values.push(toNumber(row[at.value]));
    g.averages.push(toNumber(row[at.moving_average]));
    g.slope = row[at.slope] ?? g.slope;
    g.direction = row[at.direction] ?? g.direction;
  }
  return groups;
}

export function trendCharts(result, params = {}) {
  const groups = trendGroups(result);
  const window = params.window ? ` (window ${params.window})` : "";
  const what = params.value_column ? `sum of ${params.value_column}` : "value";
  const charts = [];
  let k = 0;
  for (const [group, g] of groups) {
    const name = group === null ? "all rows" : String(group);
    const slope = g.slope === null ? "no slope (one period)" : `slope ${g.slope} per ${params.granularity || "day"}`;
    const direction = g.direction ? ARROWS[g.direction] || g.direction : "";
    const chart = lineChart({
      title: `${params.group_by ? `${params.group_by} = ` : ""}${name}: ${what} per ${params.granularity || "day"}`,
      labels: g.periods,
      yLabel: params.value_column || "value",
      testid: "trend-chart",
      series: [
        { name: `${name}: ${what}`, values: g.values, testid: "trend-series", data: { group: name }, color: undefined },
        { name: `${name}: moving average${window}`, values: g.averages, dashed: true, testid: "trend-average", data: { group: name } },
      ].map((s) => ({ ...s, color: ["#1f5fbf", "#b3401a", "#1d7a3a", "#7a3aa8", "#8a6a00", "#00707a"][k % 6] })),
      extraLegend: [tid("span", "trend-slope", { "data-group": name, "data-direction": g.direction ?? "" }, `${slope}${direction ? `, ${direction}` : ""}`)],
    });
    chart.dataset.group = name;
    charts.push(chart);
    k += 1;
  }
  if (!charts.length) return el("p", { class: "muted" }, "The result has no rows to chart.");
  return tid("div", "trend-charts", { class: "chart-grid" }, charts);
}
