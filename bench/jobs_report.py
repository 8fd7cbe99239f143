"""The jobs benchmark's output: its rows (figure, value, baseline, goal) for
bench/run_all.py, and the table with where the time and the CPU go."""

from __future__ import annotations

import os
from typing import Any

# Issue 16: throughput at saturation; latency at 4 jobs/s offered; a dead assignee costs < 5 s once known down.
GOAL_JOBS_S, GOAL_P50_MS, GOAL_P99_MS, GOAL_DEAD_MS = 10.0, 1000.0, 2000.0, 5000.0
QUERY = "SELECT product, count(*) AS n, sum(units) AS units FROM sales GROUP BY product"
ROWS = 200  # rows of each tenant's CSV
STAGES = ("submit call", "wait for proposal", "consensus, job block", "execution", "wait for result proposal",
          "consensus, result block", "observed")


def table_rows(configs: list[dict[str, Any]], base: dict[str, Any]) -> list[dict[str, Any]]:
    rows, q_s, top = [], 1000 / base["duckdb_ms"], max(c["processing_nodes"] for c in configs)

    def row(figure: str, value: float, unit: str, baseline: float | None, label: str, goal: str = "", met: bool | None = None) -> None:
        rows.append({"figure": figure, "value": value, "unit": unit, "baseline": baseline, "baseline_label": label, "goal": goal, "met": met})

    for c in configs:
        tag, main, o = f"{c['processing_nodes']} processing, r={c['replication']}", c["processing_nodes"] == top, c["offered"]
        row(f"jobs/s verified at {o['load']} ({tag})", o["jobs_s"], "jobs/s", q_s, "in-process DuckDB queries/s")
        row(f"submit to verified p50 at {o['load']} ({tag})", o["p50_ms"], "ms", base["duckdb_ms"], "in-process DuckDB ms",
            *((f"< {GOAL_P50_MS:,g} ms", o["p50_ms"] < GOAL_P50_MS) if main else ()))
        row(f"submit to verified p99 at {o['load']} ({tag})", o["p99_ms"], "ms", base["duckdb_ms"], "in-process DuckDB ms",
            *((f"< {GOAL_P99_MS:,g} ms", o["p99_ms"] < GOAL_P99_MS) if main else ()))
        if "saturation" in c:
            s = c["saturation"]
            row(f"jobs/s verified at saturation, {s['load']} ({tag})", s["jobs_s"], "jobs/s", q_s, "in-process DuckDB queries/s",
                *((f">= {GOAL_JOBS_S:g} jobs/s", s["jobs_s"] >= GOAL_JOBS_S) if main else ()))
            row(f"p50 at saturation ({tag})", s["p50_ms"], "ms", base["duckdb_ms"], "in-process DuckDB ms")
        # CPU per verified job of the busiest phase (idle work spread over the most jobs): the figure to scale to N machines.
        phase = "saturation" if "saturation" in c else "offered"
        cpu = c[phase]["cpu_per_job"]
        row(f"CPU per verified job, all daemons and cages, {phase} ({tag})", cpu["total_s"] * 1000, "ms CPU",
            base["duckdb_ms"], "in-process DuckDB ms")
        for roles, g in cpu["by_roles"].items():
            row(f"CPU per verified job, one {roles} daemon + its cages ({tag})", (g["daemon_s"] + g["children_s"]) * 1000, "ms CPU",
                base["duckdb_ms"], "in-process DuckDB ms")
            if "marginal_s" in g:  # with an idle window: what one more job costs, beside the fixed floor
                row(f"marginal CPU per verified job, one {roles} daemon + its cages ({tag})", g["marginal_s"] * 1000, "ms CPU",
                    base["duckdb_ms"], "in-process DuckDB ms")
                row(f"idle CPU floor, one {roles} daemon ({tag})", g["idle_cores"], "cores", None, "")
        if "dead_node" in c and "error" not in c["dead_node"]:
            d = c["dead_node"]
            row(f"job with an assigned node killed: submit to verified ({tag})", d["submit_to_verified_ms"], "ms", base["duckdb_ms"],
                "in-process DuckDB ms")
            row(f"job with an assigned node killed: marked missed to verified ({tag})", d["expiry_to_verified_ms"], "ms",
                base["duckdb_ms"], "in-process DuckDB ms", f"< {GOAL_DEAD_MS:,g} ms",
                d["state"] == "verified" and d["expiry_to_verified_ms"] < GOAL_DEAD_MS)
    return rows


def render(report: dict[str, Any]) -> str:
    base = report["baselines"]
    cage = "n/a" if base["cage_ms"] is None else f"{base['cage_ms']:.1f} ms"
    lines = [f"jobs benchmark ({'smoke' if report['smoke'] else 'full'}): 4 validator daemons on loopback, {os.cpu_count()} cores "
             f"(shared with whatever else runs: see 'other'), {report['tenants']} tenants, query over {ROWS}-row CSVs: {QUERY}",
             f"baselines: in-process DuckDB {base['duckdb_ms']:.2f} ms, one cage run {cage} {base['cage_note']}".rstrip(), ""]
    header = f"{'figure':64} {'value':>9}  {'baseline':>9}  {'ratio':>8}  goal"
    lines += [header, "-" * len(header)]
    for r in report["rows"]:
        ratio = r["value"] / r["baseline"] if r["baseline"] else float("nan")
        met = "" if r["met"] is None else ("  met" if r["met"] else "  NOT met")
        baseline = "n/a" if r["baseline"] is None else f"{r['baseline']:.1f}"
        lines.append(f"{r['figure']:64} {r['value']:9.1f}  {baseline:>9}  {ratio:8.2f}  {r['goal']}{met}")
    lines += ["", "where the time goes: medians per verified job of the steady window, ms (p90); CPU in cores"]
    for c in report["configs"]:
        if c["idle_cpu"]:
            i = c["idle_cpu"]
            b = c["idle_proposal_to_notified_ms"]
            lines.append(f"  {c['processing_nodes']}p idle        CPU: daemons {i['daemons']:.2f} + cages {i['cages']:.2f}, other processes "
                         f"{i['other']:.2f}; block proposal to notification {b['median']:.0f} ms (p90 {b['p90']:.0f})")
        for phase in ("offered", "saturation"):
            if phase in c:
                f, cpu = c[phase], c[phase]["cpu"]
                stages = ", ".join(f"{s} {f['stages_ms'][s]:.0f} ({f['stages_p90_ms'][s]:.0f})" for s in STAGES)
                lines.append(f"  {c['processing_nodes']}p {phase:10}  {stages}")
                lines.append(f"  {'':14}blocks from job block to verdict {f['blocks_submit_to_verdict']}; block interval median "
                             f"{f['block_interval_ms']['median']:.0f} ms, p90 {f['block_interval_ms']['p90']:.0f}, max "
                             f"{f['block_interval_ms']['max']:.0f}; proposal to notification {f['proposal_to_notified_ms']['median']:.0f} ms "
                             f"(p90 {f['proposal_to_notified_ms']['p90']:.0f}); txs/block {f['txs_per_block']:.0f}; jobs {f['states']}")
                lines.append(f"  {'':14}CPU: machine {cpu['machine']:.2f} of {cpu['cores']:.0f} = daemons {cpu['daemons']:.2f} + their cages "
                             f"{cpu['cages']:.2f} + bench client {cpu['bench_client']:.2f} + other processes {cpu['other']:.2f} "
                             f"(hypervisor steal {cpu['steal']:.2f})")
                per = f["cpu_per_job"]
                nodes = ", ".join(f"{name} {n['daemon_s'] * 1000:.0f} + cages {n['children_s'] * 1000:.0f}" for name, n in per["nodes"].items())
                lines.append(f"  {'':14}CPU ms per verified job ({per['units']} jobs, phase start to drained): {per['total_s'] * 1000:.0f} "
                             f"in all = {nodes}")
                if "marginal_s" in per:
                    lines.append(f"  {'':14}less the idle floor ({per['idle_cores']:.2f} cores for all daemons): {per['marginal_s'] * 1000:.0f} "
                                 f"ms CPU per verified job")
        if "dead_node" in c:
            d = c["dead_node"]
            if "error" in d:
                lines.append(f"  {c['processing_nodes']}p dead node: {d['victim']} killed; {d['error']}")
            else:
                lines.append(f"  {c['processing_nodes']}p dead node: {d['victim']} killed, job {d['state']} (try {d['tries']}, deadline "
                             f"{d['deadline_blocks']} blocks, known down by {d['known_down_by']}): submit to verified {d['submit_to_verified_ms']:.0f} ms, "
                             f"from the block that marked it missed "
                             f"(height {d['expiry_height']}) {d['expiry_to_verified_ms']:.0f} ms; assignments {d['assignments']}")
        if c["problems"]:
            lines.append(f"  {c['processing_nodes']}p refused or failed calls: {c['problems']}")
    return "\n".join(lines)
