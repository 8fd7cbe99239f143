"""bench/receipts.py --smoke runs and prints every row of its table."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parents[2] / "bench" / "receipts.py"


def test_bench_smoke_prints_the_table(capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> None:
    spec = importlib.util.spec_from_file_location("metanode_bench_receipts", BENCH)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    monkeypatch.setitem(sys.modules, spec.name, module)  # dataclasses look their module up
    spec.loader.exec_module(module)
    assert module.main(["--smoke"]) == 0
    out = capsys.readouterr().out.splitlines()
    names = [line.split("  ")[0] for line in out[2:]]
    assert names == [
        "Ed25519 verify (PyNaCl, baseline)",
        "receipt envelope verify",
        "inclusion proof verify",
        "inclusion proof from DuckDB",
        "log append (DuckDB)",
        "bundle verify (headers cached)",
        "bundle verify (cold)",
        "bundle build (DuckDB)",
    ]
    assert out[2].split()[-1] == "1.00"  # the baseline compared with itself
    rows = dict(zip(names, out[2:]))
    for name in ("bundle verify (headers cached)", "bundle verify (cold)", "bundle build (DuckDB)"):
        assert "bundles" in rows[name]


def test_checkpoint_bench_smoke_prints_both_figures() -> None:
    """bench/receipt_log_checkpoint.py --smoke: the log's checkpoint beside the version 1 baseline."""
    import json
    import subprocess

    done = subprocess.run([sys.executable, str(BENCH.parent / "receipt_log_checkpoint.py"), "--smoke", "--json"],
                          capture_output=True, text=True, timeout=120, check=True)
    doc = json.loads(done.stdout.splitlines()[-1])
    assert doc["metric"] == "receipt_log_checkpoint" and doc["stored_receipts"] == 2000
    assert doc["checkpoint_cpu_ms"] > 0 and doc["v1_checkpoint_cpu_ms"] > 0
