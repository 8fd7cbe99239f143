"""Governance by the validators: proposals, votes, and the admitted sets they change.

Two transaction types (payload schemas in :mod:`node.app.txtypes`):

* ``gov.propose`` ``{"action": {"kind": ..., ...}}``, sent by a current
  validator. The proposal's id is the transaction's hash; the proposer's vote
  counts. Refused when the action would change nothing (the key is already
  admitted / not admitted, already a validator / not one, the rule already
  has the value), when a pending proposal already proposes the same action,
  or, for a membership kind, when the policy it concerns is ``open``.
* ``gov.vote`` ``{"proposal": id}``, sent by a current validator, once per
  proposal, while the proposal is pending.

"Current validators" are those of the block being applied: the state's set
at that height (:mod:`node.app.validator_sets`), which starts as the genesis
set and changes by the ``add_validator`` / ``remove_validator`` kinds.

A proposal is **executed** in the block, and at the transaction, that brings
its votes from current validators to more than two thirds of them
(``2n div 3 + 1`` of ``n``): with one validator the proposal itself executes
it. Only votes of the current validators count: a validator that left no
longer counts for the proposals it voted for. When the set changes at a
block, pending proposals that the new set's votes already carry are executed
before that block's transactions, in proposal order (nobody has to vote
again). Executing records the height (``closed_height``) and applies the
action at once, so later transactions of the same block see it (a validator
change decides blocks from a later height: :mod:`node.app.validator_sets`).
A proposal that is still pending ``proposal_blocks`` (1000) blocks after the
block that carried it expires: before the transactions of block
``height + proposal_blocks`` are applied, it is marked ``expired`` and later
votes are refused.

The action is a CBOR map whose ``kind`` says which other fields it has.
The membership kinds ``admit_node``, ``remove_node``, ``admit_tenant``,
``remove_tenant`` and the validator kinds ``add_validator``,
``remove_validator`` have ``key`` (a 32-byte Ed25519 public key);
``set_rule`` has ``name``, ``value`` and an optional ``from_height`` (a chain
rule from a later height: :mod:`node.app.rule_changes`). A later kind is a
new entry of :data:`ACTION_FIELDS` and of :func:`_execute`; the payload
format stays as it is.

Admission (policies in :mod:`node.app.policy`): under ``allow-list`` or
``by-vote`` a key is admitted when an executed proposal last admitted it, or,
with no executed proposal about it, when the genesis lists it. Everything
here reads and writes the block's DuckDB transaction directly (governance
transactions are rare, so they skip :class:`WorkingState`'s bulk loading).
"""

from __future__ import annotations

from typing import Any

import duckdb

from node.app import rule_changes, validator_sets
from node.app.model import BlockContext
from node.app.payloads import GovPropose, GovVote
from node.app.policy import NODE_ROLES_ADMITTED, Governance, votes_needed
from node.app.rule_changes import SET_RULE, SET_RULE_FIELDS, SET_RULE_OPTIONAL
from node.app.rules import ChainRules
from node.app.state_rows import NodeRow
from node.app.validator_sets import ADD_VALIDATOR, REMOVE_VALIDATOR, VALIDATOR_CHANGES, validator_json
from node.app.working import Reads, WorkingState
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
    ADD_VALIDATOR: ("key",),
    REMOVE_VALIDATOR: ("key",),
    SET_RULE: SET_RULE_FIELDS,
}
ACTION_KINDS = tuple(ACTION_FIELDS)
# action kind -> the fields it may also have
ACTION_OPTIONAL_FIELDS: dict[str, tuple[str, ...]] = {SET_RULE: SET_RULE_OPTIONAL}
# kinds whose action may stop applying while the proposal is pending (another
# change executed since): a vote that would execute one checks it again
RECHECKED_KINDS = (*VALIDATOR_CHANGES, SET_RULE)

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
    if tx.sender in ws.validators:
        return None
    return (f"the sender {peer_id_from_public_key(tx.sender)} is not a validator: only the current "
            "validators propose and vote")


def _action_problem(ws: WorkingState, height: int, kind: str, action: dict[str, Any]) -> str | None:
    """Why the action would be refused if it were executed in block ``height`` now, or None."""
    if kind == SET_RULE:  # always by vote, like validator changes
        return rule_changes.change_problem(ws.conn, ws.genesis_rules, height, action["name"], action["value"],
                                           action.get("from_height"))
    key = action["key"]
    if kind in VALIDATOR_CHANGES:  # always by vote: no admission policy concerns them
        return validator_sets.change_problem(ws.conn, ws.validators, height, kind, key)
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
    problem = _not_validator(ws, tx) or _action_problem(ws, ws.height, p.action.kind, p.action.fields)
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
    kind, action = _action_of(ws.conn, p.proposal)
    if kind in RECHECKED_KINDS:
        # Another change executed since the proposal may have made it void
        # (or harmful: two removals of the last two validators, two rule
        # changes that contradict each other).
        problem = _action_problem(ws, ws.height, kind, action)
        if problem is not None:
            return f"{describe_proposal(p.proposal)} can no longer be executed: {problem}"
    return None


def _action_of(conn: duckdb.DuckDBPyConnection, proposal_id: bytes) -> tuple[str, dict[str, Any]]:
    row = conn.execute("SELECT kind, action FROM state_proposals WHERE proposal_id = ?", [proposal_id]).fetchone()
    assert row is not None  # callers checked that it exists
    return str(row[0]), decode(bytes(row[1]))


def apply_gov_vote(ws: WorkingState, ctx: BlockContext, tx: Transaction, p: GovVote) -> None:
    _record_vote(ws, ctx, tx, p.proposal)


def _record_vote(ws: WorkingState, ctx: BlockContext, tx: Transaction, proposal_id: bytes) -> None:
    ws.conn.execute("INSERT INTO state_votes VALUES (?, ?, ?, ?)", [proposal_id, tx.sender, ctx.height, tx.hash])
    if _votes_counted(ws.conn, proposal_id, ws.validators) >= votes_needed(len(ws.validators)):
        _execute(ws, ctx, proposal_id)


def _votes_counted(conn: duckdb.DuckDBPyConnection, proposal_id: bytes, validators: tuple[bytes, ...]) -> int:
    """The proposal's votes that count: those of ``validators`` (the current set)."""
    voters = [bytes(v) for (v,) in conn.execute(
        "SELECT voter FROM state_votes WHERE proposal_id = ?", [proposal_id]).fetchall()]
    return sum(1 for voter in voters if voter in validators)


def execute_carried_proposals(ws: WorkingState, ctx: BlockContext) -> None:
    """Before the transactions of a block whose validator set differs from its
    parent's: execute the pending proposals that the new set's votes already
    carry, oldest first (a validator or rule change whose action no longer
    applies stays pending)."""
    needed = votes_needed(len(ws.validators))
    for proposal_id, kind, action in ws.conn.execute(
        "SELECT proposal_id, kind, action FROM state_proposals WHERE status = ? ORDER BY height, proposal_id",
        [PENDING],
    ).fetchall():
        proposal_id = bytes(proposal_id)
        if _votes_counted(ws.conn, proposal_id, ws.validators) < needed:
            continue
        if kind in RECHECKED_KINDS and _action_problem(ws, ctx.height, kind, decode(bytes(action))):
            continue
        _execute(ws, ctx, proposal_id)


def _execute(ws: WorkingState, ctx: BlockContext, proposal_id: bytes) -> None:
    kind, action = _action_of(ws.conn, proposal_id)
    if kind in VALIDATOR_CHANGES:
        validator_sets.record_change(ws.conn, ws.governance.validators, ctx.height, proposal_id, kind, action["key"])
        ws.validator_sets_changed = True
    elif kind == SET_RULE:
        rule_changes.record_change(ws.conn, ctx.height, proposal_id, action["name"], action["value"],
                                   action.get("from_height"))
        ws.rules_changed = True
    else:
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


# -- the views (RPC gov_proposals, gov_validators, gov_rules; metanode members / validators / rules list) --

def _member_json(key: bytes, member: str) -> dict[str, Any]:
    answer: dict[str, Any] = {"key": to_hex(key)}
    if member == "node":
        answer["peer_id"] = peer_id_from_public_key(key)
    return answer


def proposals_view(conn: duckdb.DuckDBPyConnection, validators: tuple[bytes, ...],
                   kinds: tuple[str, ...] = ACTION_KINDS, limit: int = MAX_PROPOSALS_SHOWN) -> list[dict[str, Any]]:
    """Proposals of ``kinds`` (pending first, then newest) with their votes,
    JSON-able; ``votes_counted`` counts the votes of ``validators`` (the set
    whose votes count now), the only ones that can execute it."""
    rows = conn.execute(
        "SELECT proposal_id, proposer, kind, action, height, expires_height, status, closed_height "
        "FROM state_proposals WHERE kind IN (SELECT unnest(?)) "
        "ORDER BY status <> 'pending', height DESC, proposal_id LIMIT ?", [list(kinds), limit]
    ).fetchall()
    ids = [bytes(row[0]) for row in rows]
    votes: dict[bytes, list[dict[str, Any]]] = {pid: [] for pid in ids}
    counted: dict[bytes, int] = {pid: 0 for pid in ids}
    if ids:
        for pid, voter, height in conn.execute(
            "SELECT proposal_id, voter, height FROM state_votes WHERE proposal_id IN (SELECT unnest(?)) "
            "ORDER BY height, voter", [ids]
        ).fetchall():
            votes[bytes(pid)].append({**_member_json(bytes(voter), "node"), "height": height})
            counted[bytes(pid)] += bytes(voter) in validators
    proposals = []
    for pid, proposer, kind, action, height, expires, status, closed in rows:
        fields = decode(bytes(action))
        shown = {name: to_hex(v) if isinstance(v, bytes) else v for name, v in sorted(fields.items())}
        if kind in VALIDATOR_CHANGES or (kind in MEMBERSHIP and MEMBERSHIP[kind][0] == "node"):
            shown["peer_id"] = peer_id_from_public_key(fields["key"])
        proposals.append({
            "id": to_hex(bytes(pid)), "proposer": _member_json(bytes(proposer), "node"), "action": shown,
            "height": height, "expires_height": expires, "status": status, "closed_height": closed,
            "votes": votes[bytes(pid)], "votes_counted": counted[bytes(pid)],
        })
    return proposals


def governance_view(conn: duckdb.DuckDBPyConnection, governance: Governance, validators: tuple[bytes, ...],
                    limit: int = MAX_PROPOSALS_SHOWN) -> dict[str, Any]:
    """Validators (``validators``: the set of the next block), policies,
    admitted sets and proposals (pending first, then newest), JSON-able."""
    return {
        "validators": [_member_json(key, "node") for key in validators],
        "votes_needed": votes_needed(len(validators)),
        "proposal_blocks": governance.proposal_blocks,
        "policies": {"nodes": governance.node_policy, "tenants": governance.tenant_policy},
        "admitted": {
            "nodes": [_member_json(k, "node") for k in sorted(admitted_keys(conn, governance, "node"))],
            "tenants": [_member_json(k, "tenant") for k in sorted(admitted_keys(conn, governance, "tenant"))],
        },
        "proposals": proposals_view(conn, validators, limit=limit),
    }


def validators_view(conn: duckdb.DuckDBPyConnection, governance: Governance, height: int,
                    validators: tuple[bytes, ...], limit: int = MAX_PROPOSALS_SHOWN) -> dict[str, Any]:
    """The answer of RPC ``gov_validators``: the set that decides block
    ``height`` (the next block) and votes on proposals in it, the votes that
    execute a proposal, the validator proposals, and every executed change."""
    return {
        "height": height,
        "validators": [validator_json(key) for key in validators],
        "votes_needed": votes_needed(len(validators)),
        "proposals": proposals_view(conn, validators, tuple(VALIDATOR_CHANGES), limit),
        "changes": validator_sets.changes_view(conn, governance.validators),
    }


def rules_view(conn: duckdb.DuckDBPyConnection, genesis_rules: ChainRules, height: int, rules: ChainRules,
               validators: tuple[bytes, ...], limit: int = MAX_PROPOSALS_SHOWN) -> dict[str, Any]:
    """The answer of RPC ``gov_rules``: the rules in force at block ``height``
    (the next block), the genesis rules, each rule's range, the votes that
    execute a proposal (of the set deciding ``height``), the ``set_rule``
    proposals with their votes, and every executed change (also those not in
    force yet: ``from_height`` > ``height``)."""
    return {
        "height": height,
        "rules": rules.values(),
        "genesis": genesis_rules.values(),
        "ranges": rule_changes.rule_ranges(),
        "votes_needed": votes_needed(len(validators)),
        "proposals": proposals_view(conn, validators, (SET_RULE,), limit),
        "changes": rule_changes.changes_view(conn, genesis_rules),
    }
