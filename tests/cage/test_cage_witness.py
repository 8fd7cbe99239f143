"""Witness records, canonical results, and replay."""

from __future__ import annotations

import math
import struct
import subprocess
import sys
from pathlib import Path

import pytest

from node.base.codec import decode, encode
from node.cage.job import JobSpec
from node.cage.replay import replay
from node.cage.results import CANONICAL_NAN, encode_float, encode_result
from node.cage.witness import WitnessError, decode_witness_file, inputs_root, witness_digest

ROOT = Path(__file__).resolve().parents[2]


def test_float_encoding_is_ieee_bits_with_one_nan():
    assert encode_float(1.5) == struct.pack(">d", 1.5)
    other_nan = struct.unpack(">d", struct.pack(">Q", 0x7FF8000000000001))[0]
    assert math.isnan(other_nan)
    assert encode_float(other_nan) == encode_float(float("nan")) == CANONICAL_NAN
    assert encode_float(-0.0) != encode_float(0.0)


def test_result_rows_have_one_order():
    columns = [("k", "INTEGER"), ("v", "DOUBLE")]
    assert encode_result(columns, [[2, 0.5], [1, None]]) == encode_result(columns, [[1, None], [2, 0.5]])
    assert encode_result(columns, [[1, 0.5]]) != encode_result([("k", "BIGINT"), ("v", "DOUBLE")], [[1, 0.5]])


def test_witness_record_contents(pool, csv_input: Path):
    outcome = pool.run(JobSpec(kind="sql", policy="processing", inputs={"sales": str(csv_input)},
                               sql="SELECT count(*) AS n FROM sales", seed=b"x", clock=42))
    assert outcome.ok, outcome.detail
    record, digest, unhashed = decode_witness_file(outcome.witness_file)
    assert record == outcome.witness and digest == outcome.witness_digest == witness_digest(record)
    [item] = record["inputs"]
    assert item["name"] == "sales" and item["size"] == csv_input.stat().st_size
    assert record["inputs_root"] == inputs_root(record["inputs"])
    assert record["code"]["worker"] == pool.worker_digest
    assert record["code"]["duckdb"] == pool.versions["duckdb"]
    assert record["environment"]["PYTHONHASHSEED"] == "0" and record["environment"]["TZ"] == "UTC"
    assert record["clock"] == 42 and record["job"]["sql"] == "SELECT count(*) AS n FROM sales"
    assert record["result_digest"] == outcome.result_digest
    # Resource use and local paths are kept outside the digest.
    assert "observed" not in record and unhashed["observed"]["cpu_us"] > 0
    assert unhashed["input_paths"] == {"sales": str(csv_input)}


def test_tampered_witness_is_rejected(pool):
    outcome = pool.run(JobSpec(kind="sql", policy="processing", sql="SELECT 1 AS one"))
    value = decode(outcome.witness_file)
    value["record"]["clock"] = 7
    with pytest.raises(WitnessError, match="does not match its digest"):
        decode_witness_file(encode(value))
    with pytest.raises(WitnessError, match="not a witness file"):
        decode_witness_file(b"\x00garbage")


def test_replay_matches_and_detects_a_changed_input(pool, csv_input: Path, tmp_path: Path):
    outcome = pool.run(JobSpec(kind="sql", policy="processing", inputs={"sales": str(csv_input)},
                               sql="SELECT region, sum(amount) AS t FROM sales GROUP BY region", seed=b"r"))
    report = replay(pool, outcome.witness_file)
    assert report.matches, [c for c in report.checks if not c[1]]
    changed = tmp_path / "changed.csv"
    changed.write_text(csv_input.read_text() + "east,1.0\n", encoding="utf-8")
    report = replay(pool, outcome.witness_file, {"sales": str(changed)})
    failed = {what for what, equal, _, _ in report.checks if not equal}
    assert {"input sales", "inputs root", "result", "witness"} <= failed


def test_cli_run_and_replay(tmp_path: Path, csv_input: Path):
    witness = tmp_path / "out.cbor"
    run = subprocess.run(
        [sys.executable, "-m", "node", "cage", "run", "--policy", "processing", "--input", f"sales={csv_input}",
         "--sql", "SELECT region, count(*) AS n FROM sales GROUP BY region", "--witness", str(witness)],
        capture_output=True, text=True, cwd=ROOT, timeout=120)
    assert run.returncode == 0, run.stderr
    assert "north\t2" in run.stdout and "witness digest:" in run.stdout
    ok = subprocess.run([sys.executable, "-m", "node", "cage", "replay", str(witness)],
                        capture_output=True, text=True, cwd=ROOT, timeout=120)
    assert ok.returncode == 0, ok.stderr
    assert "replay matches the witness" in ok.stdout
    csv_input.write_text("region,amount\nwest,9.0\n", encoding="utf-8")
    bad = subprocess.run([sys.executable, "-m", "node", "cage", "replay", str(witness)],
                         capture_output=True, text=True, cwd=ROOT, timeout=120)
    assert bad.returncode == 4
    assert "MISMATCH input sales" in bad.stdout and "replay does not match" in bad.stderr


def test_cli_refuses_hostile_sql_in_one_line(csv_input: Path):
    done = subprocess.run(
        [sys.executable, "-m", "node", "cage", "run", "--input", f"sales={csv_input}",
         "--sql", "ATTACH 'x.db'"], capture_output=True, text=True, cwd=ROOT, timeout=120)
    assert done.returncode == 1
    assert "status: refused (SQL refused: only SELECT statements are allowed, got ATTACH)" in done.stdout
    assert "Traceback" not in done.stderr
