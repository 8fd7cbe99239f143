// Audit: one read-only SELECT over the exported receipt log (the rules of
// `metanode audit query`, enforced by the server), its answer as a sortable
// table. Ctrl+Enter (or Cmd+Enter) runs the query from the text box.
import { el, postJson, sortableTable, tid } from "../app.js";

const EXAMPLE = "SELECT kind, count(*) AS receipts FROM receipts GROUP BY kind ORDER BY receipts DESC";

export async function render(main) {
  const box = el("textarea", { id: "audit-sql", rows: "6", spellcheck: "false", "data-testid": "audit-sql",
    "aria-describedby": "audit-help" }, EXAMPLE);
  const run = el("button", { type: "submit", "data-testid": "audit-run" }, "Run query");
  const out = el("div", { "aria-live": "polite", "data-testid": "audit-output" });
  const form = el("form", { class: "audit" },
    el("label", { for: "audit-sql" }, "SQL (one read-only SELECT)"), box,
    el("p", { id: "audit-help", class: "small muted" },
      "The table receipts holds the decoded receipt log with its anchors; Ctrl+Enter runs the query."),
    el("div", { class: "row" }, run));
  async function go() {
    const sql = box.value.trim();
    if (!sql) {
      out.replaceChildren(tid("p", "audit-error", { class: "error", role: "alert" }, "Write a SELECT first."));
      return;
    }
    run.disabled = true;
    out.replaceChildren(el("p", { class: "muted", role: "status" }, "Running…"));
    try {
      const answer = await postJson("/api/audit/query", { sql });
      const rows = answer.rows || [];
      out.replaceChildren(tid("p", "audit-count", { class: "small" }, `${rows.length} row${rows.length === 1 ? "" : "s"}.`),
        sortableTable({ columns: answer.columns || [], rows, caption: "Query result", testid: "audit-table", rowTestid: "audit-row" }));
    } catch (exc) {
      out.replaceChildren(tid("p", "audit-error", { class: "error", role: "alert" }, `The query was refused: ${exc.message}`));
    } finally {
      run.disabled = false;
    }
  }
  form.addEventListener("submit", (event) => {
    event.preventDefault();
    go();
  });
  box.addEventListener("keydown", (event) => {
    if (event.key === "Enter" && (event.ctrlKey || event.metaKey)) {
      event.preventDefault();
      go();
    }
  });
  main.replaceChildren(el("h1", {}, "Audit"), form, out);
}
