// The console's shell: hash router, JSON API helpers, the one EventSource on
// /api/events that every page shares, and small DOM helpers the pages use.
//
// Why one EventSource: each open page would otherwise hold its own stream, and
// a browser allows only six HTTP/1.1 connections per host; the pages subscribe
// to this bus instead and their listeners are dropped when the route changes.

const PAGES = {
  cluster: () => import("./pages/cluster.js"),
  chain: () => import("./pages/chain.js"),
  jobs: () => import("./pages/jobs.js"),
  datasets: () => import("./pages/datasets.js"),
  receipts: () => import("./pages/receipts.js"),
  audit: () => import("./pages/audit.js"),
};

// ---------------------------------------------------------------- API helpers

/** An API answer that was an error: `message` is the server's words. */
export class ApiError extends Error {
  constructor(status, message, code) {
    super(message);
    this.status = status;
    this.code = code ?? null;
  }
}

function errorText(status, body) {
  const err = body && body.error;
  if (typeof err === "string") return err;
  if (err && typeof err.message === "string") return err.message;
  if (status === 401) return "not signed in: open the URL the console printed (it carries the token)";
  return `the console answered HTTP ${status}`;
}

/** fetch + JSON + the contract's error shape, as one call. */
export async function api(path, options = {}) {
  let response;
  try {
    response = await fetch(path, { credentials: "same-origin", ...options });
  } catch (exc) {
    throw new ApiError(0, `the console server cannot be reached (${exc.message}); is \`metanode console\` still running?`);
  }
  let body = null;
  const text = await response.text();
  if (text) {
    try {
      body = JSON.parse(text);
    } catch {
      body = null;
    }
  }
  if (!response.ok) {
    const err = body && body.error;
    throw new ApiError(response.status, errorText(response.status, body), err && typeof err === "object" ? err.code : null);
  }
  return body;
}

export function postJson(path, value) {
  return api(path, { method: "POST", headers: { "Content-Type": "application/json" }, body: JSON.stringify(value) });
}

let sessionPromise = null;
/** /api/session, asked once per page load (it does not change while the console runs). */
export function session() {
  if (!sessionPromise) {
    sessionPromise = api("/api/session").catch((exc) => {
      sessionPromise = null;
      throw exc;
    });
  }
  return sessionPromise;
}

// ---------------------------------------------------------------- live events

const listeners = { block: new Set(), job: new Set(), upload: new Set() };
let source = null;

function setLiveState(state, words) {
  const badge = document.getElementById("live-state");
  if (!badge) return;
  badge.dataset.state = state;
  badge.textContent = words;
}

function openEvents() {
  if (source || typeof EventSource === "undefined") return;
  source = new EventSource("/api/events");
  source.addEventListener("open", () => setLiveState("live", "live"));
  // EventSource reconnects by itself; say so rather than hide it.
  source.addEventListener("error", () => setLiveState("down", "reconnecting…"));
  for (const kind of Object.keys(listeners)) {
    source.addEventListener(kind, (message) => {
      let data;
      try {
        data = JSON.parse(message.data);
      } catch {
        return; // not JSON: nothing a page could use
      }
      for (const listener of [...listeners[kind]]) {
        try {
          listener(data);
        } catch (exc) {
          console.error(`a ${kind} listener failed`, exc);
        }
      }
    });
  }
}

/** The page context: `on(kind, fn)` subscriptions end when the page is left. */
function pageContext() {
  const owned = [];
  let alive = true;
  return {
    on(kind, fn) {
      listeners[kind].add(fn);
      owned.push([kind, fn]);
    },
    get alive() {
      return alive;
    },
    dispose() {
      alive = false;
      for (const [kind, fn] of owned) listeners[kind].delete(fn);
    },
  };
}

// ---------------------------------------------------------------- DOM helpers

/** el("td", {class: "x", dataset: {testid: "y"}}, child, "text", ...) */
export function el(tag, attrs = {}, ...children) {
  const node = document.createElement(tag);
  for (const [key, value] of Object.entries(attrs || {})) {
    if (value === undefined || value === null || value === false) continue;
    if (key === "dataset") Object.assign(node.dataset, value);
    else if (key === "text") node.textContent = value;
    else if (key.startsWith("on") && typeof value === "function") node.addEventListener(key.slice(2), value);
    else node.setAttribute(key, value === true ? "" : String(value));
  }
  for (const child of children.flat(Infinity)) {
    if (child === null || child === undefined || child === false) continue;
    node.append(child instanceof Node ? child : document.createTextNode(String(child)));
  }
  return node;
}

/** A testid'd element: tid("td", "job-state", {...}, children). */
export function tid(tag, testid, attrs = {}, ...children) {
  return el(tag, { ...attrs, "data-testid": testid }, ...children);
}

export function errorBox(message) {
  return el("p", { class: "error", role: "alert", "data-testid": "error" }, message);
}

export function loading(what) {
  return el("p", { class: "muted", role: "status" }, `Loading ${what}…`);
}

export function short(hex, keep = 10) {
  if (typeof hex !== "string" || hex.length <= keep * 2 + 1) return hex ?? "";
  return `${hex.slice(0, keep)}…${hex.slice(-4)}`;
}

/** A long identifier shown short, whole in its title and copyable text. */
export function code(hex, keep = 10) {
  return el("code", { title: hex ?? "", class: "ident" }, short(hex, keep));
}

export function fmtNumber(value) {
  if (value === null || value === undefined) return "–";
  return typeof value === "number" ? value.toLocaleString("en-US") : String(value);
}

export function fmtBytes(value) {
  if (typeof value !== "number") return "–";
  const units = ["B", "KiB", "MiB", "GiB", "TiB"];
  let size = value;
  let unit = 0;
  while (size >= 1024 && unit < units.length - 1) {
    size /= 1024;
    unit += 1;
  }
  return unit === 0 ? `${value} B` : `${size.toFixed(1)} ${units[unit]}`;
}

export function fmtDuration(ms) {
  if (typeof ms !== "number" || !Number.isFinite(ms)) return "–";
  if (ms < 1000) return `${Math.round(ms)} ms`;
  const s = ms / 1000;
  if (s < 60) return `${s.toFixed(s < 10 ? 1 : 0)} s`;
  const m = Math.floor(s / 60);
  if (m < 60) return `${m} min ${Math.round(s % 60)} s`;
  return `${Math.floor(m / 60)} h ${m % 60} min`;
}

export function fmtTime(ms) {
  if (typeof ms !== "number") return "–";
  return new Date(ms).toISOString().replace("T", " ").replace(/\.\d+Z$/, "Z");
}

export function hexToBytes(hex) {
  if (typeof hex !== "string" || hex.length % 2 || /[^0-9a-fA-F]/.test(hex)) {
    throw new Error("not a hex string");
  }
  const out = new Uint8Array(hex.length / 2);
  for (let i = 0; i < out.length; i += 1) out[i] = parseInt(hex.slice(2 * i, 2 * i + 2), 16);
  return out;
}

// libp2p peer id of an Ed25519 public key: base58btc of the identity multihash
// of the protobuf PublicKey {Type: Ed25519 (1), Data: key}. Blocks name their
// proposer by key; the mesh and the jobs name nodes by peer id: one spelling.
const B58 = "123456789ABCDEFGHJKLMNPQRSTUVWXYZabcdefghijkmnopqrstuvwxyz";

function base58(bytes) {
  let zeros = 0;
  while (zeros < bytes.length && bytes[zeros] === 0) zeros += 1;
  const digits = [];
  for (const byte of bytes) {
    let carry = byte;
    for (let i = 0; i < digits.length; i += 1) {
      carry += digits[i] << 8;
      digits[i] = carry % 58;
      carry = Math.floor(carry / 58);
    }
    while (carry) {
      digits.push(carry % 58);
      carry = Math.floor(carry / 58);
    }
  }
  return "1".repeat(zeros) + digits.reverse().map((d) => B58[d]).join("");
}

export function peerIdOfKey(hex) {
  try {
    const key = hexToBytes(hex);
    if (key.length !== 32) return hex;
    const proto = new Uint8Array([0x08, 0x01, 0x12, 0x20, ...key]);
    return base58(new Uint8Array([0x00, proto.length, ...proto]));
  } catch {
    return hex;
  }
}

// ---------------------------------------------------------------- sortable table

const NUMERIC = /^(U?(TINYINT|SMALLINT|INTEGER|BIGINT|HUGEINT)|FLOAT|DOUBLE|REAL|DECIMAL.*|NUMERIC.*|INT.*)$/i;

function compareCells(a, b, numeric) {
  if (a === null || a === undefined) return b === null || b === undefined ? 0 : -1;
  if (b === null || b === undefined) return 1;
  if (numeric) {
    const x = Number(a);
    const y = Number(b);
    if (!Number.isNaN(x) && !Number.isNaN(y)) return x - y;
  }
  return String(a).localeCompare(String(b), "en", { numeric: true });
}

/**
 * A table whose headers sort it (click, Enter or Space on the header's
 * button; aria-sort says the order). columns: [{name, type?}] or names;
 * rows: arrays of cells. `rowTestid` names each body row for the tests.
 */
export function sortableTable({ columns, rows, caption, rowTestid = "result-row", testid = "result-table" }) {
  const cols = columns.map((c) => (Array.isArray(c) ? { name: c[0], type: c[1] } : typeof c === "string" ? { name: c } : c));
  const numeric = cols.map((c, i) =>
    c.type ? NUMERIC.test(c.type) : rows.length > 0 && rows.every((r) => r[i] === null || typeof r[i] === "number"));
  const tbody = el("tbody");
  const order = { column: -1, ascending: true };
  const heads = cols.map((c, i) => {
    const button = el("button", { type: "button", class: "sort", onclick: () => sortBy(i) }, c.name,
      el("span", { class: "sort-mark", "aria-hidden": "true" }, ""));
    return el("th", { scope: "col", class: numeric[i] ? "num" : "", title: c.type || "" }, button);
  });
  function fill(list) {
    tbody.replaceChildren(...list.map((row) => tid("tr", rowTestid, {},
      row.map((cell, i) => el("td", { class: numeric[i] ? "num" : "" }, cell === null || cell === undefined ? el("span", { class: "null" }, "NULL") : String(cell))))));
  }
  function sortBy(i) {
    order.ascending = order.column === i ? !order.ascending : true;
    order.column = i;
    const sorted = rows.map((r, k) => [r, k]).sort(([a, ka], [b, kb]) =>
      (compareCells(a[i], b[i], numeric[i]) || ka - kb) * (order.ascending ? 1 : -1));
    fill(sorted.map(([r]) => r));
    heads.forEach((th, k) => {
      if (k === i) th.setAttribute("aria-sort", order.ascending ? "ascending" : "descending");
      else th.removeAttribute("aria-sort");
      th.querySelector(".sort-mark").textContent = k === i ? (order.ascending ? " ▲" : " ▼") : "";
    });
  }
  fill(rows);
  const table = tid("table", testid, { class: "data" },
    caption ? el("caption", {}, caption) : null, el("thead", {}, el("tr", {}, heads)), tbody);
  return el("div", { class: "table-wrap", tabindex: "0", role: "region", "aria-label": caption || "table" }, table);
}

// ---------------------------------------------------------------- tabs

/** ARIA tabs: arrow keys, Home and End move between tabs; panels are built lazily. */
export function tabs(label, items, selectedId = null) {
  const list = el("div", { role: "tablist", "aria-label": label, class: "tabs" });
  const panels = el("div", { class: "tab-panels" });
  const buttons = items.map((item, i) => {
    const id = `tab-${item.id}`;
    const button = el("button", {
      type: "button", role: "tab", id, "aria-controls": `panel-${item.id}`, "aria-selected": i === 0 ? "true" : "false",
      tabindex: i === 0 ? "0" : "-1", "data-testid": `tab-${item.id}`,
    }, item.label);
    const panel = el("div", { role: "tabpanel", id: `panel-${item.id}`, "aria-labelledby": id, tabindex: "0", class: "tab-panel" });
    panel.hidden = i !== 0;
    panel.append(item.content);
    panels.append(panel);
    button.addEventListener("click", () => select(i));
    button.addEventListener("keydown", (event) => {
      const last = items.length - 1;
      const next = { ArrowRight: i === last ? 0 : i + 1, ArrowLeft: i === 0 ? last : i - 1, Home: 0, End: last }[event.key];
      if (next !== undefined) {
        event.preventDefault();
        select(next);
        buttons[next].focus();
      }
    });
    return button;
  });
  function select(index) {
    buttons.forEach((b, k) => {
      b.setAttribute("aria-selected", k === index ? "true" : "false");
      b.tabIndex = k === index ? 0 : -1;
    });
    [...panels.children].forEach((p, k) => {
      p.hidden = k !== index;
    });
  }
  list.append(...buttons);
  const initial = items.findIndex((item) => item.id === selectedId);
  if (initial > 0) select(initial);
  return el("div", { class: "tabbed" }, list, panels);
}

// ---------------------------------------------------------------- router

let current = null;

export function parseRoute(hash) {
  const parts = (hash || "").replace(/^#\/?/, "").split("/").filter(Boolean).map(decodeURIComponent);
  const page = parts[0] && PAGES[parts[0]] ? parts[0] : "cluster";
  return { page, args: parts[0] === page ? parts.slice(1) : [] };
}

async function route() {
  const { page, args } = parseRoute(location.hash);
  if (current) current.dispose();
  const ctx = pageContext();
  current = ctx;
  for (const link of document.querySelectorAll("nav a[data-page]")) {
    if (link.dataset.page === page) link.setAttribute("aria-current", "page");
    else link.removeAttribute("aria-current");
  }
  const main = document.getElementById("main");
  main.replaceChildren(loading("the page"));
  main.dataset.page = page;
  main.setAttribute("aria-busy", "true");
  try {
    const module = await PAGES[page]();
    if (!ctx.alive) return;
    await module.render(main, args, ctx);
  } catch (exc) {
    if (!ctx.alive) return;
    main.replaceChildren(el("h1", { tabindex: "-1" }, "Something went wrong"), errorBox(exc.message || String(exc)));
  } finally {
    if (ctx.alive) {
      main.removeAttribute("aria-busy");
      main.dataset.ready = "true";
      // Move focus to the new page's heading so keyboard and screen-reader
      // users land on the content, not at the top of the nav again.
      const heading = main.querySelector("h1");
      if (heading && route.fromNavigation) {
        heading.setAttribute("tabindex", "-1");
        heading.focus({ preventScroll: false });
      }
    }
  }
}

export function start() {
  // The skip link focuses the page body; its href is only a fallback (no
  // inline handlers: the server's Content-Security-Policy allows none).
  document.getElementById("skip")?.addEventListener("click", (event) => {
    event.preventDefault();
    document.getElementById("main").focus();
  });
  openEvents();
  window.addEventListener("hashchange", () => {
    route.fromNavigation = true;
    document.getElementById("main").dataset.ready = "false";
    route();
  });
  route.fromNavigation = false;
  route();
  session().then((s) => {
    const who = document.getElementById("who");
    if (who) {
      who.textContent = `${s.chain_id ?? "?"} · tenant ${short(s.tenant, 6)}`;
      who.title = `node ${s.node}\ntenant ${s.tenant}\ngenesis ${s.genesis_hash}`;
    }
  }, () => {});
}

// index.html loads this module as its only script (no inline script: CSP);
// the pages import it too, and a module runs once, so this starts the app once.
if (typeof document !== "undefined" && document.getElementById("main")) start();
