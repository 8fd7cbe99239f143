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
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from node.base.codec import to_hex
from node.consensus.tx import (
    MAX_TX_BYTES,
    SignatureCache,
    Transaction,
    TxError,
    TxErrorCode,
    TxTypeRegistry,
    check_tx,
    decode_tx,
    tx_hash,
)


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

    @property
    def accepted(self) -> bool:
        return self.code is None


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
    ) -> None:
        self.chain_id = chain_id
        self.registry = registry
        self.config = config if config is not None else MempoolConfig()
        # Not `signatures or ...`: an empty cache is falsy (it has __len__).
        self.signatures = (
            signatures if signatures is not None else SignatureCache(self.config.signature_cache_size)
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

    # -- admission ------------------------------------------------------------
    def add(self, tx_bytes: bytes) -> Admission:
        """Admit one encoded transaction, or say precisely why not.

        Checks, cheapest first: size, duplicate, encoding, chain, type,
        nonce, the sender's share, the pool's limits, the signature (once per
        hash, cached), then the type's payload hook.
        """
        if not isinstance(tx_bytes, (bytes, bytearray, memoryview)):
            return Admission(TxErrorCode.MALFORMED, "transaction must be bytes", None)
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
            tx = decode_tx(tx_bytes, max_size=cfg.max_tx_bytes)
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
        refusal = self._check_nonce_and_share(tx, queue, committed_next)
        if refusal is not None:
            return _reject(digest, *refusal)
        if len(self._by_hash) >= cfg.max_txs:
            return _reject(digest, TxErrorCode.MEMPOOL_FULL,
                           f"mempool full: {len(self._by_hash)} transactions pending "
                           f"(limit {cfg.max_txs}); retry later")
        if self._size + tx.size > cfg.max_bytes:
            return _reject(digest, TxErrorCode.MEMPOOL_FULL,
                           f"mempool full: {self._size} bytes pending, this transaction "
                           f"needs {tx.size} more (limit {cfg.max_bytes}); retry later")
        try:
            check_tx(tx, chain_id=self.chain_id, registry=self.registry, signatures=self.signatures)
        except TxError as exc:
            return _reject(digest, exc.code, exc.message)
        self._insert(tx, queue, committed_next)
        return Admission(None, "accepted", digest)

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

    def _insert(self, tx: Transaction, queue: _SenderQueue | None, committed_next: int) -> None:
        if queue is None:
            queue = _SenderQueue(order=self._order, committed_next=committed_next)
            self._order += 1
            self._senders[tx.sender] = queue
        queue.by_nonce[tx.nonce] = tx
        queue.size += tx.size
        self._by_hash[tx.hash] = tx
        self._size += tx.size

    def _remove(self, tx: Transaction) -> None:
        queue = self._senders[tx.sender]
        del queue.by_nonce[tx.nonce]
        queue.size -= tx.size
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
            run: list[Transaction] = []
            nonce = queue.committed_next
            while nonce in queue.by_nonce:
                run.append(queue.by_nonce[nonce])
                nonce += 1
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
    def on_commit(self, height: int, txs: Sequence[bytes]) -> CommitResult:
        """Tell the mempool block ``height`` was committed with ``txs``
        (after the block is in the store that backs ``committed_nonce``).

        Removes the included transactions, advances the senders' committed
        nonces, and drops pending transactions those nonces made stale (for
        example a different transaction that took the same nonce). Call it
        for every committed block in order; if a height is skipped the pool
        re-reads every pending sender's nonce through ``committed_nonce``.
        """
        if self._last_height is not None and height != self._last_height + 1:
            self.resync()
        self._last_height = height
        committed: list[bytes] = []
        touched: set[bytes] = set()
        for raw in txs:
            digest = tx_hash(raw)
            pooled = self._by_hash.get(digest)
            if pooled is not None:
                committed.append(digest)
                self._remove(pooled)
            try:
                tx = pooled or decode_tx(raw)
            except TxError:
                continue  # a committed block was validated already; nothing to learn here
            queue = self._senders.get(tx.sender)
            if queue is not None:
                queue.committed_next = max(queue.committed_next, tx.nonce + 1)
                touched.add(tx.sender)
        dropped = [d for sender in sorted(touched) for d in self._drop_stale(sender)]
        return CommitResult(committed, dropped)

    def resync(self) -> list[bytes]:
        """Re-read every pending sender's committed nonce and drop stale
        transactions; returns the dropped hashes. For when blocks were applied
        without :meth:`on_commit` (for example after a bulk sync)."""
        dropped: list[bytes] = []
        for sender in sorted(self._senders):
            self._senders[sender].committed_next = self._committed_nonce(sender)
            dropped.extend(self._drop_stale(sender))
        return dropped

    def _drop_stale(self, sender: bytes) -> list[bytes]:
        queue = self._senders.get(sender)
        if queue is None:
            return []
        stale = [tx for n, tx in sorted(queue.by_nonce.items()) if n < queue.committed_next]
        for tx in stale:
            self._remove(tx)
        return [tx.hash for tx in stale]


def _reject(digest: bytes, code: TxErrorCode, message: str) -> Admission:
    return Admission(code, message, digest)
