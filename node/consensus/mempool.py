"""The mempool: admission, limits, fair reaping and re-checks after commit.

Sans-I/O: no clock, no I/O, no randomness. The shell feeds it encoded
transactions (from clients and gossip), asks it for a proposal's
transactions, and tells it about every committed block, in height order.

The only outside fact it needs is each sender's committed next nonce,
supplied by ``committed_nonce(sender)`` (``ChainStore.next_nonce`` in the
node, a dict lookup in the simulator). It is read once per sender when the
sender's first transaction is admitted; after that the mempool keeps it
current from the committed blocks it is shown, so the function is not hit on
every admission.

Admission never raises for bad input and never reports a refusal as
success: each call returns an :class:`Admission` with a stable code.

No sender is ever wedged. A sender's transactions past a gap in its nonces
(an earlier one refused, lost with a dead node, or not arrived yet) are held,
within the sender's bounds (``max_per_sender``, ``max_nonce_ahead``), and
become eligible for blocks the moment the gap is filled. Every refusal and
every admission behind a gap says which nonce the pool needs next from that
sender (``Admission.expected_nonce``), so a client resends from there instead
of guessing. Held transactions behind a gap are the first to go when the pool
is full and a transaction that could go into the next block arrives: a
sender's queue that cannot be included never keeps out one that can.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from node.base.codec import to_hex
from node.consensus.tx import (
    MAX_TX_BYTES,
    Transaction,
    TxError,
    TxErrorCode,
    TxTypeRegistry,
    tx_hash,
)
from node.consensus.tx_caches import DecodedTxCache, SignatureCache
from node.consensus.tx_checks import check_tx


@dataclass(frozen=True)
class MempoolConfig:
    """Limits; the defaults suit a validator with a few hundred MB to spare."""

    max_txs: int = 10_000
    max_bytes: int = 64 * 1024 * 1024
    max_tx_bytes: int = MAX_TX_BYTES
    max_per_sender: int = 64  # pending transactions per sender
    max_bytes_per_sender: int = 1024 * 1024
    max_nonce_ahead: int = 64  # accepted nonces: [next, next + max_nonce_ahead)
    signature_cache_size: int = 50_000

    def __post_init__(self) -> None:
        for name in (
            "max_txs", "max_bytes", "max_tx_bytes", "max_per_sender",
            "max_bytes_per_sender", "max_nonce_ahead", "signature_cache_size",
        ):
            if getattr(self, name) < 1:
                raise ValueError(f"mempool {name} must be at least 1")
        if self.max_tx_bytes > MAX_TX_BYTES:
            raise ValueError(f"mempool max_tx_bytes may not exceed the protocol limit {MAX_TX_BYTES}")


@dataclass(frozen=True)
class Admission:
    """The answer to :meth:`Mempool.add`: accepted, or a stable code and a message."""

    code: TxErrorCode | None
    message: str
    tx_hash: bytes | None  # None only when the input was not bytes
    # The nonce the pool needs next from this sender (the first gap after its
    # committed and pending transactions). Set on every refusal about nonces or
    # room (bad_nonce, sender_limit, mempool_full) and on an admission that
    # waits behind a gap; None otherwise (the sender has nothing to fix).
    expected_nonce: int | None = None
    evicted: tuple[bytes, ...] = ()  # held transactions removed to make room for this one

    @property
    def accepted(self) -> bool:
        return self.code is None

    def rejection_data(self) -> dict[str, object]:
        """The ``data`` of the RPC error answering a refusal: the stable reason,
        the message, and ``expected_nonce`` when the sender should resend from there."""
        data: dict[str, object] = {"reason": self.code.value if self.code else None, "detail": self.message}
        if self.expected_nonce is not None:
            data["expected_nonce"] = self.expected_nonce
        return data


@dataclass(frozen=True)
class CommitResult:
    """What :meth:`Mempool.on_commit` removed: committed ones and now-stale ones."""

    committed: list[bytes]  # hashes of pool transactions that the block included
    dropped: list[bytes]  # hashes whose nonce the block made stale


@dataclass
class _SenderQueue:
    order: int  # when the sender got its first pending transaction (reap order)
    committed_next: int  # the sender's committed next nonce, kept current by on_commit
    by_nonce: dict[int, Transaction] = field(default_factory=dict)
    size: int = 0
    ready_end: int = 0  # the first nonce missing from committed_next on: [committed_next, ready_end) may be reaped

    def advance(self) -> None:
        """Move ``ready_end`` up past every pending nonce that now follows without a gap."""
        self.ready_end = max(self.ready_end, self.committed_next)
        while self.ready_end in self.by_nonce:
            self.ready_end += 1

    @property
    def held(self) -> int:
        """How many pending transactions wait behind a gap (not reapable yet)."""
        return len(self.by_nonce) - (self.ready_end - self.committed_next)


class Mempool:
    """Pending transactions, admitted once and reaped fairly for proposals."""

    def __init__(
        self,
        *,
        chain_id: str,
        registry: TxTypeRegistry,
        committed_nonce: Callable[[bytes], int],
        config: MempoolConfig | None = None,
        signatures: SignatureCache | None = None,
        tx_cache: DecodedTxCache | None = None,
    ) -> None:
        """``tx_cache``: the node's decoded transactions (shared with the block
        check, the store and the application); the pool decodes through it,
        adds what it admits, and evicts what it drops without a commit. A
        private one sized for the pool's limits if not given."""
        self.chain_id = chain_id
        self.registry = registry
        self.config = config if config is not None else MempoolConfig()
        # Not `signatures or ...`: an empty cache is falsy (it has __len__).
        self.signatures = (
            signatures if signatures is not None else SignatureCache(self.config.signature_cache_size)
        )
        self.tx_cache = (
            tx_cache if tx_cache is not None
            else DecodedTxCache.for_limits(pool_txs=self.config.max_txs, pool_bytes=self.config.max_bytes,
                                           block_txs=0, block_bytes=0)
        )
        self._committed_nonce = committed_nonce
        self._by_hash: dict[bytes, Transaction] = {}
        self._senders: dict[bytes, _SenderQueue] = {}
        self._size = 0
        self._order = 0
        self._last_height: int | None = None

    # -- inspection -----------------------------------------------------------
    def __len__(self) -> int:
        return len(self._by_hash)

    def __contains__(self, tx_hash_: object) -> bool:
        return tx_hash_ in self._by_hash

    @property
    def size_bytes(self) -> int:
        """Total encoded size of the pending transactions."""
        return self._size

    def get(self, tx_hash_: bytes) -> bytes | None:
        """The encoded pending transaction with this hash, if any."""
        tx = self._by_hash.get(tx_hash_)
        return tx.encoded if tx is not None else None

    def pending(self, sender: bytes) -> list[Transaction]:
        """The sender's pending transactions in nonce order."""
        queue = self._senders.get(sender)
        if queue is None:
            return []
        return [queue.by_nonce[n] for n in sorted(queue.by_nonce)]

    def has_ready(self) -> bool:
        """Whether :meth:`reap` has something to take: some sender's next
        committed nonce is pending (transactions held behind a gap do not
        count, so they never make a proposer hurry an empty block)."""
        return any(queue.ready_end > queue.committed_next for queue in self._senders.values())

    def expected_nonce(self, sender: bytes) -> int:
        """The nonce this pool needs next from ``sender``: its committed next
        nonce, past every pending one that follows without a gap. A new
        transaction signed with it goes into a block; one signed with a
        higher nonce waits behind the gap."""
        queue = self._senders.get(sender)
        return queue.ready_end if queue is not None else self._committed_nonce(sender)

    # -- admission ------------------------------------------------------------
    def add(self, tx_bytes: bytes, *, digest: bytes | None = None) -> Admission:
        """Admit one encoded transaction, or say precisely why not.

        Checks, cheapest first: size, duplicate, encoding, chain, type,
        nonce, the sender's share, the pool's limits, the signature (once per
        hash, cached), then the type's payload hook. ``digest``:
        ``tx_hash(tx_bytes)`` when the caller computed it already (trusted).
        """
        if not isinstance(tx_bytes, (bytes, bytearray, memoryview)):
            return Admission(TxErrorCode.MALFORMED, "transaction must be bytes", None)
        if type(tx_bytes) is not bytes or digest is None:
            tx_bytes = bytes(tx_bytes)
            digest = tx_hash(tx_bytes)
        cfg = self.config
        if len(tx_bytes) > cfg.max_tx_bytes:
            return _reject(digest, TxErrorCode.TOO_LARGE,
                           f"transaction is {len(tx_bytes)} bytes; the limit is {cfg.max_tx_bytes}")
        if digest in self._by_hash:
            return _reject(digest, TxErrorCode.DUPLICATE,
                           f"transaction {to_hex(digest)} is already pending")
        try:
            # A hit: this node decoded the same bytes already (in a proposal).
            tx = self.tx_cache.decode(tx_bytes, digest=digest, max_size=cfg.max_tx_bytes, keep=False)
        except TxError as exc:
            return _reject(digest, exc.code, exc.message)
        if tx.chain_id != self.chain_id:
            return _reject(digest, TxErrorCode.WRONG_CHAIN,
                           f"transaction is for chain {tx.chain_id!r}, not {self.chain_id!r}")
        if tx.type not in self.registry:
            return _reject(digest, TxErrorCode.UNKNOWN_TYPE,
                           f"transaction type {tx.type!r} is not registered")
        queue = self._senders.get(tx.sender)
        committed_next = queue.committed_next if queue else self._committed_nonce(tx.sender)
        expected = queue.ready_end if queue else committed_next
        refusal = self._check_nonce_and_share(tx, queue, committed_next)
        if refusal is not None:
            return _reject(digest, *refusal, expected_nonce=expected)
        # Room: a transaction that extends its sender's reapable run may take
        # the place of transactions held behind gaps; nothing else may.
        fits_next_block = tx.nonce == expected
        victims = self._victims_for(tx) if fits_next_block else []
        freed_count, freed_bytes = len(victims), sum(v.size for v in victims)
        if len(self._by_hash) - freed_count >= cfg.max_txs:
            return _reject(digest, TxErrorCode.MEMPOOL_FULL,
                           f"mempool full: {len(self._by_hash)} transactions pending "
                           f"(limit {cfg.max_txs}); retry later", expected_nonce=expected)
        if self._size - freed_bytes + tx.size > cfg.max_bytes:
            return _reject(digest, TxErrorCode.MEMPOOL_FULL,
                           f"mempool full: {self._size} bytes pending, this transaction "
                           f"needs {tx.size} more (limit {cfg.max_bytes}); retry later",
                           expected_nonce=expected)
        try:
            check_tx(tx, chain_id=self.chain_id, registry=self.registry, signatures=self.signatures)
        except TxError as exc:
            return _reject(digest, exc.code, exc.message)
        for victim in victims:
            self._remove(victim)
        self.tx_cache.evict(v.hash for v in victims)
        self.tx_cache.add(tx)
        queue = self._insert(tx, self._senders.get(tx.sender), committed_next)
        evicted = tuple(v.hash for v in victims)
        if queue.ready_end <= tx.nonce:
            return Admission(None, f"accepted; held until nonce {queue.ready_end} of this sender arrives",
                             digest, expected_nonce=queue.ready_end, evicted=evicted)
        return Admission(None, "accepted", digest, evicted=evicted)

    def _victims_for(self, tx: Transaction) -> list[Transaction]:
        """Held transactions (behind a gap, of other senders) to remove so that
        ``tx`` fits, or [] when the pool has room or eviction could not make
        enough. Victims are taken from the sender holding the most, highest
        nonce first: its least useful transactions go first, and no sender can
        keep the pool full of transactions no block may include."""
        cfg = self.config
        need_count = len(self._by_hash) + 1 - cfg.max_txs
        need_bytes = self._size + tx.size - cfg.max_bytes
        if need_count <= 0 and need_bytes <= 0:
            return []
        held: dict[bytes, list[Transaction]] = {}
        for sender, queue in self._senders.items():
            if sender != tx.sender and queue.held:
                held[sender] = [queue.by_nonce[n] for n in sorted(queue.by_nonce) if n > queue.ready_end]
        victims: list[Transaction] = []
        while need_count > 0 or need_bytes > 0:
            if not held:
                return []
            sender = max(held, key=lambda s: (len(held[s]), s))
            victim = held[sender].pop()
            if not held[sender]:
                del held[sender]
            victims.append(victim)
            need_count -= 1
            need_bytes -= victim.size
        return victims

    def _check_nonce_and_share(
        self, tx: Transaction, queue: _SenderQueue | None, committed_next: int
    ) -> tuple[TxErrorCode, str] | None:
        cfg = self.config
        who = f"sender {to_hex(tx.sender)}"
        if tx.nonce < committed_next:
            return (TxErrorCode.BAD_NONCE,
                    f"nonce {tx.nonce} of {who} is stale: already committed (next is {committed_next})")
        if tx.nonce >= committed_next + cfg.max_nonce_ahead:
            return (TxErrorCode.BAD_NONCE,
                    f"nonce {tx.nonce} of {who} is too far ahead: next is {committed_next}, "
                    f"at most {cfg.max_nonce_ahead} ahead are kept")
        if queue is None:
            return None
        taken = queue.by_nonce.get(tx.nonce)
        if taken is not None:
            return (TxErrorCode.BAD_NONCE,
                    f"nonce {tx.nonce} of {who} is already used by pending transaction "
                    f"{to_hex(taken.hash)}")
        if len(queue.by_nonce) >= cfg.max_per_sender:
            return (TxErrorCode.SENDER_LIMIT,
                    f"{who} already has {len(queue.by_nonce)} pending transactions "
                    f"(limit {cfg.max_per_sender})")
        if queue.size + tx.size > cfg.max_bytes_per_sender:
            return (TxErrorCode.SENDER_LIMIT,
                    f"{who} already has {queue.size} bytes pending; this transaction would "
                    f"exceed the per-sender limit of {cfg.max_bytes_per_sender}")
        return None

    def _insert(self, tx: Transaction, queue: _SenderQueue | None, committed_next: int) -> _SenderQueue:
        if queue is None:
            queue = _SenderQueue(order=self._order, committed_next=committed_next)
            self._order += 1
            self._senders[tx.sender] = queue
        queue.by_nonce[tx.nonce] = tx
        queue.size += tx.size
        queue.advance()
        self._by_hash[tx.hash] = tx
        self._size += tx.size
        return queue

    def _remove(self, tx: Transaction) -> None:
        queue = self._senders[tx.sender]
        del queue.by_nonce[tx.nonce]
        queue.size -= tx.size
        if tx.nonce < queue.ready_end:
            # Only a committed or stale nonce (below committed_next) leaves from
            # inside the reapable run; anything else would open a gap in it.
            queue.ready_end = min(queue.ready_end, max(tx.nonce, queue.committed_next))
            queue.advance()
        del self._by_hash[tx.hash]
        self._size -= tx.size
        if not queue.by_nonce:
            del self._senders[tx.sender]

    # -- proposals ------------------------------------------------------------
    def reap(self, max_bytes: int, max_count: int) -> list[bytes]:
        """Encoded transactions for a proposal: at most ``max_count`` of them
        and ``max_bytes`` in total, valid to include in this order.

        Only each sender's gap-free run from its committed next nonce is
        eligible. Senders take turns (oldest sender first), one transaction per
        turn in nonce order, so one busy sender cannot crowd out the others.
        A sender whose next transaction does not fit is done for this block
        (its later nonces depend on it); smaller ones from others may still fit.
        Reaping removes nothing: transactions leave on commit.
        """
        runs: list[list[Transaction]] = []
        for queue in sorted(self._senders.values(), key=lambda q: q.order):
            run = [queue.by_nonce[n] for n in range(queue.committed_next, queue.ready_end)]
            if run:
                runs.append(run)
        chosen: list[bytes] = []
        used = 0
        turn = 0
        active = list(range(len(runs)))
        while active and len(chosen) < max_count:
            still_active = []
            for which in active:
                if len(chosen) >= max_count:
                    break
                run = runs[which]
                tx = run[turn]
                if used + tx.size > max_bytes:
                    continue  # this sender is done for this block
                chosen.append(tx.encoded)
                used += tx.size
                if turn + 1 < len(run):
                    still_active.append(which)
            active = still_active
            turn += 1
        return chosen

    # -- commits --------------------------------------------------------------
    def on_commit(self, height: int, txs: Sequence[bytes], digests: Sequence[bytes] | None = None) -> CommitResult:
        """Tell the mempool block ``height`` was committed with ``txs``
        (after the block is in the store that backs ``committed_nonce``).

        Removes the included transactions, advances the senders' committed
        nonces, and drops pending transactions those nonces made stale (for
        example a different transaction that took the same nonce). The
        block's and the dropped transactions leave the decoded-transaction
        cache: this is the last step of a commit that needs them. Call it
        for every committed block in order; if a height is skipped the pool
        re-reads every pending sender's nonce through ``committed_nonce``.
        ``digests``: ``tx_hash`` of each of ``txs`` when the caller has them.
        """
        if self._last_height is not None and height != self._last_height + 1:
            self.resync()
        self._last_height = height
        committed: list[bytes] = []
        touched: set[bytes] = set()
        if digests is None or len(digests) != len(txs):
            digests = [tx_hash(raw) for raw in txs]
        for raw, digest in zip(txs, digests):
            pooled = self._by_hash.get(digest)
            if pooled is not None:
                committed.append(digest)
                self._remove(pooled)
            try:
                # Not kept: the block's entries are evicted once it is committed.
                tx = pooled or self.tx_cache.decode(raw, digest=digest, keep=False)
            except TxError:
                continue  # a committed block was validated already; nothing to learn here
            queue = self._senders.get(tx.sender)
            if queue is not None:
                queue.committed_next = max(queue.committed_next, tx.nonce + 1)
                queue.advance()
                touched.add(tx.sender)
        dropped = [d for sender in sorted(touched) for d in self._drop_stale(sender)]
        # Called once the store and the application have the block: nothing
        # needs its transactions (or the stale ones) decoded any more.
        self.tx_cache.evict(digests)
        self.tx_cache.evict(dropped)
        return CommitResult(committed, dropped)

    def resync(self) -> list[bytes]:
        """Re-read every pending sender's committed nonce and drop stale
        transactions; returns the dropped hashes. For when blocks were applied
        without :meth:`on_commit` (for example after a bulk sync)."""
        dropped: list[bytes] = []
        for sender in sorted(self._senders):
            queue = self._senders[sender]
            queue.committed_next = self._committed_nonce(sender)
            queue.ready_end = queue.committed_next
            queue.advance()
            dropped.extend(self._drop_stale(sender))
        self.tx_cache.evict(dropped)
        return dropped

    def _drop_stale(self, sender: bytes) -> list[bytes]:
        queue = self._senders.get(sender)
        if queue is None:
            return []
        stale = [tx for n, tx in sorted(queue.by_nonce.items()) if n < queue.committed_next]
        for tx in stale:
            self._remove(tx)
        return [tx.hash for tx in stale]


def _reject(digest: bytes, code: TxErrorCode, message: str, *, expected_nonce: int | None = None) -> Admission:
    return Admission(code, message, digest, expected_nonce=expected_nonce)
