"""Per-node caches of the transaction path: verified signatures and decoded transactions.

A validator meets every transaction several times (gossip, mempool
admission, the proposal check, the store, the application). Both caches are
keyed by the transaction hash, which covers every byte of the encoding,
signature included, so a cached result holds for any later copy with the
same hash; neither changes what a check decides, only how often the costly
part of it runs.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Iterable

from node.consensus.tx import MAX_TX_BYTES, Transaction, decode_tx, tx_hash, verify_signature


class SignatureCache:
    """Remembers which transaction hashes carry a valid signature (bounded LRU).

    Verification dominates admission cost; the hash covers every byte of the
    transaction including its signature, so a positive result holds for any
    later copy with the same hash (gossip duplicates, block validation of
    transactions already in the mempool). Failures are not cached.
    """

    def __init__(self, capacity: int = 50_000) -> None:
        if capacity < 1:
            raise ValueError("signature cache capacity must be at least 1")
        self._capacity = capacity
        self._valid: OrderedDict[bytes, None] = OrderedDict()
        self.verifications = 0  # how many real Ed25519 checks ran (for tests and benches)

    def __len__(self) -> int:
        return len(self._valid)

    def verify(self, tx: Transaction) -> bool:
        if tx.hash in self._valid:
            self._valid.move_to_end(tx.hash)
            return True
        self.verifications += 1
        if not verify_signature(tx):
            return False
        self._valid[tx.hash] = None
        if len(self._valid) > self._capacity:
            self._valid.popitem(last=False)
        return True


class DecodedTxCache:
    """Transactions decoded once per node: the :class:`Transaction` of each raw
    transaction, by hash (a bounded LRU, next to the :class:`SignatureCache`).

    A validator meets every transaction up to five times (mempool admission,
    the proposal check, the chain store, the mempool's commit, the
    application's receipts and state); decoding, with its canonical re-encode
    check, is the costly part of each. The hash is over every byte of the
    encoding, and a hit is also checked to be the same bytes, so a cached
    transaction is exactly what :func:`decode_tx` would return for them. Only
    transactions that decoded (every field validated, canonical) are held:
    decoding failures raise and are never cached, and callers that admit by
    more checks (the mempool, the block check) add a transaction only once
    it passed them, so junk cannot push out useful entries.

    Bounds, both enforced (least recently used first): ``max_entries``
    transactions and ``max_bytes`` bytes, each entry counted as its encoded
    size plus :data:`ENTRY_OVERHEAD` (the Transaction object, its hash,
    sender and signature objects and the LRU links: about 640 bytes
    measured). The decoded payload comes on top at a type-dependent multiple
    of the encoded size (about 2x for small maps, up to about 20x for a table
    of rows); for pending transactions those objects are the ones the
    mempool holds anyway. :meth:`for_limits` sizes the cache so that everything a
    node needs at once fits: the whole mempool (its ``max_txs`` and
    ``max_bytes``) plus :data:`IN_FLIGHT_BLOCKS` blocks at the genesis block
    limits (the block being committed and the next proposal being checked),
    so with the defaults (a 10,000-tx / 64 MiB pool, 10,000-tx / 4 MiB blocks)
    30,000 entries and 72 MiB + 30,000 x 640 B = 90 MiB counted. A transaction's
    entry is evicted once its block is committed and applied
    (:meth:`evict`), or when the mempool drops it; the bounds only matter
    for what never reaches a block.

    Not locked: the node's actor is one trio task (single-threaded), and
    each node has its own cache.
    """

    ENTRY_OVERHEAD = 640
    IN_FLIGHT_BLOCKS = 2
    DEFAULT_ENTRIES = 10_000 + IN_FLIGHT_BLOCKS * 10_000
    DEFAULT_BYTES = 64 * 1024 * 1024 + IN_FLIGHT_BLOCKS * 4 * 1024 * 1024 + DEFAULT_ENTRIES * ENTRY_OVERHEAD

    def __init__(self, max_entries: int = DEFAULT_ENTRIES, max_bytes: int = DEFAULT_BYTES) -> None:
        if max_entries < 1 or max_bytes < 1:
            raise ValueError("decoded-transaction cache bounds must be at least 1")
        self.max_entries = max_entries
        self.max_bytes = max_bytes
        self._entries: OrderedDict[bytes, Transaction] = OrderedDict()
        self._bytes = 0
        self.hits = 0
        self.misses = 0  # real decodes through this cache (for tests and benches)

    @classmethod
    def for_limits(cls, *, pool_txs: int, pool_bytes: int, block_txs: int, block_bytes: int) -> "DecodedTxCache":
        """A cache holding a full mempool plus :data:`IN_FLIGHT_BLOCKS` full blocks."""
        entries = pool_txs + cls.IN_FLIGHT_BLOCKS * block_txs
        return cls(entries, pool_bytes + cls.IN_FLIGHT_BLOCKS * block_bytes + entries * cls.ENTRY_OVERHEAD)

    def __len__(self) -> int:
        return len(self._entries)

    def __contains__(self, tx_hash_: object) -> bool:
        return tx_hash_ in self._entries

    @property
    def size_bytes(self) -> int:
        """What the entries count against ``max_bytes``."""
        return self._bytes

    def get(self, raw: bytes, digest: bytes | None = None) -> Transaction | None:
        """The cached transaction encoded as exactly ``raw``, if any (``digest``:
        ``tx_hash(raw)`` when the caller has it)."""
        if not isinstance(raw, bytes):
            return None
        tx = self._entries.get(digest if digest is not None else tx_hash(raw))
        if tx is None or tx.encoded != raw:
            return None
        self._entries.move_to_end(tx.hash)
        self.hits += 1
        return tx

    def decode(self, raw: bytes, *, digest: bytes | None = None, max_size: int = MAX_TX_BYTES,
               keep: bool = True) -> Transaction:
        """:func:`decode_tx` through the cache: the same result and the same
        TxError for the same bytes and ``max_size``. A miss is decoded and,
        with ``keep``, remembered (pass ``keep=False`` and :meth:`add` it once
        further checks passed)."""
        if isinstance(raw, bytes) and len(raw) <= max_size:
            tx = self.get(raw, digest)
            if tx is not None:
                return tx
        self.misses += 1
        tx = decode_tx(raw, max_size=max_size)
        if keep:
            self.add(tx)
        return tx

    def add(self, tx: Transaction) -> None:
        """Remember ``tx`` (built by :func:`decode_tx` or :func:`sign_tx` only:
        its fields were validated and ``encoded`` is canonical)."""
        if tx.hash in self._entries:
            self._entries.move_to_end(tx.hash)
            return
        cost = tx.size + self.ENTRY_OVERHEAD
        if cost > self.max_bytes:
            return
        self._entries[tx.hash] = tx
        self._bytes += cost
        while len(self._entries) > self.max_entries or self._bytes > self.max_bytes:
            _, old = self._entries.popitem(last=False)
            self._bytes -= old.size + self.ENTRY_OVERHEAD

    def evict(self, digests: Iterable[bytes]) -> int:
        """Forget these transactions (committed, or dropped by the mempool);
        returns how many were held."""
        evicted = 0
        for digest in digests:
            tx = self._entries.pop(digest, None)
            if tx is not None:
                self._bytes -= tx.size + self.ENTRY_OVERHEAD
                evicted += 1
        return evicted
