"""Scheduler decisions: recorded once by the state, attested once by one scheduler node.

Each block's state transition implies unsigned ``job.schedule``,
``job.verdict`` and ``service.placement`` bodies (:class:`ReceiptBody`): the
chain's *decisions*. The state records each one (``state_decisions``) under
its decision id::

    decision_id = H("metanode/decision/v1", cbor({"kind": kind, "subject": subject, "fields": fields}))

(``H`` is :func:`node.base.codec.hash_tagged`, ``cbor`` the canonical
encoding; ``fields`` are the receipt's kind fields exactly as a receipt of
the decision carries them). A ``receipts.batch`` may carry a receipt of one of
these kinds only as the *attestation* of a recorded decision: the receipt's
(kind, subject, fields) must be a decision of the chain that no receipt has
attested yet, its ``height`` at least the decision's height, and its issuer a
node registered with the ``scheduler`` role in the state the block is applied
to (before the block's own transactions). The first receipt that passes marks
the decision attested; any other is refused. So a sealed ``job.schedule``
receipt is the chain's own decision, checked by the quorum that sealed it,
and there is one per decision. All this holds under the chain rule
``attest_once`` (docs/genesis.md; new chains set it): without it, a chain
keeps its earlier meaning, where any well-formed scheduler receipt enters
the log, and a receipt that would pass the check still marks its decision
attested.

The receipt log must agree with the state: a block's log leaves out the
receipts of an attestation batch the state refuses
(``ChainApplication.refused_attestations`` runs the state's own check on the
state the block is applied to).

The state is also the scheduler nodes' work list: a decision keeps its kind
fields, so any scheduler node, including one that restarted or registered
after the decision, can sign an unattested one (:func:`unattested_decisions`;
who signs when: node/roles/scheduler.py).
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any, NamedTuple

from node.app.model import BlockContext, ReceiptBody
from node.app.state_rows import DecisionRow
from node.app.working import WorkingState
from node.base.codec import decode, encode, hash_tagged, to_hex
from node.receipts.envelope import Receipt

ATTESTED_KINDS = ("job.schedule", "job.verdict", "service.placement")
DECISION_TAG = "metanode/decision/v1"
SCHEDULER_ROLE = "scheduler"


def decision_id(kind: str, subject: bytes, fields: Any) -> bytes:
    """The id of the decision (kind, subject, fields) (module docstring)."""
    return hash_tagged(DECISION_TAG, encode({"kind": kind, "subject": subject, "fields": fields}))


def receipt_decision(receipt: Receipt) -> bytes:
    """The decision an attestation receipt claims to attest."""
    return decision_id(receipt.kind, receipt.subject, receipt.fields)


def record_decision(ws: WorkingState, ctx: BlockContext, body: ReceiptBody) -> None:
    """A block implies ``body``: it becomes a decision of the chain (and one of the block's effects)."""
    ctx.effects.receipt_bodies.append(body)
    ws.add_decision(DecisionRow(decision_id(body.kind, body.subject, body.fields), body.kind, body.subject,
                                ctx.height, encode(body.fields), None))


def is_scheduler(roles: str) -> bool:
    """Whether a node's comma-joined roles (``state_nodes.roles``) include the scheduler role."""
    return SCHEDULER_ROLE in roles.split(",")


def describe_subject(kind: str, subject: bytes) -> str:
    return f"{kind} for {'service' if kind == 'service.placement' else 'job'} {to_hex(subject)}"


def attestation_refusal(ws: WorkingState, receipt: Receipt, in_batch: set[bytes]) -> str | None:
    """Why the state refuses ``receipt`` (of an attested kind) as an attestation, or None.

    ``in_batch`` holds the decisions attested by the receipts before it in the
    same batch (the batch's own earlier receipts, not yet applied)."""
    what = describe_subject(receipt.kind, receipt.subject)
    decision = ws.decision(receipt_decision(receipt))
    if decision is None:
        return f"{what} matches no decision of the chain"
    if decision.attested is not None:
        return f"{what} is already attested by receipt {to_hex(decision.attested)}"
    if decision.decision_id in in_batch:
        return f"{what} is already attested by an earlier receipt of this batch"
    if receipt.height < decision.height:
        return (f"{what} claims height {receipt.height}, below the height {decision.height} of the block "
                "that made the decision")
    if receipt.issuer_key not in ws.schedulers():
        return "issuer is not a scheduler node"
    return None


def attests(receipts: Iterable[Receipt]) -> bool:
    """Whether any of ``receipts`` is of an attested kind."""
    return any(receipt.kind in ATTESTED_KINDS for receipt in receipts)


# -- reads for the scheduler nodes (node/roles/scheduler.py) ------------------------------

def scheduler_keys(conn: Any) -> list[bytes]:
    """Keys of the registered nodes with the scheduler role in the applied state, sorted."""
    rows = conn.execute("SELECT node_key, roles FROM state_nodes ORDER BY node_key").fetchall()
    return [bytes(key) for key, roles in rows if is_scheduler(roles)]


class Unattested(NamedTuple):
    """A decision of the chain no receipt attested yet, as a scheduler node signs it."""

    decision_id: bytes
    height: int  # the block that made it
    body: ReceiptBody


def unattested_decisions(conn: Any) -> list[Unattested]:
    """Every decision of the applied state that no receipt attested yet, oldest
    first (normally only those of the last few blocks)."""
    rows = conn.execute("SELECT decision_id, height, kind, subject, fields FROM state_decisions "
                        "WHERE attested IS NULL ORDER BY height, decision_id").fetchall()
    return [Unattested(bytes(did), height, ReceiptBody(kind, bytes(subject), decode(bytes(fields))))
            for did, height, kind, subject, fields in rows]
