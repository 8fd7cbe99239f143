"""What the chain means: transaction types, receipts sealed into headers, state on finalise.

This is where consensus and the services meet (DESIGN.md): :class:`ChainApplication`
implements :class:`node.consensus.app.Application`, the whole contract the
consensus shell drives. Besides start-up (its transaction types, catching up
after a restart) and the state's answers about single transactions, the
shell asks it three things:

* before proposing: the receipt log's size and root after this block's
  transactions (they go into the header, so a quorum seals them: the header
  is the log's signed tree head);
* when validating a proposal: the same computation, compared with the header;
* when a block is final: append its receipts to the log, then apply it to
  the chain state machine;
* at every height: the validator set that decides it (the genesis set until a
  vote changes it; a change executed in block H decides from H + 2).

The receipts a block adds are the envelopes its transactions carry
(``job.result`` and ``receipts.batch``), in transaction order, skipping ids
the log already holds. That set depends only on the transactions and the
log, so proposer and validators compute it identically before the block is
final; whether the state machine accepts a result is a separate, recorded
decision (``state_rejections``).
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Sequence
from typing import Any

import duckdb
import structlog

from node.app.decisions import attests
from node.app.machine import StateMachine, catch_up
from node.app.model import BlockContext, BlockEffects
from node.app.policy import OPEN_GOVERNANCE, Governance
from node.app.rules import DEFAULT_RULES, ChainRules
from node.app.txtypes import (
    RECEIPTS_BATCH,
    STATE_TX_TYPES,
    carried_receipts,
    misdated_receipt,
    parse_payload,
    register_tx_types,
)
from node.base.db import transaction
from node.consensus.app import Application, Commitment
from node.consensus.block import Block, BlockHeader
from node.consensus.store import ChainStore
from node.consensus.tx import PayloadError, Transaction, TxTypeRegistry
from node.consensus.validators import ValidatorSet
from node.receipts.envelope import Receipt, decode_receipt
from node.receipts.log import LogHead, ReceiptLog

log = structlog.get_logger("metanode.chain")

_RECEIPTS_MEMO = 8  # blocks whose carried receipts are remembered (receipts_in)
_LIFECYCLE = {"api.call": 0, "job.schedule": 1, "job.exec": 2, "job.verdict": 3}


class ChainApplication:
    """The chain's meaning on one node: the receipt log and the state machine, on ``conn``."""

    def __init__(self, conn: duckdb.DuckDBPyConnection, store: ChainStore, rules: ChainRules = DEFAULT_RULES,
                 governance: Governance = OPEN_GOVERNANCE) -> None:
        self.conn = conn
        self.store = store
        self.rules = rules
        self.receipts = ReceiptLog(conn)
        self._receipts_in_memo: dict[tuple[int, int, bytes], tuple[Receipt, ...]] = {}
        self.state = StateMachine(conn, rules=rules, governance=governance)
        self._validator_sets: dict[tuple[bytes, ...], ValidatorSet] = {}
        # Called with (effects, block) after each block is applied (its
        # assignments, rejections, implied receipt bodies).
        self.on_effects: list[Callable[[BlockEffects, Block], None]] = []

    # -- start-up ---------------------------------------------------------------------
    def register_tx_types(self, registry: TxTypeRegistry) -> None:
        """The state machine's transaction types, with their payload checks."""
        register_tx_types(registry)  # the widest bounds a rule vote can set: the block's rules are the state's

    # -- receipts carried by a block -----------------------------------------------
    def receipts_in(self, txs: Sequence[bytes], height: int) -> list[Receipt]:
        """Receipt envelopes carried by ``txs`` (already validated) into the log of
        block ``height``, in order, new ones only, and only those whose claimed
        height is below ``height`` (:func:`misdated_receipt`: the state refuses
        the transaction that carries such a receipt, so the log never holds it).

        Under the rule ``attest_once`` (in force at ``height``), nor does the
        log take the receipts of an attestation batch the state refuses
        (:meth:`refused_attestations`: a job.schedule, job.verdict or
        service.placement receipt in the log is then always the attestation of
        a decision of the chain). That check reads the state the block is
        applied to: the state machine must be at ``height - 1``. A chain
        without the rule keeps its old log: every such receipt goes in.

        A block's answer is asked for up to three times (propose or validate,
        then finalise) against the same log, so the last few are remembered,
        keyed by the log size, the height and the transactions."""
        decoded = [self.store.tx_cache.decode(raw) for raw in txs]  # decoded once per node
        # Keyed by the transaction hashes the decoding already computed (not a second hash of each).
        key = (self.receipts.size(), height, hashlib.sha256(b"".join(tx.hash for tx in decoded)).digest())
        cached = self._receipts_in_memo.get(key)
        if cached is not None:
            return list(cached)
        carried: dict[bytes, Receipt] = {}
        carried_by = [self._carried(tx) for tx in decoded]  # parsed (signatures checked) once here
        refused = self._refused_attestations(decoded, carried_by, height)
        for index, receipts in enumerate(carried_by):
            if index in refused or misdated_receipt(receipts, height) is not None:
                continue
            for receipt in receipts:
                carried.setdefault(receipt.id, receipt)
        logged = self.receipts.present(list(carried))
        found = [r for rid, r in carried.items() if rid not in logged]
        if len(self._receipts_in_memo) >= _RECEIPTS_MEMO:
            self._receipts_in_memo.pop(next(iter(self._receipts_in_memo)))
        self._receipts_in_memo[key] = tuple(found)
        return found

    def refused_attestations(self, txs: Sequence[Transaction], height: int) -> set[int]:
        """Indexes of the attestation batches among ``txs`` (block ``height``'s
        transactions) that the state will refuse, so the block's log leaves
        their receipts out (node/app/decisions.py).

        Runs the state's own parse, height and state checks of every
        ``receipts.batch`` of the block in order, on the state the block is
        applied to, applying the accepted ones to a throwaway working state so
        that later batches see them. Exact because a batch's check reads only
        receipts on chain, decisions and the scheduler nodes before the block:
        no other transaction of the block changes what it reads (a job.result
        brings in job.exec receipts, which no batch carries; a decision made in
        this block cannot be attested in it, a receipt's height being below the
        block's). Reads only; nothing is written. Empty when the rule
        ``attest_once`` is 0 at ``height`` (a chain started before it: the
        state refuses no batch for its attestations, and the log keeps them)."""
        return self._refused_attestations(txs, [self._carried(tx) for tx in txs], height)

    def _refused_attestations(self, txs: Sequence[Transaction], carried_by: Sequence[Sequence[Receipt]],
                              height: int) -> set[int]:
        """:meth:`refused_attestations`, given each transaction's carried receipts."""
        batches = [i for i, tx in enumerate(txs) if tx.type == RECEIPTS_BATCH]
        attesting = {i for i in batches if attests(carried_by[i])}
        if not attesting:
            return set()
        if self.state.next_height() != height:  # the check would read another state than the block's
            raise RuntimeError(f"the receipts of block {height} depend on the state before it, "
                               f"but the state is at the next height {self.state.next_height()}")
        machine = self.state
        rules = machine.rules_at(height)
        if not rules.attest_once:  # a chain without the rule: its log refuses no attestation batch
            return set()
        ws = machine.next_working_state()  # height is the next one (checked above)
        entry = STATE_TX_TYPES[RECEIPTS_BATCH]
        ctx = BlockContext.start(height, bytes(32), 0, bytes(64))  # thrown away: only the working state matters
        refused: set[int] = set()
        parsed: list[tuple[int, Any]] = []
        for i in batches:
            try:
                parsed.append((i, parse_payload(txs[i], rules)))
            except PayloadError:
                refused.add(i)
        # Every batch's rows in one read, as the state machine reads a block's (a row a batch
        # adds or changes is in the working state's memory, which wins over the stored one).
        ws.prefetch([entry.reads(txs[i], payload) for i, payload in parsed])
        for i, payload in parsed:
            tx = txs[i]
            carried = entry.carries(payload) if entry.carries else ()
            if misdated_receipt(carried, height) is not None or entry.check(ws, tx, payload) is not None:
                refused.add(i)
                continue
            entry.apply(ws, ctx, tx, payload)
        return refused & attesting  # the log's rule for the other batches is unchanged

    def _carried(self, tx: Transaction) -> Sequence[Receipt]:
        return carried_receipts(tx)  # its type's entry says which (the payload hook passed before)

    def receipts_head_after(self, txs: Sequence[bytes], height: int) -> LogHead:
        """The receipt log's head once block ``height``'s transactions ``txs`` add their receipts."""
        return self.receipts.head_after([r.id for r in self.receipts_in(txs, height)])

    # -- proposals ----------------------------------------------------------------------
    def commitment_after(self, txs: Sequence[bytes]) -> Commitment:
        """The header of a block holding ``txs`` seals the receipt log's head after them."""
        head = self.receipts_head_after(txs, self.state.next_height())
        return Commitment(receipts_size=head.size, receipts_root=head.root)

    def accepts_proposal(self, header: BlockHeader, txs: Sequence[bytes]) -> bool:
        head = self.receipts_head_after(txs, header.height)
        if (header.receipts_size, header.receipts_root) != (head.size, head.root):
            log.warning("proposal carries a wrong receipt log head", height=header.height,
                        claimed=header.receipts_size, expected=head.size)
            return False
        return True

    # -- validators ---------------------------------------------------------------------
    def validator_set_at(self, height: int) -> ValidatorSet:
        """The set that decides block ``height``: the genesis set until a vote
        changes it. Exact for every height up to the last applied + 2, from
        memory (the state machine loads the history at open and after each
        block that changed it). ValueError for a negative height, or when the
        governance names no validators."""
        keys = self.state.validator_keys_at(height)
        found = self._validator_sets.get(keys)
        if found is None:
            if not keys:
                raise ValueError("this chain state has no validators: its governance names none (no genesis)")
            found = self._validator_sets[keys] = ValidatorSet(keys)
        return found

    def validator_history(self) -> list[tuple[int, tuple[bytes, ...]]]:
        """``(from_height, sorted keys)`` of every validator set, oldest first;
        the first is ``(0, genesis keys)`` (what a receipt bundle's chain of
        set transitions is built from)."""
        return self.state.validator_history()

    # -- single transactions ------------------------------------------------------------
    def check_tx_against_state(self, tx: Transaction) -> str | None:
        """Why the current state would refuse ``tx``, or None (read-only)."""
        return self.state.check_tx_against_state(tx)

    def rejection_of(self, tx_hash: bytes) -> str | None:
        """Why the state refused a committed transaction, or None."""
        return self.state.rejection_of(tx_hash)

    # -- finalised blocks ---------------------------------------------------------------
    def apply_final_block(self, block: Block) -> None:
        """Apply the block to the state machine and append its receipts to the
        log, in one DuckDB transaction (a COMMIT costs ~1.5 ms of CPU; and a
        crash can no longer leave one without the other). Which receipts the
        block logs is decided first, on the state before it (attestations)."""
        new = self.receipts_in(block.transactions, block.height)
        effects = self.state.apply_block(
            block.height, block.hash, block.header.timestamp_ms,
            [self.store.tx_cache.decode(t) for t in block.transactions], seed=block.header.seed,
            # Inside the state's transaction: a diverged log rolls the state back too.
            on_applied=lambda _effects: self._log_receipts(block, new),
        )
        self.receipts.committed()
        for callback in self.on_effects:
            callback(effects, block)

    def job_receipts(self, job_id: bytes) -> list[dict[str, Any]]:
        """Every logged receipt about a job, in the job's order: the api.call
        that accepted it (its response is the job id's digest), schedules,
        executions and verdicts (their subject is the job id). Log order is
        arrival order (published receipts are batched), so the trace orders
        by the height each receipt refers to, then by lifecycle step."""
        response = hashlib.sha256(job_id).digest()
        # The api.call's subject is the digest of the request, the job.submit
        # transaction (the job id is its hash); the others' is the job id. One
        # scan of the subjects, where reading every api.call's envelope grew
        # with the log. An envelope is stored with its leaf, so each row is a
        # logged receipt and carries its position.
        submitted = self.store.tx_by_hash(job_id)
        subjects = [job_id] + ([hashlib.sha256(submitted.tx).digest()] if submitted is not None else [])
        rows = self.conn.execute(
            f"SELECT leaf, id, kind, issuer, height, subject, envelope FROM receipt_envelopes "
            f"WHERE subject IN ({', '.join('?' * len(subjects))})",
            subjects,
        ).fetchall()
        found = []
        for index, rid, kind, issuer, height, subject, envelope in rows:
            if kind == "api.call" and bytes(subject) != job_id:
                if decode_receipt(bytes(envelope)).fields.get("response") != response:
                    continue
            found.append({"id": bytes(rid).hex(), "kind": kind, "issuer": issuer, "height": height, "index": int(index)})
        return sorted(found, key=lambda r: (r["height"], _LIFECYCLE.get(r["kind"], 9), r["index"]))

    def _append_receipts(self, block: Block) -> None:
        """The block's receipts appended in a transaction of their own (catch-up
        of a log left behind its state by an older node)."""
        new = self.receipts_in(block.transactions, block.height)
        with transaction(self.conn):
            self._log_receipts(block, new)
        self.receipts.committed()

    def _log_receipts(self, block: Block, new: list[Receipt]) -> None:
        head = self.receipts.append_receipts(new)
        if (head.size, head.root) != (block.header.receipts_size, block.header.receipts_root):
            # The quorum sealed a head this node does not reproduce: its log
            # has diverged, and serving proofs from it would be wrong.
            raise RuntimeError(f"receipt log diverged at height {block.height}: "
                               f"local size {head.size}, sealed size {block.header.receipts_size}")

    def catch_up(self) -> None:
        """After a crash between storing a block and applying it: bring the
        receipt log and the state up to the stored chain."""
        head = self.store.head()
        if head is None:
            return
        missing = []
        height = head.height
        while height >= 1:
            block = Block.decode(self.store.block_by_height(height).block)  # type: ignore[union-attr]
            if block.header.receipts_size <= self.receipts.size():
                break
            missing.append(block)
            height -= 1
        # Block by block, the receipts then the state: which receipts a block
        # logs depends on the state before it (attestations).
        applied = 0
        for block in reversed(missing):
            while self.state.next_height() < block.height:
                self._apply_stored(self.state.next_height())
                applied += 1
            self._append_receipts(block)
        applied += catch_up(self.state, self.store)
        if missing or applied:
            log.info("caught up after restart", receipt_blocks=len(missing), state_blocks=applied)

    def _apply_stored(self, height: int) -> None:
        """Apply the stored block at ``height`` to the state (catching up)."""
        stored = self.store.block_by_height(height)
        if stored is None:
            raise RuntimeError(f"the chain store has no block at height {height}")
        block = Block.decode(stored.block)
        self.state.apply_block(height, block.hash, block.header.timestamp_ms,
                               [self.store.tx_cache.decode(t) for t in block.transactions], seed=block.header.seed)


# The type checker holds ChainApplication to the whole contract the chain drives
# (tests/consensus/test_application_contract.py checks the same at run time).
_IMPLEMENTS: type[Application] = ChainApplication
