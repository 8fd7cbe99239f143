"""JSON-RPC methods of the chain: transactions, blocks, mempool, consensus state, subscriptions."""

from __future__ import annotations

import itertools
from typing import Any

import trio
from libp2p.network.stream.exceptions import StreamError

from node.base.errors import TX_REJECTED, ErrorCode
from node.base.keys import peer_id_from_public_key
from node.consensus.block import Block, tx_hash
from node.consensus.commits import BlockSummary
from node.consensus.mempool import Admission
from node.consensus.service import ConsensusService
from node.consensus.tx import TxErrorCode, decode_tx
from node.p2p.framing import FrameError
from node.p2p.jsonrpc import CallContext, Registry, RpcError

_HEX32 = {"type": "string", "pattern": "^[0-9a-f]{64}$"}
# An encoded transaction in lowercase hex. The group does not capture: a
# capturing one cost 8.7 us per 400 hex digits, this one 2.8.
TX_HEX = {"type": "string", "pattern": "^(?:[0-9a-f]{2})+$", "maxLength": 2 * 65536}
_subscription_ids = itertools.count(1)


def _hex_bytes(text: str, name: str) -> bytes:
    try:
        return bytes.fromhex(text)
    except ValueError:
        raise RpcError(ErrorCode.INVALID_PARAMS, "Invalid params", {"param": name, "reason": "not hex"}) from None


def summary_json(s: BlockSummary) -> dict[str, Any]:
    return {
        "height": s.height, "hash": s.hash.hex(), "round": s.round, "commit_round": s.commit_round,
        "timestamp_ms": s.timestamp_ms, "tx_count": s.tx_count, "proposer": s.proposer.hex(),
    }


def block_json(block: Block, *, include_txs: bool) -> dict[str, Any]:
    h = block.header
    out: dict[str, Any] = {
        "height": h.height, "hash": block.hash.hex(), "parent_hash": h.parent_hash.hex(),
        "chain_id": h.chain_id, "genesis_hash": h.genesis_hash.hex(), "timestamp_ms": h.timestamp_ms,
        "proposer": h.proposer.hex(),
        "round": h.round, "commit_round": block.commit_round, "tx_root": h.tx_root.hex(),
        "tx_count": h.tx_count, "receipts_size": h.receipts_size, "receipts_root": h.receipts_root.hex(),
        "validators_hash": h.validators_hash.hex(), "next_validators_hash": h.next_validators_hash.hex(),
        "seed_proof": h.seed_proof.hex(), "seed": h.seed.hex(),
        "seals": [{"validator": k.hex(), "signature": s.hex()} for k, s in block.seals],
        "tx_hashes": [d.hex() for d in block.tx_hashes],
    }
    if include_txs:
        out["transactions"] = [t.hex() for t in block.transactions]
    return out


def rejected(admission: Admission) -> RpcError:
    """The error answering a transaction the mempool refused, with its stable code."""
    code = admission.code
    assert code is not None  # a refused admission always says why
    return RpcError(TX_REJECTED[code], "transaction rejected", admission.rejection_data())


def register_chain_methods(registry: Registry, chain: ConsensusService) -> None:
    async def tx_submit(ctx: CallContext, tx: str, mode: str = "sync", timeout: float = 30.0) -> dict[str, Any]:
        raw = _hex_bytes(tx, "tx")
        digest = tx_hash(raw)
        if mode == "async":
            chain.submit(raw, digest=digest)
            return {"hash": digest.hex(), "status": "submitted"}
        if mode == "commit":
            stored = chain.store.committed_copy(raw)
            if stored is not None:
                return committed_answer(digest, stored)
            committed = chain.commit_event(digest)
        admission = chain.submit(raw, digest=digest)
        if not admission.accepted and admission.code is not TxErrorCode.DUPLICATE:
            raise rejected(admission)
        if mode == "sync":
            if not admission.accepted:
                raise rejected(admission)
            if admission.expected_nonce is not None:  # held behind a gap: the sender should send that nonce
                return {"hash": digest.hex(), "status": "pending", "expected_nonce": admission.expected_nonce}
            return {"hash": digest.hex(), "status": "pending"}
        with trio.move_on_after(timeout):
            await committed.wait()
        stored = chain.store.committed_copy(raw)
        if stored is None:
            chain.forget_waiter(digest)
            raise RpcError(ErrorCode.TX_COMMIT_TIMEOUT, "not committed within the timeout", {"hash": digest.hex(), "timeout_s": timeout, "status": "pending" if digest in chain.mempool else "dropped"})
        return committed_answer(digest, stored)

    def committed_answer(digest: bytes, stored: Any) -> dict[str, Any]:
        """A committed transaction can still be refused by the application
        state (it then changed nothing): say so, with the reason."""
        answer = {"hash": digest.hex(), "status": "committed", "height": stored.height, "index": stored.index}
        reason = chain.app.rejection_of(digest)
        if reason is not None:
            answer["state_rejected"] = reason
        return answer

    async def tx_get(ctx: CallContext, hash: str) -> dict[str, Any]:
        digest = _hex_bytes(hash, "hash")
        stored = chain.store.tx_by_hash(digest)
        if stored is not None:
            raw, where = stored.tx, {"status": "committed", "height": stored.height, "index": stored.index}
            reason = chain.app.rejection_of(digest)
            if reason is not None:  # ordered by consensus, refused by the state: it changed nothing
                where["state_rejected"] = reason
        elif (pending := chain.mempool.get(digest)) is not None:
            raw, where = pending, {"status": "pending"}
        else:
            raise RpcError(ErrorCode.NOT_FOUND, "transaction not found", {"hash": hash})
        tx = decode_tx(raw)
        return {"hash": hash, **where, "sender": tx.sender.hex(), "nonce": tx.nonce, "type": tx.type, "size": tx.size, "tx": raw.hex()}

    async def chain_head(ctx: CallContext) -> dict[str, Any]:
        header = chain.tip_header()
        return {"height": header.height, "hash": header.hash.hex(), "timestamp_ms": header.timestamp_ms,
                "chain_id": chain.genesis.chain_id, "genesis_hash": chain.genesis.hash.hex()}

    async def chain_block(ctx: CallContext, height: int | None = None, hash: str | None = None, include_txs: bool = False) -> dict[str, Any]:
        if (height is None) == (hash is None):
            raise RpcError(ErrorCode.INVALID_PARAMS, "Invalid params", {"param": "height", "reason": "give exactly one of height or hash"})
        stored = chain.store.block_by_height(height) if height is not None else chain.store.block_by_hash(_hex_bytes(hash, "hash"))  # type: ignore[arg-type]
        if stored is None:
            raise RpcError(ErrorCode.NOT_FOUND, "block not found", {"height": height, "hash": hash})
        return block_json(Block.decode(stored.block), include_txs=include_txs)

    async def chain_nonce(ctx: CallContext, sender: str) -> dict[str, Any]:
        key = _hex_bytes(sender, "sender")
        committed = chain.store.next_nonce(key)
        pending = [t.nonce for t in chain.mempool.pending(key)]
        return {"sender": sender, "committed_next": committed, "pending_next": max([committed - 1, *pending]) + 1,
                "expected_next": chain.mempool.expected_nonce(key)}  # the nonce to sign next: the first gap

    async def mempool_status(ctx: CallContext) -> dict[str, Any]:
        cfg = chain.mempool.config
        return {"count": len(chain.mempool), "bytes": chain.mempool.size_bytes, "max_count": cfg.max_txs, "max_bytes": cfg.max_bytes}

    async def consensus_state(ctx: CallContext) -> dict[str, Any]:
        round_number = chain.round
        proposer = chain.proposer_for(round_number)
        return {
            "height": chain.height, "round": round_number, "started": chain.started,
            "validator": chain.is_validator,
            "proposer": proposer.hex(), "proposer_peer_id": peer_id_from_public_key(proposer),
            "recent_blocks": [{"height": s.height, "commit_round": s.commit_round, "tx_count": s.tx_count} for s in chain.recent],
            "counters": chain.counters(), "inbox_dropped": chain.dropped_inbox,
            "gossip": dict(chain.links.counters) if chain.links else {},
        }

    async def validators_list(ctx: CallContext) -> list[dict[str, Any]]:
        # The set deciding the height in progress: it follows the chain's votes (gov_validators has their history).
        connected = {p.to_base58() for p in chain.links.connected_peers()} if chain.links else set()
        next_proposer = chain.proposer_for(chain.round)
        return [
            {"public_key": key.hex(), "peer_id": peer_id_from_public_key(key),
             "connected": peer_id_from_public_key(key) in connected, "proposer": key == next_proposer}
            for key in chain.validators.keys
        ]

    async def chain_subscribe(ctx: CallContext) -> dict[str, Any]:
        if ctx.notify is None or ctx.start_subscription is None:
            raise RpcError(ErrorCode.INVALID_PARAMS, "subscriptions need a stream", {})
        subscription = next(_subscription_ids)
        notify = ctx.notify
        receive = chain.subscribe()

        async def forward() -> None:
            # The RPC server runs this as the stream's subscription: whatever it
            # raises (the subscriber reset its stream mid-notification, say)
            # ends this subscription only. Leaving closes our end of the
            # channel, so the chain stops feeding it.
            async with receive:
                try:
                    async for summary in receive:
                        await notify("chain_newBlock", {"subscription": subscription, "block": summary_json(summary)})
                except (StreamError, FrameError, trio.BrokenResourceError, trio.ClosedResourceError, trio.TooSlowError):
                    return  # the subscriber is gone or not reading: a quiet end

        try:
            ctx.start_subscription(forward)
        except RpcError:
            receive.close()  # refused (too many on this stream): the chain must not keep feeding it
            raise
        return {"subscription": subscription}

    tx_schema = {
        "properties": {
            "tx": TX_HEX,
            "mode": {"enum": ["async", "sync", "commit"]},
            "timeout": {"type": "number", "exclusiveMinimum": 0, "maximum": 600},
        },
        "required": ["tx"],
    }
    registry.register("tx_submit", tx_submit, tx_schema, "Submit a signed transaction; mode async (queued), sync (admitted) or commit (included in a block).", timeout=660)
    registry.register("tx_get", tx_get, {"properties": {"hash": _HEX32}, "required": ["hash"]}, "A committed or pending transaction by hash.")
    registry.register("chain_head", chain_head, {}, "The latest finalised block.")
    registry.register("chain_block", chain_block, {"properties": {"height": {"type": "integer", "minimum": 0}, "hash": _HEX32, "include_txs": {"type": "boolean"}}}, "A finalised block by height or hash.")
    registry.register("chain_nonce", chain_nonce, {"properties": {"sender": _HEX32}, "required": ["sender"]}, "A sender's next nonce: committed, after its pending transactions, and the first gap (expected_next: sign the next transaction with it).")
    registry.register("mempool_status", mempool_status, {}, "Pending transactions and limits.")
    registry.register("consensus_state", consensus_state, {}, "Height, round, proposer, rounds of recent blocks, counters.")
    registry.register("validators_list", validators_list, {}, "The validator set of the height being decided, with peer ids and connection state.")
    registry.register("chain_subscribe", chain_subscribe, {}, "Stream chain_newBlock notifications on this RPC stream.")
