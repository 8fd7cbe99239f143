"""A sealed chain with receipts, built locally from validator identities.

For tests, benchmarks and demos that need real bundles without running
consensus: every block is built with ``node.consensus.block.build_block``
(so its header fields follow the chain rules: the validator sets of its
height and the next, the proposer's VRF seed proof), carries the receipt
log's size and root after its receipts, and is sealed by a quorum (or any
chosen subset) of the validators of its height. Blocks and receipts go into
a real ChainStore and ReceiptLog on one DuckDB connection.

The validator set can change (:meth:`DevChain.change_validators`) on the
consensus rule (C1): a change executed in block H decides from
``H + ACTIVATION_DELAY``; :meth:`DevChain.validator_history` answers what
``ChainApplication.validator_history`` answers on a real node.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import duckdb

from node.base.keys import Identity
from node.consensus.block import (
    SEAL_TAG,
    Block,
    BlockHeader,
    genesis_header,
    seal_message,
    seed_alpha,
)
from node.consensus.block_rules import build_block
from node.consensus.genesis import Genesis, Limits
from node.consensus.store import ChainStore
from node.consensus.validators import ACTIVATION_DELAY, ValidatorSet
from node.receipts.blocks import ChainStoreBlocks
from node.receipts.envelope import Receipt
from node.receipts.log import ReceiptLog

DEV_GENESIS_TIME_MS = 1_767_225_600_000


def dev_identities(count: int, prefix: str = "dev-validator") -> list[Identity]:
    """Deterministic identities (``Identity.from_label``): never for real chains."""
    return [Identity.from_label(f"{prefix}-{i}") for i in range(count)]


def dev_genesis(validators: Sequence[Identity], chain_id: str = "metanode-dev") -> Genesis:
    """A genesis whose validator set is ``validators``."""
    return Genesis(
        chain_id=chain_id,
        genesis_time_ms=DEV_GENESIS_TIME_MS,
        validators=tuple(v.public_key for v in validators),
        block_period_ms=1000,
        limits=Limits(max_block_bytes=1 << 20, max_txs_per_block=100, max_timestamp_drift_ms=2000),
    )


def seal_block(block: Block, signers: Sequence[Identity], commit_round: int | None = None) -> Block:
    """``block`` with a commit seal from each of ``signers`` (any identities:
    a test can seal with too few or with non-validators)."""
    commit_round = block.header.round if commit_round is None else commit_round
    message = seal_message(block.hash, commit_round)
    return block.with_seals(commit_round, [(s.public_key, s.sign(SEAL_TAG, message)) for s in signers])


@dataclass
class DevChain:
    """A chain being grown: its genesis, validators, store, log and blocks."""

    genesis: Genesis
    validators: list[Identity]  # identities of the genesis validators
    conn: duckdb.DuckDBPyConnection
    store: ChainStore = field(init=False)
    log: ReceiptLog = field(init=False)
    blocks: list[Block] = field(default_factory=list)
    receipts: list[Receipt] = field(default_factory=list)

    def __post_init__(self) -> None:
        by_key = {identity.public_key: identity for identity in self.validators}
        missing = [key for key in self.genesis.validator_set.keys if key not in by_key]
        if missing:
            raise ValueError(f"no identity for genesis validator {missing[0].hex()}")
        self._by_key = by_key
        # (from_height, set), oldest first: the sets in force, as the state machine records them.
        self._sets: list[tuple[int, ValidatorSet]] = [(0, self.genesis.validator_set)]
        self.store = ChainStore(self.conn, first_height=1, first_parent=genesis_header(self.genesis).hash)
        self.store.bind_chain(self.genesis.chain_id, self.genesis.hash)
        self.log = ReceiptLog(self.conn)

    @property
    def tip(self) -> BlockHeader:
        return self.blocks[-1].header if self.blocks else genesis_header(self.genesis)

    def block_source(self) -> ChainStoreBlocks:
        return ChainStoreBlocks(self.store)

    def validator_set_at(self, height: int) -> ValidatorSet:
        """The set that decides block ``height``."""
        return next(vset for start, vset in reversed(self._sets) if start <= height)

    def validator_history(self) -> list[tuple[int, tuple[bytes, ...]]]:
        """``(from_height, sorted keys)`` of every set, oldest first, the
        first ``(0, genesis keys)``: ``ChainApplication.validator_history``'s answer."""
        return [(start, vset.keys) for start, vset in self._sets]

    def change_validators(self, identities: Sequence[Identity]) -> int:
        """Make ``identities`` the validator set, as if a vote executed in the
        next block: it decides from that block's height + ACTIVATION_DELAY,
        which is returned. Blocks in between are still decided by the set
        before (and the block just before the change commits to the new
        set in its ``next_validators_hash``)."""
        new = ValidatorSet(identity.public_key for identity in identities)
        executed = self.tip.height + 1
        from_height = executed + ACTIVATION_DELAY
        if self._sets[-1][0] >= from_height:
            raise ValueError(f"a change already takes effect at height {self._sets[-1][0]}")
        for identity in identities:
            self._by_key[identity.public_key] = identity
        self._sets.append((from_height, new))
        return from_height

    def add_block(
        self,
        receipts: Sequence[Receipt] = (),
        *,
        round_number: int = 0,
        signers: Sequence[Identity] | None = None,
    ) -> Block:
        """Append the receipts to the log and commit a block sealing the log's
        new size and root, sealed by ``signers`` (default: a quorum of the
        validators of its height, lowest keys first)."""
        parent = self.tip
        height = parent.height + 1
        vset = self.validator_set_at(height)
        proposer = vset.proposer(parent.proposer, round_number)
        if signers is None:
            signers = [self._by_key[key] for key in vset.keys[: vset.quorum]]
        seed_proof = self._by_key[proposer].vrf_prove(seed_alpha(self.genesis.hash, height, parent.seed))
        # ChainStore.append_block runs its own transaction (they do not
        # nest), so the log is appended first; a crash in between would leave
        # receipts not yet sealed, which the next block covers.
        head = self.log.append_receipts(list(receipts))
        block = build_block(
            self.genesis, parent, proposer, round_number, [], parent.timestamp_ms,
            receipts_size=head.size, receipts_root=head.root,
            validators=vset, next_validators=self.validator_set_at(height + 1), seed_proof=seed_proof,
        )
        block = seal_block(block, signers)
        self.store.append_block(
            height=block.height, block_hash=block.hash, parent_hash=block.header.parent_hash,
            timestamp_ms=block.header.timestamp_ms, proposer=block.header.proposer,
            block=block.encode(), txs=[],
        )
        self.blocks.append(block)
        self.receipts.extend(receipts)
        return block
