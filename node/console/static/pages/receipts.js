// Receipts: a job's receipts, each bundle checked here, in the browser, by
// verify/bundle.js (Ed25519 signatures, the RFC 9162 inclusion proof, the
// commit seals and the validator-set chain) against the genesis of
// /api/session. The server only carries bytes: what it says about validity is
// never shown, only what this page computed. A bundle file can be checked too.
import { api, code, el, errorBox, hexToBytes, session, tid } from "../app.js";

async function loadVerifier() {
  try {
    const module = await import("../verify/bundle.js");
    if (typeof module.verifyBundle !== "function") throw new Error("verify/bundle.js exports no verifyBundle");
    return module.verifyBundle;
  } catch (exc) {
    throw new Error(`the in-browser verifier could not be loaded (${exc.message})`);
  }
}

/** The verdict cell: "valid" with where it sits, or which part failed and why. */
function verdict(result) {
  if (result.ok) {
    const where = [typeof result.leafIndex === "number" ? `leaf ${result.leafIndex}` : null,
      typeof result.height === "number" ? `sealed at #${result.height}` : null,
      Array.isArray(result.validators) ? `by ${result.validators.length} validators` : null].filter(Boolean).join(", ");
    return tid("div", "receipt-status", { class: "verdict ok", "data-ok": "true" },
      el("strong", {}, "✓ valid"), where ? el("span", { class: "small" }, ` ${where}`) : null);
  }
  return tid("div", "receipt-status", { class: "verdict bad", "data-ok": "false", "data-part": result.part ?? "", "data-exit": result.exitCode ?? "" },
    el("strong", {}, `✗ ${result.part ?? "bundle"} check failed`),
    typeof result.exitCode === "number" ? el("span", { class: "small" }, ` (exit code ${result.exitCode})`) : null,
    el("div", { class: "small", "data-testid": "receipt-detail" }, result.detail || "no detail given"));
}

async function check(verifyBundle, bundleBytes, genesisCbor) {
  try {
    return await verifyBundle(bundleBytes, genesisCbor);
  } catch (exc) {
    return { ok: false, part: "bundle", exitCode: null, detail: `the verifier stopped: ${exc.message}` };
  }
}

function fileChecker(verifyBundle, genesisCbor) {
  const input = el("input", { type: "file", id: "bundle-file", "data-testid": "bundle-file" });
  const out = el("div", { "aria-live": "polite" });
  input.addEventListener("change", async () => {
    const file = input.files[0];
    if (!file) return;
    out.replaceChildren(el("p", { class: "muted" }, `Checking ${file.name}…`));
    const result = await check(verifyBundle, new Uint8Array(await file.arrayBuffer()), genesisCbor);
    out.replaceChildren(el("p", {}, `${file.name}:`), verdict(result));
  });
  return el("section", { "aria-labelledby": "file-h" }, el("h2", { id: "file-h" }, "Check a bundle file"),
    el("p", { class: "row" }, el("label", { for: "bundle-file" }, "Bundle file (from metanode receipt bundle)"), input), out);
}

export async function render(main, args) {
  const jobId = args[0] || "";
  main.replaceChildren(el("h1", {}, "Receipts"));
  if (!/^[0-9a-f]{64}$/.test(jobId)) {
    main.append(errorBox(jobId ? `"${jobId}" is not a job id (64 hex digits).` : "Open a job's receipts from its page (Jobs, then a job)."));
    return;
  }
  main.querySelector("h1").append(" of job ", el("a", { href: `#/jobs/${jobId}` }, el("code", { title: jobId }, jobId.slice(0, 12))));
  let verifyBundle;
  let genesisCbor;
  let answer;
  try {
    const [verifier, s, receipts] = await Promise.all([loadVerifier(), session(), api(`/api/jobs/${jobId}/receipts`)]);
    verifyBundle = verifier;
    if (typeof s.genesis_cbor !== "string") {
      throw new Error("the console was started without a genesis file to trust (--genesis), so receipts cannot be checked here");
    }
    genesisCbor = hexToBytes(s.genesis_cbor);
    answer = receipts;
    main.append(tid("p", "genesis-note", { class: "small" },
      "Checked in this browser against the genesis of chain ", el("code", {}, s.chain_id ?? "?"), " (hash ", code(s.genesis_hash, 12),
      "), with Web Crypto: Ed25519 signatures, the inclusion proof, the commit seals and the validator-set chain."));
  } catch (exc) {
    main.append(errorBox(exc.message));
    return;
  }
  const receipts = answer.receipts || [];
  const tbody = el("tbody");
  main.append(el("div", { class: "table-wrap", tabindex: "0", role: "region", "aria-label": "Receipts" },
    tid("table", "receipt-table", { class: "data" }, el("caption", {}, `${receipts.length} receipts`),
      el("thead", {}, el("tr", {}, ["receipt", "kind", "issuer", "height", "verified here"].map((h) => el("th", { scope: "col" }, h)))),
      tbody)));
  if (!receipts.length) main.append(el("p", { class: "muted" }, "This job has no receipts on chain yet."));
  const summary = tid("p", "receipt-summary", { role: "status", "aria-live": "polite" }, "Verifying…");
  main.append(summary, fileChecker(verifyBundle, genesisCbor));
  const cells = receipts.map((r) => {
    const cell = el("td", {}, el("span", { class: "muted" }, "checking…"));
    tbody.append(tid("tr", "receipt-row", { "data-receipt": r.id },
      el("th", { scope: "row" }, code(r.id, 10)), el("td", {}, r.kind ?? "–"), el("td", {}, code(r.issuer, 8)),
      el("td", { class: "num" }, typeof r.height === "number" ? `#${r.height}` : "–"), cell));
    return cell;
  });
  let valid = 0;
  for (let i = 0; i < receipts.length; i += 1) {
    let bytes;
    if (typeof receipts[i].bundle !== "string") {
      cells[i].replaceChildren(tid("div", "receipt-status", { class: "verdict", "data-ok": "missing" },
        el("strong", {}, "no bundle yet"), el("div", { class: "small" }, receipts[i].missing || "the node gave no bundle for this receipt")));
      continue;
    }
    try {
      bytes = hexToBytes(receipts[i].bundle);
    } catch {
      cells[i].replaceChildren(verdict({ ok: false, part: "bundle", exitCode: null, detail: "the server sent bundle bytes that are not hex" }));
      continue;
    }
    const result = await check(verifyBundle, bytes, genesisCbor);
    cells[i].replaceChildren(verdict(result));
    valid += result.ok ? 1 : 0;
  }
  const missing = receipts.filter((r) => typeof r.bundle !== "string").length;
  summary.textContent = `${valid} of ${receipts.length} receipts verified in this browser`
    + (missing ? `; ${missing} not sealed into a bundle yet` : "")
    + (receipts.length - valid - missing ? `; ${receipts.length - valid - missing} failed (each says which check)` : "") + ".";
  summary.dataset.done = "true";
}
