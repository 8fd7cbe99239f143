"""Run every benchmark of the project and print one table.

Each bench runs as a subprocess with ``--json`` (and ``--smoke`` when asked),
one after the other so they do not disturb each other's figures; this file
turns each JSON answer into rows of

    bench, figure, value, baseline, ratio (value / baseline), goal, met

with the goals of the issues that asked for each figure (issue 16's for
transport, consensus and jobs). A full run that misses a goal also prints,
under the table, the per-core cost measured in the run that bounds the
figure and what meeting the goal would take. ``--smoke`` runs
every bench at tiny sizes, as CI does, so the benchmarks never rot: there a
missed goal means nothing, only a bench that crashes or prints no JSON
fails the run.

    python bench/run_all.py                  # full sizes (tens of minutes: jobs, consensus and adversary start testnets;
                                             # run it on an otherwise idle machine: the figures are CPU-bound)
    python bench/run_all.py --smoke          # CI
    python bench/run_all.py --only cage,receipts --json-out figures.json

Exit status: 0 every bench ran (and, in a full run, every goal was met);
1 a bench failed (crashed, timed out, or printed no JSON); 4 a full run
missed a goal.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent


@dataclass
class Row:
    bench: str
    figure: str
    value: float
    unit: str
    baseline: float | None = None
    baseline_label: str = ""
    goal: str = ""
    met: bool | None = None  # None: no goal for this figure
    note: str = ""  # for a missed goal: the measured per-core cost that bounds it, and what meeting it would take

    @property
    def ratio(self) -> float | None:
        if self.baseline is None or not self.baseline or not math.isfinite(self.value):
            return None
        return self.value / self.baseline


# -- one extractor per bench: its JSON -> rows ------------------------------------------------
def transport_rows(doc: dict[str, Any]) -> list[Row]:
    b, t = doc["bpci"], doc["tcp"]
    rtt = b["rtt_median_us"] / t["rtt_median_us"]
    cpu = b["bulk_cpu_ms_per_mb"]
    bulk_note = (f"BPCI costs {cpu:.1f} ms CPU per MB, sender and receiver together (plain TCP {t['bulk_cpu_ms_per_mb']:.1f}): "
                 f"one core per end moves at most ~{2000 / cpu:,.0f} MB/s; 250 MB/s needs <= 8 ms per MB for both ends "
                 f"(4 ms per end), i.e. the Noise/yamux per-byte path {cpu / 8:.1f}x cheaper")
    return [
        Row("transport", "BPCI round trip 100 B, median", b["rtt_median_us"], "us", t["rtt_median_us"], "plain TCP",
            "<= 5x TCP", rtt <= 5),
        Row("transport", "BPCI round trip 100 B, p99", b["rtt_p99_us"], "us", t["rtt_p99_us"], "plain TCP"),
        Row("transport", "BPCI bulk, one stream", b["bulk_mb_s"], "MB/s", t["bulk_mb_s"], "plain TCP",
            ">= 250 MB/s", b["bulk_mb_s"] >= 250, bulk_note),
        # Both ends in one process: 1000 / this = MB/s one core can move (sender and receiver together).
        Row("transport", "BPCI bulk CPU, both ends, per MB", b["bulk_cpu_ms_per_mb"], "ms", t["bulk_cpu_ms_per_mb"], "plain TCP"),
        Row("transport", "BPCI connection set-up", b["connect_ms"], "ms", t["connect_ms"], "plain TCP"),
    ]


def consensus_rows(doc: dict[str, Any]) -> list[Row]:
    """Throughput from the throughput phase; finality and CPU from the phase at a fixed offered load.
    CPU per transaction is per validator process, so N machines predict as ~1 / (CPU-seconds per tx)."""
    verify_s, verify_us = doc["ed25519_verify_s"], doc["ed25519_verify_us"]
    verifies = doc["validator_verifies_per_tx"]
    offered, final = doc["offered_tx_s"], doc["finality_offered_tx_s"]
    per_tx = doc["validator_cpu_s_per_tx"]
    cores = doc.get("cores") or 2
    tx_note = (f"each validator spends {per_tx * 1e6:,.0f} us CPU per committed tx: with a core of its own it could commit at most "
               f"~{1 / per_tx:,.0f} tx/s; here 4 validators share {cores} cores with the load client, so at most "
               f"~{cores / (4 * per_tx):,.0f} tx/s. 3,000 tx/s needs one core per validator and <= 333 us per tx "
               f"(<= {333 / verify_us:.1f} verifies), or {per_tx * 1e6 / 333:.1f}x less CPU per tx")
    cpu_note = (f"{per_tx * 1e6:,.0f} us per tx per validator = {verifies:.1f} verifies of {verify_us:.0f} us; the goal needs "
                f"<= {2.5 * verify_us:.0f} us: the per-tx path (decode, admit, gossip, block, apply, store) "
                f"{verifies / 2.5:.1f}x cheaper")
    gap = doc.get("min_block_interval_ms")
    final_note = (f"a transaction waits for the next block (the testnet's genesis puts at least {gap} ms between block timestamps: "
                  f"~{gap / 2:.0f} ms on average), then for the round's three message delays and the block's apply; p50 < 300 ms "
                  f"needs min_block_interval_ms well under 300 on the testnet" if gap else "")
    rows = [
        Row("consensus", f"committed tx/s, 4 validators ({offered:,.0f} tx/s offered)", doc["tx_s"], "tx/s", verify_s,
            "Ed25519 verify/s, one core", ">= 3,000 tx/s", doc["tx_s"] >= 3000, tx_note),
        Row("consensus", f"validator CPU per committed tx, mean of 4 ({final:,.0f} tx/s offered)", verifies, "Ed25519 verifies", 1.0,
            f"1 verify = {verify_us:.0f} us, same run", "<= 2.5 verifies", verifies <= 2.5, cpu_note),
    ]
    rows += [Row("consensus", f"CPU per committed tx, validator {node}", cpu * 1e6, "us", verify_us,
                 "one Ed25519 verify, us") for node, cpu in sorted(doc["cpu_s_per_tx"].items())]
    rows += [
        Row("consensus", f"finality p50, submit to commit ({final:,.0f} tx/s offered)", doc["p50_ms"], "ms", None, "",
            "< 300 ms", doc["p50_ms"] < 300, final_note),
        Row("consensus", f"finality p99 ({final:,.0f} tx/s offered)", doc["p99_ms"], "ms", None, "", "< 1,000 ms",
            doc["p99_ms"] < 1000),
        Row("consensus", "rounds per height", doc["rounds_per_height"], "rounds", 1.0, "all decided in round 0"),
    ]
    return rows


def cage_rows(doc: dict[str, Any]) -> list[Row]:
    rows = []
    for label, q in doc["queries"].items():
        rows.append(Row("cage", f"cage overhead per job, {label} query ({q['rows']:,} rows)", q["overhead_ms"], "ms",
                        q["in_process_ms"], "in-process DuckDB ms", "< 25 ms", q["overhead_ms"] < 25))
        rows.append(Row("cage", f"cage job, {label} query", q["cage_ms"], "ms", q["in_process_ms"], "in-process DuckDB ms"))
    return rows


def _rate_rows(bench: str, goals: dict[str, tuple[str, Callable[[float], bool]]]) -> Callable[[dict[str, Any]], list[Row]]:
    def rows(doc: dict[str, Any]) -> list[Row]:
        baseline = doc["rows"][0]
        out = []
        for r in doc["rows"]:
            goal, check = goals.get(r["name"], ("", None))
            out.append(Row(bench, r["name"], r["rate"], f"{r['unit']}/s", baseline["rate"], "Ed25519 verify/s",
                           goal, check(r["rate"]) if check else None))
        return out

    return rows


def jobs_rows(doc: dict[str, Any]) -> list[Row]:
    rows = [Row("jobs", r["figure"], r["value"], r["unit"], r["baseline"], r["baseline_label"], r["goal"], r["met"])
            for r in doc["rows"]]
    # The throughput goal is bounded by the CPU each verified job costs the whole testnet, over the idle floor.
    top = max(doc["configs"], key=lambda c: c["processing_nodes"])
    cpu = top.get("saturation", {}).get("cpu_per_job", {})
    cores = os.cpu_count() or 2
    if "marginal_s" in cpu:
        marginal, floor = cpu["marginal_s"], cpu["idle_cores"]
        note = (f"a verified job costs {marginal * 1000:,.0f} ms CPU over all daemons and cages above their idle floor of "
                f"{floor:.2f} cores (the query in-process: {doc['baselines']['duckdb_ms']:.1f} ms): {cores} cores give at most "
                f"~{max(0.0, cores - floor) / marginal:.1f} jobs/s; 10 jobs/s needs ~{floor + 10 * marginal:.1f} cores at this cost, "
                f"or <= {max(0.0, cores - floor) * 100:.0f} ms CPU per job on {cores}")
        for r in rows:
            if r.figure.startswith("jobs/s verified at saturation"):
                r.note = note
    return rows


def duckdb_stmt_rows(doc: dict[str, Any]) -> list[Row]:
    """bench/duckdb_stmt.py: the fixed CPU of a small statement, the node's (one thread) beside DuckDB's default (two)."""
    one, two = doc["threads_1_us"], doc["threads_2_us"]
    return [Row("duckdb_stmt", f"DuckDB {name}, threads=1", one[name], "us", two[name], "threads=2 us") for name in one]


def scaling_rows(doc: dict[str, Any]) -> list[Row]:
    """bench/scaling.py (the IBFT simulator over a WAN model, virtual time): finality by validator count,
    beside the model's lower bound (three one-way delays over the median link)."""
    rows = []
    for silent in (False, True):
        for r in (r for r in doc["rows"] if r["silent"] == silent):
            tag = f"n={r['n']}, WAN model" + (", one silent validator" if silent else "")
            rows += [
                Row("scaling", f"finality p50, submit to quorum ({tag})", r["tx_quorum_p50_ms"], "ms", r["lower_bound_ms"],
                    "3 x median link ms"),
                Row("scaling", f"finality p99, submit to quorum ({tag})", r["tx_quorum_p99_ms"], "ms", r["lower_bound_ms"],
                    "3 x median link ms"),
            ]
        if not silent:
            rows += [Row("scaling", f"CPU per validator per height (n={r['n']}, WAN model)", r["cpu_ms_per_height"], "ms",
                         doc["model"]["verify_us"] / 1000, "one Ed25519 verify ms") for r in doc["rows"] if not r["silent"]]
    return rows


def adversary_rows(doc: dict[str, Any]) -> list[Row]:
    """Each attack beside the no-attack phase of the same run (the first row)."""
    base = doc["rows"][0]
    rows = []
    for r in doc["rows"][1:]:
        name = r["attack"]
        rows += [
            Row("adversary", f"honest call p50 under {name}", r["p50_ms"], "ms", base["p50_ms"], "no attack"),
            Row("adversary", f"honest call p99 under {name}", r["p99_ms"], "ms", base["p99_ms"], "no attack"),
            Row("adversary", f"honest calls failed under {name}", r["failed_calls"], "calls", None, "",
                "0 (node stays up)", r["failed_calls"] == 0 and r["node0_alive"]),
            Row("adversary", f"committed tx/s under {name}", r["tx_s"], "tx/s", base["tx_s"] or None, "no attack"),
        ]
    return rows


def ingest_rows(doc: dict[str, Any]) -> list[Row]:
    duck, up = doc["duckdb"], doc["upload"]
    size = f"{doc['file']['bytes'] / 1e6:,.0f} MB CSV"
    return [
        Row("ingest", f"upload + register over p2p, {size}", up["mb_s"], "MB/s", duck["mb_s"], "DuckDB read_csv MB/s",
            ">= 50% of DuckDB", doc["met"]),
        Row("ingest", f"upload until stored, validated, replicated, {size}", up["sent_mb_s"], "MB/s", duck["mb_s"], "DuckDB read_csv MB/s"),
        Row("ingest", "receiving node peak RSS", up["node_rss_peak_mb"], "MiB", up["node_rss_start_mb"], "RSS before the upload"),
    ]


def cli_latency_rows(doc: dict[str, Any]) -> list[Row]:
    cli, base = doc["cli"], doc["baseline"]
    label = "python -c 'import trio, nacl.signing, cbor2' ms"
    return [
        Row("cli_latency", "metanode rpc node_status, median", cli["median_s"] * 1000, "ms", base["median_s"] * 1000, label,
            "<= 3x baseline", doc["met"]),
        Row("cli_latency", "metanode rpc node_status, p90", cli["p90_s"] * 1000, "ms", base["p90_s"] * 1000, label),
    ]


BENCHES: dict[str, tuple[str, Callable[[dict[str, Any]], list[Row]]]] = {
    "transport": ("transport.py", transport_rows),
    "cage": ("cage.py", cage_rows),
    "receipts": ("receipts.py", _rate_rows("receipts", {
        "bundle verify (headers cached)": (">= 2,000 bundles/s, one core", lambda rate: rate >= 2000)})),
    "mempool": ("mempool.py", _rate_rows("mempool", {})),  # the mempool issue set no figure to reach
    "duckdb_stmt": ("duckdb_stmt.py", duckdb_stmt_rows),
    "consensus": ("consensus.py", consensus_rows),
    "scaling": ("scaling.py", scaling_rows),
    "jobs": ("jobs.py", jobs_rows),
    "adversary": ("adversary.py", adversary_rows),
    "ingest": ("ingest.py", ingest_rows),
    "cli_latency": ("cli_latency.py", cli_latency_rows),
}


@dataclass
class Outcome:
    bench: str
    seconds: float
    rows: list[Row]
    error: str = ""


def run_bench(name: str, smoke: bool, timeout: float) -> Outcome:
    script, extract = BENCHES[name]
    command = [sys.executable, str(HERE / script), "--json", *(["--smoke"] if smoke else [])]
    start = time.perf_counter()
    try:
        done = subprocess.run(command, capture_output=True, text=True, timeout=timeout, stdin=subprocess.DEVNULL)
    except subprocess.TimeoutExpired:
        return Outcome(name, time.perf_counter() - start, [], f"timed out after {timeout:g} s")
    seconds = time.perf_counter() - start
    if done.returncode != 0:
        tail = " | ".join(done.stderr.strip().splitlines()[-3:])
        return Outcome(name, seconds, [], f"exit status {done.returncode}: {tail[-400:]}")
    lines = [line for line in done.stdout.splitlines() if line.strip()]
    try:
        return Outcome(name, seconds, extract(json.loads(lines[-1])))
    except (IndexError, ValueError, KeyError, TypeError) as exc:
        return Outcome(name, seconds, [], f"no usable JSON on stdout ({type(exc).__name__}: {exc})")


def _num(value: float | None) -> str:
    if value is None:
        return "-"
    if not math.isfinite(value):
        return "nan"
    return f"{value:,.2f}" if abs(value) < 100 else f"{value:,.0f}"


def render(outcomes: list[Outcome], smoke: bool) -> str:
    header = ("bench", "figure", "value", "unit", "baseline", "ratio", "goal", "met")
    lines = []
    for o in outcomes:
        if o.error:
            lines.append((o.bench, f"FAILED: {o.error}", "", "", "", "", "", ""))
        for r in o.rows:
            met = "-" if r.met is None else ("yes" if r.met else "no")
            lines.append((r.bench, r.figure, _num(r.value), r.unit,
                          f"{_num(r.baseline)} ({r.baseline_label})" if r.baseline is not None else "-",
                          _num(r.ratio), r.goal or "-", f"{met} (smoke)" if smoke and r.met is not None else met))
    widths = [min(70, max(len(h), *(len(line[i]) for line in lines))) for i, h in enumerate(header)] if lines else [len(h) for h in header]
    right = {2, 5}
    fmt = lambda cells: "  ".join((c.rjust(w) if i in right else c.ljust(w)) for i, (c, w) in enumerate(zip(cells, widths))).rstrip()  # noqa: E731
    times = ", ".join(f"{o.bench} {o.seconds:.0f} s" for o in outcomes)
    out = [fmt(header), fmt(["-" * w for w in widths]), *map(fmt, lines), "", f"run times: {times}"]
    notes = [r for o in outcomes for r in o.rows if r.met is False and r.note]
    if notes and not smoke:
        out += ["", "goals missed, and what bounds them (per-core costs measured in this run):"]
        out += [f"  {r.bench}: {r.figure}: {r.note}" for r in notes]
    if smoke:
        out.append("smoke sizes: the figures only show that every bench runs; goals are judged on full runs")
    return "\n".join(out)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--smoke", action="store_true", help="every bench at tiny sizes (CI)")
    parser.add_argument("--only", default="", help=f"comma-separated subset of: {', '.join(BENCHES)}")
    parser.add_argument("--timeout", type=float, default=None, help="seconds per bench (default 600 smoke, 3600 full)")
    parser.add_argument("--json", action="store_true", help="print every row as JSON instead of the table")
    parser.add_argument("--json-out", type=Path, help="also write every row as JSON to this file")
    args = parser.parse_args(argv)
    names = [n.strip() for n in args.only.split(",") if n.strip()] or list(BENCHES)
    unknown = [n for n in names if n not in BENCHES]
    if unknown:
        parser.error(f"--only: unknown bench {', '.join(unknown)} (known: {', '.join(BENCHES)})")
    timeout = args.timeout or (600.0 if args.smoke else 3600.0)
    outcomes = []
    for name in names:
        print(f"running {name} ...", file=sys.stderr, flush=True)
        outcomes.append(run_bench(name, args.smoke, timeout))
    doc = {"smoke": args.smoke, "benches": [
        {"bench": o.bench, "seconds": o.seconds, "error": o.error,
         "rows": [{**asdict(r), "ratio": r.ratio} for r in o.rows]} for o in outcomes]}
    if args.json_out:
        args.json_out.write_text(json.dumps(doc, indent=1) + "\n")
    print(json.dumps(doc) if args.json else render(outcomes, args.smoke))
    if any(o.error for o in outcomes):
        return 1
    if not args.smoke and any(r.met is False for o in outcomes for r in o.rows):
        return 4
    return 0


if __name__ == "__main__":
    sys.exit(main())
