"""A sender is never wedged by a refused nonce (issue 13, case 6).

Every refusal about nonces or room names the nonce the pool needs next from
the sender (``expected_nonce``); transactions held behind a gap become
eligible for blocks the moment it is filled; and held transactions give way
to ones a block can include when the pool is full.
"""

from __future__ import annotations

from node.base.keys import Identity
from node.consensus.mempool import Mempool, MempoolConfig
from node.consensus.tx import TxErrorCode, TxTypeRegistry, decode_tx, sign_tx

CHAIN = "testnet-1"
ALICE, BOB, CAROL = (Identity.from_label(n) for n in ("gap-alice", "gap-bob", "gap-carol"))


def tx(identity=ALICE, nonce=0):
    return sign_tx(identity, chain_id=CHAIN, nonce=nonce, tx_type="noop", payload={"n": nonce})


def pool(committed=None, **limits):
    committed = committed if committed is not None else {}
    return Mempool(chain_id=CHAIN, registry=TxTypeRegistry.with_builtins(),
                   committed_nonce=lambda s: committed.get(s, 0), config=MempoolConfig(**limits))


def nonces(raws):
    return [(decode_tx(r).sender, decode_tx(r).nonce) for r in raws]


def test_a_refused_nonce_says_where_to_resend_from_and_the_held_ones_follow_once_it_is_filled():
    mp = pool(max_txs=2)
    assert mp.add(tx(BOB, 0).encoded).accepted and mp.add(tx(CAROL, 0).encoded).accepted
    refused = mp.add(tx(ALICE, 0).encoded)
    assert refused.code is TxErrorCode.MEMPOOL_FULL and refused.expected_nonce == 0
    assert refused.rejection_data() == {"reason": "mempool_full", "detail": refused.message, "expected_nonce": 0}
    # Room again (the block took Bob's and Carol's): Alice's later nonces are held, and say so.
    mp.on_commit(1, [tx(BOB, 0).encoded, tx(CAROL, 0).encoded])
    held = mp.add(tx(ALICE, 1).encoded)
    assert held.accepted and held.expected_nonce == 0 and "held until nonce 0" in held.message
    assert mp.reap(10**6, 100) == []  # nothing of Alice's can go into a block yet
    # The sender resends from expected_nonce: the whole run becomes reapable at once.
    filled = mp.add(tx(ALICE, 0).encoded)
    assert filled.accepted and filled.expected_nonce is None
    assert nonces(mp.reap(10**6, 100)) == [(ALICE.public_key, 0), (ALICE.public_key, 1)]


def test_too_far_ahead_and_sender_limit_name_the_first_gap_not_the_committed_nonce():
    mp = pool({ALICE.public_key: 3}, max_nonce_ahead=4, max_per_sender=3)
    assert mp.add(tx(ALICE, 3).encoded).accepted and mp.add(tx(ALICE, 4).encoded).accepted
    assert mp.add(tx(ALICE, 6).encoded).expected_nonce == 5  # held behind 5
    far = mp.add(tx(ALICE, 7).encoded)
    assert far.code is TxErrorCode.BAD_NONCE and far.expected_nonce == 5
    assert mp.add(tx(ALICE, 2).encoded).expected_nonce == 5  # stale: already committed
    full = mp.add(tx(ALICE, 5).encoded)  # 3 pending: the sender's share is used up
    assert full.code is TxErrorCode.SENDER_LIMIT and full.expected_nonce == 5
    duplicate = mp.add(tx(ALICE, 3).encoded)
    assert duplicate.code is TxErrorCode.DUPLICATE and duplicate.expected_nonce is None


def test_a_transaction_a_block_can_take_evicts_held_ones_when_the_pool_is_full():
    mp = pool(max_txs=4)
    for n in (1, 2, 3):  # Bob's nonce 0 never came: three held transactions
        assert mp.add(tx(BOB, n).encoded).expected_nonce == 0
    assert mp.add(tx(CAROL, 0).encoded).accepted
    # Full. Alice's nonce 0 can go into the next block: Bob's highest held nonce makes room.
    admitted = mp.add(tx(ALICE, 0).encoded)
    assert admitted.accepted and admitted.evicted == (tx(BOB, 3).hash,)
    assert len(mp) == 4 and [t.nonce for t in mp.pending(BOB.public_key)] == [1, 2]
    # A transaction that would only be held itself never evicts anyone.
    refused = mp.add(tx(ALICE, 5).encoded)
    assert refused.code is TxErrorCode.MEMPOOL_FULL and refused.expected_nonce == 1 and not refused.evicted
    # Nor does anything when no held transaction is left to give way.
    mp = pool(max_txs=1)
    assert mp.add(tx(CAROL, 0).encoded).accepted
    assert mp.add(tx(ALICE, 0).encoded).code is TxErrorCode.MEMPOOL_FULL


def test_a_commit_by_another_validator_fills_the_gap_and_releases_the_held_run():
    committed: dict[bytes, int] = {}
    mp = pool(committed)
    for n in (1, 2):
        assert mp.add(tx(ALICE, n).encoded).expected_nonce == 0
    # Nonce 0 reached another validator's mempool and was committed there.
    committed[ALICE.public_key] = 1
    mp.on_commit(1, [tx(ALICE, 0).encoded])
    assert nonces(mp.reap(10**6, 100)) == [(ALICE.public_key, 1), (ALICE.public_key, 2)]
    assert mp.add(tx(ALICE, 4).encoded).expected_nonce == 3


def test_a_sender_following_expected_nonce_gets_everything_committed():
    """The rule a client follows (node/testnet/loadgen.py, README "after each
    rejection code"): after any answer naming ``expected_nonce`` below what it
    sent, send again from there. Into a small pool that another sender keeps
    full of held transactions, 100 transactions all commit, in order."""
    mp = pool(max_txs=6, max_per_sender=6)
    sent = [tx(ALICE, n) for n in range(100)]
    committed_next, height, next_to_send, step = 0, 0, 0, 0
    bob_nonce = 1  # Bob never sends nonce 0: all of his are held
    while committed_next < len(sent):
        step += 1
        assert step < 2_000, f"wedged at {committed_next}"
        mp.add(tx(BOB, bob_nonce).encoded)
        bob_nonce = bob_nonce % 5 + 1
        if next_to_send < len(sent):
            answer = mp.add(sent[next_to_send].encoded)
            if answer.expected_nonce is not None:
                next_to_send = answer.expected_nonce  # resend from the gap (or retry a refused one)
            elif answer.accepted or answer.code is TxErrorCode.DUPLICATE:
                next_to_send += 1
        if step % 3 == 0:  # a block every third step, of at most two transactions
            block = mp.reap(10**6, 2)
            height += 1
            mp.on_commit(height, block)
            committed_next += sum(1 for raw in block if decode_tx(raw).sender == ALICE.public_key)
    assert [t.nonce for t in mp.pending(ALICE.public_key)] == []
