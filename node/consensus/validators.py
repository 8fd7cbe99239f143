"""The validator set: quorum arithmetic and round-robin proposer choice.

IBFT 2.0 / QBFT rules (see ``/work/shared/notes/ibft.md``):

* ``f = (n - 1) // 3`` faulty validators are tolerated;
* ``quorum = ceil(2n / 3)``, which any two quorums intersect in at least one
  honest validator for every n (2F+1 does not when n != 3F+1);
* the proposer of ``round`` at a height is
  ``validators[(index(previous proposer) + 1 + round) % n]`` over the
  validator list sorted by public key, the set being the one of that
  height (it may change from height to height, see ACTIVATION_DELAY).
"""

from __future__ import annotations

import bisect
from collections.abc import Iterable

from node.base.codec import hash_value

VALIDATOR_SET_TAG = "metanode/validators/v1"
PUBLIC_KEY_SIZE = 32

# A validator-set change that the state executes while applying block H
# decides blocks from height H + ACTIVATION_DELAY on (CometBFT's rule). When
# block h + 1 is proposed, the state after h is the newest every validator
# holds, and it fixes the set of h + 2 at most: so the header of h + 1 can
# commit to the set of h + 2 (``next_validators_hash``) with no proposer
# executing its own block first. A delay of 1 would make a header commit to a
# set its own transactions may still change.
ACTIVATION_DELAY = 2


def quorum_size(n: int) -> int:
    """``ceil(2n/3)``: the number of distinct validators that decides."""
    if n < 1:
        raise ValueError("a validator set has at least one validator")
    return (2 * n - 1) // 3 + 1


def max_faulty(n: int) -> int:
    """``f``: how many Byzantine validators n validators tolerate."""
    if n < 1:
        raise ValueError("a validator set has at least one validator")
    return (n - 1) // 3


class ValidatorSet:
    """An immutable, sorted set of Ed25519 validator public keys."""

    __slots__ = ("keys", "n", "f", "quorum", "hash", "_index")

    def __init__(self, keys: Iterable[bytes]) -> None:
        ordered = sorted(set(bytes(k) for k in keys))
        if not ordered:
            raise ValueError("a validator set has at least one validator")
        for key in ordered:
            if len(key) != PUBLIC_KEY_SIZE:
                raise ValueError("a validator key is a 32-byte Ed25519 public key")
        self.keys: tuple[bytes, ...] = tuple(ordered)
        self.n = len(ordered)
        self.f = max_faulty(self.n)
        self.quorum = quorum_size(self.n)
        self.hash: bytes = hash_value(VALIDATOR_SET_TAG, list(self.keys))
        self._index = {key: i for i, key in enumerate(self.keys)}

    def __contains__(self, key: object) -> bool:
        return key in self._index

    def __len__(self) -> int:
        return self.n

    def __eq__(self, other: object) -> bool:
        return isinstance(other, ValidatorSet) and other.keys == self.keys

    def __hash__(self) -> int:
        return hash(self.keys)

    def index(self, key: bytes) -> int:
        """Position of ``key`` in the sorted list (KeyError if not a validator)."""
        return self._index[key]

    def proposer(self, previous_proposer: bytes, round_number: int) -> bytes:
        """The proposer of ``round_number`` at the height after a block proposed
        by ``previous_proposer``.

        When the previous proposer is not in the set (the genesis header's
        all-zero proposer, or a validator that has left) it counts as sitting
        just before the place it would sort into, as Besu does; for the
        genesis header that makes round 0 of height 1 go to ``keys[0]``.
        """
        if round_number < 0:
            raise ValueError("round numbers are not negative")
        previous = self._index.get(previous_proposer)
        if previous is None:
            previous = bisect.bisect_left(self.keys, previous_proposer) - 1
        return self.keys[(previous + 1 + round_number) % self.n]

    def __repr__(self) -> str:
        return f"ValidatorSet(n={self.n}, quorum={self.quorum}, hash={self.hash.hex()[:12]})"
