"""How a dataset file is opened as a table: one reader per format, shared
by the cage (a job's input views) and by storage ingest (the schema a
tenant is shown), so that the columns and types a tenant saw at upload are
the ones every processing node's job sees, byte for byte the same reader.

Formats (``input_format`` in witness.py tells them apart by content):

* ``parquet``: ``read_parquet(path)``; the file carries its own types.
* ``jsonl``: JSON Lines, one object per line, read with DuckDB's
  ``read_json`` (newline-delimited, records, fixed sample size).
* ``csv``: sniffed once, then read with the sniffed dialect and column types
  spelled out (``auto_detect=false``). An auto-detecting view would sniff
  again every time a statement binds it, and sniffing is the costliest part
  of a small job.

The CSV sniff is made robust to a few bad rows, which ingest then finds and
reports (node/roles/storage/ingest.py): DuckDB's sniffer runs with
``ignore_errors`` (without it, one short or long row makes it give up on the
dialect and read every line as one text column), and a column it typed
VARCHAR only because a few sample values are not numbers (or dates) is typed
by the rest (:func:`_retype`), so the stray value is a bad row instead of
silently turning the column into text. The rule is documented in
docs/storage.md.

The reader text is built from the sniffed fields, each quoted as an SQL
string literal here: ``sniff_csv``'s own ready-made ``Prompt`` does not
quote column names taken from the file's header, so it is never used.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import duckdb

from node.cage.functions import quote_identifier

FORMATS = ("csv", "parquet", "jsonl")
CSV_SAMPLE_ROWS = 20480  # rows the CSV sniffer and the retyping rule look at
JSON_SAMPLE_ROWS = 20480  # objects read_json looks at to infer column types
TEXT_PROBE_BYTES = 64 * 1024  # bytes checked for NUL / invalid UTF-8 before a text file is read
# A VARCHAR column is retyped when at most max(1, sample // RETYPE_TOLERANCE)
# of its non-empty sample values do not parse as the new type (and at least
# RETYPE_MIN_GOOD do).
RETYPE_TOLERANCE = 20
RETYPE_MIN_GOOD = 2

# sniff_csv writes this for an option that is not used (no quote, ...).
_SNIFF_EMPTY = "(empty)"
_SNIFF_FIELDS = ("Delimiter", "Quote", "Escape", "NewLineDelimiter", "Comment", "SkipRows",
                 "HasHeader", "Columns", "DateFormat", "TimestampFormat")


def sql_literal(text: str) -> str:
    """``text`` as a DuckDB string literal (only ``'`` needs doubling)."""
    return "'" + text.replace("'", "''") + "'"


def _option(value: Any) -> str:
    return "" if value is None or value == _SNIFF_EMPTY else str(value)


def text_problem(path: str, probe: int = TEXT_PROBE_BYTES) -> str | None:
    """Why the file at ``path`` is not a UTF-8 text file, judged on its first
    ``probe`` bytes (a NUL byte, or bytes that are not UTF-8); None when it
    looks like text. Reads with bare system calls (the cage's syscall filter
    allows them; buffered ``open`` also asks whether the file is a terminal)."""
    fd = os.open(path, os.O_RDONLY)
    try:
        head = os.read(fd, probe)
        more = len(head) == probe
    finally:
        os.close(fd)
    nul = head.find(b"\x00")
    if nul >= 0:
        hint = " (UTF-16 text? save it as UTF-8)" if head[:2] in (b"\xff\xfe", b"\xfe\xff") else ""
        return f"not a text file: byte {nul} is NUL{hint}"
    try:
        head.decode("utf-8")
    except UnicodeDecodeError as exc:
        if not (more and exc.start >= len(head) - 3 and exc.reason == "unexpected end of data"):
            return f"not a text file: bytes at {exc.start} are not UTF-8 (save it as UTF-8)"
    return None


@dataclass(frozen=True)
class CsvReader:
    """A sniffed CSV dialect and column types: :meth:`sql` reads the file
    without sniffing again (``extra`` adds options, such as ingest's
    ``store_rejects``)."""

    path: str
    options: tuple[str, ...]  # every read_csv option but the columns
    columns: tuple[tuple[str, str], ...]  # (name, type) in file order

    def sql(self, extra: Sequence[str] = (), *, types: Mapping[str, str] | None = None) -> str:
        spelled = ", ".join(f"{sql_literal(name)}: {sql_literal((types or {}).get(name, kind))}"
                            for name, kind in self.columns)
        return f"read_csv({', '.join([sql_literal(self.path), *self.options, f'columns = {{{spelled}}}', *extra])})"


def sniff_csv_reader(con: duckdb.DuckDBPyConnection, path: str) -> CsvReader:
    """Sniff the CSV file at ``path`` once: its dialect and column types.

    Raises duckdb.InvalidInputException for a file that is not UTF-8 text,
    and the sniffer's own duckdb error for a file it cannot read."""
    problem = text_problem(path)
    if problem is not None:
        raise duckdb.InvalidInputException(problem)
    reader, formats = _sniff(con, path, tolerant=False)
    if len(reader.columns) == 1 or any(option.startswith("skip = ") and option != "skip = 0" for option in reader.options):
        # DuckDB's strict sniffer gives up on a dialect when a sample row has too
        # few or too many fields: it falls back to one text column, or skips lines
        # until the rows agree. Sniff again ignoring such rows; keep whichever
        # dialect scores higher on the sample (the strict one on a tie).
        tolerant, tolerant_formats = _sniff(con, path, tolerant=True)
        if tolerant != reader and _score(con, tolerant) > _score(con, reader):
            reader, formats = tolerant, tolerant_formats
    return _retype(con, reader, iso_dates="dateformat" not in formats, iso_timestamps="timestampformat" not in formats)


def _sniff(con: duckdb.DuckDBPyConnection, path: str, *, tolerant: bool) -> tuple[CsvReader, dict[str, str]]:
    """DuckDB's sniff of ``path`` as a reader, plus the date/timestamp formats it found."""
    con.execute(f"SELECT {', '.join(_SNIFF_FIELDS)} FROM sniff_csv($path, sample_size = {CSV_SAMPLE_ROWS}"
                f"{', ignore_errors = true' if tolerant else ''})", {"path": path})
    sniffed = dict(zip(_SNIFF_FIELDS, con.fetchone()))  # type: ignore[arg-type]
    options = [
        "auto_detect = false",
        f"delim = {sql_literal(_option(sniffed['Delimiter']))}",
        f"quote = {sql_literal(_option(sniffed['Quote']))}",
        f"escape = {sql_literal(_option(sniffed['Escape']))}",
        f"new_line = {sql_literal(_option(sniffed['NewLineDelimiter']))}",
        f"comment = {sql_literal(_option(sniffed['Comment']))}",
        f"skip = {int(sniffed['SkipRows'])}",
        f"header = {'true' if sniffed['HasHeader'] else 'false'}",
    ]
    formats = {}
    for field, option in (("DateFormat", "dateformat"), ("TimestampFormat", "timestampformat")):
        if _option(sniffed[field]):
            formats[option] = _option(sniffed[field])
            options.append(f"{option} = {sql_literal(formats[option])}")
    return CsvReader(path, tuple(options), tuple((str(c["name"]), str(c["type"])) for c in sniffed["Columns"])), formats


def _score(con: duckdb.DuckDBPyConnection, reader: CsvReader) -> int:
    """How well ``reader``'s dialect fits the sample: the fields of the rows it
    splits into its column count, less a row's worth for every line it skips."""
    text = reader.sql(["ignore_errors = true"], types={name: "VARCHAR" for name, _ in reader.columns})
    row = con.execute(f"SELECT count(*) FROM (SELECT * FROM {text} LIMIT {CSV_SAMPLE_ROWS})").fetchone()
    skipped = next(int(o.split("=")[1]) for o in reader.options if o.startswith("skip = "))
    return ((int(row[0]) if row else 0) - skipped) * len(reader.columns)


def _retype(con: duckdb.DuckDBPyConnection, reader: CsvReader, *, iso_dates: bool, iso_timestamps: bool) -> CsvReader:
    """Type each VARCHAR column by its sample values when all but a few parse
    as BIGINT, DOUBLE, DATE or TIMESTAMP (DATE/TIMESTAMP only when no custom
    format was sniffed). The few are then bad rows the strict read reports."""
    text_columns = [name for name, kind in reader.columns if kind == "VARCHAR"]
    if not text_columns:
        return reader
    tests = {
        "BIGINT": "regexp_full_match(trim({c}), '[+-]?[0-9]+') AND TRY_CAST({c} AS BIGINT) IS NOT NULL",
        "DOUBLE": "TRY_CAST({c} AS DOUBLE) IS NOT NULL",
    }
    if iso_dates:
        tests["DATE"] = "TRY_CAST({c} AS DATE) IS NOT NULL"
    if iso_timestamps:
        tests["TIMESTAMP"] = "TRY_CAST({c} AS TIMESTAMP) IS NOT NULL"
    aggregates = []
    for name in text_columns:
        column = quote_identifier(name)
        aggregates.append(f"count({column})")
        aggregates.extend(f"count(*) FILTER ({test.format(c=column)})" for test in tests.values())
    sample = reader.sql(["ignore_errors = true"], types={name: "VARCHAR" for name, _ in reader.columns})
    counts = con.execute(f"SELECT {', '.join(aggregates)} FROM (SELECT * FROM {sample} LIMIT {CSV_SAMPLE_ROWS})").fetchone()
    assert counts is not None
    width = 1 + len(tests)
    retyped: dict[str, str] = {}
    for i, name in enumerate(text_columns):
        present, *good = counts[i * width:(i + 1) * width]
        tolerated = max(1, present // RETYPE_TOLERANCE)
        best = max(good) if good else 0
        if best < RETYPE_MIN_GOOD or present - best > tolerated:
            continue
        retyped[name] = list(tests)[good.index(best)]  # the first (narrowest) type with the most good values
    if not retyped:
        return reader
    return CsvReader(reader.path, reader.options, tuple((n, retyped.get(n, t)) for n, t in reader.columns))


def csv_reader_sql(con: duckdb.DuckDBPyConnection, path: str) -> str:
    """Sniff the CSV file at ``path`` once and return a ``read_csv(...)``
    call that reads it with the sniffed dialect and types, without sniffing
    again. Raises a duckdb error for a file that cannot be read."""
    return sniff_csv_reader(con, path).sql()


def jsonl_reader_sql(path: str) -> str:
    """The ``read_json(...)`` call that reads a JSON Lines file: one object
    per line (blank lines ignored), types inferred from a fixed sample."""
    return (f"read_json({sql_literal(path)}, format = 'newline_delimited', records = 'true', "
            f"sample_size = {JSON_SAMPLE_ROWS})")


def reader_sql(con: duckdb.DuckDBPyConnection, path: str, file_format: str) -> str:
    """The table function call that reads one input file."""
    if file_format == "parquet":
        return f"read_parquet({sql_literal(path)})"
    if file_format == "jsonl":
        return jsonl_reader_sql(path)
    return csv_reader_sql(con, path)


def create_input_views(con: duckdb.DuckDBPyConnection, inputs: Iterable[Mapping[str, str]]) -> None:
    """One view per input (``name``, ``path``, ``format``), named as the job
    refers to it."""
    for item in inputs:
        reader = reader_sql(con, item["path"], item["format"])
        con.execute(f"CREATE VIEW {quote_identifier(item['name'])} AS SELECT * FROM {reader}").fetchall()
