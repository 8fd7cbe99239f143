"""Random admissions and commits keep the mempool's invariants (Hypothesis)."""

from __future__ import annotations

from functools import lru_cache

from hypothesis import given, settings
from hypothesis import strategies as st

from node.base.keys import Identity
from node.consensus.mempool import Mempool, MempoolConfig
from node.consensus.tx import TxErrorCode, TxTypeRegistry, decode_tx, sign_tx
from node.consensus.tx_checks import check_block_txs

CHAIN = "testnet-1"
SENDERS = [Identity.from_label(f"model-{i}") for i in range(3)]
REGISTRY = TxTypeRegistry.with_builtins()


@lru_cache(maxsize=None)
def signed(sender: int, nonce: int, variant: int) -> bytes:
    # Variants give different transactions for the same (sender, nonce): conflicts.
    return sign_tx(SENDERS[sender], chain_id=CHAIN, nonce=nonce, tx_type="noop",
                   payload={"v": variant, "pad": b"x" * (40 * variant)}).encoded


add_op = st.tuples(st.just("add"), st.integers(0, 2), st.integers(0, 7), st.integers(0, 2))
reap_commit_op = st.tuples(st.just("commit_reap"), st.integers(0, 5), st.integers(100, 2000))
rival_commit_op = st.tuples(st.just("commit_rival"), st.integers(0, 2), st.integers(0, 2))
ops = st.lists(st.one_of(add_op, add_op, reap_commit_op, rival_commit_op), max_size=40)


@settings(max_examples=120, deadline=None)
@given(ops)
def test_invariants_hold_under_random_operations(operations):
    committed: dict[bytes, int] = {}
    config = MempoolConfig(max_txs=10, max_bytes=3000, max_per_sender=4, max_nonce_ahead=5)
    mp = Mempool(chain_id=CHAIN, registry=REGISTRY,
                 committed_nonce=lambda s: committed.get(s, 0), config=config)
    expected: set[bytes] = set()  # hashes the model says are pending
    height = 0

    def commit(block: list[bytes]) -> None:
        nonlocal height
        check_block_txs(block, chain_id=CHAIN, registry=REGISTRY,
                        committed_nonce=lambda s: committed.get(s, 0))
        for raw in block:
            t = decode_tx(raw)
            committed[t.sender] = t.nonce + 1
        height += 1
        result = mp.on_commit(height, block)
        removed = set(result.committed) | set(result.dropped)
        assert removed <= expected
        expected.difference_update(removed)

    for op in operations:
        if op[0] == "add":
            _, who, nonce, variant = op
            data = signed(who, nonce, variant)
            sender = SENDERS[who].public_key
            first_gap = committed.get(sender, 0)
            while any(t.nonce == first_gap for t in mp.pending(sender)):
                first_gap += 1
            result = mp.add(data)
            assert set(result.evicted) <= expected
            expected.difference_update(result.evicted)
            if result.accepted:
                expected.add(result.tx_hash)
                # An admission behind a gap names the gap; one that fills it names nothing.
                assert result.expected_nonce == (first_gap if nonce > first_gap else None)
            else:
                assert result.code is not None and result.message
                if result.code in (TxErrorCode.BAD_NONCE, TxErrorCode.SENDER_LIMIT, TxErrorCode.MEMPOOL_FULL):
                    assert result.expected_nonce == first_gap  # where the sender must resend from
        elif op[0] == "commit_reap":
            _, count, max_bytes = op
            block = mp.reap(max_bytes, count)
            assert len(block) <= count and sum(map(len, block)) <= max_bytes
            commit(block)
        else:  # another validator's block with a transaction we may not have
            _, who, variant = op
            sender = SENDERS[who].public_key
            commit([signed(who, committed.get(sender, 0), variant)])

        pending = [decode_tx(mp.get(h)) for h in expected]
        assert len(mp) == len(expected) <= config.max_txs
        assert mp.size_bytes == sum(t.size for t in pending) <= config.max_bytes
        for t in pending:
            next_nonce = committed.get(t.sender, 0)
            assert next_nonce <= t.nonce  # nothing stale survives a commit
        for identity in SENDERS:
            mine = mp.pending(identity.public_key)
            assert len(mine) <= config.max_per_sender
            assert len({t.nonce for t in mine}) == len(mine)
        full = mp.reap(10**6, 100)
        check_block_txs(full, chain_id=CHAIN, registry=REGISTRY,
                        committed_nonce=lambda s: committed.get(s, 0))
