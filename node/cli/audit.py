"""``metanode audit``: export the receipt log, query it with read-only SQL.

The work is node/receipts/audit.py's (a stopped node's data directory, or a
running node's log fetched over JSON-RPC by node/receipts/audit_remote.py);
this module parses options and prints. ``audit query`` lays its rows out
with the CLI's one table presenter (node/cli/present.py), so its columns
line up with wide characters and a newline in a cell stays on its row.
"""

from __future__ import annotations

import csv
import io
import json
from decimal import Decimal
from typing import Any

import click

from node.base.errors import EXIT_USAGE, UserError

DATA_DIR_OPTION = click.option(
    "--data-dir", default=None, envvar="METANODE_DATA_DIR", type=click.Path(file_okay=False),
    help="A stopped node's data directory (DuckDB allows one process), or use --node.",
)
NODE_OPTION = click.option("--node", "node_addr", default=None,
                           help="A running node's multiaddr: its log is fetched over JSON-RPC.")


def audit_source(data_dir: str | None, node_addr: str | None) -> Any:
    """What node/receipts/audit.py audits: a data directory, or a running node's fetched log."""
    if (data_dir is None) == (node_addr is None):
        raise UserError("give exactly one of --data-dir DIR (a stopped node) or --node ADDR (a running node)", exit_code=EXIT_USAGE)
    if node_addr is not None:
        from node.base.logging import configure_client_logging
        from node.receipts.audit_remote import fetch_log_from

        configure_client_logging()
        return fetch_log_from(node_addr)
    return data_dir


@click.group()
def audit() -> None:
    """The audit trail: export the receipt log, query it with SQL (read-only)."""


@audit.command("export")
@DATA_DIR_OPTION
@NODE_OPTION
@click.option("--format", "fmt", type=click.Choice(["json", "csv", "parquet"]), required=True,
              help="json: one object per line; csv with a header row; parquet.")
@click.option("--since", type=click.IntRange(min=0), default=None, help="Lowest sealing block height.")
@click.option("--until", type=click.IntRange(min=0), default=None, help="Highest sealing block height.")
@click.option("--kind", default=None, help="Only receipts of this kind (api.call, job.exec...).")
@click.option("--tenant", default=None, help="Only api.call receipts of this tenant (hex public key).")
@click.option("--out", "out_path", required=True, type=click.Path(dir_okay=False), help="Output file.")
@click.option("--json", "as_json", is_flag=True, help='Print {"receipts": N, "out": FILE} as JSON.')
def export_command(data_dir: str | None, node_addr: str | None, fmt: str, since: int | None, until: int | None, kind: str | None,
                   tenant: str | None, out_path: str, as_json: bool) -> None:
    """Export the receipt log, each leaf with its anchor (sealing block,
    log size and root), in log order."""
    from node.receipts.audit import ExportFilter, export_receipts

    count = export_receipts(audit_source(data_dir, node_addr), out_path, fmt, ExportFilter(since, until, kind, tenant))
    if as_json:
        click.echo(json.dumps({"receipts": count, "out": out_path}))
    else:
        click.echo(f"exported {count} receipts to {out_path}")


@audit.command("query")
@DATA_DIR_OPTION
@NODE_OPTION
@click.argument("sql")
@click.option("--format", "fmt", type=click.Choice(["table", "csv", "json"]), default="table", show_default=True,
              help="table: aligned columns under a header; csv; json: one object per line.")
@click.option("--json", "as_json", is_flag=True, help="The same as --format json.")
@click.option("--max-rows", type=click.IntRange(min=1), default=None, help="Print at most this many rows.")
def query_command(data_dir: str | None, node_addr: str | None, sql: str, fmt: str, as_json: bool, max_rows: int | None) -> None:
    """Run one read-only SELECT over a node's store. Besides the node's
    tables it can read `receipts`: the decoded log with anchors. With
    --node, the log is fetched and the SQL runs locally over `receipts`."""
    from node.receipts.audit import run_query

    result = run_query(audit_source(data_dir, node_addr), sql, max_rows=max_rows)
    if as_json or fmt == "json":
        for row in result.rows:
            click.echo(json.dumps(dict(zip(result.columns, row)), default=str, sort_keys=False))
        return
    if fmt == "csv":
        buffer = io.StringIO()
        writer = csv.writer(buffer, lineterminator="\n")
        writer.writerow(result.columns)
        writer.writerows(["" if v is None else v for v in row] for row in result.rows)
        click.echo(buffer.getvalue(), nl=False)
        return
    click.echo(query_table(result.columns, result.rows))


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float, Decimal)) and not isinstance(value, bool)


def query_table(columns: list[str], rows: list[tuple[Any, ...]]) -> str:
    """An audit query's rows as the CLI's aligned table: a header and a rule,
    columns whose values are all numbers right-aligned, NULL shown as NULL,
    and the row count."""
    from node.cli.present import format_table

    numeric = [bool(rows) and all(row[i] is None or _is_number(row[i]) for row in rows)
               and any(row[i] is not None for row in rows) for i in range(len(columns))]
    typed = [(name, "DOUBLE" if is_numeric else "VARCHAR") for name, is_numeric in zip(columns, numeric)]
    return format_table(typed, rows)
