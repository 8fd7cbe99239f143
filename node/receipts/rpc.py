"""JSON-RPC methods of the receipt log: get, inclusion proof, consistency proof, bundle."""

from __future__ import annotations

from typing import Any

from node.base.errors import ErrorCode
from node.consensus.genesis import Genesis
from node.consensus.store import ChainStore
from node.p2p.jsonrpc import CallContext, Registry, RpcError
from node.receipts import api
from node.receipts.blocks import ChainStoreBlocks
from node.receipts.log import ReceiptLog

# The RPC error code of each receipt query failure, by the query error's own stable code.
QUERY_ERROR_CODES = {
    api.BAD_PARAM: ErrorCode.RECEIPT_BAD_PARAM,
    api.NOT_FOUND: ErrorCode.NOT_FOUND,
    api.NOT_SEALED: ErrorCode.RECEIPT_NOT_SEALED,
    api.INCONSISTENT: ErrorCode.RECEIPT_INCONSISTENT,
}

_ID = {"type": "string", "pattern": "^[0-9a-f]{64}$"}
_SIZE = {"type": "integer", "minimum": 0}
AUDIT_PAGE = 1000


def register_receipt_methods(registry: Registry, log: ReceiptLog, store: ChainStore, genesis: Genesis, app: Any = None) -> None:
    blocks = ChainStoreBlocks(store)
    # Bundles carry the validator set changes up to their sealing height (ChainApplication.validator_history).
    validator_history = app.validator_history if app is not None else None

    def answer(fn: Any, *args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except api.ReceiptQueryError as exc:
            code = QUERY_ERROR_CODES.get(exc.code, ErrorCode.RECEIPT_QUERY_FAILED)
            raise RpcError(code, exc.message, {"reason": exc.code, **exc.data}) from None

    async def receipt_get(ctx: CallContext, id: str) -> dict[str, Any]:
        return answer(api.receipt_get, log, id)

    async def receipt_proof(ctx: CallContext, id: str, size: int | None = None) -> dict[str, Any]:
        return answer(api.receipt_proof, log, blocks, id, size=size)

    async def receipt_consistency(ctx: CallContext, size1: int, size2: int) -> dict[str, Any]:
        return answer(api.receipt_consistency, log, size1, size2)

    async def receipt_bundle(ctx: CallContext, id: str) -> dict[str, Any]:
        return answer(api.receipt_bundle, log, blocks, genesis, id, validator_history=validator_history)

    async def receipt_trace(ctx: CallContext, job_id: str) -> list[dict[str, Any]]:
        return app.job_receipts(bytes.fromhex(job_id))

    async def audit_leaves(ctx: CallContext, start: int = 0, limit: int = AUDIT_PAGE) -> dict[str, Any]:
        from node.receipts.audit import stored_leaves

        rows = [row for batch in stored_leaves(app.conn, start, limit) for row in batch]
        return {"size": log.size(), "leaves": [[index, envelope.hex()] for index, envelope in rows]}

    async def audit_anchors(ctx: CallContext, start_height: int = 1, limit: int = AUDIT_PAGE) -> dict[str, Any]:
        from node.receipts.audit import stored_anchors

        return {"anchors": [list(a) for a in stored_anchors(app.conn, start_height, limit)]}

    if app is not None:
        page = {"type": "integer", "minimum": 1, "maximum": AUDIT_PAGE}
        registry.register("audit_leaves", audit_leaves, {"properties": {"start": _SIZE, "limit": page}},
                          "A page of the receipt log's leaves (log index, envelope) from start, for audit export.")
        registry.register("audit_anchors", audit_anchors, {"properties": {"start_height": _SIZE, "limit": page}},
                          "A page of block anchors (height, hash, receipts size, receipts root) from start_height.")
        registry.register("receipt_trace", receipt_trace, {"properties": {"job_id": _ID}, "required": ["job_id"]},
                          "Every logged receipt about a job, in log order (submission, schedule, executions, verdict).")
    registry.register("receipt_get", receipt_get, {"properties": {"id": _ID}, "required": ["id"]}, "A receipt envelope and its place in the log.")
    registry.register("receipt_proof", receipt_proof, {"properties": {"id": _ID, "size": _SIZE}, "required": ["id"]}, "Inclusion proof to the sealing block's root (or to the log at size).")
    registry.register("receipt_consistency", receipt_consistency, {"properties": {"size1": _SIZE, "size2": _SIZE}, "required": ["size1", "size2"]}, "Consistency proof between two log sizes.")
    registry.register("receipt_bundle", receipt_bundle, {"properties": {"id": _ID}, "required": ["id"]}, "Everything needed to verify a receipt offline (metanode receipt verify).")
