"""Determinism: separate processes, seeds, inputs, floating-point aggregates."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

from node.cage.job import JobSpec

METANODE = [sys.executable, "-m", "node"]
ROOT = Path(__file__).resolve().parents[2]


def cli_run(*args: str) -> tuple[str, str]:
    """(result digest, witness digest) printed by `metanode cage run` in a new process."""
    done = subprocess.run([*METANODE, "cage", "run", *args], capture_output=True, text=True,
                          cwd=ROOT, timeout=120)
    assert done.returncode == 0, done.stderr
    result = re.search(r"result digest:\s+([0-9a-f]{64})", done.stdout).group(1)
    witness = re.search(r"witness digest:\s+([0-9a-f]{64})", done.stdout).group(1)
    return result, witness


def write_doubles(path: Path) -> None:
    # Values of wildly different magnitudes: summation order changes the bits.
    lines = ["g,x"] + [f"{i % 13},{(i * 7919 % 10007) * 10.0 ** ((i % 17) - 8)!r}" for i in range(20000)]
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")


def test_same_job_in_three_processes_gives_identical_digests(tmp_path: Path):
    data = tmp_path / "d.csv"
    write_doubles(data)
    args = ("--policy", "processing", "--input", f"d={data}", "--seed", "00ff", "--clock", "1700000000",
            "--sql", "SELECT g, sum(x) AS s, avg(x) AS a, random() AS r FROM d GROUP BY g")
    runs = {cli_run(*args) for _ in range(3)}
    assert len(runs) == 1


def test_different_seed_or_input_gives_different_digests(pool, tmp_path: Path):
    data, other = tmp_path / "d.csv", tmp_path / "e.csv"
    write_doubles(data)
    other.write_text(data.read_text() + "1,1.0\n", encoding="utf-8")

    def digests(path: Path, seed: bytes) -> tuple[bytes, bytes]:
        outcome = pool.run(JobSpec(kind="sql", policy="processing", inputs={"d": str(path)}, seed=seed,
                                   sql="SELECT sum(x) AS s, random() AS r FROM d"))
        assert outcome.ok, outcome.detail
        return outcome.result_digest, outcome.witness_digest

    base = digests(data, b"a")
    assert digests(data, b"a") == base
    reseeded = digests(data, b"b")
    assert reseeded[0] != base[0] and reseeded[1] != base[1]
    changed = digests(other, b"a")
    assert changed[0] != base[0] and changed[1] != base[1]


def test_double_aggregate_is_bit_identical_across_runs(pool, tmp_path: Path):
    data = tmp_path / "d.csv"
    write_doubles(data)
    job = JobSpec(kind="sql", policy="processing", inputs={"d": str(data)},
                  sql="SELECT g, sum(x) AS s, avg(x) AS a, stddev(x) AS sd FROM d GROUP BY g")
    results = {pool.run(job).result for _ in range(3)}
    assert len(results) == 1 and None not in results


def test_python_fn_sees_the_derived_seed_and_logical_clock(pool):
    def run(seed: bytes, clock: int):
        outcome = pool.run(JobSpec(kind="python-fn", function="hostile.seed_and_clock", policy="processing",
                                   seed=seed, clock=clock))
        assert outcome.ok, outcome.detail
        return outcome

    first = run(b"s", 1_700_000_000)
    assert first.witness["clock"] == 1_700_000_000
    assert first.witness["seed"] != b"s" and len(first.witness["seed"]) == 32  # derived from the job
    assert run(b"s", 1_700_000_000).result == first.result
    assert run(b"t", 1_700_000_000).result != first.result
    assert run(b"s", 1_700_000_001).result != first.result
