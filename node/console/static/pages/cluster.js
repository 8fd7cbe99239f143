// Cluster: every node /api/mesh knows, and how long the last blocks took to
// finalise (timestamp deltas). A new block adds a bar at once and asks the
// mesh again, at most once per MESH_REFRESH_MS: probing every node on every
// block of a fast chain would cost more than the figures are worth.
import { api, code, el, errorBox, fmtDuration, fmtNumber, peerIdOfKey, tid } from "../app.js";
import { barChart } from "../charts.js";

const FINALITY_BLOCKS = 30;
const MESH_REFRESH_MS = 5000;

function yesNo(value, yes = "yes", no = "no") {
  return el("span", { class: value ? "ok" : "bad" }, value ? yes : no);
}

function nodeRow(node) {
  return tid("tr", "node-row", { "data-peer": node.peer_id, class: node.live ? "" : "down" },
    el("th", { scope: "row" }, node.moniker || "?", node.entry ? el("span", { class: "tag", title: "the node the console talks to" }, "entry") : null),
    tid("td", "node-live", {}, yesNo(node.live, "live", "down")),
    tid("td", "node-validator", {}, node.validator ? "validator" : "–"),
    tid("td", "node-height", { class: "num" }, fmtNumber(node.height)),
    el("td", { class: "num" }, fmtNumber(node.round)),
    el("td", { class: "num" }, fmtNumber(node.peers)),
    el("td", { class: "num" }, fmtNumber(node.mempool)),
    el("td", { class: "num" }, fmtNumber(node.jobs)),
    el("td", {}, (node.roles || []).join(", ") || "–"),
    el("td", {}, code(node.peer_id, 8), node.live ? null : el("div", { class: "muted small" }, node.error || "no answer")),
  );
}

function meshTable(report) {
  const nodes = report.nodes || [];
  const live = nodes.filter((n) => n.live).length;
  return el("div", {},
    tid("p", "mesh-summary", {}, `${nodes.length} nodes, ${live} live, ${nodes.filter((n) => n.validator).length} validators.`),
    el("div", { class: "table-wrap", tabindex: "0", role: "region", "aria-label": "Nodes" },
      tid("table", "node-table", { class: "data" },
        el("caption", {}, "Nodes of the mesh"),
        el("thead", {}, el("tr", {}, ["node", "live", "validator", "height", "round", "peers", "mempool", "jobs", "roles", "peer id"]
          .map((h) => el("th", { scope: "col", class: ["height", "round", "peers", "mempool", "jobs"].includes(h) ? "num" : "" }, h)))),
        el("tbody", {}, nodes.map(nodeRow)))));
}

export async function render(main, _args, ctx) {
  const meshBox = el("section", { "aria-labelledby": "mesh-h" }, el("h2", { id: "mesh-h" }, "Nodes"));
  const finalityBox = el("section", { "aria-labelledby": "fin-h" }, el("h2", { id: "fin-h" }, "Finality"));
  main.replaceChildren(el("h1", {}, "Cluster"), meshBox, finalityBox);

  const [mesh, blocks] = await Promise.allSettled([api("/api/mesh"), api(`/api/blocks?limit=${FINALITY_BLOCKS + 1}`)]);
  const meshBody = el("div", { "aria-live": "polite" });
  meshBox.append(meshBody);
  meshBody.replaceChildren(mesh.status === "fulfilled" ? meshTable(mesh.value) : errorBox(mesh.reason.message));

  // blocks oldest first; finality of block h = its timestamp minus its parent's
  const chain = blocks.status === "fulfilled" ? [...(blocks.value.blocks || [])].reverse() : [];
  const finalityBody = el("div", {});
  finalityBox.append(finalityBody);
  function drawFinality() {
    const deltas = [];
    const labels = [];
    for (let i = 1; i < chain.length; i += 1) {
      if (chain[i].height !== chain[i - 1].height + 1) continue;
      deltas.push(chain[i].timestamp_ms - chain[i - 1].timestamp_ms);
      labels.push(`#${chain[i].height}`);
    }
    const shown = deltas.slice(-FINALITY_BLOCKS);
    const shownLabels = labels.slice(-FINALITY_BLOCKS);
    if (!shown.length) {
      finalityBody.replaceChildren(blocks.status === "rejected" ? errorBox(blocks.reason.message)
        : el("p", { class: "muted" }, "Not enough blocks yet to measure finality."));
      return;
    }
    const mean = shown.reduce((a, b) => a + b, 0) / shown.length;
    const last = chain[chain.length - 1];
    finalityBody.replaceChildren(
      tid("p", "finality-summary", {},
        `Last ${shown.length} blocks: mean ${fmtDuration(mean)}, max ${fmtDuration(Math.max(...shown))}; head #${last.height} proposed by `,
        code(peerIdOfKey(last.proposer), 8), "."),
      barChart({ title: `Time between consecutive blocks, last ${shown.length} blocks`, values: shown, labels: shownLabels, format: fmtDuration, testid: "finality-chart" }));
  }
  drawFinality();

  let lastMesh = Date.now();
  let pending = null;
  async function refreshMesh() {
    pending = null;
    lastMesh = Date.now();
    try {
      const report = await api("/api/mesh");
      if (ctx.alive) meshBody.replaceChildren(meshTable(report));
    } catch (exc) {
      if (ctx.alive) meshBody.replaceChildren(errorBox(exc.message));
    }
  }
  ctx.on("block", (block) => {
    if (chain.length && block.height <= chain[chain.length - 1].height) return;
    chain.push(block);
    if (chain.length > FINALITY_BLOCKS + 1) chain.splice(0, chain.length - FINALITY_BLOCKS - 1);
    drawFinality();
    if (pending) return;
    const wait = Math.max(0, lastMesh + MESH_REFRESH_MS - Date.now());
    pending = setTimeout(() => ctx.alive && refreshMesh(), wait);
  });
}
