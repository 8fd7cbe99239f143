"""Transaction gossip on ``/metanode/tx/1.0.0``: who gets an admitted transaction.

A node gossips what it admits from a client (``tx_submit``, a gateway, its
own roles) to every peer it has. What it admits from gossip it passes on as
one batch per peer, but not from validator to validator: validators keep
connections to each other (every genesis validator has a reserved
connection slot; the testnet makes them a full mesh of persistent peers),
so what a validator sent us the other validators had from it directly, and a second copy would only cost each of
them transport and a duplicate refusal (issue 16: a third of a validator's
CPU per transaction). What a validator sent goes on to the full nodes we
know; what a full node sent goes on to everyone.

Without that relay a validator misses a transaction whenever its link to
the one validator that had it was down when it was gossiped (the link flapped,
or it restarted and lost its pool). So when a connection to a validator of
the current set opens, each side sends the other its *catch-up*: what it
would propose next (:meth:`Mempool.reap` over :data:`CATCH_UP_BLOCKS` blocks'
worth), on a stream of its own, in frames of the same format. Every
proposer then holds every transaction some connected validator holds. What
a node admitted and had not yet gossiped when it died (a client's
transaction on a node that crashed within the linger) is gone with it: the
answer to ``tx_submit`` means "in this node's pool", and a client that
needs the transaction committed waits for it (``mode: commit``) or submits
the same bytes again (the hash, and the nonce, make that safe).

Outbound gossip lingers :data:`TX_GOSSIP_LINGER_S` so that a JSON-RPC batch of
``tx_submit`` calls (served one call per scheduling step) leaves as one frame
per peer, not one frame per transaction (node/p2p/links.py). The frame
format is unchanged: a canonical CBOR array of encoded transactions
(docs/wire.md).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import structlog
import trio
from libp2p.peer.id import ID

from node.base.codec import encode
from node.base.keys import peer_id_from_public_key
from node.consensus.mempool import Admission
from node.consensus.validators import ValidatorSet
from node.p2p.framing import FramedStream, FrameError
from node.p2p.links import OPEN_TIMEOUT_S, WRITE_TIMEOUT_S, PeerLinks, read_batch
from node.p2p.notifee import ChannelNotifee

TX_PROTOCOL = "/metanode/tx/1.0.0"
# A client's batch is admitted one call per scheduling step, and a frame per
# transaction costs each peer more than admitting it: wait this long to
# gather a frame. Far below a block interval.
TX_GOSSIP_LINGER_S = 0.005
CATCH_UP_BLOCKS = 4  # a catch-up holds what we would propose in the next blocks
CATCH_UP_QUEUE = 64  # connections waiting for their catch-up; more are dropped (gossip still flows)
# Transactions per catch-up frame: the receiver admits a frame's transactions in
# one go (a signature check each for the new ones), so a frame stays ~10 ms of it.
CATCH_UP_FRAME_TXS = 256

log = structlog.get_logger("metanode.consensus")


class _Connections(ChannelNotifee[Any]):
    async def connected(self, network: Any, conn: Any) -> None:
        self.push(conn)


class TxGossip:
    """The node's side of transaction gossip: admission plus fan-out, the
    inbound stream handler, and catch-ups for validators that connect."""

    def __init__(
        self,
        *,
        host: Any,
        max_frame: int,
        admit: Callable[[bytes, bytes | None], Admission],
        validators: Callable[[], ValidatorSet],
        next_proposal: Callable[[int], list[bytes]],
    ) -> None:
        """``admit(tx, digest)``: the mempool admission (it also wakes the core);
        ``validators()``: the set deciding the current height;
        ``next_proposal(blocks)``: the transactions we would propose in the next
        ``blocks`` blocks, in order (the catch-up)."""
        self.host = host
        self.max_frame = max_frame
        self._admit = admit
        self._validators = validators
        self._next_proposal = next_proposal
        self.links: PeerLinks | None = None
        self._validator_peer_ids: tuple[bytes, frozenset[str]] = (b"", frozenset())

    # -- out -------------------------------------------------------------------
    def submit(self, tx_bytes: bytes, *, source: ID | None = None, digest: bytes | None = None) -> Admission:
        """Admit a transaction and gossip it to every peer but ``source``."""
        admission = self._admit(tx_bytes, digest)
        if admission.accepted and self.links is not None:
            self.links.broadcast(TX_PROTOCOL, tx_bytes, exclude=source)
        return admission

    def relay(self, txs: Sequence[bytes], source: ID) -> int:
        """Pass on transactions admitted from ``source``'s gossip, one batch per
        peer: not back to it, and not from a validator to a validator. How many
        sends were queued."""
        if not txs or self.links is None:
            return 0
        validators = self.validator_peers()
        from_validator = source.to_base58() in validators
        sent = 0
        for peer in self.links.connected_peers():
            if peer == source or (from_validator and peer.to_base58() in validators):
                continue
            sent += self.links.send_many(peer, TX_PROTOCOL, txs)
        return sent

    def validator_peers(self) -> frozenset[str]:
        """Peer ids of the validators deciding the current height (recomputed when the set changes)."""
        validators = self._validators()
        if self._validator_peer_ids[0] != validators.hash:
            self._validator_peer_ids = (validators.hash, frozenset(peer_id_from_public_key(k) for k in validators.keys))
        return self._validator_peer_ids[1]

    # -- in --------------------------------------------------------------------
    async def serve(self, stream: Any) -> None:
        """A peer's gossip stream (live or catch-up): admit each transaction, relay the accepted."""
        source = stream.muxed_conn.peer_id
        framed = FramedStream(stream, self.max_frame)
        try:
            while (frame := await framed.read_frame()) is not None:
                accepted = [tx for tx in read_batch(frame, max_size=self.max_frame) if self._admit(tx, None).accepted]
                self.relay(accepted, source)
        except FrameError:
            await framed.reset()
        except Exception:
            pass  # the peer went away; gossip is best effort

    # -- catch-up --------------------------------------------------------------
    async def run(self, links: PeerLinks, *, task_status: Any = trio.TASK_STATUS_IGNORED) -> None:
        """Gossip through ``links``; send a catch-up to each validator that connects."""
        self.links = links
        send, receive = trio.open_memory_channel[Any](CATCH_UP_QUEUE)
        notifee = _Connections(send)
        network = self.host.get_network()
        network.register_notifee(notifee)
        try:
            async with trio.open_nursery() as nursery:
                task_status.started()
                async for conn in receive:
                    peer = conn.muxed_conn.peer_id
                    if peer.to_base58() in self.validator_peers() and peer != self.host.get_id():
                        nursery.start_soon(self.catch_up, peer)
        finally:
            network.remove_notifee(notifee)

    async def catch_up(self, peer: ID) -> int:
        """Send ``peer`` what we would propose next, on a stream of its own; how
        many transactions went out (0 if there were none or the peer went away)."""
        txs = self._next_proposal(CATCH_UP_BLOCKS)
        if not txs or self.links is None or not self.links.speaks(peer, TX_PROTOCOL):
            return 0
        counters = self.links.counters
        framed: FramedStream | None = None
        sent = 0
        try:
            with trio.fail_after(OPEN_TIMEOUT_S):
                stream = await self.host.new_stream(peer, [TX_PROTOCOL])
            framed = FramedStream(stream, self.max_frame)
            for batch in _batches(txs, self.max_frame // 2, CATCH_UP_FRAME_TXS):
                with trio.fail_after(WRITE_TIMEOUT_S):
                    await framed.write_frame(encode(batch))
                sent += len(batch)
        except Exception as exc:
            counters[f"catch_up_failed:{TX_PROTOCOL}"] += 1
            log.debug("transaction catch-up cut short", peer=peer.to_base58(), sent=sent, reason=str(exc)[:200])
        finally:
            counters[f"catch_up_sent:{TX_PROTOCOL}"] += sent
            if framed is not None:
                with trio.CancelScope(shield=True), trio.move_on_after(1):
                    await framed.close()
        return sent


def _batches(txs: Sequence[bytes], budget: int, max_count: int) -> list[list[bytes]]:
    """``txs`` in order, cut into frames of at most ``max_count`` transactions and
    ``budget`` bytes of them (a transaction larger than that goes alone: the frame
    limit still holds it)."""
    batches: list[list[bytes]] = []
    batch: list[bytes] = []
    size = 0
    for tx in txs:
        if batch and (size + len(tx) > budget or len(batch) >= max_count):
            batches.append(batch)
            batch, size = [], 0
        batch.append(tx)
        size += len(tx)
    if batch:
        batches.append(batch)
    return batches
