"""Ingest benchmark: a large CSV uploaded over p2p and registered on chain,
beside DuckDB's own ``read_csv`` of the same file in the same run.

A CSV of ``--size-mb`` (1 GB by default; columns day DATE, product VARCHAR,
units BIGINT, price_cents BIGINT, region VARCHAR) is generated with DuckDB.
Baseline, before any daemon starts: DuckDB loads it in-process
(``CREATE TABLE t AS SELECT * FROM read_csv(path)``, default threads: all
cores), the best of ``--baseline-runs``. Then a fresh four-validator testnet
of real daemon processes starts, and one tenant uploads the file with the
client library (``AsyncClient.upload_dataset``: chunks over the
authenticated JSON-RPC stream, validated, replicated to a second storage
node, its data.store receipt on chain, then ``dataset.register`` committed).

Figures: end-to-end MB/s (upload start to registration committed) and the
MB/s until the storage node's answer (stored, validated, replicated), each
beside DuckDB's MB/s; the peak RSS of the receiving node and of this client
process (the file is streamed, so neither should grow with the file size).
The issue's goal is end-to-end >= 50% of DuckDB's rate.

    python bench/ingest.py                    # 1 GB
    python bench/ingest.py --size-mb 200 --keep
    python bench/ingest.py --smoke --json     # 8 MB (CI)
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import duckdb
import psutil
import trio

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from node.base.keys import Identity  # noqa: E402
from node.base.logging import configure_client_logging  # noqa: E402
from node.sdk.client import AsyncClient  # noqa: E402
from node.testnet import layout, processes  # noqa: E402

GOAL_RATIO = 0.5
ROW_BYTES_ESTIMATE = 37.2  # bytes per generated row (measured), to size the file


def generate_csv(path: Path, size_mb: float) -> dict[str, Any]:
    """A CSV of about ``size_mb`` MB; returns its size and row count."""
    rows = max(1000, int(size_mb * 1e6 / ROW_BYTES_ESTIMATE))
    con = duckdb.connect()
    try:
        con.execute(f"""
            COPY (
                SELECT DATE '2020-01-01' + CAST(i % 3650 AS INTEGER) AS day,
                       'product-' || CAST(i % 97 AS VARCHAR) AS product,
                       CAST((i * 7919) % 1000 AS BIGINT) AS units,
                       CAST((i * 104729) % 100000 AS BIGINT) AS price_cents,
                       ['north', 'south', 'east', 'west'][1 + i % 4] AS region
                FROM range({rows}) t(i)
            ) TO '{path}' (HEADER, DELIMITER ',')""")
    finally:
        con.close()
    return {"bytes": path.stat().st_size, "rows": rows}


def duckdb_baseline(path: Path, runs: int) -> dict[str, Any]:
    """DuckDB's own load of the file (best of ``runs``), in this process, all cores."""
    times = []
    for _ in range(runs):
        con = duckdb.connect()
        try:
            start = time.perf_counter()
            con.execute("CREATE TABLE t AS SELECT * FROM read_csv($p)", {"p": str(path)})
            times.append(time.perf_counter() - start)
            loaded = con.execute("SELECT count(*) FROM t").fetchone()
        finally:
            con.close()
    size = path.stat().st_size
    return {"seconds": min(times), "mb_s": size / 1e6 / min(times), "rows": int(loaded[0]) if loaded else 0,
            "threads": os.cpu_count()}


class RssWatch:
    """The peak resident set of a process, sampled every 50 ms."""

    def __init__(self, pid: int) -> None:
        self.process = psutil.Process(pid)
        self.start_bytes = self.process.memory_info().rss
        self.peak_bytes = self.start_bytes

    async def run(self) -> None:
        while True:
            try:
                self.peak_bytes = max(self.peak_bytes, self.process.memory_info().rss)
            except psutil.Error:
                return
            await trio.sleep(0.05)


async def wait_ready(address: str, identity: Identity, timeout: float) -> None:
    """Until the node answers and at least two storage nodes are registered on chain."""
    with trio.fail_after(timeout):
        while True:
            try:
                async with AsyncClient.connect(address, identity) as probe:
                    health = await probe.health()
                if health.get("height", 0) >= 2 and health.get("processing_nodes", 0) >= 2:
                    return
            except Exception:
                pass
            await trio.sleep(0.5)


async def upload(address: str, identity: Identity, path: Path, node_pid: int) -> dict[str, Any]:
    await wait_ready(address, identity, 180)
    node_rss, client_rss = RssWatch(node_pid), RssWatch(os.getpid())
    marks: dict[str, float] = {}
    async with trio.open_nursery() as nursery:
        nursery.start_soon(node_rss.run)
        nursery.start_soon(client_rss.run)
        async with AsyncClient.connect(address, identity, timeout=30) as client:
            def progress(sent: int, total: int, *rest: Any) -> None:
                # Acknowledged chunks until the last one; the final call's answer
                # (sent == total) comes once the node stored, validated and replicated.
                if sent < total:
                    marks["transferred"] = time.perf_counter()
                    marks["transferred_bytes"] = sent
                elif "sent" not in marks:
                    marks["sent"] = time.perf_counter()

            start = time.perf_counter()
            info = await client.upload_dataset(path, name="ingest", progress=progress)
            marks["registered"] = time.perf_counter()
        nursery.cancel_scope.cancel()
    size = path.stat().st_size
    end = marks["registered"] - start
    sent = marks.get("sent", marks["registered"]) - start
    transferred = marks.get("transferred", start + sent) - start
    return {
        "transfer_seconds": transferred, "transfer_mb_s": marks.get("transferred_bytes", size) / 1e6 / max(transferred, 1e-9),
        "seconds": end, "mb_s": size / 1e6 / end, "sent_seconds": sent, "sent_mb_s": size / 1e6 / sent,
        "node_rss_start_mb": node_rss.start_bytes / 2**20, "node_rss_peak_mb": node_rss.peak_bytes / 2**20,
        "client_rss_start_mb": client_rss.start_bytes / 2**20, "client_rss_peak_mb": client_rss.peak_bytes / 2**20,
        "digest": info.get("digest"), "row_count": info.get("row_count"), "version": info.get("version"),
    }


def run(args: argparse.Namespace) -> dict[str, Any]:
    work = Path(tempfile.mkdtemp(prefix="metanode-bench-ingest-"))
    ok = False
    try:
        csv_path = work / "ingest.csv"
        generated = generate_csv(csv_path, args.size_mb)
        base = duckdb_baseline(csv_path, args.baseline_runs)
        net = work / "testnet"
        plans = layout.plan_testnet(4, seed="bench-ingest")
        layout.write_testnet(net, plans)
        try:
            pids = processes.up(net)
            node_pid = pids[plans[0].name] if plans[0].name in pids else next(iter(pids.values()))
            identity = Identity.from_label("bench-ingest/tenant")
            figures = trio.run(upload, plans[0].address, identity, csv_path, node_pid)
            ok = True
        finally:
            processes.down(net)
            if not ok:
                print(f"ingest bench failed; testnet logs kept in {net}", file=sys.stderr)
        ratio = figures["mb_s"] / base["mb_s"]
        return {"bench": "ingest", "smoke": args.smoke, "file": generated, "duckdb": base, "upload": figures,
                "ratio": ratio, "goal": f">= {GOAL_RATIO:.0%} of DuckDB read_csv", "met": ratio >= GOAL_RATIO,
                "load_average": os.getloadavg()}
    finally:
        if ok and not args.keep:
            shutil.rmtree(work, ignore_errors=True)
        elif args.keep:
            print(f"ingest bench: files kept in {work}", file=sys.stderr)


def render(report: dict[str, Any]) -> str:
    f, b, u = report["file"], report["duckdb"], report["upload"]
    return "\n".join([
        f"file: {f['bytes'] / 1e6:,.1f} MB, {f['rows']:,} rows",
        f"DuckDB read_csv (baseline, {b['threads']} threads): {b['seconds']:.2f} s = {b['mb_s']:,.1f} MB/s",
        f"chunks acknowledged (all but the last):     {u['transfer_seconds']:.2f} s = {u['transfer_mb_s']:,.1f} MB/s",
        f"upload until the storage node's answer:     {u['sent_seconds']:.2f} s = {u['sent_mb_s']:,.1f} MB/s"
        f"  (the last {u['sent_seconds'] - u['transfer_seconds']:.2f} s: last chunk, hash check, validation, replication)",
        f"upload + register (committed on chain):      {u['seconds']:.2f} s = {u['mb_s']:,.1f} MB/s"
        f"  = {report['ratio']:.0%} of DuckDB (goal {report['goal']}: {'met' if report['met'] else 'not met'})",
        f"receiving node RSS: {u['node_rss_start_mb']:,.0f} MiB before, {u['node_rss_peak_mb']:,.0f} MiB peak; "
        f"client RSS {u['client_rss_start_mb']:,.0f} MiB before, {u['client_rss_peak_mb']:,.0f} MiB peak",
        f"load average: {', '.join(f'{x:.2f}' for x in report['load_average'])}",
    ])


def _interrupt(signum: int, frame: Any) -> None:
    raise KeyboardInterrupt


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size-mb", type=float, default=1024.0, help="size of the generated CSV (default 1024)")
    parser.add_argument("--baseline-runs", type=int, default=2, help="DuckDB loads of the file; the best counts")
    parser.add_argument("--smoke", action="store_true", help="an 8 MB file (CI)")
    parser.add_argument("--keep", action="store_true", help="keep the file and the testnet directory")
    parser.add_argument("--json", action="store_true", help="print the report as one JSON object")
    args = parser.parse_args(argv)
    if args.smoke:
        args.size_mb, args.baseline_runs = 8.0, 1
    if args.size_mb <= 0 or args.baseline_runs < 1:
        parser.error("need --size-mb > 0 and --baseline-runs >= 1")
    configure_client_logging()
    signal.signal(signal.SIGTERM, _interrupt)
    report = run(args)
    print(json.dumps(report) if args.json else render(report))
    return 0


if __name__ == "__main__":
    sys.exit(main())
