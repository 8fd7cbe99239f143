"""The chain state machine and the ENC scheduler (pure, deterministic).

Public API:

* ``StateMachine(conn, *, rules=DEFAULT_RULES, first_height=1, governance=OPEN_GOVERNANCE)`` with
  ``.apply_block(height, block_hash, timestamp_ms, txs, *, seed, on_applied=None) -> BlockEffects``,
  ``.check_tx_against_state(tx) -> str | None``, queries (``.job``, ``.jobs_by_tenant``,
  ``.datasets_by_tenant``, ``.nodes``, ``.queue_depth``, ``.receipts_for_block``...),
  ``.governance_view()``, ``.reset()``, ``.dump()``; ``governance`` is
  ``node.app.policy.Governance.from_genesis(genesis)`` (validators, admission policies)
* ``catch_up(machine, store, *, on_applied=None) -> int``: apply the chain store's missing blocks
* ``register_tx_types(registry, rules=DEFAULT_RULES)``: the mempool's payload hooks
* ``ChainRules`` / ``DEFAULT_RULES``; ``choose_nodes`` / ``rank_nodes`` (the scheduler function)

The names load on first use (PEP 562): a client that needs one light
module of this package (``node.app.jobtypes``, ``node.app.rules``) does not
import the state machine and DuckDB with it.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
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

_HOMES = {
    "StateError": "machine", "StateMachine": "machine", "catch_up": "machine",
    "JOB_STATES": "model", "Assignment": "model", "BlockEffects": "model", "JobFinished": "model",
    "ReceiptBody": "model", "Rejection": "model", "job_clock": "model", "job_seed": "model",
    "DEFAULT_RULES": "rules", "ChainRules": "rules",
    "Candidate": "scheduler", "choose_nodes": "scheduler", "rank_nodes": "scheduler",
    "TX_TYPES": "txtypes", "parse_payload": "txtypes", "register_tx_types": "txtypes",
}

__all__ = [
    "DEFAULT_RULES", "JOB_STATES", "TX_TYPES", "Assignment", "BlockEffects", "Candidate", "ChainRules",
    "JobFinished", "ReceiptBody", "Rejection", "StateError", "StateMachine", "catch_up", "choose_nodes",
    "job_clock", "job_seed", "parse_payload", "rank_nodes", "register_tx_types",
]


def __getattr__(name: str) -> Any:
    home = _HOMES.get(name)
    if home is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(f"{__name__}.{home}"), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
