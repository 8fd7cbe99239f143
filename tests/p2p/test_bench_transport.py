"""The transport benchmark runs (tiny sizes) and prints every figure beside its baseline."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

BENCH = Path(__file__).resolve().parents[2] / "bench" / "transport.py"


def test_transport_bench_smoke():
    done = subprocess.run([sys.executable, str(BENCH), "--smoke"], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    assert "BPCI" in lines[1] and "plain TCP" in lines[1] and "ratio" in lines[1]
    for figure in ("round trip 100 B, median", "bulk, one stream", "connection set-up"):
        row = next(line for line in lines if line.startswith(figure))
        bpci, tcp, ratio = (float(x) for x in row[34:].split()[:3])
        assert bpci > 0 and tcp > 0
        # Figures print with one decimal: the ratio must lie within that rounding.
        low, high = (bpci - 0.05) / (tcp + 0.05), (bpci + 0.05) / max(tcp - 0.05, 1e-9)
        assert low - 0.01 <= ratio <= high + 0.01, row
