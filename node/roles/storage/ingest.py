"""Validation at the door: what an uploaded file holds, read the way jobs will read it.

:func:`inspect_upload` reads an uploaded file (untrusted bytes) in a
short-lived DuckDB connection that can open that file and one output file
and nothing else (single thread, bounded memory, no extensions, no spilling,
configuration locked). It

* refuses an empty file, and a CSV or JSON Lines file that is not UTF-8
  text, with a message in words;
* reads the file with the cage's own reader (node/cage/inputs.py), so the
  schema returned is the one every job on the dataset sees;
* reads every row strictly: a CSV row whose value does not parse as its
  column's type, with too few or too many fields, bad quoting or bad UTF-8,
  and a JSON Lines line that is not a JSON object, is a bad row, reported
  by line number (1-based line of the file where the row starts) and reason;
* with ``on_bad_rows="fail"`` refuses bad rows (DatasetBadRows: the first
  :data:`REPORTED_BAD_ROWS` and the count); with ``"skip"`` writes the good
  rows to a new file (Parquet written by DuckDB for CSV; the good lines for
  JSON Lines) which is stored instead of the upload.

Memory stays flat in the file size: DuckDB streams the file; bad rows are
recorded up to :data:`MAX_BAD_ROWS` (beyond that the file is refused
whatever ``on_bad_rows`` says); JSON Lines are scanned line by line with a
bounded line length. The format is documented in docs/storage.md.
"""

from __future__ import annotations

import json
import re
import secrets
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import duckdb

from node.cage.inputs import FORMATS, CsvReader, jsonl_reader_sql, sniff_csv_reader, sql_literal, text_problem
from node.cage.witness import input_format
from node.roles.storage.errors import DatasetBadRows, DatasetUnreadable, InvalidDataset

BAD_ROW_POLICIES = ("fail", "skip")
INSPECT_MEMORY_MB = 256
MAX_COLUMNS = 4096
REPORTED_BAD_ROWS = 10  # bad rows listed in a refusal
MAX_BAD_ROWS = 100_000  # bad row records kept while reading; more and the file is refused
MAX_JSON_LINE = 16 * 1024 * 1024  # bytes of one JSON Lines line (DuckDB's maximum_object_size)
_READ_BLOCK = 1024 * 1024
_BLANK = b" \t\r\n"

# DuckDB's reject_errors.error_type, in words.
_ERROR_KINDS = {
    "CAST": "bad value", "MISSING COLUMNS": "short row", "TOO MANY COLUMNS": "long row",
    "UNQUOTED VALUE": "bad quoting", "LINE SIZE OVER MAXIMUM": "line too long",
    "INVALID ENCODING": "not UTF-8", "INVALID STATE": "unparsable row",
}
_CAST = re.compile(r"""Could not convert string (?P<value>.*) to '(?P<type>[^']+)'""", re.S)
_FIELDS = re.compile(r"Expected Number of Columns: (?P<expected>\d+) Found: (?P<found>\d+)")


@dataclass(frozen=True)
class Inspection:
    """What ingest found. ``stored``: the file holding only the good rows (to
    store instead of the upload) when rows were skipped, else None;
    ``format`` is that file's format then."""

    format: str
    schema: list[dict[str, Any]]  # [{"name", "type", "nulls"}] in column order
    row_count: int
    skipped_rows: int = 0
    stored: Path | None = None


def _short(exc: BaseException, *paths: Path) -> str:
    """DuckDB's first line, without the node's file paths."""
    text = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    for path in paths:
        text = text.replace(str(path), "<dataset>")
    return text[:300]


def locked_connection(readable: list[Path], memory_mb: int = INSPECT_MEMORY_MB) -> duckdb.DuckDBPyConnection:
    """A DuckDB connection that may open only ``readable`` (read or write)."""
    con = duckdb.connect(":memory:", config={"threads": 1})
    for statement, value in (
        ("SET allowed_paths = $v", [str(p) for p in readable]),
        ("SET autoinstall_known_extensions = false", None),
        ("SET autoload_known_extensions = false", None),
        (f"SET memory_limit = '{int(memory_mb)}MB'", None),
        ("SET temp_directory = ''", None),
        ("SET enable_external_access = false", None),
        ("SET lock_configuration = true", None),
    ):
        con.execute(statement, {"v": value} if value is not None else None)
    return con


def inspect_upload(path: Path, fmt: str, *, on_bad_rows: str = "fail", work_dir: Path | None = None,
                   memory_mb: int = INSPECT_MEMORY_MB) -> Inspection:
    """Check and describe the uploaded file at ``path`` declared as ``fmt``.

    Raises DatasetUnreadable (with DuckDB's reason, file path removed, or a
    message in words) or DatasetBadRows. With ``on_bad_rows="skip"`` and bad
    rows, the good rows are written to a new file in ``work_dir`` (the
    caller stores or deletes it). Blocking: run it in a worker thread."""
    if fmt not in FORMATS:
        raise InvalidDataset(f"format must be one of {', '.join(FORMATS)}", field="format")
    if on_bad_rows not in BAD_ROW_POLICIES:
        raise InvalidDataset(f"on_bad_rows must be one of {', '.join(BAD_ROW_POLICIES)}", field="on_bad_rows")
    size = path.stat().st_size
    if size == 0:
        raise DatasetUnreadable("the file is empty", format=fmt)
    if fmt == "parquet":
        if input_format(str(path)) != "parquet":
            raise DatasetUnreadable("not a Parquet file: it does not start with PAR1", format=fmt)
        return _inspect_parquet(path, memory_mb)
    problem = text_problem(str(path))
    if problem is not None:
        raise DatasetUnreadable(problem, format=fmt)
    if _only_blank(path):
        raise DatasetUnreadable("the file is empty (only white space)", format=fmt)
    out = (work_dir or path.parent) / f"{secrets.token_hex(8)}.good.{'parquet' if fmt == 'csv' else 'jsonl'}"
    if fmt == "csv":
        if input_format(str(path)) == "jsonl":
            raise DatasetUnreadable("this file starts with '{' like JSON Lines: upload it with format jsonl", format=fmt)
        return _inspect_csv(path, on_bad_rows, out, memory_mb)
    return _inspect_jsonl(path, on_bad_rows, out, memory_mb)


def inspect_dataset(path: Path, fmt: str, **options: Any) -> tuple[list[dict[str, Any]], int]:
    """Schema and row count of a file that must have no bad rows."""
    found = inspect_upload(path, fmt, **options)
    return found.schema, found.row_count


def _only_blank(path: Path) -> bool:
    with open(path, "rb") as handle:
        while block := handle.read(_READ_BLOCK):
            if block.strip(_BLANK):
                return False
    return True


def _describe(con: duckdb.DuckDBPyConnection, source: str, fmt: str) -> tuple[list[dict[str, Any]], int]:
    """Columns (name, type, nulls) and row count of ``source``, read in full."""
    described = con.execute(f"DESCRIBE SELECT * FROM {source}").fetchall()
    if len(described) > MAX_COLUMNS:
        raise DatasetUnreadable(f"more than {MAX_COLUMNS} columns", format=fmt)
    # fetchall, not fetchone: DuckDB fills the reject tables only once the
    # query's result is consumed. count(COLUMNS(*)) parses every column (a
    # bare count(*) would parse none and find no bad values).
    (counts,) = con.execute(f"SELECT count(*), count(COLUMNS(*)) FROM {source}").fetchall()
    rows = int(counts[0])
    schema = [{"name": str(r[0]), "type": str(r[1]), "nulls": rows - int(n)} for r, n in zip(described, counts[1:])]
    return schema, rows


def _inspect_parquet(path: Path, memory_mb: int) -> Inspection:
    con = locked_connection([path], memory_mb)
    try:
        schema, rows = _describe(con, f"read_parquet({sql_literal(str(path))})", "parquet")
    except duckdb.Error as exc:
        raise DatasetUnreadable(f"not a readable parquet file: {_short(exc, path)}", format="parquet") from None
    finally:
        con.close()
    return Inspection("parquet", schema, rows)


# -- CSV ---------------------------------------------------------------------------

def _inspect_csv(path: Path, on_bad_rows: str, out: Path, memory_mb: int) -> Inspection:
    con = locked_connection([path, out], memory_mb)
    try:
        try:
            reader = sniff_csv_reader(con, str(path))
            if len(reader.columns) > MAX_COLUMNS:
                raise DatasetUnreadable(f"more than {MAX_COLUMNS} columns", format="csv")
            strict = reader.sql(["store_rejects = true", f"rejects_limit = {MAX_BAD_ROWS}"])
            schema, rows = _describe(con, strict, "csv")
            bad = _csv_bad_rows(con, path, reader)
            if bad is None:
                return Inspection("csv", schema, rows)
            listed, count, capped = bad
            if on_bad_rows == "fail" or rows == 0 or capped:
                raise _bad_rows(listed, count, capped, good=rows)
            con.execute(f"COPY (SELECT * FROM {strict}) TO {sql_literal(str(out))} (FORMAT parquet)")
            schema, written = _describe(con, f"read_parquet({sql_literal(str(out))})", "csv")
        except duckdb.Error as exc:
            out.unlink(missing_ok=True)
            raise DatasetUnreadable(f"not a readable csv file: {_short(exc, path, out)}", format="csv") from None
        except BaseException:
            out.unlink(missing_ok=True)
            raise
    finally:
        con.close()
    if written != rows:  # the same reader skips the same rows; anything else is a bug, never stored
        out.unlink(missing_ok=True)
        raise DatasetUnreadable(f"the good rows read twice differ ({rows}, then {written})", format="csv")
    return Inspection("parquet", schema, written, skipped_rows=count, stored=out)


def _csv_bad_rows(con: duckdb.DuckDBPyConnection, path: Path,
                  reader: CsvReader) -> tuple[list[dict[str, Any]], int, bool] | None:
    """The first bad rows (line, reason), their count and whether recording
    stopped at MAX_BAD_ROWS; None when there are none."""
    (totals,) = con.execute("SELECT count(*), count(DISTINCT line) FROM reject_errors").fetchall()
    if not totals[0]:
        return None
    first = con.execute(
        "SELECT line, min(line_byte_position), arg_min(error_type::VARCHAR, column_idx), "
        "arg_min(column_name, column_idx), arg_min(error_message, column_idx) "
        f"FROM reject_errors GROUP BY line ORDER BY line LIMIT {REPORTED_BAD_ROWS}").fetchall()
    newline = b"\r" if "new_line = '\\r'" in reader.options else b"\n"
    lines = _line_numbers(path, [int(r[1]) for r in first], newline)
    listed = [{"line": lines[int(r[1])], "reason": _reason(r[2], r[3], r[4])} for r in first]
    return listed, int(totals[1]), int(totals[0]) >= MAX_BAD_ROWS


def _line_numbers(path: Path, positions: list[int], newline: bytes) -> dict[int, int]:
    """1-based line of the file at each byte position (DuckDB's record
    number counts a quoted value spanning lines as one line; users' editors do not)."""
    wanted = sorted(set(positions))
    found: dict[int, int] = {}
    seen, offset = 0, 0
    with open(path, "rb") as handle:
        for position in wanted:
            while offset < position:
                block = handle.read(min(_READ_BLOCK, position - offset))
                if not block:
                    break
                seen += block.count(newline)
                offset += len(block)
            found[position] = seen + 1
    return found


def _reason(kind: str | None, column: str | None, message: str | None) -> str:
    text = (message or "").strip()
    label = _ERROR_KINDS.get(kind or "", "bad row")
    if kind == "CAST" and (m := _CAST.search(text)):
        return f"{label} in column {column!r}: {m['value'][:80]} is not a {m['type']}"
    if kind in ("MISSING COLUMNS", "TOO MANY COLUMNS") and (m := _FIELDS.search(text)):
        return f"{label}: {m['found']} fields, expected {m['expected']}"
    return f"{label}: {text}"[:200]


def _bad_rows(listed: list[dict[str, Any]], count: int, capped: bool, *, good: int) -> DatasetBadRows:
    if capped:
        head = f"more than {MAX_BAD_ROWS} bad rows: this does not look like one table (check the format)"
    elif good == 0:
        head = f"no good rows: all {count} rows are bad"
    else:
        head = f"{count} bad row{'s' if count != 1 else ''} (upload with on_bad_rows=skip to store only the good rows)"
    where = "; ".join(f"line {b['line']}: {b['reason']}" for b in listed[:3])
    return DatasetBadRows(f"{head}; {where}", bad_rows=listed, count=count)


# -- JSON Lines ----------------------------------------------------------------------

def _inspect_jsonl(path: Path, on_bad_rows: str, out: Path, memory_mb: int) -> Inspection:
    try:
        schema, rows = _describe_jsonl(path, memory_mb)
        return Inspection("jsonl", schema, rows)
    except DatasetUnreadable as unreadable:
        # DuckDB stops at the first line it cannot take: find every bad line.
        listed: list[dict[str, Any]] = []
        count = good = 0
        for number, line in _json_lines(path):
            problem = _json_problem(line)
            if problem is None:
                good += line is not None and bool(line.strip(_BLANK))
                continue
            count += 1
            if len(listed) < REPORTED_BAD_ROWS:
                listed.append({"line": number, "reason": problem})
            if count >= MAX_BAD_ROWS:
                raise _bad_rows(listed, count, True, good=good) from None
        if not count:
            raise unreadable from None
    if on_bad_rows == "fail" or good == 0:
        raise _bad_rows(listed, count, False, good=good)
    try:
        _write_good_json_lines(path, out)
        schema, rows = _describe_jsonl(out, memory_mb)
    except BaseException:
        out.unlink(missing_ok=True)
        raise
    return Inspection("jsonl", schema, rows, skipped_rows=count, stored=out)


def _describe_jsonl(path: Path, memory_mb: int) -> tuple[list[dict[str, Any]], int]:
    con = locked_connection([path], memory_mb)
    try:
        return _describe(con, jsonl_reader_sql(str(path)), "jsonl")
    except duckdb.Error as exc:
        raise DatasetUnreadable(f"not a readable jsonl file: {_short(exc, path)}", format="jsonl") from None
    finally:
        con.close()


def _json_lines(path: Path) -> Iterator[tuple[int, bytes | None]]:
    """(1-based line number, line without its line end) of every line;
    None for a line longer than MAX_JSON_LINE (never held in memory whole)."""
    number = 0
    with open(path, "rb") as handle:
        while True:
            line = handle.readline(MAX_JSON_LINE + 1)
            if not line:
                return
            number += 1
            if len(line) > MAX_JSON_LINE and not line.endswith(b"\n"):
                while (rest := handle.readline(_READ_BLOCK)) and not rest.endswith(b"\n"):
                    pass
                yield number, None
                continue
            yield number, line.rstrip(b"\r\n")


def _json_problem(line: bytes | None) -> str | None:
    """Why one JSON Lines line is a bad row; None when it is an object or blank."""
    if line is None:
        return f"line longer than {MAX_JSON_LINE} bytes"
    if not line.strip(_BLANK):
        return None
    try:
        value = json.loads(line)
    except UnicodeDecodeError:
        return "not UTF-8"
    except ValueError as exc:
        return f"not JSON: {str(exc)[:120]}"
    if not isinstance(value, dict):
        return f"not a JSON object but {_JSON_KINDS.get(type(value), 'a value')}"
    return None


_JSON_KINDS = {list: "an array", str: "a string", int: "a number", float: "a number", bool: "a boolean",
               type(None): "null"}


def _write_good_json_lines(path: Path, out: Path) -> int:
    """Copy the lines that are JSON objects to ``out`` (each ending in a
    newline); return how many."""
    good = 0
    with open(out, "wb") as sink:
        for _, line in _json_lines(path):
            if line is not None and line.strip(_BLANK) and _json_problem(line) is None:
                sink.write(line + b"\n")
                good += 1
    return good
