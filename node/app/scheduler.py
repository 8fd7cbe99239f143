"""ENC scheduling: weighted rendezvous hashing in exact integer arithmetic.

Every node computes the same assignment from the committed state alone: the
job id, the processing nodes' keys and their declared capacities.

Formulation. For a job ``j`` and a node ``n`` of capacity ``w``, draw
``a = 1 + int(first 8 bytes of H("metanode/rendezvous/v1", j || n))`` so
that ``a / N`` with ``N = 2**64 + 1`` lies strictly inside (0, 1). The node's
score is ``(a / N) ** (1 / w)`` and the ``r`` highest-scoring nodes get the
job. This is the standard weighted rendezvous score (the usual
``-w / ln(u)`` orders nodes the same way): with independent uniform draws,
node ``n`` ranks first with probability ``w / sum(w)``.

No float is ever computed. Two scores compare exactly by raising both to
the power ``wa * wb``::

    (a/N)**(1/wa) > (b/N)**(1/wb)  <=>  a**wb * N**wa > b**wa * N**wb

which Python evaluates on integers (at most ``64 * 2 * max_capacity`` bits).
Equal scores (a 2**-64 event) fall back to the node key, so the order is
total and independent of the order the candidates arrive in.

Rendezvous hashing moves little: removing a node that does not hold a job
cannot change that job's top ``r``, and removing one that does replaces it
with the next-ranked node only. Replacements after a missed deadline use
the same ranking with every node that ever held the job left out.
"""

from __future__ import annotations

import heapq
from collections.abc import Collection, Iterable
from dataclasses import dataclass
from functools import total_ordering

from node.base.codec import hash_tagged

RENDEZVOUS_TAG = "metanode/rendezvous/v1"
_SCALE = 2**64 + 1  # N: draws are a / N with a in 1..2**64


@dataclass(frozen=True)
class Candidate:
    """A processing node the scheduler may choose: its key and capacity (weight >= 1)."""

    node_key: bytes
    capacity: int


def rendezvous_draw(job_id: bytes, node_key: bytes) -> int:
    """The node's uniform draw for the job: an integer in 1..2**64."""
    return 1 + int.from_bytes(hash_tagged(RENDEZVOUS_TAG, job_id + node_key)[:8], "big")


@total_ordering
class RendezvousScore:
    """The exact score ``(draw / N) ** (1 / capacity)``; larger wins; ties by node key."""

    __slots__ = ("draw", "weight", "node_key")

    def __init__(self, job_id: bytes, candidate: Candidate) -> None:
        if type(candidate.capacity) is not int or candidate.capacity < 1:
            raise ValueError(f"capacity must be a positive integer, got {candidate.capacity!r}")
        self.draw = rendezvous_draw(job_id, candidate.node_key)
        self.weight = candidate.capacity
        self.node_key = candidate.node_key

    def _compare(self, other: "RendezvousScore") -> int:
        if self.weight == other.weight:
            left, right = self.draw, other.draw
        else:
            left = self.draw**other.weight * _SCALE**self.weight
            right = other.draw**self.weight * _SCALE**other.weight
        if left != right:
            return -1 if left < right else 1
        if self.node_key != other.node_key:
            return -1 if self.node_key < other.node_key else 1
        return 0

    def __lt__(self, other: object) -> bool:
        if not isinstance(other, RendezvousScore):
            return NotImplemented
        return self._compare(other) < 0

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, RendezvousScore):
            return NotImplemented
        return self._compare(other) == 0

    def __hash__(self) -> int:
        return hash((self.draw, self.weight, self.node_key))


def rank_nodes(job_id: bytes, candidates: Iterable[Candidate]) -> list[bytes]:
    """Every candidate's key, best first, for ``job_id``."""
    scores = [RendezvousScore(job_id, c) for c in _distinct(candidates)]
    return [score.node_key for score in sorted(scores, reverse=True)]


def choose_nodes(
    job_id: bytes,
    candidates: Iterable[Candidate],
    count: int,
    *,
    exclude: Collection[bytes] = (),
) -> list[bytes] | None:
    """The ``count`` best-ranked candidates not in ``exclude``, best first.

    None when fewer than ``count`` candidates remain: a job is never given
    fewer distinct nodes than it asked for.
    """
    if count < 0:
        raise ValueError("count must be >= 0")
    excluded = set(exclude)
    scores = [RendezvousScore(job_id, c) for c in _distinct(candidates) if c.node_key not in excluded]
    if len(scores) < count:
        return None
    return [score.node_key for score in heapq.nlargest(count, scores)]


def _distinct(candidates: Iterable[Candidate]) -> list[Candidate]:
    by_key: dict[bytes, Candidate] = {}
    for candidate in candidates:
        previous = by_key.setdefault(candidate.node_key, candidate)
        if previous != candidate:
            raise ValueError("a node appears twice among the candidates with different capacities")
    return list(by_key.values())
