"""One decode per transaction per node: the decoded-transaction cache.

The cache must answer exactly what a fresh decode answers (same values, same
refusals), hold only transactions that decoded, keep within its bounds, and
let the mempool, the block check, the store, the application and the commit
share one decode; a block's entries leave once it is committed."""

from __future__ import annotations

import time

import duckdb
import multiaddr
import pytest
import trio

from node.app.chain_app import ChainApplication
from node.app.policy import Governance
from node.base.codec import decode, encode, hash_tagged
from node.base.db import open_node_db
from node.base.keys import Identity
from node.consensus.block import genesis_header
from node.consensus.genesis import Genesis
from node.consensus.mempool import Mempool, MempoolConfig
from node.consensus.service import ConsensusService
from node.consensus.store import ChainStore
from node.consensus.tx import (
    TxError,
    TxErrorCode,
    TxTypeRegistry,
    decode_tx,
    sign_tx,
    tx_hash,
)
from node.consensus.tx_caches import DecodedTxCache
from node.consensus.tx_checks import check_block_txs
from node.p2p.host import build_host, running_host

ALICE, BOB = Identity.from_label("alice"), Identity.from_label("bob")
CHAIN = "decode-cache"
GENESIS = hash_tagged("test/genesis", b"")
FIELDS = ("chain_id", "sender", "nonce", "type", "payload", "signature", "encoded", "hash")


def tx(who: Identity = ALICE, nonce: int = 0, payload: object = None, chain_id: str = CHAIN):
    return sign_tx(who, chain_id=chain_id, nonce=nonce, tx_type="noop",
                   payload={"n": nonce} if payload is None else payload)


def fields(t):
    return tuple(getattr(t, name) for name in FIELDS)


def forged(t):
    """``t`` with another (wrong) signature: it decodes, it does not verify."""
    value = decode(t.encoded)
    value["sig"] = bytes(64)
    return encode(value)


# -- the cache itself ------------------------------------------------------------------

@pytest.mark.parametrize("payload", [None, {"rows": [[1, "a"], [2, None]]}, b"\x00" * 1000, [-7, True, {"x": []}, "text"]])
def test_a_hit_is_what_a_fresh_decode_returns(payload):
    cache = DecodedTxCache()
    raw = tx(payload=payload).encoded
    first = cache.decode(raw)
    assert fields(first) == fields(decode_tx(raw)) and cache.misses == 1
    again = cache.decode(bytes(bytearray(raw)))  # equal bytes, another object
    assert again is first and cache.hits == 1 and cache.misses == 1
    assert fields(again) == fields(decode_tx(raw))


@pytest.mark.parametrize("raw", [b"", b"\x00garbage", encode({"v": 1}), encode([1, 2]),
                                 b"\xa7" + tx().encoded[1:] + b"\x00", bytearray(b"\x01"), "text", None])
def test_what_fails_to_decode_fails_the_same_way_and_is_never_held(raw):
    cache = DecodedTxCache()
    with pytest.raises(TxError) as fresh:
        decode_tx(raw)
    with pytest.raises(TxError) as cached:
        cache.decode(raw)
    assert (cached.value.code, cached.value.message) == (fresh.value.code, fresh.value.message)
    assert len(cache) == 0 and cache.size_bytes == 0


def test_a_cached_transaction_is_still_refused_beyond_a_smaller_size_limit():
    cache = DecodedTxCache()
    raw = tx(payload=b"p" * 500).encoded
    cache.decode(raw)
    with pytest.raises(TxError) as refused:
        cache.decode(raw, max_size=100)
    assert refused.value.code is TxErrorCode.TOO_LARGE
    assert refused.value.message == f"transaction is {len(raw)} bytes; the limit is 100"


def test_a_hit_needs_the_same_bytes_not_only_the_hash():
    cache = DecodedTxCache()
    one, other = tx(nonce=1).encoded, tx(nonce=2).encoded
    cache.decode(one)
    assert cache.get(other, digest=tx_hash(one)) is None  # a caller passing a wrong hash gets no stale answer
    assert cache.get(one) is not None and cache.get(one, digest=tx_hash(one)) is not None


def test_keep_false_decodes_without_holding_and_add_holds():
    cache = DecodedTxCache()
    raw = tx().encoded
    decoded = cache.decode(raw, keep=False)
    assert len(cache) == 0
    cache.add(decoded)
    assert cache.decode(raw) is decoded and tx_hash(raw) in cache


def test_entry_bound_drops_the_least_recently_used():
    cache = DecodedTxCache(max_entries=2)
    a, b, c = (tx(nonce=n).encoded for n in range(3))
    cache.decode(a)
    cache.decode(b)
    cache.decode(a)  # a is now the most recently used
    cache.decode(c)
    assert len(cache) == 2 and tx_hash(b) not in cache and tx_hash(a) in cache and tx_hash(c) in cache


def test_byte_bound_adds_up_and_evict_gives_the_bytes_back():
    txs = [tx(nonce=n, payload=b"x" * 300) for n in range(10)]
    per_entry = txs[0].size + DecodedTxCache.ENTRY_OVERHEAD
    cache = DecodedTxCache(max_entries=100, max_bytes=3 * per_entry)
    for t in txs:
        cache.decode(t.encoded)
        assert cache.size_bytes <= cache.max_bytes
    assert len(cache) == 3 and cache.size_bytes == 3 * per_entry
    assert [tx_hash(t.encoded) in cache for t in txs[-3:]] == [True] * 3
    assert cache.evict([txs[-1].hash, txs[0].hash]) == 1  # txs[0] was already dropped
    assert len(cache) == 2 and cache.size_bytes == 2 * per_entry
    huge = tx(payload=b"y" * 5000)
    cache.add(huge)  # larger than the whole budget: not held, nothing pushed out
    assert huge.hash not in cache and len(cache) == 2


def test_sizing_from_the_mempool_and_block_limits():
    cache = DecodedTxCache.for_limits(pool_txs=100, pool_bytes=10_000, block_txs=20, block_bytes=3_000)
    assert cache.max_entries == 100 + 2 * 20
    assert cache.max_bytes == 10_000 + 2 * 3_000 + 140 * DecodedTxCache.ENTRY_OVERHEAD
    default = MempoolConfig()
    assert DecodedTxCache().max_entries == default.max_txs + 2 * 10_000
    with pytest.raises(ValueError):
        DecodedTxCache(max_entries=0)


# -- shared along the block path --------------------------------------------------------

def test_mempool_block_check_store_and_commit_share_one_decode():
    conn = duckdb.connect(":memory:")
    store = ChainStore(conn)
    cache = store.tx_cache
    registry = TxTypeRegistry.with_builtins()
    pool = Mempool(chain_id=CHAIN, registry=registry, committed_nonce=store.next_nonce, tx_cache=cache)
    txs = [tx(ALICE, n).encoded for n in range(4)] + [tx(BOB, 0).encoded]
    for raw in txs:
        assert pool.add(raw).accepted
    assert cache.misses == len(txs) and len(cache) == len(txs)
    block = pool.reap(10**6, 100)
    check_block_txs(block, chain_id=CHAIN, registry=registry, committed_nonce=store.next_nonce, tx_cache=cache)
    store.append_block(height=1, block_hash=hash_tagged("b", b"1"), parent_hash=GENESIS, timestamp_ms=1,
                       proposer=b"p", block=b"1" + b"".join(block), txs=block)
    result = pool.on_commit(1, block)
    assert cache.misses == len(txs)  # admission decoded each once; nothing decoded again
    assert sorted(result.committed) == sorted(tx_hash(r) for r in txs)
    assert len(cache) == 0 and cache.size_bytes == 0  # committed: evicted


def test_refused_transactions_are_not_cached():
    cache = DecodedTxCache()
    registry = TxTypeRegistry.with_builtins()
    pool = Mempool(chain_id=CHAIN, registry=registry, committed_nonce=lambda sender: 0, tx_cache=cache)
    bad_sig, wrong_chain = forged(tx(ALICE, 0)), tx(BOB, 0, chain_id="other").encoded
    assert pool.add(bad_sig).code is TxErrorCode.BAD_SIGNATURE
    assert pool.add(wrong_chain).code is TxErrorCode.WRONG_CHAIN
    with pytest.raises(TxError):
        check_block_txs([bad_sig], chain_id=CHAIN, registry=registry, committed_nonce=lambda s: 0, tx_cache=cache)
    assert len(cache) == 0


def test_the_mempool_evicts_what_it_drops_as_stale():
    cache = DecodedTxCache()
    store = ChainStore(duckdb.connect(":memory:"), tx_cache=cache)
    pool = Mempool(chain_id=CHAIN, registry=TxTypeRegistry.with_builtins(), committed_nonce=store.next_nonce,
                   tx_cache=cache)
    pending = tx(ALICE, 0, payload={"pending": True})
    pool.add(pending.encoded)
    other = tx(ALICE, 0, payload={"other": True}).encoded  # takes the same nonce in a block
    store.append_block(height=1, block_hash=hash_tagged("b", b"1"), parent_hash=GENESIS, timestamp_ms=1,
                       proposer=b"p", block=b"1" + other, txs=[other])
    assert pool.on_commit(1, [other]).dropped == [pending.hash]
    assert pending.hash not in cache and tx_hash(other) not in cache


def test_the_application_reads_the_stores_decodes():
    validator = Identity.from_label("app-validator")
    conn = duckdb.connect(":memory:")
    store = ChainStore(conn, first_height=1, first_parent=b"\0" * 32)
    app = ChainApplication(conn, store, governance=Governance(validators=(validator.public_key,)))
    txs = [tx(ALICE, n).encoded for n in range(3)]
    for raw in txs:
        store.tx_cache.decode(raw)
    misses, hits = store.tx_cache.misses, store.tx_cache.hits
    assert app.receipts_in(txs, 1) == []  # noop transactions carry no receipts
    assert (store.tx_cache.misses, store.tx_cache.hits) == (misses, hits + len(txs))


async def test_a_validator_decodes_each_transaction_once_and_keeps_nothing_after_commit(tmp_path):
    """A one-validator chain with the real application: admission, the proposal's
    receipt commitment, the store, the state and the commit share one decode
    per transaction, and the cache is empty once the block is committed."""
    node_id = Identity.from_label("decode-once-validator")
    genesis = Genesis(chain_id="decode-once", genesis_time_ms=time.time_ns() // 1_000_000,
                      validators=(node_id.public_key,), block_period_ms=200)
    conn = open_node_db(tmp_path)
    store = ChainStore(conn, first_height=1, first_parent=genesis_header(genesis).hash)
    app = ChainApplication(conn, store, governance=Governance(validators=(node_id.public_key,)))
    host = build_host(node_id)
    service = ConsensusService(host=host, identity=node_id, genesis=genesis, conn=conn, store=store, app=app,
                               data_dir=tmp_path, registry=TxTypeRegistry.with_builtins(), max_frame=1 << 20,
                               mempool_config=MempoolConfig(max_txs=500))
    assert store.tx_cache is service.tx_cache is service.mempool.tx_cache
    assert service.tx_cache.max_entries == 500 + 2 * genesis.limits.max_txs_per_block
    sender = Identity.from_label("decode-once-sender")
    txs = [sign_tx(sender, chain_id=genesis.chain_id, nonce=n, tx_type="noop", payload={"n": n}).encoded
           for n in range(20)]
    async with running_host(host, [multiaddr.Multiaddr("/ip4/127.0.0.1/tcp/0")]):
        async with trio.open_nursery() as nursery:
            await nursery.start(service.run)
            events = [service.commit_event(tx_hash(raw)) for raw in txs]
            for raw in txs:
                assert service.submit(raw).accepted
            with trio.fail_after(20):
                for event in events:
                    await event.wait()
            nursery.cancel_scope.cancel()
    assert service.tx_cache.misses == len(txs)
    assert len(service.tx_cache) == 0 and service.tx_cache.size_bytes == 0
    assert store.next_nonce(sender.public_key) == len(txs)
