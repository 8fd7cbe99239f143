"""JSON-RPC ``gov_proposals``: the consortium's governance as the chain state holds it.

Read-only, and every node following the chain answers the same: the
validators, the admission policies of nodes and tenants, the admitted sets,
and the proposals (pending first, then newest) with their votes
(:func:`node.app.governance.governance_view`). Proposing and voting are
transactions (``gov.propose``, ``gov.vote``) sent with ``tx_submit``.
"""

from __future__ import annotations

from typing import Any, Protocol

from node.app.machine import StateMachine
from node.p2p.jsonrpc import CallContext, Registry

__all__ = ["register_governance_methods"]


class _HasState(Protocol):
    state: StateMachine


def register_governance_methods(registry: Registry, app: _HasState) -> None:
    """Add ``gov_proposals`` to ``registry``."""

    async def gov_proposals(ctx: CallContext) -> dict[str, Any]:
        return app.state.governance_view()

    registry.register("gov_proposals", gov_proposals, {},
                      "Governance: validators, admission policies, admitted nodes and tenants, proposals with their votes.")
