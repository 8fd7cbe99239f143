"""Cage overhead: the same queries in-process on DuckDB and through the cage.

    .venv/bin/python bench/cage.py [--runs N] [--policy processing] [--back-to-back]

The baseline runs each query on one long-lived in-process DuckDB connection
(threads=1, as in the cage) and fetches every row. The cage runs the same
SQL as a job through a started CagePool (all confinement layers, DuckDB
sandbox, canonical result, witness). Overhead = cage - baseline, per job,
as medians. Goal: under 25 ms per job.

Each cage job follows a baseline query, so the fork server has usually
forked and warmed the next job's child by the time the job arrives, as it
has between the jobs a daemon is given. With ``--back-to-back`` each
measured cage job comes right after another cage job instead (its child
is still being forked and warmed up when it arrives: the worst case); the
baseline queries stay interleaved, so both sides see the same load.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import duckdb

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from node.cage.job import JobSpec  # noqa: E402
from node.cage.pool import CagePool  # noqa: E402

QUERIES = {
    "small": ("sales_small", "SELECT region, count(*) AS n, sum(amount) AS total FROM sales GROUP BY region"),
    "medium": ("sales_medium", "SELECT region, product, count(*) AS n, sum(amount) AS total, avg(amount) AS mean "
               "FROM sales GROUP BY region, product"),
}
ROWS = {"sales_small": 1_000, "sales_medium": 200_000}


def make_inputs(directory: Path) -> dict[str, Path]:
    """Deterministic CSV inputs: 1k rows (small) and 200k rows (medium)."""
    con = duckdb.connect(config={"threads": 1})
    paths = {}
    for name, rows in ROWS.items():
        path = directory / f"{name}.csv"
        con.execute(
            f"COPY (SELECT i AS id, 'r' || (i % 7) AS region, 'p' || (i % 50) AS product, "
            f"((i * 7919) % 10007) / 100.0 AS amount FROM range({rows}) t(i)) TO '{path}' (HEADER)"
        )
        paths[name] = path
    con.close()
    return paths


def median_ms(samples: list[float]) -> float:
    return statistics.median(samples) * 1000


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=20)
    parser.add_argument("--policy", default="processing")
    parser.add_argument("--back-to-back", action="store_true",
                        help="measure cage jobs sent right after another cage job (the worst case)")
    parser.add_argument("--smoke", action="store_true", help="3 runs per query (CI)")
    parser.add_argument("--json", action="store_true", help="print the figures as one JSON object (bench/run_all.py)")
    args = parser.parse_args()
    if args.smoke:
        args.runs = 3
    figures: dict[str, dict[str, float]] = {}
    table_out = contextlib.redirect_stdout(io.StringIO()) if args.json else contextlib.nullcontext()  # --json: JSON only
    with table_out, tempfile.TemporaryDirectory(prefix="metanode-bench-cage-") as tmp:
        inputs = make_inputs(Path(tmp))
        baseline = duckdb.connect(config={"threads": 1})
        with CagePool() as pool:
            print(f"host layers: {', '.join(sorted(pool.capabilities.layers))}; "
                  f"duckdb {pool.versions['duckdb']}, python {pool.versions['python']}; runs={args.runs}; "
                  f"{'back-to-back' if args.back_to_back else 'interleaved with the baseline'}; "
                  f"load average {os.getloadavg()[0]:.2f}")
            print(f"{'query':<8} {'in-process ms':>14} {'cage ms':>9} {'overhead ms':>12} {'cage child cpu ms':>18}")
            for label, (input_name, sql) in QUERIES.items():
                path = str(inputs[input_name])
                in_process_sql = sql.replace("FROM sales", f"FROM read_csv('{path}')")
                job = JobSpec(kind="sql", policy=args.policy, inputs={"sales": path}, sql=sql,
                              seed=b"bench", clock=1_700_000_000)
                pool.run(job)  # first run pays nothing special, but keep both sides warm
                baseline.execute(in_process_sql).fetchall()
                base_times, cage_times, child_cpu = [], [], []

                def run_baseline() -> None:
                    start = time.perf_counter()
                    baseline.execute(in_process_sql).fetchall()
                    base_times.append(time.perf_counter() - start)

                def run_cage(measured: bool = True) -> None:
                    start = time.perf_counter()
                    outcome = pool.run(job)
                    elapsed = time.perf_counter() - start
                    if not outcome.ok:
                        raise SystemExit(f"cage job failed: {outcome.status}: {outcome.detail}")
                    if measured:
                        cage_times.append(elapsed)
                        child_cpu.append(outcome.observed["cpu_us"] / 1e6)

                for _ in range(args.runs):
                    run_baseline()
                    if args.back_to_back:
                        run_cage(measured=False)
                    run_cage()
                base, cage = median_ms(base_times), median_ms(cage_times)
                print(f"{label:<8} {base:>14.2f} {cage:>9.2f} {cage - base:>12.2f} {median_ms(child_cpu):>18.2f}")
                figures[label] = {"in_process_ms": base, "cage_ms": cage, "overhead_ms": cage - base,
                                  "child_cpu_ms": median_ms(child_cpu), "rows": ROWS[input_name]}
        print("goal: overhead under 25 ms per job")
    if args.json:
        print(json.dumps({"bench": "cage", "smoke": args.smoke, "runs": args.runs,
                          "back_to_back": args.back_to_back, "queries": figures}))


if __name__ == "__main__":
    main()
