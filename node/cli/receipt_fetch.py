"""Fetching receipt bundles from a node, for ``metanode receipt verify --receipt-hash / --job-id``.

Nothing fetched is trusted: a bundle is checked offline against the genesis
file the user gives (node/receipts/verify.py), exactly as a bundle file is.
What a node can decide is only whether it hands a bundle over; its refusals
are mapped to the command's exit codes here: "no such receipt" and "not
sealed yet" are :data:`EXIT_NO_RECEIPT` (18), a node that cannot be reached
is 3, anything else it answers is the code's own exit code.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

from node.base.errors import EXIT_NO_RECEIPT, EXIT_USAGE, ErrorCode, UserError, exit_code_of, sole_exception

_HEX_ID = re.compile(r"[0-9a-f]{64}")


def hex_id(value: str, option: str) -> str:
    """``value`` as a 64-hex id (lower case), or a usage error naming ``option``."""
    text = value.strip().lower()
    if not _HEX_ID.fullmatch(text):
        shown = value if len(value) <= 80 else value[:77] + "..."
        raise UserError(f"{option}: expected 64 hex characters, got {shown!r}", exit_code=EXIT_USAGE)
    return text


@dataclass(frozen=True)
class Fetched:
    """One receipt as the node handed it over: its bundle, or why not (``missing``)."""

    receipt_id: str
    bundle: bytes | None
    missing: str = ""  # the node's reason when bundle is None
    kind: str | None = None  # as the node's trace says (checked again from the bundle)


def _refusal(node_addr: str, receipt_id: str, exc: Any) -> tuple[str, int]:
    """What a node's refusal to bundle ``receipt_id`` means, and its exit code."""
    if exc.code == ErrorCode.NOT_FOUND:
        return f"{node_addr} has no receipt {receipt_id}", EXIT_NO_RECEIPT
    if exc.code == ErrorCode.RECEIPT_NOT_SEALED:
        return f"receipt {receipt_id} is not sealed in a block yet; try again in a few seconds", EXIT_NO_RECEIPT
    return f"{node_addr}: receipt_bundle failed: {exc.message} (code {exc.code})", exit_code_of(exc.code)


def _bundle_bytes(node_addr: str, answer: Any) -> bytes:
    try:
        return bytes.fromhex(answer["bundle"])
    except (TypeError, KeyError, ValueError):
        raise UserError(f"{node_addr}: receipt_bundle answered no bundle") from None


def _run(node_addr: str, timeout: float, work: Any) -> Any:
    """Run ``work(rpc)`` on one connection to the node; errors come out unwrapped."""
    import trio

    from node.base.logging import configure_client_logging
    from node.p2p.client import connect_to_node

    configure_client_logging()

    async def main() -> Any:
        async with connect_to_node(node_addr, timeout=min(timeout, 10.0)) as rpc:
            return await work(rpc)

    try:
        return trio.run(main)
    except BaseException as exc:
        inner = sole_exception(exc)
        if inner is not exc:
            raise inner from None
        raise


def fetch_bundle(node_addr: str, receipt_id: str, *, timeout: float = 30.0) -> bytes:
    """The bundle of ``receipt_id`` from the node; UserError with the exit code of the refusal."""
    import trio

    from node.base.errors import UnreachableError
    from node.p2p.rpc_client import RpcCallError

    async def work(rpc: Any) -> bytes:
        return _bundle_bytes(node_addr, await rpc.call("receipt_bundle", {"id": receipt_id}, timeout=timeout))

    try:
        return _run(node_addr, timeout, work)
    except RpcCallError as exc:
        message, code = _refusal(node_addr, receipt_id, exc)
        raise UserError(message, exit_code=code) from None
    except (ConnectionError, trio.TooSlowError) as exc:
        raise UnreachableError(f"lost {node_addr}: {exc or 'timed out'}") from None


def fetch_job_bundles(node_addr: str, job_id: str, *, timeout: float = 30.0) -> list[Fetched]:
    """Every logged receipt of ``job_id`` (the api.call that accepted it, its
    schedules, executions and verdicts: the node's ``receipt_trace``), each
    with its bundle or the node's reason for not giving one. UserError with
    EXIT_NO_RECEIPT when the node knows no receipt of that job."""
    import trio

    from node.base.errors import UnreachableError
    from node.p2p.rpc_client import RpcCallError

    async def work(rpc: Any) -> list[Fetched]:
        try:
            trace = await rpc.call("receipt_trace", {"job_id": job_id}, timeout=timeout)
        except RpcCallError as exc:
            if exc.code == ErrorCode.METHOD_NOT_FOUND:
                raise UserError(f"{node_addr} keeps no chain (no receipt_trace): ask a node that follows the chain") from None
            raise UserError(f"{node_addr}: receipt_trace failed: {exc.message} (code {exc.code})",
                            exit_code=exit_code_of(exc.code)) from None
        if not isinstance(trace, list) or not trace:
            raise UserError(f"{node_addr} has no receipt of job {job_id}: no such job, or none sealed yet",
                            exit_code=EXIT_NO_RECEIPT)
        fetched = []
        for entry in trace:
            rid = str(entry.get("id", "")) if isinstance(entry, dict) else ""
            kind = entry.get("kind") if isinstance(entry, dict) else None
            try:
                answer = await rpc.call("receipt_bundle", {"id": rid}, timeout=timeout)
            except RpcCallError as exc:
                message, _ = _refusal(node_addr, rid, exc)
                fetched.append(Fetched(rid, None, message, kind))
                continue
            fetched.append(Fetched(rid, _bundle_bytes(node_addr, answer), "", kind))
        return fetched

    try:
        return _run(node_addr, timeout, work)
    except (ConnectionError, trio.TooSlowError) as exc:
        raise UnreachableError(f"lost {node_addr}: {exc or 'timed out'}") from None
