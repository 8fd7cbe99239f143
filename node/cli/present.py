"""Result tables for people and scripts: aligned text, CSV and JSON.

Cells arrive as JSON values from ``analytics_result`` (node/roles/artifacts.py:
numbers, exact decimal strings, ISO dates, NULL as None).
"""

from __future__ import annotations

import csv
import io
import json
from collections.abc import Sequence
from typing import Any

NUMERIC = ("INT", "DECIMAL", "DOUBLE", "FLOAT", "REAL", "NUMERIC", "HUGEINT", "BIGINT", "SMALLINT", "TINYINT", "UBIGINT", "UINTEGER")


def _text(cell: Any) -> str:
    if cell is None:
        return "NULL"
    if isinstance(cell, bool):
        return "true" if cell else "false"
    if isinstance(cell, float):
        return repr(cell)  # the shortest text that reads back as the same double: never rounded away
    return str(cell)


def format_table(columns: Sequence[Sequence[str]], rows: Sequence[Sequence[Any]], *, max_rows: int | None = None) -> str:
    """An aligned text table (numbers right-aligned); with ``max_rows``, the
    first rows and a line saying how many were left out."""
    shown = list(rows if max_rows is None else rows[:max_rows])
    names = [str(c[0]) for c in columns]
    right = [any(str(c[1]).upper().startswith(n) for n in NUMERIC) for c in columns]
    cells = [[_text(v) for v in row] for row in shown]
    widths = [max([len(n)] + [len(r[i]) for r in cells]) for i, n in enumerate(names)]

    def line(values: Sequence[str]) -> str:
        return "  ".join(v.rjust(w) if r else v.ljust(w) for v, w, r in zip(values, widths, right)).rstrip()

    out = [line(names), "  ".join("-" * w for w in widths)]
    out += [line(r) for r in cells]
    if len(shown) < len(rows):
        out.append(f"... {len(rows) - len(shown)} more rows (use --format csv or json for all)")
    out.append(f"({len(rows)} row{'s' if len(rows) != 1 else ''})")
    return "\n".join(out)


def format_csv(columns: Sequence[Sequence[str]], rows: Sequence[Sequence[Any]]) -> str:
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow([c[0] for c in columns])
    for row in rows:
        writer.writerow(["" if v is None else v for v in row])
    return buffer.getvalue()


def format_result(result: dict[str, Any], fmt: str) -> str:
    if fmt == "json":
        return json.dumps(result, indent=2, sort_keys=True)
    if fmt == "csv":
        return format_csv(result["columns"], result["rows"]).rstrip("\n")
    return format_table(result["columns"], result["rows"])
