"""The input views of a cage job: one read-only view per input file.

A CSV input is sniffed once, with DuckDB's own ``sniff_csv``, inside the
confined child, and its view reads the file with the sniffed dialect and
column types spelled out (``auto_detect=false``). An auto-detecting view
would sniff the file again every time a statement binds it (creating the
view, then running the query): sniffing is the costliest part of a small
job. The explicit reader gives the same columns, types, rows and errors
as the auto-detecting one (tests compare the two on many dialects).

The reader text is built from the sniffed fields, each quoted as an SQL
string literal here: ``sniff_csv``'s own ready-made ``Prompt`` does not
quote column names taken from the file's header, so it is never used.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

import duckdb

from node.cage.functions import quote_identifier

# sniff_csv writes this for an option that is not used (no quote, ...).
_SNIFF_EMPTY = "(empty)"
_SNIFF_FIELDS = ("Delimiter", "Quote", "Escape", "NewLineDelimiter", "Comment", "SkipRows",
                 "HasHeader", "Columns", "DateFormat", "TimestampFormat")


def sql_literal(text: str) -> str:
    """``text`` as a DuckDB string literal (only ``'`` needs doubling)."""
    return "'" + text.replace("'", "''") + "'"


def _option(value: Any) -> str:
    return "" if value is None or value == _SNIFF_EMPTY else str(value)


def csv_reader_sql(con: duckdb.DuckDBPyConnection, path: str) -> str:
    """Sniff the CSV file at ``path`` once and return a ``read_csv(...)``
    call that reads it with the sniffed dialect and types, without sniffing
    again. Raises the sniffer's own duckdb error for a file it cannot read."""
    con.execute(f"SELECT {', '.join(_SNIFF_FIELDS)} FROM sniff_csv($path)", {"path": path})
    sniffed = dict(zip(_SNIFF_FIELDS, con.fetchone()))  # type: ignore[arg-type]
    columns = ", ".join(f"{sql_literal(str(c['name']))}: {sql_literal(str(c['type']))}"
                        for c in sniffed["Columns"])
    options = [
        sql_literal(path),
        "auto_detect = false",
        f"delim = {sql_literal(_option(sniffed['Delimiter']))}",
        f"quote = {sql_literal(_option(sniffed['Quote']))}",
        f"escape = {sql_literal(_option(sniffed['Escape']))}",
        f"new_line = {sql_literal(_option(sniffed['NewLineDelimiter']))}",
        f"comment = {sql_literal(_option(sniffed['Comment']))}",
        f"skip = {int(sniffed['SkipRows'])}",
        f"header = {'true' if sniffed['HasHeader'] else 'false'}",
        f"columns = {{{columns}}}",
    ]
    for field, option in (("DateFormat", "dateformat"), ("TimestampFormat", "timestampformat")):
        if _option(sniffed[field]):
            options.append(f"{option} = {sql_literal(_option(sniffed[field]))}")
    return f"read_csv({', '.join(options)})"


def reader_sql(con: duckdb.DuckDBPyConnection, path: str, file_format: str) -> str:
    """The table function call that reads one input file."""
    if file_format == "parquet":
        return f"read_parquet({sql_literal(path)})"
    return csv_reader_sql(con, path)


def create_input_views(con: duckdb.DuckDBPyConnection, inputs: Iterable[Mapping[str, str]]) -> None:
    """One view per input (``name``, ``path``, ``format``), named as the job
    refers to it."""
    for item in inputs:
        reader = reader_sql(con, item["path"], item["format"])
        con.execute(f"CREATE VIEW {quote_identifier(item['name'])} AS SELECT * FROM {reader}").fetchall()
