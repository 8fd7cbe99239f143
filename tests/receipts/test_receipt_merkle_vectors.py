"""The receipt log's roots and proofs against pymerkle 7.0.0, an independent
RFC 9162 implementation, over many tree sizes."""

from __future__ import annotations

import hashlib
import random

import duckdb
import pymerkle
import pytest
from pymerkle.core import _inclusion_path_layout

from node.base.merkle import (
    EMPTY_ROOT,
    leaf_hash,
    merkle_root,
    root_of_leaf_hashes,
    split_point,
    verify_consistency,
    verify_inclusion,
)
from node.receipts.log import ReceiptLog

MAX_SIZE = 1100
# 0, 1, every power of two up to 1024 with its neighbours, and the maximum.
SIZES = sorted(
    {0, 1, MAX_SIZE}
    | {n for k in range(1, 11) for n in (2**k - 1, 2**k, 2**k + 1)}
)
SMALL = 40  # every index / every pair below this size


def entry(i: int) -> bytes:
    return hashlib.sha256(b"receipt %d" % i).digest()


ENTRIES = [entry(i) for i in range(MAX_SIZE)]


@pytest.fixture(scope="module")
def reference() -> pymerkle.InmemoryTree:
    tree = pymerkle.InmemoryTree(algorithm="sha256")
    for data in ENTRIES:
        tree.append_entry(data)
    return tree


@pytest.fixture(scope="module")
def log() -> ReceiptLog:
    """One log grown to MAX_SIZE in uneven batches (as blocks would)."""
    receipt_log = ReceiptLog(duckdb.connect())
    rng = random.Random(9162)
    done = 0
    while done < MAX_SIZE:
        batch = min(rng.choice([1, 1, 2, 3, 7, 16, 33, 100]), MAX_SIZE - done)
        head = receipt_log.append(ENTRIES[done : done + batch])
        done += batch
        assert head.size == done
    return receipt_log


def reference_root(tree: pymerkle.InmemoryTree, start: int, end: int) -> bytes:
    """pymerkle's own MTH of leaves [start, end)."""
    return tree._get_root(start, end)


def reference_consistency(tree: pymerkle.InmemoryTree, m: int, n: int) -> list[bytes]:
    """RFC 9162 section 2.1.4.1 PROOF(m, D[n]) written out recursively, with
    every subtree hash taken from pymerkle."""

    def subproof(m: int, start: int, end: int, whole: bool) -> list[bytes]:
        if m == end - start:
            return [] if whole else [reference_root(tree, start, end)]
        k = split_point(end - start)
        if m <= k:
            return subproof(m, start, start + k, whole) + [reference_root(tree, start + k, end)]
        return subproof(m - k, start + k, end, False) + [reference_root(tree, start, start + k)]

    return [] if m in (0, n) else subproof(m, 0, n, True)


def test_empty_root_is_sha256_of_nothing(log: ReceiptLog) -> None:
    assert EMPTY_ROOT == hashlib.sha256(b"").digest()
    assert log.root_at(0) == EMPTY_ROOT == merkle_root([]) == root_of_leaf_hashes([])


def test_root_at_every_size_matches_pymerkle(log: ReceiptLog, reference: pymerkle.InmemoryTree) -> None:
    for size in range(1, MAX_SIZE + 1):
        assert log.root_at(size) == reference.get_root(size), size


@pytest.mark.parametrize("size", SIZES)
def test_pure_roots_match_pymerkle(size: int, reference: pymerkle.InmemoryTree) -> None:
    expected = reference.get_root(size) if size else EMPTY_ROOT
    assert merkle_root(ENTRIES[:size]) == expected
    assert root_of_leaf_hashes([leaf_hash(e) for e in ENTRIES[:size]]) == expected


def _check_inclusion(log: ReceiptLog, reference: pymerkle.InmemoryTree, index: int, size: int) -> None:
    proof = log.inclusion_proof(index, size)
    theirs = reference.prove_inclusion(index + 1, size)  # pymerkle counts from 1
    # pymerkle's path is the leaf hash followed by the RFC 9162 audit path.
    assert theirs.path[0] == leaf_hash(ENTRIES[index])
    assert proof == theirs.path[1:], (index, size)
    verify_inclusion(leaf_hash(ENTRIES[index]), index, size, proof, reference.get_root(size))
    # And pymerkle's verifier accepts our path too.
    rule, _ = _inclusion_path_layout(index + 1, size)
    ours = pymerkle.InclusionProof("sha256", True, size, index + 1, rule, [leaf_hash(ENTRIES[index]), *proof])
    pymerkle.verify_inclusion(leaf_hash(ENTRIES[index]), reference.get_root(size), ours)


def test_inclusion_every_index_small_sizes(log: ReceiptLog, reference: pymerkle.InmemoryTree) -> None:
    for size in range(1, SMALL + 1):
        for index in range(size):
            _check_inclusion(log, reference, index, size)


@pytest.mark.parametrize("size", [s for s in SIZES if s > SMALL])
def test_inclusion_sampled_indices_large_sizes(
    size: int, log: ReceiptLog, reference: pymerkle.InmemoryTree
) -> None:
    rng = random.Random(size)
    indices = {0, 1, size // 2, size - 2, size - 1, split_point(size) - 1, split_point(size)}
    indices |= {rng.randrange(size) for _ in range(8)}
    for index in sorted(i for i in indices if 0 <= i < size):
        _check_inclusion(log, reference, index, size)


def _check_consistency(log: ReceiptLog, reference: pymerkle.InmemoryTree, m: int, n: int) -> None:
    proof = log.consistency_proof(m, n)
    assert proof == reference_consistency(reference, m, n), (m, n)
    root_m = reference.get_root(m) if m else EMPTY_ROOT
    root_n = reference.get_root(n) if n else EMPTY_ROOT
    verify_consistency(m, n, proof, root_m, root_n)
    if 0 < m:
        # pymerkle proves the same prefix relation between the same roots.
        reference.prove_consistency(m, n).verify(root_m, root_n)


def test_consistency_all_pairs_small_sizes(log: ReceiptLog, reference: pymerkle.InmemoryTree) -> None:
    for n in range(0, SMALL + 1):
        for m in range(0, n + 1):
            _check_consistency(log, reference, m, n)


def test_consistency_pairs_of_large_sizes(log: ReceiptLog, reference: pymerkle.InmemoryTree) -> None:
    for n in SIZES:
        for m in SIZES:
            if m <= n and n > SMALL:
                _check_consistency(log, reference, m, n)
