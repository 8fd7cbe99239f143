"""CPU of one small DuckDB statement, with one worker thread and with two.

    .venv/bin/python bench/duckdb_stmt.py           # 500 of each
    .venv/bin/python bench/duckdb_stmt.py --smoke   # 20 of each (CI)

The node's database sees small statements (a point read, a few rows
written, a commit) many times per block, so their fixed cost is what a
block pays. Measured in process CPU time on a file database like the
node's; the baseline beside them is ``SELECT 1``, DuckDB's floor.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import duckdb


def _cpu_us(n: int, body: Callable[[int], object]) -> float:
    start = time.process_time()
    for i in range(n):
        body(i)
    return (time.process_time() - start) / n * 1e6


def measure(threads: int, n: int, directory: Path) -> dict[str, float]:
    conn = duckdb.connect(str(directory / f"t{threads}.duckdb"), config={"threads": threads})
    conn.execute("CREATE TABLE t (k BIGINT PRIMARY KEY, v BLOB)")
    conn.execute("INSERT INTO t SELECT range, 'x'::BLOB FROM range(1000)")

    def commit_one(i: int) -> None:
        conn.execute("BEGIN TRANSACTION")
        conn.execute("INSERT INTO t VALUES (?, ?)", (10_000 + i, b"x" * 100))
        conn.execute("COMMIT")

    figures = {
        "select 1": _cpu_us(n, lambda i: conn.execute("SELECT 1").fetchone()),
        "point read by primary key": _cpu_us(n, lambda i: conn.execute("SELECT v FROM t WHERE k = ?", (i % 1000,)).fetchone()),
        "one-row insert, committed": _cpu_us(n, commit_one),
    }
    conn.close()
    return figures


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--smoke", action="store_true")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    n = 20 if args.smoke else 500
    with tempfile.TemporaryDirectory() as tmp:
        one, two = measure(1, n, Path(tmp)), measure(2, n, Path(tmp))
    if args.json:
        print(json.dumps({"metric": "duckdb_stmt", "threads_1_us": one, "threads_2_us": two}))
        return 0
    print(f"DuckDB {duckdb.__version__}, CPU per statement (us), {n} each")
    print(f"{'statement':32s} {'threads=1':>10s} {'threads=2':>10s}")
    for name in one:
        print(f"{name:32s} {one[name]:10.0f} {two[name]:10.0f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
