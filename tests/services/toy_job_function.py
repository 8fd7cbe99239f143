"""The cage function of the toy job type the job-type registry tests register
(tests/services/test_job_types.py). A module of its own: the cage pool's fork
servers import it by name (``function_modules``), as they import
node/cage/functions.py and node/cage/trend.py."""

from __future__ import annotations

from typing import Any

from node.cage.functions import JobContext, Table, quote_identifier, register_function


@register_function("test.toy_row_count")
def toy_row_count(ctx: JobContext, params: dict[str, Any]) -> Table:
    """How many rows the input ``params["input"]`` has."""
    view = quote_identifier(ctx.inputs[params["input"]])
    (rows,) = ctx.con.execute(f"SELECT count(*) FROM {view}").fetchone()
    return Table([("rows", "BIGINT")], [[rows]])
