"""The contract between the chain and what the chain means: the :class:`Application` the consensus shell drives.

Consensus orders transactions and seals blocks; it knows nothing of jobs,
datasets or nodes. Everything it needs to know about them it asks an
:class:`Application` (node/app/chain_app.py implements it), and only through
the methods below: the shell (node/consensus/service.py) and the chain's RPC
(node/consensus/rpc.py) never reach past them into the application's state.

The model is CometBFT's ABCI ``Application`` interface (abci/types/application.go):

==================================  ===========================================
ABCI                                here
==================================  ===========================================
Info + the start-up handshake       :meth:`Application.register_tx_types`,
                                    :meth:`Application.catch_up`
CheckTx                             :meth:`Application.check_tx_against_state`
PrepareProposal                     :meth:`Application.commitment_after`
ProcessProposal                     :meth:`Application.accepts_proposal`
FinalizeBlock + Commit              :meth:`Application.apply_final_block`
a delivered tx's result code        :meth:`Application.rejection_of`
FinalizeBlock's validator updates,  :meth:`Application.validator_set_at`
applied at H+2
==================================  ===========================================

Every method that a block's validity or the state depends on must be
deterministic: the same inputs give the same answer on every node, with no
wall clock, no randomness and no I/O beyond the application's own store
(it owns its tables in the node database; the chain store is consensus's).

:class:`EmptyApplication` is the chain with no meaning (blocks carry an empty
receipt log): what the shell drives when no application is given, as in
consensus-only tests and benchmarks.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Protocol, runtime_checkable

from node.consensus.block import EMPTY_ROOT, Block, BlockHeader
from node.consensus.tx import Transaction, TxTypeRegistry
from node.consensus.validators import ValidatorSet


@dataclass(frozen=True)
class Commitment:
    """What a block header commits to on the application's behalf: the receipt
    log's size and root once the block's receipts are appended (so the header
    a quorum seals is the log's signed tree head)."""

    receipts_size: int
    receipts_root: bytes

    def header_fields(self) -> dict[str, Any]:
        """The keyword arguments of ``IbftCore.propose`` that carry it."""
        return {"receipts_size": self.receipts_size, "receipts_root": self.receipts_root}


EMPTY_COMMITMENT = Commitment(receipts_size=0, receipts_root=EMPTY_ROOT)  # the empty log: RFC 9162's empty root


@runtime_checkable
class Application(Protocol):
    """Everything the chain asks of the application, and nothing more."""

    # -- start-up (ABCI Info and the handshake) ---------------------------------------
    def register_tx_types(self, registry: TxTypeRegistry) -> None:
        """Add the application's transaction types to ``registry``.

        Called once, when the consensus service is built, before any
        transaction is admitted or any block validated. Each type's hook
        validates a payload from the transaction alone: it must be a pure
        function (no state, clock or I/O), since block validity depends on it.
        Returns nothing; a name registered twice raises ValueError.
        """
        ...

    def catch_up(self) -> None:
        """Bring the application's state up to the chain store's head.

        Called once, when the consensus service is built and before its core
        starts: a node that crashed between storing a block and applying it
        applies the blocks it missed, in order, exactly as
        :meth:`apply_final_block` would have. Reads the chain store, writes
        only the application's own tables. Raises if the state was built from
        another chain (it cannot be caught up, only rebuilt).
        """
        ...

    # -- admission (ABCI CheckTx) -------------------------------------------------------
    def check_tx_against_state(self, tx: Transaction) -> str | None:
        """Why ``tx`` would be refused if applied on the current state, or None.

        Called before a transaction is admitted where the caller wants an
        early, precise refusal (the gateways, before they gossip a tenant's
        transaction); the mempool's own admission is stateless and does not
        call it. Read-only. None is no promise: transactions ahead of it in a
        block may change the state.
        """
        ...

    # -- proposals (ABCI PrepareProposal / ProcessProposal) ---------------------------
    def commitment_after(self, txs: Sequence[bytes]) -> Commitment:
        """What the header of the next block must commit to if it holds ``txs``.

        Called by the proposer before it proposes (the answer goes into the
        header), and by :meth:`accepts_proposal`'s usual implementation on
        validators. ``txs`` passed the chain's stateless checks. Must be
        deterministic and must not change the state: the block may never be
        finalised.
        """
        ...

    def accepts_proposal(self, header: BlockHeader, txs: Sequence[bytes]) -> bool:
        """Whether a proposed block's header carries the right commitment for its ``txs``.

        Called on every validator for every proposal whose transactions passed
        the chain's checks, before it votes. Deterministic and read-only (it
        may log why it refuses). False makes the validator refuse the proposal.
        """
        ...

    # -- final blocks (ABCI FinalizeBlock + Commit) -----------------------------------
    def apply_final_block(self, block: Block) -> None:
        """Apply a finalised block: the only way the application's state changes.

        Called once per block, in height order, right after the chain store
        holds it and before anything else sees it. Deterministic: every node
        that applies the same blocks reaches the same state; it writes only
        the application's own tables. A transaction the state refuses changes
        nothing and is recorded (see :meth:`rejection_of`); raising means this
        node can no longer follow the chain (its state diverged).
        """
        ...

    def rejection_of(self, tx_hash: bytes) -> str | None:
        """Why the state refused a committed transaction, or None if it did not.

        Called by the chain's RPC when it reports a committed transaction.
        Read-only. A refused transaction is still in its block (consensus
        ordered it); it only changed nothing.
        """
        ...

    # -- the validator set (ABCI FinalizeBlock's validator updates) -------------------
    def validator_set_at(self, height: int) -> ValidatorSet:
        """The validator set that decides block ``height``.

        A change the state executes while applying block H decides blocks
        from H + ``ACTIVATION_DELAY`` (node/consensus/validators.py) on, as
        CometBFT applies FinalizeBlock's validator updates at H+2: the state
        after block h then fixes the set of h + 2, so the header of h + 1 can
        commit to it (``next_validators_hash``) without executing itself first.
        Defined for every height up to the last applied height + 2 (the
        genesis set until a change). Called at every height by the consensus
        core (proposer, quorum, who may vote, whether this node signs) and by
        the chain's RPC: deterministic, read-only and cheap (kept in memory).
        """
        ...


class EmptyApplication:
    """A chain with no meaning: no transaction types of its own, an empty
    receipt log in every header, every well-formed proposal accepted, nothing
    applied and nothing refused, and one validator set (``validators``, the
    genesis set) at every height."""

    def __init__(self, validators: ValidatorSet) -> None:
        self.validators = validators

    def register_tx_types(self, registry: TxTypeRegistry) -> None:
        return None

    def catch_up(self) -> None:
        return None

    def check_tx_against_state(self, tx: Transaction) -> str | None:
        return None

    def commitment_after(self, txs: Sequence[bytes]) -> Commitment:
        return EMPTY_COMMITMENT

    def accepts_proposal(self, header: BlockHeader, txs: Sequence[bytes]) -> bool:
        return True

    def apply_final_block(self, block: Block) -> None:
        return None

    def rejection_of(self, tx_hash: bytes) -> str | None:
        return None

    def validator_set_at(self, height: int) -> ValidatorSet:
        return self.validators


APPLICATION_METHODS = frozenset(
    name for name, value in vars(Application).items() if callable(value) and not name.startswith("_")
)
