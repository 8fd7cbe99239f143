"""bench/run_all.py --smoke runs every benchmark (tiny sizes, as CI does) and
turns each one's JSON into its rows of the one table.

One test per bench (``--only NAME``), so that pytest-xdist spreads them over
its workers; one more checks that the table lists every bench in order."""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.timeout(1500)

# The figures each bench must produce (a prefix of the figure's name is enough).
EXPECTED = {
    "transport": ["BPCI round trip 100 B, median", "BPCI round trip 100 B, p99", "BPCI bulk, one stream", "BPCI bulk CPU, both ends, per MB",
                  "BPCI connection set-up"],
    "cage": ["cage overhead per job", "cage job, small query", "cage overhead per job, medium query", "cage job, medium query"],
    "receipts": ["Ed25519 verify (PyNaCl, baseline)", "receipt envelope verify", "inclusion proof verify",
                 "inclusion proof from DuckDB", "log append (DuckDB)", "bundle verify (headers cached)",
                 "bundle verify (cold)", "bundle build (DuckDB)"],
    "mempool": ["Ed25519 verify (PyNaCl, baseline)", "decode_tx", "mempool admit (new txs)", "mempool admit (signature cached)",
                "mempool reject duplicate", "mempool reap", "mempool on_commit", "store append_block (DuckDB file)", "store tx_by_hash"],
    "duckdb_stmt": ["DuckDB select 1, threads=1", "DuckDB point read by primary key, threads=1",
                    "DuckDB one-row insert, committed, threads=1"],
    "consensus": ["committed tx/s, 4 validators", "validator CPU per committed tx",
                  *(f"CPU per committed tx, validator node{i}" for i in range(4)),
                  "finality p50, submit to commit (50 tx/s offered)", "finality p99 (50 tx/s offered)", "rounds per height"],
    "scaling": [*(f"finality {q}, submit to quorum (n={n}, WAN model)" for n in (4, 16, 64) for q in ("p50", "p99")),
                *(f"CPU per validator per height (n={n}, WAN model)" for n in (4, 16, 64)),
                *(f"finality {q}, submit to quorum (n={n}, WAN model, one silent validator)" for n in (4, 16, 64) for q in ("p50", "p99"))],
    "jobs": ["jobs/s verified at 2 jobs/s offered (4 processing, r=2)", "submit to verified p50 at 2 jobs/s offered (4 processing, r=2)",
             "submit to verified p99 at 2 jobs/s offered (4 processing, r=2)",
             "CPU per verified job, all daemons and cages, offered (4 processing, r=2)",
             "CPU per verified job, one validator+scheduler+gateway+processing+storage daemon + its cages (4 processing, r=2)"],
    "adversary": [f"{figure} under {attack}"
                  for attack in ("silent_tcp", "garbage", "batch_flood")  # the smoke run's (tests/test_adversary.py: all)
                  for figure in ("honest call p50", "honest call p99", "honest calls failed", "committed tx/s")],
    "ingest": ["upload + register over p2p", "upload until stored, validated, replicated", "receiving node peak RSS"],
    "cli_latency": ["metanode rpc node_status, median", "metanode rpc node_status, p90"],
}
WITH_GOALS = {"BPCI round trip 100 B, median", "BPCI bulk, one stream", "cage overhead per job",
              "bundle verify (headers cached)", "committed tx/s, 4 validators", "validator CPU per committed tx",
              "finality p50, submit to commit", "finality p99 (", "jobs/s verified at saturation", "submit to verified p50",
              "submit to verified p99", "job with an assigned node killed: marked missed", "honest calls failed under",
              "upload + register over p2p", "metanode rpc node_status, median"}


def test_run_all_knows_every_bench_in_order() -> None:
    sys.path.insert(0, str(ROOT / "bench"))
    try:
        import run_all
    finally:
        sys.path.remove(str(ROOT / "bench"))
    assert list(run_all.BENCHES) == list(EXPECTED)


@pytest.mark.parametrize("name", list(EXPECTED))
def test_run_all_smoke_produces_the_bench_rows(name: str, tmp_path: Path) -> None:
    out = tmp_path / "figures.json"
    done = subprocess.run([sys.executable, str(ROOT / "bench" / "run_all.py"), "--smoke", "--only", name, "--json-out", str(out)],
                          capture_output=True, text=True, timeout=1400, cwd=ROOT)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    doc = json.loads(out.read_text())
    assert doc["smoke"] is True
    benches = {b["bench"]: b for b in doc["benches"]}
    assert list(benches) == [name]
    figures = EXPECTED[name]
    bench = benches[name]
    assert bench["error"] == "", (name, bench["error"])
    got = [r["figure"] for r in bench["rows"]]
    assert len(got) == len(figures) and all(g.startswith(f) for g, f in zip(got, figures)), (name, got)
    for row in bench["rows"]:
        assert math.isfinite(row["value"]) and row["value"] >= 0, (name, row)  # every figure was measured
        if row["baseline"] is not None:
            assert row["baseline"] > 0 and math.isclose(row["ratio"], row["value"] / row["baseline"]), (name, row)
        has_goal = any(row["figure"].startswith(g) for g in WITH_GOALS)
        assert (row["goal"] != "") == has_goal and (row["met"] is not None) == has_goal, (name, row)
    if name == "consensus":
        assert next(r["value"] for r in bench["rows"] if r["figure"].startswith("committed tx/s")) > 0
    if name == "transport":
        assert next(r["value"] for r in bench["rows"] if r["figure"].startswith("BPCI bulk")) > 0
