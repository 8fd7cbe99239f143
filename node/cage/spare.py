"""The life of a cage child before its job: forked ahead of time, it
detaches from the fork server and rehearses a job while it waits.

A forked child shares the fork server's memory copy-on-write and maps code
pages only when it first touches them, so the first statements a fresh
child runs cost thousands of page faults. A spare child takes them while
no job waits: it rehearses the code paths of a job (sniff, read, aggregate,
order, gate, fetch, encode) on the fork server's own warm-up files, and
stops rehearsing as soon as its job arrives. It sees no job data before
then, and it applies no confinement: every layer depends on the job and
is applied fresh by :func:`node.cage.worker.run_child` once the job is
received. Each child runs exactly one job.
"""

from __future__ import annotations

import ctypes
import os
import select
import time
from collections.abc import Callable, Mapping
from typing import NoReturn

import duckdb

from node.cage.inputs import csv_reader_sql, sql_literal
from node.cage.job import CAGE_ENVIRONMENT, encode_frame, read_frame
from node.cage.results import encode_result
from node.cage.sqlgate import gate_sql_texts
from node.cage.worker import canonical_query, run_child, wrap_select

_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD = -1, -3  # glibc mallopt parameters
REHEARSAL_SQL = "SELECT k, sum(v) AS s, avg(v) AS a, count(*) AS n, max(t) AS t FROM w GROUP BY k ORDER BY k DESC"


def detach(keep: tuple[int, ...]) -> None:
    """Own session and process group (the supervisor kills the whole group),
    /dev/null as stdio, every other inherited descriptor closed, and the
    cage environment."""
    os.setsid()
    null = os.open(os.devnull, os.O_RDWR)
    for fd in (0, 1, 2):
        os.dup2(null, fd)
    low = 3
    for fd in sorted(keep):
        os.closerange(low, fd)
        low = fd + 1
    os.closerange(low, 1 << 16)
    os.environ.clear()
    os.environ.update(CAGE_ENVIRONMENT)
    time.tzset()


def keep_freed_memory() -> None:
    """Make glibc's malloc keep freed memory for reuse instead of giving it
    back to the kernel. DuckDB's CSV sniffer allocates and frees many
    large buffers; by default each is a fresh mmap, so every one costs
    page faults again (measured: ~250 per sniff of a small file, ~20 with
    this). Only for a child: its heap lives for one job."""
    libc = ctypes.CDLL(None)
    libc.mallopt(_M_MMAP_THRESHOLD, 32 * 1024 * 1024)  # glibc's maximum
    libc.mallopt(_M_TRIM_THRESHOLD, 1 << 30)


def rehearse(base: duckdb.DuckDBPyConnection, warm_files: Mapping[str, str], *,
             interrupted: Callable[[], bool] = lambda: False) -> None:
    """Run a job's code paths on the fork server's own ``csv`` and
    ``parquet`` files, step by step, stopping before any step once
    ``interrupted()`` is true. Uses its own cursor, closed afterwards, and
    changes no catalog."""
    con = base.cursor()

    def settle_memory_limit() -> None:
        # DuckDB flushes its allocator whenever memory_limit is set; the
        # first time in a child that releases what it inherited from the
        # fork server, and the statements after it fault those pages in
        # again (measured: several hundred faults). Setting the current
        # value here takes that hit before the job instead of in it.
        limit = con.execute("SELECT current_setting('memory_limit')").fetchone()[0]  # type: ignore[index]
        con.execute("SET memory_limit = $limit", {"limit": limit})

    def gate() -> None:
        gate_sql_texts(con, [REHEARSAL_SQL, wrap_select(REHEARSAL_SQL)], inputs={"w"}, seeded=True)

    def query(reader: Callable[[], str]) -> Callable[[], None]:
        def run() -> None:
            sql = REHEARSAL_SQL.replace("FROM w", f"FROM {reader()}")
            table = canonical_query(con, sql, None)
            for ordered in (False, True):
                encode_frame({"result": encode_result(table.columns, table.rows, ordered=ordered)})
        return run

    steps = [settle_memory_limit, gate,
             query(lambda: csv_reader_sql(con, warm_files["csv"])),
             query(lambda: f"read_parquet({sql_literal(warm_files['parquet'])})")]
    try:
        for step in steps:
            if interrupted():
                return
            step()
    finally:
        con.close()


def _readable(fd: int) -> Callable[[], bool]:
    poller = select.poll()
    poller.register(fd, select.POLLIN | select.POLLHUP)
    return lambda: bool(poller.poll(0))


def spare_child(base: duckdb.DuckDBPyConnection, job_fd: int, report_fd: int,
                warm_files: Mapping[str, str]) -> NoReturn:
    """Body of a child forked ahead of its job: detach, rehearse until the
    job arrives, then read one job frame from ``job_fd`` (end of stream:
    the fork server has gone, exit) and run it. Never returns."""
    try:
        detach(keep=(job_fd, report_fd))
        keep_freed_memory()
        try:
            rehearse(base, warm_files, interrupted=_readable(job_fd))
        except Exception:  # only saves page faults; the job runs its own statements anyway
            pass
        message = read_frame(job_fd)
        os.close(job_fd)
    except BaseException:  # the supervisor reports a child that exits without a result
        os._exit(1)
    if message is None:
        os._exit(0)
    run_child(base, message, report_fd)
