"""Mempool and chain store benchmark, beside the raw Ed25519 verify rate.

    .venv/bin/python bench/mempool.py            # full run (~30 s)
    .venv/bin/python bench/mempool.py --smoke    # tiny sizes, for CI

One process, one core (DuckDB with threads=1). The baseline row is PyNaCl's
Ed25519 verify of the exact bytes transactions sign, measured in the same
run; the "x Ed25519 verify" column compares each rate with it. Admission of
fresh transactions can at best approach the baseline (one verify each); the
warm-cache row shows what admission costs once signatures are known.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import nacl.signing  # noqa: E402

from bench.rates import Row, render, rows_json, timed  # noqa: E402
from node.base.codec import hash_tagged  # noqa: E402
from node.base.db import open_node_db  # noqa: E402
from node.base.keys import Identity  # noqa: E402
from node.consensus.mempool import Mempool, MempoolConfig  # noqa: E402
from node.consensus.store import ChainStore  # noqa: E402
from node.consensus.tx import (  # noqa: E402
    TX_SIGN_TAG,
    Transaction,
    TxTypeRegistry,
    decode_tx,
    sign_tx,
)
from node.consensus.tx_caches import SignatureCache  # noqa: E402

CHAIN = "bench"


@dataclass(frozen=True)
class Sizes:
    senders: int
    per_sender: int  # nonces 0..per_sender-1 each
    block_txs: int
    blocks: int  # appended to the store
    min_seconds: float

    @classmethod
    def full(cls) -> Sizes:
        return cls(senders=200, per_sender=50, block_txs=1_000, blocks=20, min_seconds=2.0)

    @classmethod
    def smoke(cls) -> Sizes:
        return cls(senders=5, per_sender=4, block_txs=10, blocks=2, min_seconds=0.05)


class Fixture:
    """Signed transactions (a realistic ~200-byte noop payload), built once."""

    def __init__(self, sizes: Sizes) -> None:
        self.sizes = sizes
        self.registry = TxTypeRegistry.with_builtins()
        identities = [Identity.from_label(f"bench-{i}") for i in range(sizes.senders)]
        self.txs: list[Transaction] = [
            sign_tx(who, chain_id=CHAIN, nonce=n, tx_type="noop",
                    payload={"job": f"job-{i}-{n}", "params": b"\x01" * 160})
            for n in range(sizes.per_sender)
            for i, who in enumerate(identities)
        ]
        self.encoded = [tx.encoded for tx in self.txs]
        self.config = MempoolConfig(max_txs=len(self.txs) + 1, max_per_sender=sizes.per_sender,
                                    max_nonce_ahead=sizes.per_sender)

    def pool(self, signatures: SignatureCache | None = None) -> Mempool:
        return Mempool(chain_id=CHAIN, registry=self.registry, committed_nonce=lambda s: 0,
                       config=self.config, signatures=signatures)


def _repeat(min_seconds: float, run: Callable[[], tuple[int, float]]) -> tuple[int, float]:
    """Call ``run`` (returning ops and the seconds they took) for ``min_seconds`` in total."""
    ops, seconds = 0, 0.0
    while seconds < min_seconds:
        more, spent = run()
        ops, seconds = ops + more, seconds + spent
    return ops, seconds


# -- measurements ------------------------------------------------------------
def ed25519_baseline(fx: Fixture) -> Row:
    items = [(nacl.signing.VerifyKey(t.sender), TX_SIGN_TAG.encode() + b"\x00" + t.signing_bytes(),
              t.signature) for t in fx.txs]

    def run() -> tuple[int, float]:
        return len(items), timed(lambda: [key.verify(msg, sig) for key, msg, sig in items])

    return Row("Ed25519 verify (PyNaCl, baseline)", "verifies", *_repeat(fx.sizes.min_seconds, run))


def decode_only(fx: Fixture) -> Row:
    def run() -> tuple[int, float]:
        return len(fx.encoded), timed(lambda: [decode_tx(b) for b in fx.encoded])

    return Row("decode_tx", "txs", *_repeat(fx.sizes.min_seconds, run), "CBOR + canonical check + fields")


def admit_fresh(fx: Fixture) -> Row:
    def run() -> tuple[int, float]:
        pool = fx.pool()
        return len(fx.encoded), timed(lambda: [pool.add(b) for b in fx.encoded])

    ops, seconds = _repeat(fx.sizes.min_seconds, run)
    return Row("mempool admit (new txs)", "txs", ops, seconds, "one signature verify each")


def admit_warm(fx: Fixture) -> Row:
    cache = SignatureCache(len(fx.encoded) + 1)
    warm = fx.pool(cache)
    for b in fx.encoded:
        warm.add(b)

    def run() -> tuple[int, float]:
        pool = fx.pool(cache)
        return len(fx.encoded), timed(lambda: [pool.add(b) for b in fx.encoded])

    ops, seconds = _repeat(fx.sizes.min_seconds, run)
    return Row("mempool admit (signature cached)", "txs", ops, seconds, "e.g. re-admission, shared cache")


def admit_duplicate(fx: Fixture) -> Row:
    pool = fx.pool()
    for b in fx.encoded:
        pool.add(b)

    def run() -> tuple[int, float]:
        return len(fx.encoded), timed(lambda: [pool.add(b) for b in fx.encoded])

    ops, seconds = _repeat(fx.sizes.min_seconds, run)
    return Row("mempool reject duplicate", "txs", ops, seconds, "gossip echoes: hash lookup only")


def reap(fx: Fixture) -> Row:
    pool = fx.pool()
    for b in fx.encoded:
        pool.add(b)
    count = fx.sizes.block_txs

    def run() -> tuple[int, float]:
        return count, timed(lambda: pool.reap(10**9, count))

    ops, seconds = _repeat(fx.sizes.min_seconds, run)
    return Row("mempool reap", "txs", ops, seconds, f"{count:,} of {len(pool):,} pending, round-robin")


def commit(fx: Fixture) -> Row:
    count = fx.sizes.block_txs
    cache = SignatureCache(len(fx.encoded) + 1)  # refilling the pool need not re-verify

    def run() -> tuple[int, float]:
        pool = fx.pool(cache)
        for b in fx.encoded:
            pool.add(b)
        ops, seconds, height = 0, 0.0, 0
        while len(pool):  # commit block after block until the pool drains
            block = pool.reap(10**9, count)
            height += 1
            seconds += timed(lambda: pool.on_commit(height, block))
            ops += len(block)
        return ops, seconds

    ops, seconds = _repeat(fx.sizes.min_seconds, run)
    return Row("mempool on_commit", "txs", ops, seconds, f"blocks of {count:,}, pool re-checked")


def store_append(fx: Fixture) -> Row:
    count = fx.sizes.block_txs
    with tempfile.TemporaryDirectory() as data_dir:
        conn = open_node_db(data_dir)
        conn.execute("SET threads = 1")
        store = ChainStore(conn)
        pool = fx.pool()
        for b in fx.encoded:
            pool.add(b)
        ops, seconds, parent = 0, 0.0, bytes(32)
        for height in range(1, fx.sizes.blocks + 1):
            txs = pool.reap(10**9, count)
            if not txs:
                break
            block = b"bench-block" + height.to_bytes(8, "big") + b"".join(txs)
            block_hash = hash_tagged("bench/block", block)
            seconds += timed(lambda: store.append_block(
                height=height, block_hash=block_hash, parent_hash=parent, timestamp_ms=height,
                proposer=bytes(32), block=block, txs=txs))
            pool.on_commit(height, txs)
            ops, parent = ops + len(txs), block_hash
        lookups = [t.hash for t in fx.txs[:200]]
        lookup_ops, lookup_seconds = _repeat(
            fx.sizes.min_seconds / 2,
            lambda: (len(lookups), timed(lambda: [store.tx_by_hash(h) for h in lookups])))
        conn.close()
    return [
        Row("store append_block (DuckDB file)", "txs", ops, seconds,
            f"blocks of {count:,}, one DuckDB transaction each"),
        Row("store tx_by_hash", "lookups", lookup_ops, lookup_seconds, "DuckDB point query (primary key)"),
    ]


MEASUREMENTS: list[Callable[[Fixture], Row | list[Row]]] = [
    ed25519_baseline, decode_only, admit_fresh, admit_warm, admit_duplicate, reap, commit, store_append,
]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--smoke", action="store_true", help="tiny sizes, for CI")
    parser.add_argument("--json", action="store_true", help="print the rows as one JSON object (bench/run_all.py)")
    args = parser.parse_args(argv)
    fixture = Fixture(Sizes.smoke() if args.smoke else Sizes.full())
    rows: list[Row] = []
    for measure in MEASUREMENTS:
        result = measure(fixture)
        rows.extend(result if isinstance(result, list) else [result])
    print(rows_json("mempool", rows, smoke=args.smoke) if args.json else render(rows, rows[0]))
    return 0


if __name__ == "__main__":
    sys.exit(main())
