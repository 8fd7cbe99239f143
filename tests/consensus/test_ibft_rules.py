"""Quorum arithmetic, proposer rotation and round timer rules."""

from __future__ import annotations

import pytest

from node.consensus.validators import ValidatorSet, max_faulty, quorum_size

# n -> (f, quorum): quorum = ceil(2n/3), f = (n-1)//3
EXPECTED = {1: (0, 1), 2: (0, 2), 3: (0, 2), 4: (1, 3), 5: (1, 4), 6: (1, 4), 7: (2, 5), 8: (2, 6), 9: (2, 6), 10: (3, 7)}


@pytest.mark.parametrize("n", range(1, 11))
def test_quorum_and_f(n):
    assert (max_faulty(n), quorum_size(n)) == EXPECTED[n]
    q = quorum_size(n)
    # any two quorums share more than f validators: at least one honest one
    assert 2 * q - n > max_faulty(n)
    # and the honest validators alone can always form a quorum
    assert n - max_faulty(n) >= q


def test_two_f_plus_one_would_be_wrong_for_n_6():
    # the celo bug: with n=6, 2f+1=3 and two quorums of 3 need not intersect
    assert 2 * (2 * max_faulty(6) + 1) - 6 == 0
    assert quorum_size(6) == 4


def keys(n):
    return [bytes([i + 1]) * 32 for i in range(n)]


def test_proposer_rotation_follows_previous_proposer_and_round():
    vset = ValidatorSet(reversed(keys(4)))
    assert vset.keys == tuple(keys(4))  # sorted
    k = vset.keys
    # validators[(index(prev) + 1 + round) % n]
    assert vset.proposer(k[0], 0) == k[1]
    assert vset.proposer(k[0], 1) == k[2]
    assert vset.proposer(k[3], 0) == k[0]
    assert vset.proposer(k[2], 5) == k[(2 + 1 + 5) % 4]
    # genesis: all-zero proposer sorts first, so height 1 round 0 is keys[0]
    assert vset.proposer(bytes(32), 0) == k[0]
    assert [vset.proposer(bytes(32), r) for r in range(5)] == [k[0], k[1], k[2], k[3], k[0]]
    # a departed proposer counts from where it would sort
    between = bytes([2]) * 31 + b"\x09"
    assert vset.proposer(between, 0) == k[2]


def test_validator_set_hash_and_membership():
    a, b = ValidatorSet(keys(4)), ValidatorSet(reversed(keys(4)))
    assert a == b and a.hash == b.hash
    assert ValidatorSet(keys(5)).hash != a.hash
    assert keys(4)[0] in a and bytes(32) not in a
    with pytest.raises(ValueError):
        ValidatorSet([])
    with pytest.raises(ValueError):
        ValidatorSet([b"short"])
