"""The chain state machine: committed blocks in, job state and effects out.

Sans-I/O in the DESIGN sense: no network, clock or randomness; everything it
knows comes from the blocks it is given. Its state lives in the node's
DuckDB connection (tables in :mod:`node.app.tables`), and a block
is applied in ONE DuckDB transaction together with the new height, so a
crash leaves either the whole block applied or none of it.

Applying a block:

1. pending governance proposals expire when their time is up; when the
   validator set deciding this block differs from the parent's, pending
   proposals the new set's votes already carry are executed
   (:mod:`node.app.governance`);
2. each transaction, in order: its payload is checked against the schema
   (:func:`parse_payload`), then against the state (tenant rights, references,
   assignee); a transaction that fails is recorded as rejected with a
   reason and changes nothing else, so every node reaches the same state;
3. jobs an assignee declined (``job.decline``: it could not run them) fail when
   no attempt or no untried processing node is left (``settle_declines``);
   pending assignments whose deadline is this height are missed, and so are
   those not acknowledged (``job.ack``, or a result or decline) by their ack
   deadline (rule ``ack_blocks``): their jobs get replacements or, with no
   attempt left, fail;
4. the service pass (:mod:`node.app.service_pass`): verified runs become
   their services' results, placements follow the nodes, triggers start runs;
5. the scheduler assigns every job with open slots (new jobs first get their
   seed and clock from this block; a service run goes to its placed nodes);
6. the changed rows and the height row are written; ``on_applied(effects)``
   runs last, inside the same transaction (e.g. to append the block's
   receipts to the receipt log).

Rows are read in bulk into a :class:`WorkingState` and written back once
per block (DuckDB point statements cost ~1 ms each; see ``working.py``).

Every step runs under the chain rules in force at the block
(:meth:`StateMachine.rules_at`): the genesis rules, changed by executed
``set_rule`` votes from their activation heights (node/app/rule_changes.py).

Transactions of other types (``noop``, consensus types) are not the state
machine's and are skipped. The caller hands over only committed blocks,
whose transactions passed :func:`node.consensus.tx.check_block_txs`
(chain id, sender signature, nonce, payload hook).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import duckdb
import structlog

from node.app import governance, lifecycle, queries, service_pass, tables
from node.app.model import BlockContext, BlockEffects, Rejection
from node.app.policy import OPEN_GOVERNANCE, Governance
from node.app.rule_changes import RuleSchedule
from node.app.rules import DEFAULT_RULES, ChainRules
from node.app.state_hints import NO_EXPIRY, StateHints
from node.app.txtypes import STATE_TX_TYPES, Payload, misdated_receipt, parse_payload, reads_of
from node.app.validator_sets import ValidatorHistory
from node.app.working import WorkingState
from node.base.codec import to_hex
from node.base.db import transaction
from node.consensus.block import SEED_SIZE, Block
from node.consensus.store import ChainStore
from node.consensus.tx import PayloadError, Transaction

MAX_HEIGHT = 2**63 - 1

log = structlog.get_logger("metanode.state")


class StateError(Exception):
    """A block cannot be applied (wrong height, bad arguments) or the stored
    state does not match this code or these rules. Nothing is written."""


class StateMachine(queries.StateQueries):
    """The job state of one node, in its DuckDB connection (single writer).

    ``first_height`` is the height of the first block applied (1 when the
    genesis header is not itself a block). ``governance`` (from the genesis:
    :meth:`Governance.from_genesis`) names the genesis validators and the
    admission policies; the validators of later heights are the state's
    (:meth:`validator_keys_at`). ``rules`` are the genesis rules
    (:meth:`ChainRules.from_genesis`); the rules of later heights are the
    state's (:meth:`rules_at`). Creates its tables if missing; refuses a
    database whose state was built by another schema, genesis rules or
    governance.
    """

    def __init__(
        self,
        conn: duckdb.DuckDBPyConnection,
        *,
        rules: ChainRules = DEFAULT_RULES,
        first_height: int = 1,
        governance: Governance = OPEN_GOVERNANCE,
    ) -> None:
        if type(first_height) is not int or first_height < 0:
            raise ValueError("first_height must be a non-negative integer")
        super().__init__(conn, rules)
        self.first_height = first_height
        self.governance = governance
        with transaction(conn):
            tables.create_tables(conn)
            if self._stored_meta("schema_version") not in (None, str(tables.SCHEMA_VERSION).encode()):
                # The state is derived from the blocks: after a schema change it
                # is dropped here and re-applied from the chain store (catch_up).
                log.warning("chain state schema changed: rebuilding the state from the blocks",
                            stored=self._stored_meta("schema_version"), now=tables.SCHEMA_VERSION)
                tables.drop_tables(conn)
                tables.create_tables(conn)
            self._check_meta("schema_version", str(tables.SCHEMA_VERSION).encode(), "schema version")
            self._check_meta("rules", rules.digest(), "chain rules in its genesis")
            self._check_meta("governance", governance.digest(), "validators or admission policies")
        self._validators = ValidatorHistory(governance.validators)
        self._validators.load(conn)
        self._rules = RuleSchedule(rules)
        self._rules.load(conn)
        # What the committed state is known not to hold, and a few answers it holds (its
        # height, the next job seq, the node rows, the active jobs): WorkingState's StateHints,
        # so a block skips the queries an idle chain would answer with nothing, and most of
        # a busy block's reads. Replaced only after a block's COMMIT; in memory only: a
        # restarted node starts knowing nothing and learns in a block.
        self._hints = StateHints()

    def _stored_meta(self, key: str) -> bytes | None:
        row = self._conn.execute("SELECT value FROM state_meta WHERE key = ?", [key]).fetchone()
        return None if row is None else bytes(row[0])

    def _check_meta(self, key: str, expected: bytes, what: str) -> None:
        row = self._conn.execute("SELECT value FROM state_meta WHERE key = ?", [key]).fetchone()
        if row is None:
            self._conn.execute("INSERT INTO state_meta VALUES (?, ?)", [key, expected])
        elif bytes(row[0]) != expected:
            raise StateError(
                f"the chain state in this database was built with other {what}; "
                "rebuild it from the blocks (StateMachine.reset, then catch_up)"
            )

    # -- applying blocks ---------------------------------------------------------
    def apply_block(
        self,
        height: int,
        block_hash: bytes,
        timestamp_ms: int,
        txs: Sequence[Transaction],
        *,
        seed: bytes,
        on_applied: Callable[[BlockEffects], None] | None = None,
    ) -> BlockEffects:
        """Apply the committed block at ``height``; return what it changed.

        ``seed`` is the block's VRF seed (``BlockHeader.seed``, 64 bytes): the
        jobs it schedules draw their seeds from it, not from the block hash,
        which the proposer could grind by choosing transactions.

        Raises StateError (nothing written) unless ``height`` is the next
        height: re-applying a block, or skipping one, is refused. Any
        exception, including one from ``on_applied``, rolls the whole block
        back.
        """
        if type(height) is not int or not 0 <= height <= MAX_HEIGHT:
            raise StateError(f"height must be an integer in 0..{MAX_HEIGHT}, got {height!r}")
        if not isinstance(block_hash, bytes) or len(block_hash) != 32:
            raise StateError("block_hash must be 32 bytes")
        if not isinstance(seed, bytes) or len(seed) != SEED_SIZE:
            raise StateError(f"seed must be {SEED_SIZE} bytes (the block's VRF seed)")
        if type(timestamp_ms) is not int or not 0 <= timestamp_ms <= MAX_HEIGHT:
            raise StateError(f"timestamp_ms must be a non-negative 64-bit integer, got {timestamp_ms!r}")
        if not all(isinstance(tx, Transaction) for tx in txs):
            raise StateError("txs must be decoded Transaction objects")
        conn = self._conn
        with self.changing_state(), transaction(conn):  # no answer kept (follow_blocks) outlives a block
            # The height the last committed block left (kept by the hints), else asked.
            applied = self._hints.height if self._hints.height is not None else self.height()
            expected = self.first_height if applied is None else applied + 1
            if height != expected:
                raise StateError(
                    f"block {height} cannot be applied: the state is at "
                    f"{'no block yet' if applied is None else f'height {applied}'}, "
                    f"the next block is {expected}"
                )
            ctx = BlockContext.start(height, block_hash, timestamp_ms, seed)
            rules = self.rules_at(height)  # a change executed in this block takes effect 2 blocks later at the earliest
            work = self._working_state(height, self._hints)
            proposal_floor = self._expire_proposals(height)
            if height > 0 and work.validators != self._validators.keys_at(height - 1):
                governance.execute_carried_proposals(work, ctx)
            parsed = [self._parse(tx, rules) for tx in txs]
            work.prefetch(reads_of(tx, payload) for tx, (payload, _) in zip(txs, parsed) if payload is not None)
            for index, (tx, (payload, problem)) in enumerate(zip(txs, parsed)):
                self._apply_tx(work, ctx, index, tx, payload, problem)
            lifecycle.settle_declines(work, ctx, rules)
            lifecycle.expire_deadlines(work, ctx, rules)
            service_pass.run_services(work, ctx, rules)
            lifecycle.schedule_jobs(work, ctx, rules)
            work.flush()
            if applied is None:  # the first block: the row is new
                conn.execute("INSERT INTO state_height VALUES (0, ?, ?, ?)", [height, block_hash, timestamp_ms])
            else:  # an UPDATE costs a third of an upsert (INSERT OR REPLACE)
                conn.execute("UPDATE state_height SET height = ?, block_hash = ?, timestamp_ms = ? WHERE id = 0",
                             [height, block_hash, timestamp_ms])
            if on_applied is not None:
                on_applied(ctx.effects)
            # A gov.propose in the block may have opened a proposal: the floor is asked again.
            hints = work.hints_after(None if any(tx.type == governance.GOV_PROPOSE for tx in txs) else proposal_floor)
        self._hints = hints  # committed: a block rolled back leaves the hints as they were
        self.block_committed(height)  # the queries may answer height() from memory until the next block
        if work.validator_sets_changed:  # committed: the sets of later heights are known now
            self._validators.load(conn)
        if work.rules_changed:  # likewise the rules of later heights
            self._rules.load(conn)
        return ctx.effects

    def may_have_assignments(self) -> bool:
        """False when the applied state is known to hold no pending assignment (a
        processing node then skips asking for its own on an idle chain's blocks)."""
        return self._hints.expiry_floor != NO_EXPIRY

    def next_working_state(self) -> WorkingState:
        """A working state for reading the committed state as the next block
        would (a pre-screen, a receipt check): thrown away, never flushed. It
        carries the committed state's hints, which are exact for it (its height,
        node rows and active jobs come from memory)."""
        return self._working_state(self.next_height(), self._hints)

    def _working_state(self, height: int, hints: StateHints | None = None) -> WorkingState:
        return WorkingState(self._conn, self.governance, self._validators.keys_at(height), height,
                            rules=self.rules_at(height), genesis_rules=self.rules, hints=hints or StateHints())

    def _expire_proposals(self, height: int) -> int | None:
        """Expire the pending proposals whose time is up at ``height`` (unless none can be);
        the new floor of the pending ones' expiry heights (None: unknown)."""
        floor = self._hints.proposal_floor
        if floor is not None and floor > height:
            return floor
        governance.expire_proposals(self._conn, height)
        row = self._conn.execute("SELECT min(expires_height) FROM state_proposals WHERE status = ?",
                                 [governance.PENDING]).fetchone()
        return NO_EXPIRY if row is None or row[0] is None else int(row[0])

    def _parse(self, tx: Transaction, rules: ChainRules) -> tuple[Payload | None, str | None]:
        """(payload, None) for a valid state transaction under ``rules`` (those
        of the block it is applied in), (None, reason) for an invalid one,
        (None, None) for a type that is not the state machine's."""
        if tx.type not in STATE_TX_TYPES:
            return None, None
        try:
            return parse_payload(tx, rules), None
        except PayloadError as exc:
            return None, f"invalid payload: {exc}"

    def _apply_tx(
        self, work: WorkingState, ctx: BlockContext, index: int, tx: Transaction,
        payload: Payload | None, problem: str | None,
    ) -> None:
        if payload is None and problem is None:
            return
        handler = STATE_TX_TYPES[tx.type]
        if payload is None:
            reason = problem
        else:
            carried = handler.carries(payload) if handler.carries is not None else ()
            reason = misdated_receipt(carried, ctx.height) or handler.check(work, tx, payload)
        if reason is None:
            handler.apply(work, ctx, tx, payload)
            return
        work.add_rejection((ctx.height, index, tx.hash, tx.type, tx.sender, reason))
        ctx.effects.rejected.append(Rejection(index, tx.hash, tx.type, reason))

    # -- mempool pre-screen --------------------------------------------------------
    def check_tx_against_state(self, tx: Transaction) -> str | None:
        """Why ``tx`` would be rejected if applied on the current state, or None.

        Read-only; under the rules and validators of the next block. A None
        is no promise: transactions ahead of it in a block may change the
        state (e.g. the job finishes first). Types that are not the state
        machine's always pass.
        """
        height = self.next_height()
        payload, problem = self._parse(tx, self.rules_at(height))
        if payload is None:
            return problem
        work = self.next_working_state()
        work.prefetch([reads_of(tx, payload)])
        return STATE_TX_TYPES[tx.type].check(work, tx, payload)

    # -- rebuilding ------------------------------------------------------------------
    def reset(self) -> None:
        """Delete all state (to rebuild it from the blocks with :func:`catch_up`)."""
        self._hints = StateHints()
        with self.changing_state(), transaction(self._conn):
            tables.clear_tables(self._conn)
        self._validators.load(self._conn)
        self._rules.load(self._conn)

    # -- validators and rules per height ----------------------------------------------
    def next_height(self) -> int:
        """The height of the next block to apply."""
        applied = self.height()
        return self.first_height if applied is None else applied + 1

    def rules_at(self, height: int) -> ChainRules:
        """The chain rules in force at block ``height`` (in memory): the genesis
        rules, changed by executed ``set_rule`` votes from their activation
        heights. Exact up to the applied height + 2 (a change executed in block
        H takes effect from H + 2 at the earliest); beyond, the changes known."""
        return self._rules.rules_at(height)

    def rule_history(self) -> list[tuple[int, ChainRules]]:
        """``(from_height, rules)`` of every stretch of heights with the same
        rules, oldest first; the first is ``(0, genesis rules)``."""
        return self._rules.entries()

    def validator_keys_at(self, height: int) -> tuple[bytes, ...]:
        """The sorted keys of the set that decides block ``height`` (in memory).

        Exact up to the applied height + 2 (a change executed in block H
        decides from H + 2); beyond, the last set known. Empty when the
        governance names no validators (a state machine without a genesis)."""
        return self._validators.keys_at(height)

    def validator_history(self) -> list[tuple[int, tuple[bytes, ...]]]:
        """``(from_height, sorted keys)`` of every validator set, oldest first; the first is ``(0, genesis keys)``."""
        return self._validators.entries()

    def governance_view(self) -> dict[str, Any]:
        """Validators (of the next block), admission policies, admitted sets and proposals with their votes (JSON-able)."""
        return governance.governance_view(self._conn, self.governance, self.validator_keys_at(self.next_height()))

    def validators_view(self) -> dict[str, Any]:
        """The validator set of the next block, its proposals and past changes (RPC ``gov_validators``)."""
        height = self.next_height()
        return governance.validators_view(self._conn, self.governance, height, self.validator_keys_at(height))

    def rules_view(self) -> dict[str, Any]:
        """The rules of the next block, the genesis rules, the set_rule proposals and
        every executed change (RPC ``gov_rules``)."""
        height = self.next_height()
        return governance.rules_view(self._conn, self.rules, height, self.rules_at(height),
                                     self.validator_keys_at(height))

    def dump(self) -> bytes:
        """The whole state as deterministic CBOR (equal on nodes that applied the same blocks)."""
        return tables.dump_state(self._conn)


def catch_up(
    machine: StateMachine,
    store: ChainStore,
    *,
    on_applied: Callable[[BlockEffects], None] | None = None,
) -> int:
    """Apply every block of ``store`` that the state has not applied yet.

    Checks first that the state's last block is the store's block at that
    height (StateError if it is not, or if the state is ahead of the chain).
    Returns how many blocks were applied; each is its own transaction.
    """
    applied = machine.height()
    head = store.head()
    if applied is not None:
        stored = store.block_by_height(applied)
        if stored is None:
            raise StateError(f"the state is at height {applied} but the chain store does not have that block")
        state_hash = machine.head()["block_hash"]  # type: ignore[index]
        if state_hash != to_hex(stored.hash):
            raise StateError(
                f"the state at height {applied} was built from block {state_hash}, "
                f"not the stored block {to_hex(stored.hash)}; reset it and catch up again"
            )
    if head is None:
        return 0
    height = machine.first_height if applied is None else applied + 1
    count = 0
    while height <= head.height:
        block = store.block_by_height(height)
        if block is None:
            raise StateError(f"the chain store has no block at height {height}")
        # Through the node's cache: the receipt log's catch-up may have decoded
        # them already; evicted once applied, as a committed block's are.
        txs = [store.tx_cache.decode(raw) for raw in store.block_txs(height)]
        seed = Block.decode(block.block).header.seed
        machine.apply_block(height, block.hash, block.timestamp_ms, txs, seed=seed, on_applied=on_applied)
        store.tx_cache.evict(tx.hash for tx in txs)
        height += 1
        count += 1
    return count
