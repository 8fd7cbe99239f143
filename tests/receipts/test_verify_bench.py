"""bench/receipts.py --smoke prints the bundle rows beside the Ed25519 baseline."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parents[2] / "bench" / "receipts.py"


def test_bench_smoke_prints_bundle_rows(capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> None:
    spec = importlib.util.spec_from_file_location("metanode_bench_receipts_bundles", BENCH)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    monkeypatch.setitem(sys.modules, spec.name, module)  # dataclasses look their module up
    spec.loader.exec_module(module)
    assert module.main(["--smoke"]) == 0
    lines = capsys.readouterr().out.splitlines()
    rows = {line.split("  ")[0]: line for line in lines[2:]}
    assert lines[2].startswith("Ed25519 verify (PyNaCl, baseline)")
    for name in ("bundle verify (headers cached)", "bundle verify (cold)", "bundle build (DuckDB)"):
        assert name in rows
        assert "bundles" in rows[name]
