// Jobs: the tenant's jobs (state, elapsed time), and one job's page: its
// timeline with the late nodes marked, the result as a sortable table, a
// chart per group for trend analyses, downloads and a link to its receipts.
// `job` events change a state in place; the job page fetches itself again
// on an event for its job, so submitted -> verified shows without a reload.
import { api, code, el, errorBox, fmtDuration, fmtNumber, sortableTable, tabs, tid } from "../app.js";
import { isTrendResult, trendCharts } from "./trend.js";

const FINISHED = new Set(["verified", "disputed", "failed", "cancelled"]);

/** Chain time: the head height and the mean block interval, kept current by block events. */
function chainClock(ctx) {
  const clock = { height: null, timestamp: null, interval: null, onChange: null };
  api("/api/blocks?limit=20").then((answer) => {
    const blocks = answer.blocks || [];
    if (blocks.length && (clock.height === null || blocks[0].height > clock.height)) { // answers may cross events: never go back
      clock.height = blocks[0].height;
      clock.timestamp = blocks[0].timestamp_ms;
    }
    if (blocks.length > 1) {
      clock.interval = (blocks[0].timestamp_ms - blocks[blocks.length - 1].timestamp_ms) / (blocks[0].height - blocks[blocks.length - 1].height);
    }
    if (clock.onChange) clock.onChange();
  }, () => {});
  ctx.on("block", (block) => {
    if (clock.height !== null && block.height <= clock.height) return;
    clock.height = block.height;
    clock.timestamp = block.timestamp_ms;
    if (clock.onChange) clock.onChange();
  });
  return clock;
}

/** "12 blocks ≈ 24 s": jobs are timed in blocks on chain; seconds from the mean block interval. */
function elapsed(job, clock) {
  if (typeof job.submitted_height !== "number") return "–";
  const head = Math.max(clock.height ?? -1, job.height ?? -1);
  const end = typeof job.finished_height === "number" ? job.finished_height : head >= 0 ? head : null;
  if (typeof end !== "number") return "–";
  const blocks = Math.max(0, end - job.submitted_height);
  const seconds = clock.interval ? ` ≈ ${fmtDuration(blocks * clock.interval)}` : "";
  return `${blocks} block${blocks === 1 ? "" : "s"}${seconds}${FINISHED.has(job.state) ? "" : " so far"}`;
}

function stateBadge(state) {
  return tid("span", "job-state", { class: `state state-${state}` }, state);
}

// ---------------------------------------------------------------- the list

async function listPage(main, ctx) {
  const clock = chainClock(ctx);
  const tbody = el("tbody");
  const note = el("p", { class: "muted", role: "status", "aria-live": "polite", "data-testid": "jobs-status" });
  main.replaceChildren(el("h1", {}, "Jobs"), note,
    el("div", { class: "table-wrap", tabindex: "0", role: "region", "aria-label": "Jobs" },
      tid("table", "job-table", { class: "data" }, el("caption", {}, "Your jobs, newest first"),
        el("thead", {}, el("tr", {}, ["job", "type", "state", "submitted at", "elapsed", "inputs"]
          .map((h) => el("th", { scope: "col" }, h)))), tbody)));
  let jobs = [];
  const rows = new Map();
  function row(job) {
    return tid("tr", "job-row", { "data-job": job.id, "data-state": job.state },
      el("th", { scope: "row" }, el("a", { href: `#/jobs/${job.id}`, "data-testid": "job-link", title: job.id }, job.id.slice(0, 12))),
      el("td", {}, job.type || "–"),
      el("td", {}, stateBadge(job.state), job.reason ? el("div", { class: "muted small" }, job.reason) : null),
      el("td", { class: "num" }, typeof job.submitted_height === "number" ? `#${job.submitted_height}` : "–"),
      tid("td", "job-elapsed", {}, elapsed(job, clock)),
      el("td", {}, Object.keys(job.inputs || {}).join(", ") || "–"));
  }
  function draw() {
    rows.clear();
    tbody.replaceChildren(...jobs.map((job) => {
      const r = row(job);
      rows.set(job.id, r);
      return r;
    }));
    if (!jobs.length) note.textContent = "No jobs yet: submit one with `metanode analytics submit`.";
  }
  async function load() {
    const answer = await api("/api/jobs");
    jobs = answer.jobs || [];
    if (typeof answer.height === "number" && (clock.height === null || answer.height > clock.height)) clock.height = answer.height;
    if (ctx.alive) draw();
  }
  clock.onChange = () => {
    for (const job of jobs) {
      const r = rows.get(job.id);
      if (r) r.querySelector("[data-testid=job-elapsed]").textContent = elapsed(job, clock);
    }
  };
  ctx.on("job", async (event) => {
    const job = jobs.find((j) => j.id === event.id);
    if (!job) {
      note.textContent = `New job ${event.id.slice(0, 12)}.`;
      await load().catch(() => {});
      return;
    }
    job.state = event.state;
    if (FINISHED.has(event.state) && typeof job.finished_height !== "number" && clock.height !== null) job.finished_height = clock.height;
    const fresh = row(job);
    rows.get(job.id).replaceWith(fresh);
    rows.set(job.id, fresh);
    note.textContent = `Job ${event.id.slice(0, 12)} is ${event.state}.`;
  });
  try {
    await load();
  } catch (exc) {
    main.append(errorBox(exc.message));
  }
}

// ---------------------------------------------------------------- one job

/** The timeline the server gives, or one built from the job's own fields. */
function timelineOf(job) {
  if (Array.isArray(job.timeline)) return job.timeline;
  const events = [{ event: "submitted", height: job.submitted_height }];
  if (job.scheduled_height !== null && job.scheduled_height !== undefined) events.push({ event: "scheduled", height: job.scheduled_height });
  for (const a of job.assignments || []) events.push({ event: "assigned", height: a.assigned_height, node: a.peer_id, detail: { attempt: a.attempt, deadline: a.deadline, status: a.status } });
  for (const r of job.results || []) events.push({ event: "result", height: r.height, node: r.peer_id, detail: { result: r.result, exit: r.exit, error: r.error } });
  if (FINISHED.has(job.state)) events.push({ event: job.state, height: job.finished_height, detail: { reason: job.reason } });
  return events.filter((e) => e.height !== null && e.height !== undefined).sort((a, b) => a.height - b.height);
}

/** A timeline entry's detail in words: "attempt 1, deadline 40, status pending", hashes shortened, nulls left out. */
function detailText(detail) {
  if (detail === null || detail === undefined) return "";
  if (typeof detail !== "object") return String(detail);
  return Object.entries(detail)
    .filter(([, v]) => v !== null && v !== undefined && v !== "")
    .map(([k, v]) => `${k} ${typeof v === "string" && /^[0-9a-f]{40,}$/.test(v) ? `${v.slice(0, 10)}…` : typeof v === "object" ? JSON.stringify(v) : v}`)
    .join(", ");
}

function timelineView(job) {
  const late = new Set(job.late || []);
  const events = timelineOf(job);
  if (!events.length) return el("p", { class: "muted" }, "Nothing has happened to this job yet.");
  return el("div", {},
    late.size ? tid("p", "late-nodes", { class: "warn" }, `Late: ${[...late].join(", ")} (assigned; its result is overdue or missing while others delivered).`) : null,
    tid("ol", "job-timeline", { class: "timeline" }, events.map((e) => {
      const isLate = e.node && late.has(e.node);
      return tid("li", "timeline-event", { class: isLate ? "late" : "", "data-event": e.event, "data-late": isLate ? "true" : "false" },
        el("span", { class: "tl-height" }, typeof e.height === "number" ? `#${e.height}` : "…"),
        el("strong", {}, e.event),
        e.node ? [" ", code(e.node, 8)] : null,
        isLate ? el("span", { class: "tag late-tag" }, "late") : null,
        detailText(e.detail) ? el("span", { class: "muted" }, ` ${detailText(e.detail)}`) : null);
    })));
}

function downloads(id) {
  return tid("p", "downloads", { class: "downloads" }, "Download the result: ",
    ["csv", "json", "parquet"].map((fmt) => [el("a", { href: `/api/jobs/${id}/result.${fmt}`, download: `${id.slice(0, 12)}.${fmt}`, "data-testid": `download-${fmt}` }, fmt.toUpperCase()), " "]));
}

async function resultViews(job) {
  if (job.state !== "verified") {
    return { table: el("p", { class: "muted", "data-testid": "result-pending" }, FINISHED.has(job.state)
      ? `No result: the job is ${job.state}${job.reason ? ` (${job.reason})` : ""}.` : `The result shows here once the job is verified (now ${job.state}).`), chart: null };
  }
  let result;
  try {
    result = await api(`/api/jobs/${job.id}/result`);
  } catch (exc) {
    return { table: errorBox(exc.message), chart: null };
  }
  const table = el("div", {},
    tid("p", "result-digest", { class: "small" }, `${fmtNumber(result.row_count ?? result.rows.length)} rows, digest `, el("code", {}, result.result_digest || "–"),
      result.computed_by ? `, computed by ${result.computed_by.length} nodes` : ""),
    downloads(job.id),
    sortableTable({ columns: result.columns, rows: result.rows, caption: "Result (select a column header to sort)" }));
  const trend = job.type === "trend-analysis" || result.type === "trend-analysis" || isTrendResult(result);
  return { table, chart: trend && isTrendResult(result) ? trendCharts(result, result.params || job.params || {}) : null };
}

async function jobPage(main, id, ctx) {
  if (!/^[0-9a-f]{64}$/.test(id)) {
    main.replaceChildren(el("h1", {}, "Job"), errorBox(`"${id}" is not a job id (64 hex digits).`));
    return;
  }
  const clock = chainClock(ctx);
  const heading = el("h1", {}, "Job ", el("code", { title: id }, id.slice(0, 12)));
  const body = el("div", { "aria-live": "polite" });
  main.replaceChildren(heading, body);
  let shownState = null;
  let lastSeen = null;
  let drawing = null;
  async function draw() {
    let job;
    try {
      job = await api(`/api/jobs/${id}`);
    } catch (exc) {
      body.replaceChildren(errorBox(exc.message));
      return;
    }
    if (!ctx.alive) return;
    const seen = JSON.stringify(job);
    if (seen === lastSeen) return; // nothing new: keep the page (and the reader's tab and focus) as it is
    lastSeen = seen;
    const selected = body.querySelector("[role=tab][aria-selected=true]")?.id?.replace(/^tab-/, "");
    const summary = tid("dl", "job-summary", { class: "fields" },
      el("dt", {}, "state"), el("dd", {}, stateBadge(job.state), job.reason ? ` ${job.reason}` : ""),
      el("dt", {}, "type"), el("dd", {}, job.type || "–"),
      el("dt", {}, "elapsed"), tid("dd", "job-elapsed", {}, elapsed(job, clock)),
      el("dt", {}, "id"), el("dd", {}, el("code", {}, job.id)),
      el("dt", {}, "params"), el("dd", {}, el("code", {}, JSON.stringify(job.params ?? {}))),
      el("dt", {}, "inputs"), el("dd", {}, Object.entries(job.inputs || {}).map(([n, d]) => el("div", {}, `${n}: `, code(d, 10)))),
      el("dt", {}, "replication"), el("dd", {}, `${job.replication ?? "–"} nodes, attempt ${job.attempt ?? "–"}`),
      el("dt", {}, "receipts"), el("dd", {}, el("a", { href: `#/receipts/${job.id}`, "data-testid": "receipts-link" }, "Verify this job's receipts in the browser")));
    const { table, chart } = await resultViews(job);
    if (!ctx.alive) return;
    const panels = [{ id: "timeline", label: "Timeline", content: timelineView(job) }, { id: "result", label: "Result", content: table }];
    if (chart) panels.splice(1, 0, { id: "chart", label: "Trend chart", content: chart });
    shownState = job.state;
    body.replaceChildren(summary, tabs("Job views", panels, selected));
    clock.onChange = () => {
      const cell = body.querySelector("[data-testid=job-elapsed]");
      if (cell) cell.textContent = elapsed(job, clock);
    };
  }
  // Redraw on this job's events; one draw at a time, the last event wins.
  let again = false;
  async function redraw() {
    if (drawing) {
      again = true;
      return;
    }
    drawing = draw();
    await drawing;
    drawing = null;
    if (again && ctx.alive) {
      again = false;
      await redraw();
    }
  }
  ctx.on("job", (event) => {
    if (event.id === id && event.state !== shownState) redraw();
  });
  ctx.on("block", () => {
    // A job that is not finished changes assignments and results with blocks
    // too (a late node shows up without a state change): look again then.
    if (shownState !== null && !FINISHED.has(shownState)) redraw();
  });
  await redraw();
}

export async function render(main, args, ctx) {
  if (args.length) await jobPage(main, args[0], ctx);
  else await listPage(main, ctx);
}
