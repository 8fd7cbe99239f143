"""The consensus shell: drives the IBFT core, the mempool and the chain store from the network.

One actor task owns the core. Everything that reaches it (a peer's
consensus message, a synced block, a timer tick) goes through one bounded
inbox, and its outputs are carried out strictly in order: a Persist is
fsynced before the Broadcast that follows it, a Finalized block is stored
before anything after it. Peers get messages through per-peer links with
their own queues (node/p2p/links.py), so one slow peer cannot stall the
actor. Protocols:

* ``/metanode/ibft/1.0.0``: consensus messages;
* ``/metanode/tx/1.0.0``: transaction gossip (node/consensus/tx_gossip.py:
  who gets an admitted transaction);
* ``/metanode/sync/1.0.0``: a request ``{"from", "limit"}`` answered by
  finalised blocks, one per frame.

On the first two, each frame is a CBOR array of messages (node/p2p/links.py).

A node that is behind (new, restarted, partitioned) syncs before its core
starts, and again whenever the core says validators are ahead. Both ends of
sync live in node/consensus/sync.py (:class:`BlockSync`, which the service
owns): its tasks run beside the actor and reach the core only by posting
blocks to the inbox.

A validator that starts without its safety state (a wiped data directory)
follows the chain without signing until the :class:`SigningGate` opens
(node/consensus/gate.py; what it is told and when, node/consensus/gate_watch.py):
synced to the head, then ``double_sign_check_height`` heights finalised
without it. A safety state that cannot be written stops the service before
what was to be signed is sent (:class:`SafetyWriteError`, which the daemon
reports as one line and an exit code).

The role is per height: the node signs at height h iff its key is in the
application's ``validator_set_at(h)`` (the core reads it when it enters h).
The gate therefore runs on every node, validator or not: a node that is
voted in starts signing at its first height with no restart (and, if it
never had safety state, only once the gate let it: a key that sealed the
last blocks before a wipe waits as a restarted validator does), and one
voted out stops at its first height outside the set.

A finalised block is stored, applied and announced (commit events,
subscriptions, recent blocks) by :class:`BlockCommits`
(node/consensus/commits.py).
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import structlog
import trio
from libp2p.peer.id import ID

from node.base.keys import Identity
from node.consensus.app import Application, EmptyApplication
from node.consensus.block import Block, BlockError, BlockHeader, genesis_header
from node.consensus.commits import BlockCommits, BlockSummary
from node.consensus.gate import SigningGate
from node.consensus.gate_watch import GateWatch
from node.consensus.genesis import Genesis
from node.consensus.ibft import IbftCore
from node.consensus.mempool import Admission, Mempool, MempoolConfig
from node.consensus.outputs import (
    Broadcast,
    Finalized,
    NeedProposal,
    NeedSync,
    Output,
    Persist,
    RoundStarted,
    persist_plan,
)
from node.consensus.safety import SafetyState, SafetyStore
from node.consensus.store import ChainStore
from node.consensus.sync import SYNC_PROTOCOL, BlockSync
from node.consensus.timer import WallClockTimer, now_ms
from node.consensus.tx import TxError, TxTypeRegistry
from node.consensus.tx_caches import DecodedTxCache, SignatureCache
from node.consensus.tx_checks import check_block_txs
from node.consensus.tx_gossip import TX_GOSSIP_LINGER_S, TX_PROTOCOL, TxGossip
from node.consensus.validators import ValidatorSet
from node.p2p.framing import FramedStream, FrameError
from node.p2p.links import PeerLinks, read_batch

IBFT_PROTOCOL = "/metanode/ibft/1.0.0"
SAFETY_FILE = "consensus-safety.cbor"

INBOX_SIZE = 4096
DOUBLE_SIGN_CHECK_HEIGHT = 2  # the [consensus] key's default
DEFAULT_MEMPOOL = MempoolConfig()  # frozen: one shared default

log = structlog.get_logger("metanode.consensus")


class ConsensusService:
    """Chain follower on every node; IBFT validator when the node's key is in the set."""

    def __init__(
        self,
        *,
        host: Any,
        identity: Identity,
        genesis: Genesis,
        conn: Any,
        data_dir: Path,
        store: ChainStore | None = None,
        registry: TxTypeRegistry,
        mempool_config: MempoolConfig = DEFAULT_MEMPOOL,
        max_frame: int,
        app: Application | None = None,
        double_sign_check_height: int = DOUBLE_SIGN_CHECK_HEIGHT,
        unsafe_sign_immediately: bool = False,
    ) -> None:
        """``app`` gives the chain its meaning (node/consensus/app.py is the whole
        contract; node/app/chain_app.py implements it). Without one, blocks carry
        an empty receipt log (:class:`EmptyApplication`).

        Building the service is the start-up handshake: the application adds its
        transaction types to ``registry`` and catches up with the stored chain
        before the core is built on the stored tip.

        ``double_sign_check_height`` and ``unsafe_sign_immediately``: what a
        validator without its safety state does (node/consensus/gate.py)."""
        self.host = host
        self.genesis = genesis
        self.registry = registry
        self.max_frame = max_frame
        self.store = store or ChainStore(conn, first_height=1, first_parent=genesis_header(genesis).hash)
        self.store.bind_chain(genesis.chain_id, genesis.hash)
        self._tip_header_cache: BlockHeader | None = None  # before _build_core reads the tip
        # One decode per transaction on this node: the mempool, the block check,
        # the store and the application all go through this cache (the
        # application reads it as ``store.tx_cache``); a block's entries are
        # evicted by the mempool's on_commit, the last step of
        # BlockCommits.commit that decodes.
        self.tx_cache = DecodedTxCache.for_limits(
            pool_txs=mempool_config.max_txs, pool_bytes=mempool_config.max_bytes,
            block_txs=genesis.limits.max_txs_per_block, block_bytes=genesis.limits.max_block_bytes,
        )
        self.store.tx_cache = self.tx_cache
        self.app: Application = app if app is not None else EmptyApplication(genesis.validator_set)
        self.app.register_tx_types(registry)
        self.app.catch_up()
        self.signatures = SignatureCache()
        self.mempool = Mempool(
            chain_id=genesis.chain_id, registry=registry, committed_nonce=self.store.next_nonce,
            config=mempool_config, signatures=self.signatures, tx_cache=self.tx_cache,
        )
        self.safety = SafetyStore(data_dir / SAFETY_FILE)
        self.identity = identity
        saved = self.safety.load()
        self.gate = SigningGate.at_start(check_heights=double_sign_check_height, has_safety_state=saved is not None,
                                         unsafe_sign_immediately=unsafe_sign_immediately)
        # Until the gate opens the core is built without the key: it follows, it cannot sign.
        self.core = self._build_core(saved)
        self._was_validator = self.is_validator
        self._inbox_send, self._inbox = trio.open_memory_channel[tuple[str, Any]](INBOX_SIZE)
        self._timer = WallClockTimer(now_ms, lambda: self._post("tick"))
        self.commits = BlockCommits(store=self.store, app=self.app, mempool=self.mempool)
        self.links: PeerLinks | None = None
        self.sync = BlockSync(host=host, store=self.store, max_frame=max_frame,
                              height=lambda: self.core.height, deliver=lambda block: self._post("block", block))
        self.gate_watch = GateWatch(gate=self.gate, key=identity.public_key, core=lambda: self.core, store=self.store,
                                    app=self.app, sync=self.sync, safety_path=self.safety.path,
                                    start_signing=self._start_signing, post_synced=lambda answered: self._post("gate-synced", answered))
        self.dropped_inbox = 0
        self._txs_posted = False  # a "txs" event is in the inbox: one is enough
        limits = genesis.limits
        self.gossip = TxGossip(host=host, max_frame=max_frame, admit=self._admit, validators=lambda: self.core.validators,
                               next_proposal=lambda blocks: self.mempool.reap(blocks * (limits.max_block_bytes // 2),
                                                                              blocks * limits.max_txs_per_block))
        self.started = False
        # Handlers go in before the host listens: a peer's identify record of
        # this node is taken when it connects and never refreshed by a later
        # set_stream_handler, and gossip skips peers whose record lacks the
        # protocol (PeerLinks.speaks). Registered in run(), a peer that
        # connected during start-up would never send us consensus messages.
        # Streams that arrive before run() has its links wait for it.
        self._ready = trio.Event()
        for protocol, handler in ((IBFT_PROTOCOL, self._handle_ibft), (TX_PROTOCOL, self.gossip.serve), (SYNC_PROTOCOL, self.sync.serve)):
            host.set_stream_handler(protocol, self._when_ready(handler))

    def _build_core(self, safety: SafetyState | None) -> IbftCore:
        """The IBFT core on the stored tip, with our key once the gate is open
        (it then signs at the heights whose set holds the key), a follower
        before; the application says which set decides each height."""
        return IbftCore(
            self.genesis, self.identity if self.gate.open else None, self.tip_header(),
            safety=safety, validate_block=self._validate_block, validators_at=self.app.validator_set_at,
        )

    @property
    def validators(self) -> ValidatorSet:
        """The validator set of the height being decided (:attr:`height`)."""
        return self.core.validators

    @property
    def is_validator(self) -> bool:
        """Whether this node's key is in the set of the height being decided."""
        return self.identity.public_key in self.core.validators

    @property
    def signing(self) -> dict[str, Any]:
        """Whether this validator signs, and if not why and from when (node_status)."""
        if not self.is_validator:
            return {"state": "not-a-validator"}
        return self.gate.status()

    # -- chain views ------------------------------------------------------------
    def tip_header(self) -> BlockHeader:
        """The stored head's header. Kept until the head moves: ``chain_head`` is
        every client's cheapest call, and a DuckDB read plus a block decode per
        call let a flood of them hold the event loop from other peers."""
        head = self.store.head()
        if head is None:
            return genesis_header(self.genesis)
        cached = self._tip_header_cache
        if cached is not None and cached.hash == head.hash:
            return cached
        stored = self.store.block_by_height(head.height)
        assert stored is not None
        self._tip_header_cache = header = Block.decode(stored.block).header
        return header

    def proposer_for(self, round_number: int) -> bytes:
        """The proposer of ``round_number`` at the height being decided (its set's)."""
        return self.core.validators.proposer(self.core.tip.proposer, round_number)

    # Read-only views of the core for everything outside node/consensus (roles
    # never reach into the core: it belongs to the actor task).
    @property
    def tip(self) -> BlockHeader:
        """The header of the latest finalised block (the genesis header before the first)."""
        return self.core.tip

    @property
    def finalized_height(self) -> int:
        """The height of the latest finalised block (0 before the first)."""
        return self.core.tip.height

    @property
    def height(self) -> int:
        """The height being decided now: the one after :attr:`finalized_height`."""
        return self.core.height

    @property
    def round(self) -> int:
        """The round of :attr:`height` the core is in."""
        return self.core.round

    def counters(self) -> dict[str, int]:
        """A copy of the core's event counters (dropped messages, timeouts...)."""
        return dict(self.core.counters)

    # -- finalised blocks (node/consensus/commits.py) -----------------------------
    @property
    def recent(self) -> deque[BlockSummary]:
        """The summaries of the last finalised blocks, oldest first."""
        return self.commits.recent

    @property
    def on_finalized(self) -> list[Callable[[Block], None]]:
        """Callbacks called with each finalised block, once it is stored and applied."""
        return self.commits.on_finalized

    def commit_event(self, tx_hash_: bytes) -> trio.Event:
        """An event set when ``tx_hash_`` is finalised."""
        return self.commits.commit_event(tx_hash_)

    def forget_waiter(self, tx_hash_: bytes) -> None:
        self.commits.forget_waiter(tx_hash_)

    def subscribe(self) -> trio.MemoryReceiveChannel[BlockSummary]:
        """A channel fed the summary of every block finalised from now on."""
        return self.commits.subscribe()

    # -- lifecycle --------------------------------------------------------------
    def _when_ready(self, handler: Callable[[Any], Any]) -> Callable[[Any], Any]:
        async def gated(stream: Any) -> None:
            await self._ready.wait()
            await handler(stream)

        return gated

    async def run(self, *, task_status: Any = trio.TASK_STATUS_IGNORED) -> None:
        async with trio.open_nursery() as nursery:
            self.links = PeerLinks(self.host, nursery, max_frame=self.max_frame,
                                   linger_s={TX_PROTOCOL: TX_GOSSIP_LINGER_S})
            self.sync.attach(self.links, nursery)
            await nursery.start(self.gossip.run, self.links)
            self._ready.set()
            nursery.start_soon(self._timer.run)
            task_status.started()
            # A restarted validator must not propose or vote for heights the
            # network has finalised: sync from peers before the core starts.
            await self.sync.catch_up(feed=self._feed_block)
            self.started = True
            if not self.gate.open:
                self.gate_watch.synced(self.sync.peer_answered, starting=True)
            self._apply(self.core.start(now_ms()))
            log.info("consensus started", height=self.core.height, validator=self.is_validator,
                     signing=self.gate.open if self.is_validator else False, validators=len(self.validators))
            if not self.gate.open:
                nursery.start_soon(self.gate_watch.learn_head)
            async for kind, payload in self._inbox:
                self._handle_event(kind, payload)

    # -- the signing gate (node/consensus/gate.py, gate_watch.py) --------------------
    def _start_signing(self, starting: bool = False) -> None:
        """The gate opened: record from where our signatures are tracked, and
        rebuild the core with our key on the current tip (at a height boundary:
        right after a finalised block, or before the core started)."""
        tip = self.core.tip.height
        mark = SafetyState(height=tip)  # nothing signed at or below the tip by this incarnation
        self.safety.save(mark)  # so a restart from here need not watch again
        counters = self.core.counters
        self.core = self._build_core(mark)
        self.core.counters.update(counters)
        if self.is_validator:
            log.warning("validator signing", reason=self.gate.reason, from_height=tip + 1)
        else:
            log.info("signing key ready should this node be voted in", reason=self.gate.reason, from_height=tip + 1)
        if not starting:
            self._apply(self.core.start(now_ms()))

    # -- the actor ----------------------------------------------------------------
    def _post(self, kind: str, payload: Any = None) -> None:
        try:
            self._inbox_send.send_nowait((kind, payload))
        except trio.WouldBlock:
            self.dropped_inbox += 1  # IBFT recovers from lost messages; a stalled actor would not

    def _handle_event(self, kind: str, payload: Any) -> None:
        now = now_ms()
        if kind == "message":
            self._apply(self.core.on_message(payload, now))
        elif kind == "block":
            self._feed_block(payload)
        elif kind == "tick":
            self._apply(self.core.tick(now))
        elif kind == "gate-synced":
            self.gate_watch.synced(bool(payload))
        elif kind == "txs":
            self._apply([])

    def _feed_block(self, block: Block) -> None:
        self._apply(self.core.on_block(block, now_ms()))

    def _apply(self, outputs: list[Output]) -> None:
        while True:
            while outputs:
                finalized = self._apply_batch(outputs)
                # Only now does the store and application state hold the block, so
                # only now may the core judge proposals that waited for its successor.
                outputs = self.core.resume(now_ms()) if finalized else []
            # A proposer waiting for the heartbeat proposes at once when transactions wait (after a block too).
            outputs = self._offer_transactions()
            if not outputs:
                break
        if self.gate.finalized(self.core.tip.height):
            self._start_signing()
            return
        self._note_role_change()
        # The timer follows the core's own next deadline, read after every batch,
        # rather than carrying out SetTimer outputs one by one: one carried out
        # after a nested proposal (NeedProposal inside a tick's batch) can be
        # stale, and a tick lost from a full inbox is never re-emitted by the core
        # (it emits a deadline only when it changes). Either would stop the timer.
        deadline = self.core.next_deadline_ms
        if deadline is not None and deadline != self._timer.deadline:
            self._timer.set(deadline)

    def _offer_transactions(self) -> list[Output]:
        """Tell the core that transactions wait, if it wants to know and they do."""
        self._txs_posted = False  # checked now: a "txs" event still queued is redundant
        wanted = self.core.wants_transactions and self.mempool.has_ready()
        return self.core.transactions_pending(now_ms()) if wanted else []

    def _note_role_change(self) -> None:
        """Log when a set change makes this node a validator or stops it being one."""
        now = self.is_validator
        if now != self._was_validator:
            self._was_validator = now
            log.warning("validator set change: this node " + ("now votes" if now else "no longer votes"),
                        height=self.core.height, validators=len(self.validators),
                        signing=now and self.gate.open, gate=self.gate.state)

    def _apply_batch(self, outputs: list[Output]) -> bool:
        """Carry out one batch in order; True if it held a Finalized block."""
        finalized = False
        saves = persist_plan(outputs)
        for index, output in enumerate(outputs):
            if isinstance(output, Persist):
                # Durable (fsync) before what follows. If the disk refuses,
                # SafetyWriteError ends this batch here: what was signed is never
                # sent, and the service stops (the daemon says why, in one line).
                state = saves.get(index)
                if state is not None:
                    self.safety.save(state)
            elif isinstance(output, Broadcast):
                self.links.broadcast(IBFT_PROTOCOL, output.message)  # type: ignore[union-attr]
            elif isinstance(output, NeedProposal):
                self._propose(output)
            elif isinstance(output, Finalized):
                self.commits.commit(output.block)
                finalized = True
            elif isinstance(output, NeedSync):
                self.sync.request(output)
            elif isinstance(output, RoundStarted) and output.round > 0:
                log.info("round change", height=output.height, round=output.round, reason=output.reason)
        return finalized

    def _propose(self, need: NeedProposal) -> None:
        limits = self.genesis.limits
        txs = self.mempool.reap(limits.max_block_bytes // 2, limits.max_txs_per_block)
        now = now_ms()
        timestamp = max(now, need.earliest_timestamp_ms)
        try:
            outputs = self.core.propose(need.height, need.round, txs, timestamp, now, **self.app.commitment_after(txs).header_fields())
        except BlockError as exc:
            log.error("proposal refused by the block limits; proposing an empty block", reason=str(exc))
            outputs = self.core.propose(need.height, need.round, [], timestamp, now, **self.app.commitment_after([]).header_fields())
        self._apply(outputs)

    def _validate_block(self, header: BlockHeader, txs: Sequence[bytes]) -> bool:
        try:
            check_block_txs(txs, chain_id=self.genesis.chain_id, registry=self.registry,
                            committed_nonce=self.store.next_nonce, signatures=self.signatures,
                            tx_cache=self.tx_cache)
        except TxError as exc:
            log.warning("proposed block refused", height=header.height, reason=str(exc))
            return False
        return self.app.accepts_proposal(header, txs)

    # -- inbound protocols ------------------------------------------------------------
    async def _handle_ibft(self, stream: Any) -> None:
        framed = FramedStream(stream, self.max_frame)
        try:
            while (frame := await framed.read_frame()) is not None:
                for message in read_batch(frame, max_size=self.max_frame):
                    self._post("message", message)
        except FrameError:
            await framed.reset()
        except Exception:
            pass

    # -- transactions -------------------------------------------------------------------
    def submit(self, tx_bytes: bytes, *, source: ID | None = None, digest: bytes | None = None) -> Admission:
        """Admit a transaction and gossip it on; the admission says why not.
        ``digest``: ``tx_hash(tx_bytes)``, when the caller computed it already."""
        return self.gossip.submit(tx_bytes, source=source, digest=digest)

    def _admit(self, tx_bytes: bytes, digest: bytes | None = None) -> Admission:
        """Admit a transaction to the mempool (not gossiped here); wake the core if it waits for one."""
        admission = self.mempool.add(tx_bytes, digest=digest)
        if admission.accepted and self.core.wants_transactions and not self._txs_posted:
            self._txs_posted = True  # wake the actor, which owns the core
            self._post("txs")
        return admission
