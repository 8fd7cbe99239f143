"""The typed payloads of the state machine's transaction types.

A payload's schema (:mod:`node.app.txtypes`) turns the CBOR map a transaction
carries into one of these values; the state checks and transitions
(:mod:`node.app.handlers`) read only these. They sit in a module of their own
so that the handlers, below the table of transaction types, can name them.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from node.receipts.envelope import Receipt


@dataclass(frozen=True)
class NodeRegister:
    roles: tuple[str, ...]  # sorted
    capacity: int
    moniker: str


@dataclass(frozen=True)
class DatasetRegister:
    digest: bytes
    size: int
    name: str
    format: str
    receipt: bytes  # id of the data.store receipt (on chain) of this tenant's upload of digest


@dataclass(frozen=True)
class JobSubmit:
    job_type: str
    inputs: dict[str, bytes]  # input name -> dataset digest
    params: dict[str, Any]
    replication: int
    deadline_blocks: int


@dataclass(frozen=True)
class JobResult:
    job: bytes
    receipt: Receipt  # verified job.exec receipt issued by the sender
    error: str | None = None  # why the job failed, as the node saw it (only with exit != 0)


@dataclass(frozen=True)
class JobDecline:
    """An assignee could not run the job (not a result: nothing about the job is claimed)."""

    job: bytes
    reason: str  # one of model.DECLINE_REASONS
    detail: str  # what the node saw (1..300 printable); its claim, not checked


@dataclass(frozen=True)
class JobAck:
    """An assignee acknowledges assignments: it is alive and has taken them on."""

    jobs: tuple[bytes, ...]  # distinct job ids, in payload order


@dataclass(frozen=True)
class JobCancel:
    job: bytes


@dataclass(frozen=True)
class ReceiptsBatch:
    receipts: tuple[Receipt, ...]  # verified, issued by the sender, in payload order


@dataclass(frozen=True)
class GovAction:
    """What a proposal does: ``kind`` selects the other fields (see node/app/governance.py).

    ``fields`` is the action's CBOR map as sent (what the state stores),
    checked by the payload schema: ``key`` (32 bytes) for the membership and
    validator kinds; ``name``, ``value`` and optionally ``from_height`` for
    ``set_rule``."""

    kind: str
    fields: dict[str, Any]


@dataclass(frozen=True)
class GovPropose:
    action: GovAction


@dataclass(frozen=True)
class GovVote:
    proposal: bytes  # the proposal id: the hash of its gov.propose transaction


@dataclass(frozen=True)
class ServiceDeploy:
    name: str
    job_type: str
    inputs: dict[str, str]  # input name -> dataset NAME (resolved to its latest digest at each run), sorted
    params: dict[str, Any]
    replicas: int
    policy: str
    every_blocks: int | None  # None: the trigger is on_new_version
    deadline_blocks: int


@dataclass(frozen=True)
class ServiceScale:
    name: str
    replicas: int


@dataclass(frozen=True)
class ServiceStop:
    name: str


Payload = (
    NodeRegister | DatasetRegister | JobSubmit | JobResult | JobDecline | JobAck | JobCancel | ReceiptsBatch
    | GovPropose | GovVote | ServiceDeploy | ServiceScale | ServiceStop
)
