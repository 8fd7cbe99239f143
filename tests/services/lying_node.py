"""A Byzantine processing node for fault tests: the real daemon, lying about results.

``python -m tests.services.lying_node CONFIG`` (or ``python tests/services/lying_node.py
CONFIG``) runs ``metanode daemon start --config CONFIG`` unchanged except that the
processing role is :class:`LyingProcessingService`: every job still runs in the real
cage, but before the node keeps its artifacts and signs its ``job.exec`` receipt, the
result table is altered (one number changed), and the witness record is rewritten to
name the altered table's digest. The receipt is therefore a genuine, valid signature
over a wrong result -- what a dishonest operator could produce -- and the chain must
find the job ``disputed``. Nothing of the code under test (state machine, scheduler,
gateway, receipts) is replaced.
"""

from __future__ import annotations

import dataclasses
import sys
from typing import Any

import structlog

from node.base import codec
from node.cage.results import ORDER_CANONICAL, decode_result, result_digest
from node.cage.witness import decode_witness_file, encode_witness_file, witness_digest
from node.roles import processing

log = structlog.get_logger("metanode.lying_node")


def _bump(cell: Any) -> tuple[Any, bool]:
    """``cell`` changed, if it is a number (bools are left alone)."""
    if isinstance(cell, int) and not isinstance(cell, bool):
        return cell + 1, True
    return cell, False


def corrupt_result(result: bytes) -> bytes:
    """The same table with its first integer cell plus one (or, with no integer,
    one row more): still a well-formed canonical result, just not the right one."""
    table = decode_result(result)
    rows = [list(row) for row in table["rows"]]
    changed = False
    for row in rows:
        for index, cell in enumerate(row):
            row[index], changed = _bump(cell)
            if changed:
                break
        if changed:
            break
    if not changed:
        rows.append(list(rows[0]) if rows else [None] * len(table["columns"]))
    if table["order"] == ORDER_CANONICAL:
        rows.sort(key=codec.encode)  # canonical results keep their rows sorted by encoding
    return codec.encode({**table, "rows": rows})


def lie(outcome: Any) -> Any:
    """The outcome as the liar reports it: altered result, witness naming it."""
    if outcome.result is None:
        return outcome  # nothing computed: nothing to lie about
    wrong = corrupt_result(outcome.result)
    digest = result_digest(wrong)
    record, _, unhashed = decode_witness_file(outcome.witness_file)
    record = {**record, "result_digest": digest}
    log.warning("lying about a result", honest=outcome.result_digest.hex(), reported=digest.hex())
    return dataclasses.replace(outcome, result=wrong, result_digest=digest, witness=record,
                               witness_digest=witness_digest(record),
                               witness_file=encode_witness_file(record, unhashed))


class _LyingPool:
    """The node's real cage pool; outcomes pass through :func:`lie`."""

    def __init__(self, pool: Any) -> None:
        self._pool = pool

    async def run_async(self, spec: Any) -> Any:
        return lie(await self._pool.run_async(spec))

    def __getattr__(self, name: str) -> Any:
        return getattr(self._pool, name)


class LyingProcessingService(processing.ProcessingService):
    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.pool = _LyingPool(self.pool)


def main(argv: list[str]) -> None:
    if len(argv) != 1:
        sys.exit("usage: python -m tests.services.lying_node CONFIG")
    # The daemon imports ProcessingService from this module when it builds its roles.
    processing.ProcessingService = LyingProcessingService  # type: ignore[misc]
    from node.cli.main import main as cli_main

    cli_main(["daemon", "start", "--config", argv[0]])


if __name__ == "__main__":
    main(sys.argv[1:])
