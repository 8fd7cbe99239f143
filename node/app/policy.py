"""Who governs the chain and who it admits: the genesis's part of the state machine's input.

:class:`Governance` is fixed for a chain (the genesis says it): the genesis
validators (the set until a vote changes it: the current set is the chain
state's, :mod:`node.app.validator_sets`) and the admission policies of nodes
and tenants with the keys the genesis admits.

* ``open``: anyone may register any role and act as a tenant (the default);
* ``allow-list``: the genesis names the admitted keys (at least one); votes
  of the validators admit or remove keys later;
* ``by-vote``: the admitted set starts as the genesis list (often empty) and
  changes only by votes.

``allow-list`` and ``by-vote`` are enforced alike: a node key must be
admitted to register the ``processing``, ``storage`` or ``gateway`` role (and
the scheduler gives work only to admitted processing nodes); a tenant key
must be admitted to send ``job.submit`` and ``dataset.register``. Under
``open`` nothing is checked, but votes are still recorded.

No I/O, no state: this module is imported by the working state and the
genesis alike, so it imports nothing of the app.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from node.base.codec import hash_value

if TYPE_CHECKING:
    from node.consensus.genesis import Genesis

OPEN = "open"
ALLOW_LIST = "allow-list"
BY_VOTE = "by-vote"
POLICIES = (OPEN, ALLOW_LIST, BY_VOTE)

NODE_ROLES_ADMITTED = ("gateway", "processing", "storage")  # roles that need admission under a closed policy

GOVERNANCE_TAG = "metanode/state-governance/v1"
PROPOSAL_BLOCKS = 1000  # a proposal is open for votes in the block that carries it and the 999 after


@dataclass(frozen=True)
class Governance:
    """The chain's genesis validators and admission policies (from the genesis).

    ``validators`` are the genesis set: the state starts from them, and votes
    (``add_validator`` / ``remove_validator``) change the set from a later
    height on; who votes at a height is the state's answer, never this field."""

    validators: tuple[bytes, ...] = ()
    node_policy: str = OPEN
    tenant_policy: str = OPEN
    genesis_nodes: frozenset[bytes] = frozenset()
    genesis_tenants: frozenset[bytes] = frozenset()
    proposal_blocks: int = PROPOSAL_BLOCKS

    def __post_init__(self) -> None:
        if type(self.proposal_blocks) is not int or self.proposal_blocks < 1:
            raise ValueError(f"proposal_blocks must be a positive integer, got {self.proposal_blocks!r}")
        for name in ("node_policy", "tenant_policy"):
            if getattr(self, name) not in POLICIES:
                raise ValueError(f"{name} must be one of {', '.join(POLICIES)}, got {getattr(self, name)!r}")
        object.__setattr__(self, "validators", tuple(sorted(self.validators)))

    @property
    def nodes_closed(self) -> bool:
        return self.node_policy != OPEN

    @property
    def tenants_closed(self) -> bool:
        return self.tenant_policy != OPEN

    def digest(self) -> bytes:
        """Stored with the state: a state built under another governance is refused."""
        return hash_value(GOVERNANCE_TAG, {
            "validators": list(self.validators),
            "node_policy": self.node_policy,
            "tenant_policy": self.tenant_policy,
            "genesis_nodes": sorted(self.genesis_nodes),
            "genesis_tenants": sorted(self.genesis_tenants),
            "proposal_blocks": self.proposal_blocks,
        })

    @classmethod
    def from_genesis(cls, genesis: "Genesis") -> "Governance":
        """The governance a genesis sets."""
        admission = genesis.admission
        return cls(
            validators=tuple(genesis.validators),
            node_policy=admission.nodes,
            tenant_policy=admission.tenants,
            genesis_nodes=frozenset(admission.admitted_nodes),
            genesis_tenants=frozenset(admission.admitted_tenants),
        )


def votes_needed(validator_count: int) -> int:
    """The least number of votes that is more than two thirds of ``validator_count`` validators."""
    return 2 * validator_count // 3 + 1


OPEN_GOVERNANCE = Governance()
