"""Shared by the rate benchmarks: a measured row, a timer, and the table that
prints every figure beside the Ed25519 baseline measured in the same run."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass


@dataclass(frozen=True)
class Row:
    name: str
    unit: str
    ops: int
    seconds: float
    note: str = ""

    @property
    def rate(self) -> float:
        return self.ops / self.seconds


def timed(action: Callable[[], object]) -> float:
    """Seconds one call of ``action`` takes."""
    start = time.perf_counter()
    action()
    return time.perf_counter() - start


def rows_json(bench: str, rows: list[Row], *, smoke: bool) -> str:
    """The rows as one JSON object (``--json``; read by bench/run_all.py); rows[0] is the baseline."""
    import json

    return json.dumps({"bench": bench, "smoke": smoke, "rows": [
        {"name": r.name, "unit": r.unit, "ops": r.ops, "seconds": r.seconds, "rate": r.rate, "note": r.note} for r in rows]})


def render(rows: list[Row], baseline: Row) -> str:
    """A table of rows with their rate relative to ``baseline`` (the raw Ed25519 verify)."""
    header = ("measurement", "ops", "seconds", "rate/s", "us/op", "x Ed25519 verify", "note")
    lines = [
        (r.name, f"{r.ops:,}", f"{r.seconds:.2f}", f"{r.rate:,.0f} {r.unit}", f"{1e6 / r.rate:,.1f}",
         f"{r.rate / baseline.rate:.2f}", r.note)
        for r in rows
    ]
    widths = [max(len(h), *(len(line[i]) for line in lines)) for i, h in enumerate(header)]
    fmt = lambda cells: "  ".join(c.ljust(w) for c, w in zip(cells, widths)).rstrip()  # noqa: E731
    return "\n".join([fmt(header), fmt(["-" * w for w in widths]), *map(fmt, lines)])
