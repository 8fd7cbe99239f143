// Chain: the recent blocks, newest first, a row added for each `block` event;
// #/chain/HEIGHT shows one block whole. A block event carries a summary
// (no receipts root, no seals): the row shows at once and is completed from
// /api/blocks/HEIGHT.
import { api, code, el, errorBox, fmtNumber, fmtTime, peerIdOfKey, tid } from "../app.js";

const LIMIT = 20;

function blockRow(block) {
  const seals = Array.isArray(block.seals) ? block.seals.length : null;
  return tid("tr", "block-row", { "data-height": block.height },
    el("th", { scope: "row", class: "num" }, el("a", { href: `#/chain/${block.height}`, "data-testid": "block-link" }, `#${block.height}`)),
    el("td", {}, fmtTime(block.timestamp_ms)),
    tid("td", "block-proposer", {}, code(peerIdOfKey(block.proposer), 8)),
    tid("td", "block-txs", { class: "num" }, fmtNumber(block.tx_count)),
    tid("td", "block-receipts-root", {}, block.receipts_root ? code(block.receipts_root, 8) : el("span", { class: "muted" }, "…")),
    tid("td", "block-seals", { class: "num" }, seals === null ? "…" : String(seals)),
  );
}

async function listPage(main, ctx) {
  const tbody = el("tbody", {});
  const status = el("p", { class: "muted", role: "status", "aria-live": "polite", "data-testid": "chain-status" });
  main.replaceChildren(el("h1", {}, "Chain"), status,
    el("div", { class: "table-wrap", tabindex: "0", role: "region", "aria-label": "Recent blocks" },
      tid("table", "block-table", { class: "data" }, el("caption", {}, "Recent blocks, newest first"),
        el("thead", {}, el("tr", {}, ["height", "time (UTC)", "proposer", "txs", "receipts root", "seals"]
          .map((h) => el("th", { scope: "col", class: ["height", "txs", "seals"].includes(h) ? "num" : "" }, h)))),
        tbody)));
  const shown = new Map(); // height -> row
  function put(block, { top }) {
    const row = blockRow(block);
    const old = shown.get(block.height);
    if (old) old.replaceWith(row);
    else if (top) tbody.prepend(row);
    else tbody.append(row);
    shown.set(block.height, row);
    while (shown.size > LIMIT * 5) { // keep a long-open tab bounded
      const lowest = Math.min(...shown.keys());
      shown.get(lowest).remove();
      shown.delete(lowest);
    }
  }
  // Events that arrive while the first list loads are queued, not lost.
  const early = [];
  let loaded = false;
  ctx.on("block", async (summary) => {
    if (!loaded) {
      early.push(summary);
      return;
    }
    if (shown.has(summary.height)) return;
    put(summary, { top: true });
    status.textContent = `New block #${summary.height}.`;
    try {
      const full = await api(`/api/blocks/${summary.height}`);
      if (ctx.alive && shown.has(full.height)) put(full, { top: true });
    } catch {
      // the summary row stays; its detail page will say what is wrong
    }
  });
  try {
    const answer = await api(`/api/blocks?limit=${LIMIT}`);
    for (const block of answer.blocks || []) put(block, { top: false });
    if (!(answer.blocks || []).length) status.textContent = "No blocks yet.";
  } catch (exc) {
    main.append(errorBox(exc.message));
  }
  loaded = true;
  for (const summary of early.sort((a, b) => a.height - b.height)) {
    if (!shown.has(summary.height)) put(summary, { top: true });
  }
}

function field(name, value, testid) {
  return [el("dt", {}, name), tid("dd", testid || `block-${name.replace(/\s+/g, "-")}`, {}, value)];
}

async function detailPage(main, height) {
  if (!/^\d+$/.test(height)) {
    main.replaceChildren(el("h1", {}, "Block"), errorBox(`"${height}" is not a block height (a whole number).`));
    return;
  }
  main.replaceChildren(el("h1", {}, `Block #${height}`));
  let block;
  try {
    block = await api(`/api/blocks/${height}`);
  } catch (exc) {
    main.append(errorBox(exc.message));
    return;
  }
  const seals = block.seals || [];
  const nav = el("p", { class: "pager" },
    block.height > 0 ? el("a", { href: `#/chain/${block.height - 1}`, rel: "prev" }, `← #${block.height - 1}`) : null, " ",
    el("a", { href: `#/chain/${block.height + 1}`, rel: "next" }, `#${block.height + 1} →`), " ",
    el("a", { href: "#/chain" }, "all blocks"));
  main.append(nav, tid("dl", "block-detail", { class: "fields" },
    field("hash", el("code", {}, block.hash)),
    field("parent hash", el("a", { href: `#/chain/${block.height - 1}` }, el("code", {}, block.parent_hash))),
    field("time", `${fmtTime(block.timestamp_ms)} (${block.timestamp_ms} ms)`),
    field("proposer", [el("code", {}, peerIdOfKey(block.proposer)), el("div", { class: "muted small" }, `key ${block.proposer}`)]),
    field("round", `${block.round} (committed in round ${block.commit_round})`),
    field("chain", `${block.chain_id}, genesis ${block.genesis_hash}`),
    field("transactions", fmtNumber(block.tx_count), "block-tx-count"),
    field("tx root", el("code", {}, block.tx_root)),
    field("receipts", `${fmtNumber(block.receipts_size)} in the log after this block`),
    field("receipts root", el("code", {}, block.receipts_root), "block-receipts-root"),
    field("validators hash", el("code", {}, block.validators_hash)),
    field("next validators hash", el("code", {}, block.next_validators_hash)),
    field("seed", el("code", {}, block.seed)),
  ));
  main.append(el("h2", {}, `Seals (${seals.length})`),
    el("div", { class: "table-wrap", tabindex: "0", role: "region", "aria-label": "Seals" },
      tid("table", "seal-table", { class: "data" },
        el("thead", {}, el("tr", {}, el("th", { scope: "col" }, "validator"), el("th", { scope: "col" }, "signature"))),
        el("tbody", {}, seals.map((s) => tid("tr", "seal-row", {}, el("td", {}, code(peerIdOfKey(s.validator), 10)), el("td", {}, code(s.signature, 12))))))));
  const hashes = block.tx_hashes || [];
  const decoded = new Map((block.decoded || []).map((d) => [d.hash, d]));
  main.append(el("h2", {}, `Transactions (${hashes.length})`),
    hashes.length ? el("ol", { class: "hashes", start: "0" }, hashes.map((h) => {
      const d = decoded.get(h);
      return tid("li", "tx-hash", {}, el("code", {}, h), d ? el("span", { class: "muted small" },
        d.type ? ` ${d.type} from ${peerIdOfKey(d.sender)}, nonce ${d.nonce}, ${d.size} bytes` : ` undecodable: ${d.error}`) : null);
    })) : el("p", { class: "muted" }, "No transactions in this block."));
}

export async function render(main, args, ctx) {
  if (args.length) await detailPage(main, args[0]);
  else await listPage(main, ctx);
}
