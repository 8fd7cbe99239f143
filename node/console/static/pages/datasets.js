// Datasets: the tenant's registrations (name, versions, schema, rows, bytes,
// digest) and an upload: drop a file on the zone or pick it with the file
// input (the keyboard way), name it, send it. The body goes in one POST; the
// progress bar follows the server's `upload` events (bytes of total stored).
import { api, code, el, errorBox, fmtBytes, fmtNumber, tid } from "../app.js";

const FORMATS = ["csv", "parquet", "jsonl"];

function guessFormat(fileName) {
  const lower = fileName.toLowerCase();
  if (lower.endsWith(".parquet")) return "parquet";
  if (lower.endsWith(".jsonl") || lower.endsWith(".ndjson")) return "jsonl";
  return "csv";
}

function baseName(fileName) {
  return fileName.replace(/\.[^.]*$/, "").replace(/[^A-Za-z0-9_.-]+/g, "-").replace(/^[^A-Za-z0-9]+/, "") || "dataset";
}

function schemaOf(row) {
  const columns = row.columns || row.schema;
  if (!Array.isArray(columns)) return el("span", { class: "muted" }, "not in this node's catalog");
  return el("ul", { class: "schema" }, columns.map((c) => {
    const [name, type] = Array.isArray(c) ? c : [c.name, c.type];
    return el("li", {}, el("code", {}, name), " ", el("span", { class: "muted" }, type));
  }));
}

function datasetRow(row) {
  const version = row.version === null || row.version === undefined ? "unregistered" : `v${row.version}${row.latest ? " (latest)" : ""}`;
  return tid("tr", "dataset-row", { "data-name": row.name ?? "", "data-digest": row.digest },
    el("th", { scope: "row" }, row.name || el("span", { class: "muted" }, "(no name)")),
    tid("td", "dataset-version", {}, version),
    el("td", {}, row.format || "–"),
    el("td", {}, schemaOf(row)),
    tid("td", "dataset-rows", { class: "num" }, fmtNumber(row.row_count)),
    tid("td", "dataset-bytes", { class: "num", title: row.size === undefined ? "" : `${row.size} bytes` }, fmtBytes(row.size)),
    el("td", {}, code(row.digest, 10)));
}

function uploadForm(onUploaded, ctx) {
  const input = el("input", { type: "file", id: "upload-file", accept: ".csv,.parquet,.jsonl,.ndjson", "data-testid": "upload-file" });
  const name = el("input", { type: "text", id: "upload-name", required: true, pattern: "[A-Za-z0-9][A-Za-z0-9_.\\-]*", "data-testid": "upload-name", autocomplete: "off" });
  const format = el("select", { id: "upload-format", "data-testid": "upload-format" }, FORMATS.map((f) => el("option", { value: f }, f)));
  const progress = el("progress", { id: "upload-progress", max: "1", value: "0", "data-testid": "upload-progress" });
  const status = tid("p", "upload-status", { role: "status", "aria-live": "polite" });
  const send = el("button", { type: "submit", "data-testid": "upload-send" }, "Upload");
  const zone = tid("div", "drop-zone", { class: "drop-zone" }, "Drop a CSV, Parquet or JSON-lines file here, or choose one below.");
  let file = null;
  let busy = false;
  let uploadId = null; // sent as ?upload=, so only this upload's events move this bar

  function choose(picked) {
    file = picked;
    if (!file) return;
    if (!name.value) name.value = baseName(file.name);
    format.value = guessFormat(file.name);
    status.textContent = `${file.name}: ${fmtBytes(file.size)} ready to upload as ${format.value}.`;
    progress.value = 0;
  }
  input.addEventListener("change", () => choose(input.files[0] || null));
  zone.addEventListener("dragover", (event) => {
    event.preventDefault();
    zone.classList.add("over");
  });
  zone.addEventListener("dragleave", () => zone.classList.remove("over"));
  zone.addEventListener("drop", (event) => {
    event.preventDefault();
    zone.classList.remove("over");
    choose(event.dataTransfer?.files?.[0] || null);
  });
  ctx.on("upload", (event) => {
    if (!busy || event.upload !== uploadId) return;
    const total = typeof event.total === "number" && event.total > 0 ? event.total : file?.size || 0;
    if (!total) return;
    // two stages: the browser's bytes reach the console, then the node stores them
    const stage = event.stage === "storing" ? "Storing on the node" : event.stage === "done" ? "Stored" : "Sending to the console";
    progress.max = total;
    progress.value = Math.min(event.bytes, total);
    status.textContent = `${stage}: ${fmtBytes(event.bytes)} of ${fmtBytes(total)}.`;
  });

  const form = tid("form", "upload-form", { class: "upload", "aria-labelledby": "upload-h" },
    el("h2", { id: "upload-h" }, "Upload a dataset"), zone,
    el("div", { class: "row" },
      el("label", { for: "upload-file" }, "File"), input),
    el("div", { class: "row" }, el("label", { for: "upload-name" }, "Name"), name),
    el("div", { class: "row" }, el("label", { for: "upload-format" }, "Format"), format),
    el("div", { class: "row" }, send, el("label", { for: "upload-progress", class: "sr-only" }, "Upload progress"), progress),
    status);
  form.addEventListener("submit", async (event) => {
    event.preventDefault();
    if (busy) return;
    if (!file) {
      status.textContent = "Choose a file first (drop it on the zone or use the file input).";
      return;
    }
    if (!name.checkValidity()) {
      status.textContent = "The name must start with a letter or digit and use only letters, digits, '_', '-' and '.'.";
      name.focus();
      return;
    }
    busy = true;
    uploadId = `u${Date.now().toString(36)}${Math.random().toString(36).slice(2, 8)}`;
    send.disabled = true;
    progress.max = file.size || 1;
    progress.value = 0;
    status.textContent = `Uploading ${file.name}…`;
    try {
      const row = await api(`/api/datasets?name=${encodeURIComponent(name.value)}&format=${format.value}&upload=${uploadId}`, {
        method: "POST", headers: { "Content-Type": "application/octet-stream" }, body: file,
      });
      progress.value = progress.max;
      status.textContent = `Stored ${row.name ?? name.value}: ${fmtNumber(row.row_count)} rows, digest ${row.digest}.`;
      onUploaded();
    } catch (exc) {
      status.textContent = `Upload failed: ${exc.message}`;
      status.classList.add("error");
    } finally {
      busy = false;
      send.disabled = false;
    }
  });
  return form;
}

export async function render(main, _args, ctx) {
  const listBox = el("div", {});
  async function load() {
    try {
      const answer = await api("/api/datasets");
      const rows = answer.datasets || [];
      if (!ctx.alive) return;
      listBox.replaceChildren(rows.length
        ? el("div", { class: "table-wrap", tabindex: "0", role: "region", "aria-label": "Datasets" },
          tid("table", "dataset-table", { class: "data" }, el("caption", {}, "Your datasets"),
            el("thead", {}, el("tr", {}, ["name", "version", "format", "schema", "rows", "bytes", "digest"]
              .map((h) => el("th", { scope: "col", class: ["rows", "bytes"].includes(h) ? "num" : "" }, h)))),
            el("tbody", {}, rows.map(datasetRow))))
        : el("p", { class: "muted" }, "No datasets yet."));
    } catch (exc) {
      listBox.replaceChildren(errorBox(exc.message));
    }
  }
  main.replaceChildren(el("h1", {}, "Datasets"), listBox, uploadForm(load, ctx));
  await load();
}
