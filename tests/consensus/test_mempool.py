"""Mempool: every admission code, limits, fair reaping, re-checks after commit."""

from __future__ import annotations

import pytest

from node.base.codec import decode, encode
from node.base.keys import Identity
from node.consensus.mempool import Mempool, MempoolConfig
from node.consensus.tx import (
    PayloadError,
    TxErrorCode,
    TxTypeRegistry,
    decode_tx,
    sign_tx,
)
from node.consensus.tx_caches import SignatureCache
from node.consensus.tx_checks import check_block_txs

CHAIN = "testnet-1"
ALICE, BOB, CAROL = (Identity.from_label(n) for n in ("alice", "bob", "carol"))


def tx(identity=ALICE, nonce=0, payload=None, tx_type="noop", chain_id=CHAIN):
    return sign_tx(identity, chain_id=chain_id, nonce=nonce, tx_type=tx_type,
                   payload={"n": nonce} if payload is None else payload)


class Chain:
    """The committed nonces a shell would read from the store, with a call counter."""

    def __init__(self, nonces=None):
        self.nonces = dict(nonces or {})
        self.lookups = 0

    def next_nonce(self, sender):
        self.lookups += 1
        return self.nonces.get(sender, 0)

    def commit(self, pool, height, txs):
        for raw in txs:
            t = decode_tx(raw)
            self.nonces[t.sender] = t.nonce + 1
        return pool.on_commit(height, txs)


def registry():
    reg = TxTypeRegistry.with_builtins()

    def must_be_list(t):
        if not isinstance(t.payload, list):
            raise PayloadError("payload must be a list of rows")

    reg.register("test.rows", must_be_list)
    return reg


def pool(chain=None, **limits):
    chain = chain or Chain()
    return Mempool(chain_id=CHAIN, registry=registry(), committed_nonce=chain.next_nonce,
                   config=MempoolConfig(**limits))


def assert_rejected(mp, data, code, words):
    before = (len(mp), mp.size_bytes)
    result = mp.add(data)
    assert not result.accepted
    assert result.code is code, result.message
    assert words in result.message, result.message
    assert (len(mp), mp.size_bytes) == before  # a refusal changes nothing


def test_accepts_and_exposes_a_valid_transaction():
    mp = pool()
    t = tx()
    result = mp.add(t.encoded)
    assert result.accepted and result.code is None and result.tx_hash == t.hash
    assert t.hash in mp and mp.get(t.hash) == t.encoded
    assert (len(mp), mp.size_bytes) == (1, t.size)
    assert mp.pending(ALICE.public_key) == [t]


# -- one test per refusal code --------------------------------------------------

def test_malformed():
    mp = pool()
    assert_rejected(mp, b"\xa1\x00", TxErrorCode.MALFORMED, "not canonical CBOR")
    assert_rejected(mp, encode({"v": 1}), TxErrorCode.MALFORMED, "missing field")
    result = mp.add("text")  # type: ignore[arg-type]
    assert result.code is TxErrorCode.MALFORMED and result.tx_hash is None


def test_too_large():
    mp = pool(max_tx_bytes=300)
    assert_rejected(mp, tx(payload=b"x" * 400).encoded, TxErrorCode.TOO_LARGE, "limit is 300")


def test_wrong_chain():
    assert_rejected(pool(), tx(chain_id="mainnet").encoded, TxErrorCode.WRONG_CHAIN, "'mainnet'")


def test_bad_signature():
    fields = decode(tx().encoded)
    fields["payload"] = {"n": 999}
    assert_rejected(pool(), encode(fields), TxErrorCode.BAD_SIGNATURE, "signature does not verify")


def test_unknown_type():
    assert_rejected(pool(), tx(tx_type="job.submit").encoded, TxErrorCode.UNKNOWN_TYPE, "'job.submit'")


def test_invalid_payload():
    mp = pool()
    assert_rejected(mp, tx(tx_type="test.rows", payload={}).encoded, TxErrorCode.INVALID_PAYLOAD,
                    "payload must be a list")
    assert mp.add(tx(tx_type="test.rows", payload=[[1]]).encoded).accepted


def test_duplicate():
    mp = pool()
    t = tx()
    assert mp.add(t.encoded).accepted
    assert_rejected(mp, t.encoded, TxErrorCode.DUPLICATE, "already pending")


def test_bad_nonce_stale_taken_and_too_far_ahead():
    chain = Chain({ALICE.public_key: 5})
    mp = pool(chain, max_nonce_ahead=4)
    assert_rejected(mp, tx(nonce=4).encoded, TxErrorCode.BAD_NONCE, "stale")
    assert_rejected(mp, tx(nonce=9).encoded, TxErrorCode.BAD_NONCE, "too far ahead")
    assert mp.add(tx(nonce=8).encoded).accepted  # the last nonce of the window
    assert mp.add(tx(nonce=5).encoded).accepted
    other = tx(nonce=5, payload={"different": True})
    assert_rejected(mp, other.encoded, TxErrorCode.BAD_NONCE, "already used by pending")


def test_sender_limit_by_count_and_by_bytes():
    mp = pool(max_per_sender=2)
    assert mp.add(tx(nonce=0).encoded).accepted and mp.add(tx(nonce=1).encoded).accepted
    assert_rejected(mp, tx(nonce=2).encoded, TxErrorCode.SENDER_LIMIT, "limit 2")
    assert mp.add(tx(BOB, nonce=0).encoded).accepted  # other senders are unaffected

    small = tx(nonce=0)
    mp = pool(max_bytes_per_sender=small.size + 50)
    assert mp.add(small.encoded).accepted
    assert_rejected(mp, tx(nonce=1, payload=b"x" * 60).encoded, TxErrorCode.SENDER_LIMIT,
                    "per-sender limit")


def test_mempool_full_by_count_and_by_bytes_is_never_success():
    mp = pool(max_txs=2)
    assert mp.add(tx(ALICE).encoded).accepted and mp.add(tx(BOB).encoded).accepted
    assert_rejected(mp, tx(CAROL).encoded, TxErrorCode.MEMPOOL_FULL, "mempool full")

    first = tx(ALICE)
    mp = pool(max_bytes=first.size + 10)
    assert mp.add(first.encoded).accepted
    assert_rejected(mp, tx(BOB).encoded, TxErrorCode.MEMPOOL_FULL, "mempool full")


def test_cheap_refusals_skip_the_signature_check():
    mp = pool(max_txs=1)
    mp.add(tx(ALICE).encoded)
    verified = mp.signatures.verifications
    for data in (tx(BOB).encoded, tx(ALICE).encoded, tx(CAROL, chain_id="x").encoded,
                 tx(CAROL, tx_type="nope").encoded):
        assert not mp.add(data).accepted
    assert mp.signatures.verifications == verified


def test_signatures_are_verified_once_per_hash_across_pool_and_block_checks():
    cache = SignatureCache()
    chain = Chain()
    mp = Mempool(chain_id=CHAIN, registry=registry(), committed_nonce=chain.next_nonce,
                 signatures=cache)
    assert mp.signatures is cache  # an empty cache is falsy: it must still be shared
    txs = [tx(nonce=i).encoded for i in range(3)]
    for data in txs:
        mp.add(data)
        mp.add(data)  # a gossip duplicate
    assert cache.verifications == 3
    check_block_txs(mp.reap(10**6, 10), chain_id=CHAIN, registry=registry(),
                    committed_nonce=chain.next_nonce, signatures=cache)
    assert cache.verifications == 3  # the block check found every signature cached


# -- reaping ----------------------------------------------------------------------

def nonces_by_sender(reaped):
    return [(decode_tx(r).sender, decode_tx(r).nonce) for r in reaped]


def test_reap_round_robins_senders_in_arrival_order_and_nonce_order():
    mp = pool()
    for n in range(5):
        mp.add(tx(ALICE, n).encoded)
    mp.add(tx(BOB, 1).encoded)
    mp.add(tx(BOB, 0).encoded)
    mp.add(tx(CAROL, 0).encoded)
    a, b, c = ALICE.public_key, BOB.public_key, CAROL.public_key
    assert nonces_by_sender(mp.reap(10**6, 6)) == [(a, 0), (b, 0), (c, 0), (a, 1), (b, 1), (a, 2)]
    assert len(mp.reap(10**6, 100)) == 8
    assert len(mp) == 8  # reaping removes nothing


def test_reap_skips_gaps_until_they_are_filled():
    mp = pool()
    mp.add(tx(ALICE, 0).encoded)
    mp.add(tx(ALICE, 2).encoded)
    assert nonces_by_sender(mp.reap(10**6, 10)) == [(ALICE.public_key, 0)]
    mp.add(tx(ALICE, 1).encoded)
    assert [n for _, n in nonces_by_sender(mp.reap(10**6, 10))] == [0, 1, 2]


def test_reap_respects_bytes_and_lets_smaller_transactions_of_others_fit():
    mp = pool()
    big = tx(ALICE, 0, payload=b"x" * 2000)
    mp.add(big.encoded)
    mp.add(tx(ALICE, 1).encoded)
    small = [tx(BOB, 0), tx(CAROL, 0)]
    for t in small:
        mp.add(t.encoded)
    reaped = mp.reap(1000, 10)
    # Alice's nonce 0 does not fit, so her nonce 1 may not be proposed either.
    assert reaped == [t.encoded for t in small]
    assert sum(map(len, reaped)) <= 1000
    assert mp.reap(10**6, 0) == [] and mp.reap(0, 10) == []


def test_reaped_transactions_always_form_a_valid_block():
    chain = Chain({ALICE.public_key: 3})
    mp = pool(chain)
    for n in (3, 4, 6, 7):
        mp.add(tx(ALICE, n).encoded)
    for n in (0, 1):
        mp.add(tx(BOB, n).encoded)
    reaped = mp.reap(10**6, 100)
    check_block_txs(reaped, chain_id=CHAIN, registry=registry(), committed_nonce=chain.next_nonce)
    assert len(reaped) == 4


def test_same_inputs_give_the_same_reap():
    inputs = [tx(who, n).encoded for n in range(3) for who in (CAROL, ALICE, BOB)]
    reaps = []
    for _ in range(2):
        mp = pool()
        for data in inputs:
            mp.add(data)
        reaps.append(mp.reap(1500, 7))
    assert reaps[0] == reaps[1] and len(reaps[0]) >= 1


# -- after a commit ---------------------------------------------------------------

def test_commit_removes_included_and_drops_stale_transactions():
    chain = Chain()
    mp = pool(chain)
    mine = [tx(ALICE, n) for n in range(3)]
    for t in mine:
        mp.add(t.encoded)
    bob0 = tx(BOB, 0)
    mp.add(bob0.encoded)
    # Another validator's block: Alice's 0, and a different Alice tx with nonce 1.
    rival = tx(ALICE, 1, payload={"rival": True})
    result = chain.commit(mp, 1, [mine[0].encoded, rival.encoded])
    assert result.committed == [mine[0].hash]
    assert result.dropped == [mine[1].hash]
    assert mine[1].hash not in mp and mine[2].hash in mp and bob0.hash in mp
    assert mp.size_bytes == mine[2].size + bob0.size
    assert nonces_by_sender(mp.reap(10**6, 10)) == [(ALICE.public_key, 2), (BOB.public_key, 0)]


def test_commit_advances_nonces_without_asking_the_store_again():
    chain = Chain()
    mp = pool(chain, max_nonce_ahead=2)
    mp.add(tx(ALICE, 0).encoded)
    mp.add(tx(ALICE, 1).encoded)
    assert_rejected(mp, tx(ALICE, 2).encoded, TxErrorCode.BAD_NONCE, "too far ahead")
    lookups = chain.lookups
    chain.commit(mp, 1, [tx(ALICE, 0).encoded])
    assert mp.add(tx(ALICE, 2).encoded).accepted  # the window moved with the commit
    assert_rejected(mp, tx(ALICE, 0).encoded, TxErrorCode.BAD_NONCE, "stale")
    assert chain.lookups == lookups


def test_a_skipped_height_rereads_nonces_from_the_store():
    chain = Chain()
    mp = pool(chain)
    for n in range(3):
        mp.add(tx(ALICE, n).encoded)
    chain.commit(mp, 1, [])
    chain.nonces[ALICE.public_key] = 2  # blocks 2 and 3 were applied by a bulk sync
    result = chain.commit(mp, 4, [])
    assert result.dropped == []  # resync already dropped them
    assert [t.nonce for t in mp.pending(ALICE.public_key)] == [2]


def test_resync_drops_what_the_store_says_is_committed():
    chain = Chain()
    mp = pool(chain)
    txs = [tx(ALICE, n) for n in range(3)]
    for t in txs:
        mp.add(t.encoded)
    chain.nonces[ALICE.public_key] = 2
    assert mp.resync() == [txs[0].hash, txs[1].hash]
    assert len(mp) == 1


def test_committing_everything_empties_the_pool():
    chain = Chain()
    mp = pool(chain)
    for who in (ALICE, BOB):
        for n in range(3):
            mp.add(tx(who, n).encoded)
    height = 0
    while len(mp):
        height += 1
        chain.commit(mp, height, mp.reap(10**6, 4))
    assert mp.size_bytes == 0 and height == 2
    assert mp.add(tx(ALICE, 3).encoded).accepted


def test_config_rejects_nonsense_limits():
    with pytest.raises(ValueError, match="max_txs"):
        MempoolConfig(max_txs=0)
    with pytest.raises(ValueError, match="protocol limit"):
        MempoolConfig(max_tx_bytes=10**9)
