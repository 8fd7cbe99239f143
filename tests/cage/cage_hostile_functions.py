"""Registered python-fn jobs that attack the cage, for tests/cage.

Imported by the test pool's fork servers (not by pytest collection: the
file name does not start with test_)."""

from __future__ import annotations

import os
import socket
import time
from typing import Any

from node.cage.functions import JobContext, Table, register_function


def _one(name: str, value: Any, kind: str = "VARCHAR") -> Table:
    return Table([(name, kind)], [[value]])


@register_function("hostile.open_socket")
def open_socket(ctx: JobContext, params: dict[str, Any]) -> Table:
    try:
        socket.socket(socket.AF_INET, socket.SOCK_STREAM).close()
    except OSError as exc:
        return _one("errno", exc.errno, "INTEGER")
    return _one("errno", 0, "INTEGER")


@register_function("hostile.exec")
def run_program(ctx: JobContext, params: dict[str, Any]) -> Table:
    os.execv("/bin/true", ["true"])
    return _one("exec", "returned")


@register_function("hostile.read_file")
def read_file(ctx: JobContext, params: dict[str, Any]) -> Table:
    with open(params["path"], "rb") as handle:
        return _one("bytes", len(handle.read()), "BIGINT")


@register_function("hostile.write_file")
def write_file(ctx: JobContext, params: dict[str, Any]) -> Table:
    with open(params["path"], "w", encoding="utf-8") as handle:
        handle.write(params.get("text", "x"))
    return _one("written", params["path"])


@register_function("hostile.duckdb_read")
def duckdb_read(ctx: JobContext, params: dict[str, Any]) -> Table:
    # Bypasses the SQL gate (python-fn): DuckDB's locked sandbox must refuse.
    return ctx.query(f"SELECT count(*) AS n FROM read_csv('{params['path']}')")


@register_function("hostile.cpu_loop")
def cpu_loop(ctx: JobContext, params: dict[str, Any]) -> Table:
    n = 0
    while True:
        n += 1


@register_function("hostile.memory_bomb")
def memory_bomb(ctx: JobContext, params: dict[str, Any]) -> Table:
    hoard = []
    while True:
        hoard.append(bytearray(32 * 1024 * 1024))


@register_function("hostile.fork_and_hang")
def fork_and_hang(ctx: JobContext, params: dict[str, Any]) -> Table:
    pid = os.fork()
    if pid == 0:
        with open(os.path.join(ctx.output_dir, "grandchild.pid"), "w", encoding="utf-8") as handle:
            handle.write(str(os.getpid()))
        while True:
            time.sleep(1)
    while True:
        time.sleep(1)


@register_function("hostile.seed_and_clock")
def seed_and_clock(ctx: JobContext, params: dict[str, Any]) -> Table:
    return Table([("seed", "BLOB"), ("clock", "BIGINT"), ("draw", "BIGINT")],
                 [[ctx.seed, ctx.clock, ctx.rng.randrange(2**62)]])


@register_function("hostile.write_output")
def write_output(ctx: JobContext, params: dict[str, Any]) -> Table:
    with open(os.path.join(ctx.output_dir, "report.txt"), "w", encoding="utf-8") as handle:
        handle.write(params.get("text", "hello"))
    return _one("written", "report.txt")


@register_function("hostile.query")
def run_query(ctx: JobContext, params: dict[str, Any]) -> Table:
    # ctx.query keeps a top-level ORDER BY's row order, like a sql job.
    return ctx.query(params["sql"])


_LEFT_BEHIND: list[int] = []


@register_function("hostile.leave_state")
def leave_state(ctx: JobContext, params: dict[str, Any]) -> Table:
    # Tries to leave state for the next job: a Python global, a DuckDB table.
    _LEFT_BEHIND.append(os.getpid())
    ctx.con.execute("CREATE TABLE left_behind AS SELECT 42 AS x")
    return _one("pid", os.getpid(), "BIGINT")


@register_function("hostile.find_state")
def find_state(ctx: JobContext, params: dict[str, Any]) -> Table:
    tables = ctx.con.execute("SELECT count(*) FROM duckdb_tables() WHERE table_name = 'left_behind'").fetchone()[0]
    return Table([("pid", "BIGINT"), ("python_state", "BIGINT"), ("duckdb_tables", "BIGINT")],
                 [[os.getpid(), len(_LEFT_BEHIND), tables]])
