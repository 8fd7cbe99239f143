"""The chain state machine and the ENC scheduler (pure, deterministic).

Public API:

* ``StateMachine(conn, *, rules=DEFAULT_RULES, first_height=1)`` with
  ``.apply_block(height, block_hash, timestamp_ms, txs, *, on_applied=None) -> BlockEffects``,
  ``.check_tx_against_state(tx) -> str | None``, queries (``.job``, ``.jobs_by_tenant``,
  ``.datasets_by_tenant``, ``.nodes``, ``.queue_depth``, ``.receipts_for_block``...),
  ``.reset()``, ``.dump()``
* ``catch_up(machine, store, *, on_applied=None) -> int``: apply the chain store's missing blocks
* ``register_tx_types(registry, rules=DEFAULT_RULES)``: the mempool's payload hooks
* ``ChainRules`` / ``DEFAULT_RULES``; ``choose_nodes`` / ``rank_nodes`` (the scheduler function)
"""

from node.app.machine import StateError, StateMachine, catch_up
from node.app.model import (
    JOB_STATES,
    Assignment,
    BlockEffects,
    JobFinished,
    ReceiptBody,
    Rejection,
    job_clock,
    job_seed,
)
from node.app.rules import DEFAULT_RULES, ChainRules
from node.app.scheduler import Candidate, choose_nodes, rank_nodes
from node.app.txtypes import TX_TYPES, parse_payload, register_tx_types

__all__ = [
    "DEFAULT_RULES", "JOB_STATES", "TX_TYPES", "Assignment", "BlockEffects", "Candidate", "ChainRules",
    "JobFinished", "ReceiptBody", "Rejection", "StateError", "StateMachine", "catch_up", "choose_nodes",
    "job_clock", "job_seed", "parse_payload", "rank_nodes", "register_tx_types",
]
