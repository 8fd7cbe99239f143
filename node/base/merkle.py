"""RFC 9162 (Certificate Transparency v2) Merkle tree hashing, proofs and
proof verification. Pure functions: no I/O.

leaf = sha256(0x00 || data), node = sha256(0x01 || left || right); the tree
over n leaves splits at the largest power of two smaller than n; the root
of the empty tree is sha256("").

A log that stores the hash of every complete (perfect) subtree as it forms
can answer any proof or any past root by reading O(log n) of them. The
functions here plan which subtrees a proof needs (:func:`inclusion_ranges`,
:func:`consistency_ranges`, :func:`perfect_subtrees`) and assemble the
result from their hashes; ``node.receipts.log`` does the reading.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass
from typing import NamedTuple

from node.base.verification import ProofError, Reason

HASH_SIZE = 32
EMPTY_ROOT = hashlib.sha256(b"").digest()
# A tree size must fit in 64 bits, so no well-formed proof is longer than this
# (an inclusion path has at most 64 hashes, a consistency path at most 2*64).
MAX_TREE_SIZE = 2**64 - 1
MAX_PROOF_HASHES = 128


def leaf_hash(data: bytes) -> bytes:
    return hashlib.sha256(b"\x00" + data).digest()


def node_hash(left: bytes, right: bytes) -> bytes:
    return hashlib.sha256(b"\x01" + left + right).digest()


def split_point(n: int) -> int:
    """Largest power of two strictly smaller than n (n >= 2)."""
    return 1 << ((n - 1).bit_length() - 1)


def root_of_leaf_hashes(hashes: Sequence[bytes]) -> bytes:
    """Root over already-hashed leaves (iterative, so deep trees cannot recurse)."""
    if not hashes:
        return EMPTY_ROOT
    level = list(hashes)
    # Pairing left to right and carrying an odd last node up unchanged gives
    # exactly RFC 9162's largest-power-of-two split.
    while len(level) > 1:
        nxt = [node_hash(level[i], level[i + 1]) for i in range(0, len(level) - 1, 2)]
        if len(level) % 2:
            nxt.append(level[-1])
        level = nxt
    return level[0]


def merkle_root(leaves: Sequence[bytes]) -> bytes:
    """RFC 9162 root (MTH) over raw leaf data."""
    return root_of_leaf_hashes([leaf_hash(leaf) for leaf in leaves])


# -- complete subtrees ------------------------------------------------------
class Subtree(NamedTuple):
    """The perfect subtree over leaves [position * 2**level, (position + 1) * 2**level).

    A NamedTuple, so it hashes and compares as the plain tuple (level, position);
    the field is not called ``index``, which would shadow ``tuple.index``."""

    level: int
    position: int


@dataclass(frozen=True)
class SubtreeHash:
    level: int
    index: int
    hash: bytes


def perfect_subtrees(start: int, end: int) -> list[Subtree]:
    """The perfect subtrees whose right fold is MTH(D[start:end]), left to right.

    Valid for every range that occurs in an RFC 9162 tree (the whole tree,
    and every subtree and proof range within it), where each piece is
    aligned and strictly smaller than the one before; other ranges raise
    ValueError rather than produce a hash that means something else.
    """
    if not 0 <= start <= end:
        raise ValueError(f"bad leaf range [{start}, {end})")
    pieces: list[Subtree] = []
    while start < end:
        level = (end - start).bit_length() - 1
        if start % (1 << level):
            raise ValueError(f"leaf range [{start}, {end}) is not a subtree of an RFC 9162 tree")
        pieces.append(Subtree(level, start >> level))
        start += 1 << level
    return pieces


def fold_subtrees(hashes: Sequence[bytes]) -> bytes:
    """MTH of a range from its perfect subtrees' hashes (left to right)."""
    if not hashes:
        return EMPTY_ROOT
    acc = hashes[-1]
    for left in reversed(hashes[:-1]):
        acc = node_hash(left, acc)
    return acc


def append_subtrees(
    size: int, frontier: Sequence[bytes], new_leaf_hashes: Sequence[bytes]
) -> tuple[list[SubtreeHash], list[bytes]]:
    """Every perfect subtree that forms when leaves are appended to a tree.

    ``frontier`` is the hashes of ``perfect_subtrees(0, size)``. Returns the
    new subtrees (the leaves themselves at level 0 included) and the
    frontier of the grown tree, whose right fold is its root.
    """
    coords = perfect_subtrees(0, size)
    if len(frontier) != len(coords):
        raise ValueError(f"a tree of {size} leaves has {len(coords)} frontier hashes, not {len(frontier)}")
    stack = [SubtreeHash(c.level, c.position, h) for c, h in zip(coords, frontier)]
    formed: list[SubtreeHash] = []
    for offset, digest in enumerate(new_leaf_hashes):
        node = SubtreeHash(0, size + offset, digest)
        formed.append(node)
        # A node with an index that is odd is a right child: its left sibling
        # is the last frontier entry of the same level.
        while stack and stack[-1].level == node.level:
            left = stack.pop()
            node = SubtreeHash(node.level + 1, node.index >> 1, node_hash(left.hash, node.hash))
            formed.append(node)
        stack.append(node)
    return formed, [s.hash for s in stack]


# -- proof plans (RFC 9162 section 2.1.3.1 and 2.1.4.1) ---------------------
def inclusion_ranges(index: int, size: int) -> list[tuple[int, int]]:
    """Leaf ranges whose MTHs form PATH(index, D[size]), leaf side first."""
    if not 0 <= index < size:
        raise ValueError(f"leaf index {index} is not below tree size {size}")
    ranges = []
    start, end = 0, size
    while end - start > 1:
        k = split_point(end - start)
        if index < start + k:
            ranges.append((start + k, end))
            end = start + k
        else:
            ranges.append((start, start + k))
            start += k
    ranges.reverse()
    return ranges


def consistency_ranges(size1: int, size2: int) -> list[tuple[int, int]]:
    """Leaf ranges whose MTHs form PROOF(size1, D[size2]), deepest first.

    Empty when size1 is 0 or equal to size2 (nothing to prove).
    """
    if not 0 <= size1 <= size2:
        raise ValueError(f"sizes {size1} and {size2} are not 0 <= size1 <= size2")
    if size1 in (0, size2):
        return []
    ranges = []
    start, end, m, whole_old_tree = 0, size2, size1, True
    while True:
        if m == end - start:
            # The old tree's root is known to the verifier only when this
            # subtree *is* the old tree (SUBPROOF's b flag).
            if not whole_old_tree:
                ranges.append((start, end))
            break
        k = split_point(end - start)
        if m <= k:
            ranges.append((start + k, end))
            end = start + k
        else:
            ranges.append((start, start + k))
            start += k
            m -= k
            whole_old_tree = False
    ranges.reverse()
    return ranges


def proof_subtrees(ranges: Sequence[tuple[int, int]]) -> list[Subtree]:
    """Every perfect subtree a proof over ``ranges`` reads, without repeats."""
    needed: dict[Subtree, None] = {}
    for start, end in ranges:
        for piece in perfect_subtrees(start, end):
            needed[piece] = None
    return list(needed)


def assemble_proof(ranges: Sequence[tuple[int, int]], hashes: dict[Subtree, bytes]) -> list[bytes]:
    """The proof hashes for ``ranges`` from the hashes of their subtrees."""
    return [fold_subtrees([hashes[p] for p in perfect_subtrees(s, e)]) for s, e in ranges]


# -- verification (RFC 9162 section 2.1.3.2 and 2.1.4.2) --------------------
def _check_size(value: object, what: str) -> int:
    if not isinstance(value, int) or isinstance(value, bool) or not 0 <= value <= MAX_TREE_SIZE:
        raise ProofError(Reason.PROOF_MALFORMED, f"{what} must be an integer in [0, 2**64)")
    return value


def _check_hash(value: object, what: str) -> bytes:
    if not isinstance(value, (bytes, bytearray)) or len(value) != HASH_SIZE:
        raise ProofError(Reason.PROOF_MALFORMED, f"{what} must be {HASH_SIZE} bytes")
    return bytes(value)


def _check_path(proof: object) -> list[bytes]:
    if not isinstance(proof, (list, tuple)):
        raise ProofError(Reason.PROOF_MALFORMED, "proof must be a list of hashes")
    if len(proof) > MAX_PROOF_HASHES:
        raise ProofError(Reason.PROOF_MALFORMED, f"proof has {len(proof)} hashes, more than any tree needs")
    return [_check_hash(p, f"proof[{i}]") for i, p in enumerate(proof)]


def verify_inclusion(leaf_hash: bytes, index: int, size: int, proof: Sequence[bytes], root: bytes) -> None:
    """Check that the leaf with hash ``leaf_hash`` is leaf ``index`` of the
    tree of ``size`` leaves whose root is ``root``.

    ``leaf_hash`` is the RFC 9162 leaf hash (for the receipt log,
    ``leaf_hash(receipt_id)``). Raises ProofError with reason
    PROOF_MALFORMED (bad types, index not below size, wrong path length) or
    PROOF_MISMATCH (the path does not lead to ``root``).
    """
    leaf = _check_hash(leaf_hash, "leaf hash")
    index = _check_size(index, "leaf index")
    size = _check_size(size, "tree size")
    path = _check_path(proof)
    expected = _check_hash(root, "root")
    if index >= size:
        raise ProofError(Reason.PROOF_MALFORMED, f"leaf index {index} is not below tree size {size}")
    fn, sn, r = index, size - 1, leaf
    for p in path:
        if sn == 0:
            raise ProofError(Reason.PROOF_MALFORMED, "inclusion proof is longer than the tree is deep")
        if fn & 1 or fn == sn:
            r = node_hash(p, r)
            if not fn & 1:
                while fn and not fn & 1:
                    fn >>= 1
                    sn >>= 1
        else:
            r = node_hash(r, p)
        fn >>= 1
        sn >>= 1
    if sn != 0:
        raise ProofError(Reason.PROOF_MALFORMED, "inclusion proof is shorter than the tree is deep")
    if r != expected:
        raise ProofError(Reason.PROOF_MISMATCH, "inclusion proof does not lead to the root")


def verify_consistency(size1: int, size2: int, proof: Sequence[bytes], root1: bytes, root2: bytes) -> None:
    """Check that the tree of ``size1`` leaves with root ``root1`` is a prefix
    of the tree of ``size2`` leaves with root ``root2``.

    Raises ProofError with reason PROOF_MALFORMED (bad types, size1 > size2,
    wrong path length) or PROOF_MISMATCH (the path does not lead to both
    roots).
    """
    size1 = _check_size(size1, "first size")
    size2 = _check_size(size2, "second size")
    path = _check_path(proof)
    first = _check_hash(root1, "first root")
    second = _check_hash(root2, "second root")
    if size1 > size2:
        raise ProofError(Reason.PROOF_MALFORMED, f"first size {size1} is larger than second size {size2}")
    if size1 == size2 or size1 == 0:
        # Nothing to prove beyond the roots themselves.
        if path:
            raise ProofError(Reason.PROOF_MALFORMED, "consistency proof must be empty for these sizes")
        if size1 == 0 and first != EMPTY_ROOT:
            raise ProofError(Reason.PROOF_MISMATCH, "first root is not the empty tree's root")
        if size1 == size2 and first != second:
            raise ProofError(Reason.PROOF_MISMATCH, "roots of equal sizes differ")
        return
    if not path:
        raise ProofError(Reason.PROOF_MALFORMED, "consistency proof is empty")
    if size1 & (size1 - 1) == 0:  # the old tree is a complete subtree
        path = [first, *path]
    fn, sn = size1 - 1, size2 - 1
    while fn & 1:
        fn >>= 1
        sn >>= 1
    fr = sr = path[0]
    for c in path[1:]:
        if sn == 0:
            raise ProofError(Reason.PROOF_MALFORMED, "consistency proof is too long")
        if fn & 1 or fn == sn:
            fr = node_hash(c, fr)
            sr = node_hash(c, sr)
            if not fn & 1:
                while fn and not fn & 1:
                    fn >>= 1
                    sn >>= 1
        else:
            sr = node_hash(sr, c)
        fn >>= 1
        sn >>= 1
    if sn != 0:
        raise ProofError(Reason.PROOF_MALFORMED, "consistency proof is too short")
    if fr != first:
        raise ProofError(Reason.PROOF_MISMATCH, "consistency proof does not lead to the first root")
    if sr != second:
        raise ProofError(Reason.PROOF_MISMATCH, "consistency proof does not lead to the second root")
