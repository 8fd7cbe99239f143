"""Governance by the validators: proposals, votes, and the admitted sets they change.

Two transaction types (payload schemas in :mod:`node.app.txtypes`):

* ``gov.propose`` ``{"action": {"kind": ..., ...}}``, sent by a current
  validator. The proposal's id is the transaction's hash; the proposer's vote
  counts. Refused when the action would change nothing (the key is already
  admitted / not admitted), when a pending proposal already proposes the
  same action, or when the policy it concerns is ``open``.
* ``gov.vote`` ``{"proposal": id}``, sent by a current validator, once per
  proposal, while the proposal is pending.

A proposal is **executed** in the block, and at the transaction, that brings
its votes from current validators to more than two thirds of them
(``2n div 3 + 1`` of ``n``): with one validator the proposal itself executes
it. Executing records the height (``closed_height``) and changes the
admitted set at once, so later transactions of the same block see it. A
proposal that is still pending ``proposal_blocks`` (1000) blocks after the
block that carried it expires: before the transactions of block
``height + proposal_blocks`` are applied, it is marked ``expired`` and later
votes are refused.

The action is a CBOR map whose ``kind`` says which other fields it has.
The kinds of today are the membership ones, each with ``key`` (a 32-byte
Ed25519 public key): ``admit_node``, ``remove_node``, ``admit_tenant``,
``remove_tenant``. A later kind (``add_validator``, ``set_param``...) is a new
entry of :data:`ACTION_FIELDS` and of :func:`_execute`; the payload format
stays as it is.

Admission (policies in :mod:`node.app.policy`): under ``allow-list`` or
``by-vote`` a key is admitted when an executed proposal last admitted it, or,
with no executed proposal about it, when the genesis lists it. Everything
here reads and writes the block's DuckDB transaction directly (governance
transactions are rare, so they skip :class:`WorkingState`'s bulk loading).
"""

from __future__ import annotations

from typing import Any

import duckdb

from node.app.model import BlockContext
from node.app.payloads import GovPropose, GovVote
from node.app.policy import NODE_ROLES_ADMITTED, Governance
from node.app.working import NodeRow, Reads, WorkingState
from node.base.codec import decode, encode, to_hex
from node.base.keys import peer_id_from_public_key
from node.consensus.tx import Transaction

GOV_PROPOSE = "gov.propose"
GOV_VOTE = "gov.vote"

ADMIT_NODE = "admit_node"
REMOVE_NODE = "remove_node"
ADMIT_TENANT = "admit_tenant"
REMOVE_TENANT = "remove_tenant"

# action kind -> its fields besides "kind" (the payload schema reads this)
ACTION_FIELDS: dict[str, tuple[str, ...]] = {
    ADMIT_NODE: ("key",),
    REMOVE_NODE: ("key",),
    ADMIT_TENANT: ("key",),
    REMOVE_TENANT: ("key",),
}
ACTION_KINDS = tuple(ACTION_FIELDS)

# membership kinds: action kind -> (member kind, admitted after execution)
MEMBERSHIP: dict[str, tuple[str, bool]] = {
    ADMIT_NODE: ("node", True),
    REMOVE_NODE: ("node", False),
    ADMIT_TENANT: ("tenant", True),
    REMOVE_TENANT: ("tenant", False),
}

PENDING = "pending"
EXECUTED = "executed"
EXPIRED = "expired"
PROPOSAL_STATES = (PENDING, EXECUTED, EXPIRED)

MAX_PROPOSALS_SHOWN = 200


def describe_proposal(proposal_id: bytes) -> str:
    return f"proposal {to_hex(proposal_id)}"


# -- admission ----------------------------------------------------------------------

def _policy(governance: Governance, member: str) -> str:
    return governance.node_policy if member == "node" else governance.tenant_policy


def _genesis_members(governance: Governance, member: str) -> frozenset[bytes]:
    return governance.genesis_nodes if member == "node" else governance.genesis_tenants


def is_admitted(conn: duckdb.DuckDBPyConnection, governance: Governance, member: str, key: bytes) -> bool:
    """Whether ``key`` is in the admitted set of ``member`` (node | tenant), whatever the policy."""
    row = conn.execute(
        "SELECT admitted FROM state_members WHERE kind = ? AND member_key = ?", [member, key]
    ).fetchone()
    if row is not None:
        return bool(row[0])
    return key in _genesis_members(governance, member)


def admitted_keys(conn: duckdb.DuckDBPyConnection, governance: Governance, member: str) -> set[bytes]:
    """The admitted set of ``member`` (node | tenant): the genesis list changed by executed proposals."""
    keys = set(_genesis_members(governance, member))
    for key, admitted in conn.execute(
        "SELECT member_key, admitted FROM state_members WHERE kind = ?", [member]
    ).fetchall():
        if admitted:
            keys.add(bytes(key))
        else:
            keys.discard(bytes(key))
    return keys


def node_refusal(ws: WorkingState, key: bytes, roles: tuple[str, ...]) -> str | None:
    """Why ``key`` may not register ``roles`` under the node policy, or None."""
    governance = ws.governance
    needing = [role for role in roles if role in NODE_ROLES_ADMITTED]
    if not governance.nodes_closed or not needing or is_admitted(ws.conn, governance, "node", key):
        return None
    return (f"node {peer_id_from_public_key(key)} is not admitted by the consortium (node admission policy "
            f"{governance.node_policy}): it may not take the {', '.join(needing)} role until the validators "
            "vote to admit it (gov.propose admit_node)")


def tenant_refusal(ws: WorkingState, key: bytes) -> str | None:
    """Why ``key`` may not act as a tenant under the tenant policy, or None."""
    governance = ws.governance
    if not governance.tenants_closed or is_admitted(ws.conn, governance, "tenant", key):
        return None
    return (f"tenant {to_hex(key)} is not admitted by the consortium (tenant admission policy "
            f"{governance.tenant_policy}): the validators must vote to admit it (gov.propose admit_tenant)")


def schedulable_nodes(ws: WorkingState) -> dict[bytes, NodeRow]:
    """The registered nodes the scheduler may give new work: all of them under
    an open node policy, else only the admitted ones (a node removed by vote
    keeps its pending assignments but gets no new ones)."""
    nodes = ws.nodes()
    if not ws.governance.nodes_closed:
        return nodes
    admitted = admitted_keys(ws.conn, ws.governance, "node")
    return {key: node for key, node in nodes.items() if key in admitted}


# -- gov.propose ---------------------------------------------------------------------

def reads_gov(tx: Transaction, p: Any) -> Reads:
    return Reads()  # read directly: governance transactions are rare


def _not_validator(ws: WorkingState, tx: Transaction) -> str | None:
    if ws.governance.is_validator(tx.sender):
        return None
    return (f"the sender {peer_id_from_public_key(tx.sender)} is not a validator: only the current "
            "validators propose and vote")


def _action_problem(ws: WorkingState, kind: str, key: bytes) -> str | None:
    member, admit = MEMBERSHIP[kind]
    policy = _policy(ws.governance, member)
    if policy == "open":
        return f"action.kind: {kind}: the {member} admission policy is open (everyone is admitted); nothing to vote on"
    admitted = is_admitted(ws.conn, ws.governance, member, key)
    name = peer_id_from_public_key(key) if member == "node" else to_hex(key)
    if admit and admitted:
        return f"action.key: {member} {name} is already admitted"
    if not admit and not admitted:
        return f"action.key: {member} {name} is not admitted"
    return None


def check_gov_propose(ws: WorkingState, tx: Transaction, p: GovPropose) -> str | None:
    problem = _not_validator(ws, tx) or _action_problem(ws, p.action.kind, p.action.key)
    if problem is not None:
        return problem
    row = ws.conn.execute(
        "SELECT proposal_id FROM state_proposals WHERE status = ? AND action = ? ORDER BY proposal_id LIMIT 1",
        [PENDING, encode(p.action.fields)],
    ).fetchone()
    if row is not None:
        return f"{describe_proposal(bytes(row[0]))} already proposes this action and is pending: vote for it"
    if ws.conn.execute("SELECT 1 FROM state_proposals WHERE proposal_id = ?", [tx.hash]).fetchone():
        return f"{describe_proposal(tx.hash)} already exists"  # tx hashes are unique on chain; kept as a guard
    return None


def apply_gov_propose(ws: WorkingState, ctx: BlockContext, tx: Transaction, p: GovPropose) -> None:
    ws.conn.execute(
        "INSERT INTO state_proposals VALUES (?, ?, ?, ?, ?, ?, ?, NULL)",
        [tx.hash, tx.sender, p.action.kind, encode(p.action.fields), ctx.height,
         ctx.height + ws.governance.proposal_blocks, PENDING],
    )
    _record_vote(ws, ctx, tx, tx.hash)


# -- gov.vote ------------------------------------------------------------------------

def check_gov_vote(ws: WorkingState, tx: Transaction, p: GovVote) -> str | None:
    problem = _not_validator(ws, tx)
    if problem is not None:
        return problem
    row = ws.conn.execute(
        "SELECT status, closed_height FROM state_proposals WHERE proposal_id = ?", [p.proposal]
    ).fetchone()
    if row is None:
        return f"{describe_proposal(p.proposal)} does not exist"
    status, closed = row
    if status != PENDING:
        return f"{describe_proposal(p.proposal)} is {status} (at height {closed}); it takes no more votes"
    voted = ws.conn.execute(
        "SELECT height FROM state_votes WHERE proposal_id = ? AND voter = ?", [p.proposal, tx.sender]
    ).fetchone()
    if voted is not None:
        return f"the sender already voted for {describe_proposal(p.proposal)} at height {voted[0]}"
    return None


def apply_gov_vote(ws: WorkingState, ctx: BlockContext, tx: Transaction, p: GovVote) -> None:
    _record_vote(ws, ctx, tx, p.proposal)


def _record_vote(ws: WorkingState, ctx: BlockContext, tx: Transaction, proposal_id: bytes) -> None:
    ws.conn.execute("INSERT INTO state_votes VALUES (?, ?, ?, ?)", [proposal_id, tx.sender, ctx.height, tx.hash])
    voters = [bytes(v) for (v,) in ws.conn.execute(
        "SELECT voter FROM state_votes WHERE proposal_id = ?", [proposal_id]).fetchall()]
    if sum(1 for voter in voters if ws.governance.is_validator(voter)) >= ws.governance.votes_needed():
        _execute(ws, ctx, proposal_id)


def _execute(ws: WorkingState, ctx: BlockContext, proposal_id: bytes) -> None:
    row = ws.conn.execute("SELECT kind, action FROM state_proposals WHERE proposal_id = ?", [proposal_id]).fetchone()
    assert row is not None  # a vote was just recorded for it
    kind, action = row[0], decode(bytes(row[1]))
    member, admitted = MEMBERSHIP[kind]
    ws.conn.execute(
        "INSERT OR REPLACE INTO state_members VALUES (?, ?, ?, ?, ?)",
        [member, action["key"], admitted, ctx.height, proposal_id],
    )
    ws.conn.execute(
        "UPDATE state_proposals SET status = ?, closed_height = ? WHERE proposal_id = ?",
        [EXECUTED, ctx.height, proposal_id],
    )


def expire_proposals(conn: duckdb.DuckDBPyConnection, height: int) -> None:
    """Before block ``height``'s transactions: pending proposals whose time is up expire."""
    conn.execute(
        "UPDATE state_proposals SET status = ?, closed_height = ? WHERE status = ? AND expires_height <= ?",
        [EXPIRED, height, PENDING, height],
    )


# -- the view (RPC gov_proposals, metanode members list) --------------------------------

def _member_json(key: bytes, member: str) -> dict[str, Any]:
    answer: dict[str, Any] = {"key": to_hex(key)}
    if member == "node":
        answer["peer_id"] = peer_id_from_public_key(key)
    return answer


def governance_view(conn: duckdb.DuckDBPyConnection, governance: Governance,
                    limit: int = MAX_PROPOSALS_SHOWN) -> dict[str, Any]:
    """Validators, policies, admitted sets and proposals (pending first, then newest), JSON-able."""
    rows = conn.execute(
        "SELECT proposal_id, proposer, kind, action, height, expires_height, status, closed_height "
        "FROM state_proposals ORDER BY status <> 'pending', height DESC, proposal_id LIMIT ?", [limit]
    ).fetchall()
    ids = [bytes(row[0]) for row in rows]
    votes: dict[bytes, list[dict[str, Any]]] = {pid: [] for pid in ids}
    if ids:
        for pid, voter, height in conn.execute(
            "SELECT proposal_id, voter, height FROM state_votes WHERE proposal_id IN (SELECT unnest(?)) "
            "ORDER BY height, voter", [ids]
        ).fetchall():
            votes[bytes(pid)].append({**_member_json(bytes(voter), "node"), "height": height})
    proposals = []
    for pid, proposer, kind, action, height, expires, status, closed in rows:
        fields = decode(bytes(action))
        shown = {name: to_hex(v) if isinstance(v, bytes) else v for name, v in sorted(fields.items())}
        if kind in MEMBERSHIP and MEMBERSHIP[kind][0] == "node":
            shown["peer_id"] = peer_id_from_public_key(fields["key"])
        proposals.append({
            "id": to_hex(bytes(pid)), "proposer": _member_json(bytes(proposer), "node"), "action": shown,
            "height": height, "expires_height": expires, "status": status, "closed_height": closed,
            "votes": votes[bytes(pid)],
        })
    return {
        "validators": [_member_json(key, "node") for key in governance.validators],
        "votes_needed": governance.votes_needed(),
        "proposal_blocks": governance.proposal_blocks,
        "policies": {"nodes": governance.node_policy, "tenants": governance.tenant_policy},
        "admitted": {
            "nodes": [_member_json(k, "node") for k in sorted(admitted_keys(conn, governance, "node"))],
            "tenants": [_member_json(k, "tenant") for k in sorted(admitted_keys(conn, governance, "tenant"))],
        },
        "proposals": proposals,
    }
