"""Datasets in ``metanode analytics``: the upload's progress bar and what it
stored, refused rows, and the ``analytics datasets`` listing.

An upload shows one progress bar on a terminal (bytes, rate, time left: rich's
progress columns), redrawn as chunks go, and nothing while it runs on a pipe.
After it, the stored dataset in two lines on stderr: its name@version, rows,
columns, bytes and digest, then the inferred schema (column, type, nulls)::

    sales.csv -> sales@1: 120 rows, 4 columns, 3,456 bytes, digest 1a2b3c4d5e6f7a8b…
      day DATE · product VARCHAR · units BIGINT (2 nulls) · price_cents BIGINT

``analytics datasets`` joins the chain's registrations (``analytics_datasets``:
name, version, digest, which is the latest) with this node's catalog rows
(``dataset_list``: rows, schema, bytes), so a user sees the names and versions
jobs accept beside what the data holds.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from types import TracebackType
from typing import Any

from node.cli.present import is_terminal

REGISTRY_PAGE = 1000  # analytics_datasets' largest page
CATALOG_PAGE = 1000  # dataset_list's largest page
BAD_ROWS_SHOWN = 10


class UploadBar:
    """The upload's progress: one rich progress bar on a terminal, nothing on a pipe.

    Called as ``bar(done, total)`` by the client after each chunk."""

    def __init__(self, path: Path, *, enabled: bool) -> None:
        self.path = path
        self.enabled = enabled and is_terminal(sys.stderr)
        self._progress: Any = None
        self._task: Any = None
        self.started = time.monotonic()

    def __enter__(self) -> UploadBar:
        if self.enabled:
            from rich.console import Console
            from rich.progress import BarColumn, DownloadColumn, Progress, TextColumn, TimeRemainingColumn, TransferSpeedColumn

            console = Console(stderr=True, highlight=False, markup=False, emoji=False)
            self._progress = Progress(TextColumn("{task.description}", markup=False), BarColumn(), DownloadColumn(),
                                      TransferSpeedColumn(), TimeRemainingColumn(), console=console, transient=False)
            self._task = self._progress.add_task(f"uploading {self.path.name}", total=self.path.stat().st_size)
            self._progress.start()
        return self

    def __call__(self, done: int, total: int | None = None) -> None:
        if self._progress is not None:
            # The whole file is acknowledged once the node has stored it; registering on chain comes next.
            stored = bool(total) and done >= (total or 0)
            self._progress.update(self._task, completed=done, total=total or None,
                                  description=f"{'registering' if stored else 'uploading'} {self.path.name}")

    def __exit__(self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None) -> None:
        if self._progress is not None:
            self._progress.update(self._task, description=f"{'uploaded' if kind is None else 'upload failed:'} {self.path.name}")
            self._progress.stop()
            self._progress = None


def _short(digest: str) -> str:
    return digest[:16] + "…"


def column_summary(schema: Sequence[Mapping[str, Any]]) -> str:
    """``day DATE · units BIGINT (2 nulls)``: the inferred schema in one line."""
    parts = []
    for column in schema:
        nulls = column.get("nulls") or 0
        parts.append(f"{column['name']} {column.get('type', '?')}" + (f" ({nulls:,} null{'s' if nulls != 1 else ''})" if nulls else ""))
    return " · ".join(parts) if parts else "(no columns)"


def ref_of(info: Mapping[str, Any]) -> str:
    """``name@version`` of an upload's registration (just the name when it has none)."""
    registered = info.get("registered") or {}
    name = registered.get("name") or info.get("name") or "?"
    version = registered.get("version") or info.get("version")
    return f"{name}@{version}" if version else str(name)


def upload_lines(path: Path, info: Mapping[str, Any]) -> list[str]:
    """What an upload stored (or found already stored), for stderr."""
    rows, schema = info.get("row_count"), info.get("schema") or []
    facts = [f"{rows:,} rows" if isinstance(rows, int) else "? rows", f"{len(schema)} columns",
             f"{int(info.get('size') or 0):,} bytes", f"digest {_short(str(info.get('digest', '')))}"]
    if info.get("skipped_rows"):
        facts.append(f"{info['skipped_rows']:,} bad rows skipped")
    head = (f"{path.name}: already stored as {ref_of(info)}" if info.get("deduplicated")
            else f"{path.name} -> {ref_of(info)}")
    return [f"{head}: {', '.join(facts)}", f"  {column_summary(schema)}"]


def bad_rows_message(path: Path, data: Mapping[str, Any]) -> str:
    """The refusal of an upload with bad rows: each listed row by line number and reason."""
    listed: Sequence[Mapping[str, Any]] = data.get("bad_rows") or []
    count = int(data.get("count") or len(listed))
    lines = [f"{path.name}: {count:,} bad row{'s' if count != 1 else ''}; nothing was stored "
             "(--on-bad-rows skip stores the good rows only)"]
    for row in listed[:BAD_ROWS_SHOWN]:
        lines.append(f"  line {row.get('line', '?')}: {row.get('reason', '')}")
    if count > len(listed[:BAD_ROWS_SHOWN]):
        lines.append(f"  ... and {count - len(listed[:BAD_ROWS_SHOWN]):,} more")
    return "\n".join(lines)


async def fetch_datasets(rpc: Any) -> list[dict[str, Any]]:
    """The caller's datasets: every registration (name@version) joined with this
    node's catalog row of its digest, then the catalog rows registered under no
    name (uploaded over HTTP and not registered yet: ``version`` None).

    Each row (``analytics datasets --json``): name, version (int or None),
    latest (bool), digest (64 hex), format, size (bytes), row_count and
    columns (the catalog's ``[{name, type, nulls}]``; None when this node's
    catalog has no row of the digest), skipped_rows, height and tx of the
    registration, in_catalog (bool)."""
    registrations: list[dict[str, Any]] = []
    while True:
        page = (await rpc.call("analytics_datasets", {"limit": REGISTRY_PAGE, "offset": len(registrations)}))["datasets"]
        registrations += page
        if len(page) < REGISTRY_PAGE:
            break
    catalog: list[dict[str, Any]] = []
    while True:
        page = (await rpc.call("dataset_list", {"limit": CATALOG_PAGE, "offset": len(catalog)}))["datasets"]
        catalog += page
        if len(page) < CATALOG_PAGE:
            break
    by_digest = {row["digest"]: row for row in catalog}
    out = []
    for reg in registrations:
        row = by_digest.get(reg["digest"], {})
        out.append({"name": reg["name"], "version": reg["version"], "latest": reg.get("latest", False),
                    "digest": reg["digest"], "format": reg.get("format") or row.get("format"),
                    "size": reg.get("size", row.get("size")), "row_count": row.get("row_count"),
                    "columns": row.get("schema"), "skipped_rows": row.get("skipped_rows"),
                    "height": reg.get("height"), "tx": reg.get("tx"), "in_catalog": bool(row)})
    registered = {reg["digest"] for reg in registrations}
    for row in catalog:
        if row["digest"] not in registered:
            out.append({"name": row.get("name"), "version": None, "latest": False, "digest": row["digest"],
                        "format": row.get("format"), "size": row.get("size"), "row_count": row.get("row_count"),
                        "columns": row.get("schema"), "skipped_rows": row.get("skipped_rows"),
                        "height": None, "tx": None, "in_catalog": True})
    return out


def dataset_table(datasets: Sequence[Mapping[str, Any]]) -> tuple[list[Any], list[list[str]]]:
    """Columns and cells of the ``analytics datasets`` table."""
    from node.cli.present import Column

    columns = [Column("NAME"), Column("VERSION", right=True), Column("ROWS", right=True),
               Column("COLUMNS", right=True), Column("BYTES", right=True), Column("DIGEST")]
    rows = []
    for d in datasets:
        version = "unregistered" if d["version"] is None else f"{d['version']}" + (" (latest)" if d.get("latest") else "")
        rows.append([str(d.get("name") or ""), version,
                     "?" if d.get("row_count") is None else f"{d['row_count']:,}",
                     "?" if d.get("columns") is None else str(len(d["columns"])),
                     "?" if d.get("size") is None else f"{d['size']:,}", d["digest"]])
    return columns, rows
