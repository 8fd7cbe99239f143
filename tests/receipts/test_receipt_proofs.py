"""Proof verification rejects every wrong input with the documented reason,
and proof plans stay O(log n)."""

from __future__ import annotations

import hashlib

import pytest
from hypothesis import given
from hypothesis import strategies as st

from node.base.merkle import (
    EMPTY_ROOT,
    append_subtrees,
    consistency_ranges,
    fold_subtrees,
    inclusion_ranges,
    leaf_hash,
    merkle_root,
    perfect_subtrees,
    proof_subtrees,
    verify_consistency,
    verify_inclusion,
)
from node.base.verification import ProofError, Reason

LEAVES = [hashlib.sha256(b"%d" % i).digest() for i in range(64)]
HASHES = [leaf_hash(x) for x in LEAVES]


def subtree_hashes(n: int) -> dict:
    formed, _ = append_subtrees(0, [], HASHES[:n])
    return {(s.level, s.index): s.hash for s in formed}


def inclusion(index: int, size: int) -> list[bytes]:
    table = subtree_hashes(size)
    return [
        fold_subtrees([table[p] for p in perfect_subtrees(s, e)]) for s, e in inclusion_ranges(index, size)
    ]


def consistency(m: int, n: int) -> list[bytes]:
    table = subtree_hashes(n)
    return [fold_subtrees([table[p] for p in perfect_subtrees(s, e)]) for s, e in consistency_ranges(m, n)]


def root(n: int) -> bytes:
    return merkle_root(LEAVES[:n])


def reason(call) -> Reason:
    with pytest.raises(ProofError) as info:
        call()
    return info.value.reason


def flip(data: bytes, position: int = 0) -> bytes:
    return data[:position] + bytes([data[position] ^ 1]) + data[position + 1 :]


def test_append_subtrees_frontier_folds_to_root() -> None:
    for n in range(0, 40):
        _, frontier = append_subtrees(0, [], HASHES[:n])
        assert fold_subtrees(frontier) == root(n)
        # Appending in two steps forms the same subtrees as in one.
        formed_a, mid = append_subtrees(0, [], HASHES[: n // 2])
        formed_b, end = append_subtrees(n // 2, mid, HASHES[n // 2 : n])
        formed_all, _ = append_subtrees(0, [], HASHES[:n])
        assert formed_a + formed_b == formed_all and end == frontier


@pytest.mark.parametrize("size", [1, 2, 3, 7, 8, 9, 33, 64])
def test_inclusion_tampering_fails_with_reason(size: int) -> None:
    for index in range(size):
        proof = inclusion(index, size)
        good = (HASHES[index], index, size, proof, root(size))
        verify_inclusion(*good)
        assert reason(lambda: verify_inclusion(flip(HASHES[index]), index, size, proof, root(size))) == Reason.PROOF_MISMATCH
        assert reason(lambda: verify_inclusion(HASHES[index], index, size, proof, flip(root(size)))) == Reason.PROOF_MISMATCH
        for i in range(len(proof)):
            bad = proof[:i] + [flip(proof[i], 31)] + proof[i + 1 :]
            assert reason(lambda: verify_inclusion(HASHES[index], index, size, bad, root(size))) == Reason.PROOF_MISMATCH
        if size > 1:
            other = (index + 1) % size
            assert reason(lambda: verify_inclusion(HASHES[index], other, size, proof, root(size))) in {
                Reason.PROOF_MISMATCH,
                Reason.PROOF_MALFORMED,
            }
        longer = proof + [HASHES[0]]
        assert reason(lambda: verify_inclusion(HASHES[index], index, size, longer, root(size))) == Reason.PROOF_MALFORMED
        if proof:
            shorter = proof[:-1]
            assert reason(lambda: verify_inclusion(HASHES[index], index, size, shorter, root(size))) == Reason.PROOF_MALFORMED


def test_inclusion_rejects_bad_shapes() -> None:
    proof = inclusion(2, 5)
    r = root(5)
    cases = [
        (HASHES[2], 5, 5, proof, r),  # index not below size
        (HASHES[2], 2, 0, proof, r),
        (HASHES[2], -1, 5, proof, r),
        (HASHES[2], True, 5, proof, r),
        (HASHES[2][:31], 2, 5, proof, r),
        (HASHES[2], 2, 5, proof, r[:16]),
        (HASHES[2], 2, 5, tuple(proof[:-1]) + (b"short",), r),
        (HASHES[2], 2, 5, "not a list", r),
        (HASHES[2], 2, 5, [HASHES[0]] * 129, r),
        (HASHES[2], 2, 2**64, proof, r),
    ]
    for case in cases:
        assert reason(lambda: verify_inclusion(*case)) == Reason.PROOF_MALFORMED, case


def test_consistency_tampering_fails_with_reason() -> None:
    for n in range(1, 34):
        for m in range(1, n):
            proof = consistency(m, n)
            verify_consistency(m, n, proof, root(m), root(n))
            assert reason(lambda: verify_consistency(m, n, proof, flip(root(m)), root(n))) == Reason.PROOF_MISMATCH
            assert reason(lambda: verify_consistency(m, n, proof, root(m), flip(root(n)))) == Reason.PROOF_MISMATCH
            for i in range(len(proof)):
                bad = proof[:i] + [flip(proof[i], 7)] + proof[i + 1 :]
                assert reason(lambda: verify_consistency(m, n, bad, root(m), root(n))) == Reason.PROOF_MISMATCH
            assert reason(lambda: verify_consistency(m, n, proof + [HASHES[0]], root(m), root(n))) == Reason.PROOF_MALFORMED
            assert reason(lambda: verify_consistency(m, n, proof[:-1], root(m), root(n))) in {
                Reason.PROOF_MALFORMED,
                Reason.PROOF_MISMATCH,
            }
            # A proof for other sizes does not prove these ones.
            assert reason(lambda: verify_consistency(m, n + 1, proof, root(m), root(n + 1))) in {
                Reason.PROOF_MALFORMED,
                Reason.PROOF_MISMATCH,
            }


def test_consistency_edge_sizes() -> None:
    verify_consistency(0, 0, [], EMPTY_ROOT, EMPTY_ROOT)
    verify_consistency(0, 9, [], EMPTY_ROOT, root(9))
    verify_consistency(9, 9, [], root(9), root(9))
    assert reason(lambda: verify_consistency(0, 9, [], root(1), root(9))) == Reason.PROOF_MISMATCH
    assert reason(lambda: verify_consistency(9, 9, [], root(9), root(8))) == Reason.PROOF_MISMATCH
    assert reason(lambda: verify_consistency(9, 9, [HASHES[0]], root(9), root(9))) == Reason.PROOF_MALFORMED
    assert reason(lambda: verify_consistency(4, 9, [], root(4), root(9))) == Reason.PROOF_MALFORMED
    assert reason(lambda: verify_consistency(9, 4, [], root(9), root(4))) == Reason.PROOF_MALFORMED


def test_proof_plans_read_logarithmically_many_subtrees() -> None:
    for size in [1, 2, 3, 1000, 1023, 1024, 1025, 2**40 + 12345]:
        bound = 2 * size.bit_length() + 1
        for index in {0, size // 3, size // 2, size - 1}:
            assert len(proof_subtrees(inclusion_ranges(index, size))) <= bound
        for first in {1, size // 3, size // 2, size - 1}:
            if first <= size:
                assert len(proof_subtrees(consistency_ranges(first, size))) <= bound
        assert len(perfect_subtrees(0, size)) == bin(size).count("1")


@given(
    leaf=st.binary(max_size=40),
    index=st.integers(min_value=-2, max_value=2**65),
    size=st.integers(min_value=-2, max_value=2**65),
    proof=st.lists(st.binary(min_size=30, max_size=33), max_size=70),
    root_hash=st.binary(min_size=31, max_size=33),
)
def test_inclusion_verifier_never_raises_anything_else(leaf, index, size, proof, root_hash) -> None:
    try:
        verify_inclusion(leaf, index, size, proof, root_hash)
    except ProofError:
        return
    # Random input can only pass in the trivial case: a one-leaf tree.
    assert (index, size, proof) == (0, 1, []) and leaf == root_hash


@given(
    size1=st.integers(min_value=-2, max_value=2**65),
    size2=st.integers(min_value=-2, max_value=2**65),
    proof=st.lists(st.binary(min_size=31, max_size=33), max_size=140),
    root1=st.binary(min_size=31, max_size=33),
    root2=st.binary(min_size=31, max_size=33),
)
def test_consistency_verifier_never_raises_anything_else(size1, size2, proof, root1, root2) -> None:
    try:
        verify_consistency(size1, size2, proof, root1, root2)
    except ProofError:
        return
    # Random input can only pass in the trivial cases.
    assert proof == [] and (size1 == size2 and root1 == root2 or size1 == 0 and root1 == EMPTY_ROOT)
