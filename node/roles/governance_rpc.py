"""JSON-RPC ``gov_proposals``, ``gov_validators`` and ``gov_rules``: the consortium's governance as the chain state holds it.

Read-only, and every node following the chain answers the same.

* ``gov_proposals``: the validators, the admission policies of nodes and
  tenants, the admitted sets, and the proposals (pending first, then newest)
  with their votes (:func:`node.app.governance.governance_view`).
* ``gov_validators``: the validator set of the next block (``height``), the
  votes that execute a proposal, the ``add_validator`` / ``remove_validator``
  proposals with their votes, and every executed change with the height it
  decides from (:func:`node.app.governance.validators_view`).
* ``gov_rules``: the chain rules in force at the next block (``height``),
  the genesis rules and each rule's range, the votes that execute a
  proposal, the ``set_rule`` proposals with their votes, and every executed
  change with the height it takes effect from
  (:func:`node.app.governance.rules_view`).

Proposing and voting are transactions (``gov.propose``, ``gov.vote``) sent
with ``tx_submit``.
"""

from __future__ import annotations

from typing import Any, Protocol

from node.app.machine import StateMachine
from node.p2p.jsonrpc import CallContext, Registry

__all__ = ["register_governance_methods"]


class _HasState(Protocol):
    state: StateMachine


def register_governance_methods(registry: Registry, app: _HasState) -> None:
    """Add ``gov_proposals``, ``gov_validators`` and ``gov_rules`` to ``registry``.

    (``validators_list``, the chain's RPC in node/consensus/rpc.py, lists the
    current set with each validator's connection state.)"""

    async def gov_proposals(ctx: CallContext) -> dict[str, Any]:
        return app.state.governance_view()

    async def gov_validators(ctx: CallContext) -> dict[str, Any]:
        return app.state.validators_view()

    async def gov_rules(ctx: CallContext) -> dict[str, Any]:
        return app.state.rules_view()

    registry.register("gov_proposals", gov_proposals, {},
                      "Governance: validators, admission policies, admitted nodes and tenants, proposals with their votes.")
    registry.register("gov_validators", gov_validators, {},
                      "Validators: the set of the next block (height), votes needed, add/remove proposals with "
                      "their votes, and every executed change with the height it takes effect.")
    registry.register("gov_rules", gov_rules, {},
                      "Chain rules: those in force at the next block (height), the genesis rules and ranges, votes "
                      "needed, set_rule proposals with their votes, and every executed change with its heights.")
