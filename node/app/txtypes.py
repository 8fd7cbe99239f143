"""The state machine's transaction types: their payload schemas, and the one table of them.

Every payload is a CBOR map with exactly the fields below (all required).
``parse_payload`` checks one against its schema without looking at chain
state and returns a typed value; it raises PayloadError naming the field
(``inputs.sales``, ``receipts[2]``...). The same function is the mempool's
validation hook (:func:`register_tx_types`) and the first step of applying a
transaction, so a block can never carry a payload the state machine reads
differently from the mempool.

=================== =========================================================
type                payload
=================== =========================================================
``node.register``   ``roles`` [role, ...] (1-5 distinct of validator,
                    scheduler, gateway, processing, storage); ``capacity``
                    int (1..max_capacity with ``processing``, else 0);
                    ``moniker`` text (1-64 of ``A-Za-z0-9._-``)
``dataset.register`` ``digest`` 32 bytes (SHA-256 of the content); ``size``
                    uint; ``name`` text (1-128, no control characters);
                    ``format`` ``csv`` | ``parquet`` | ``jsonl``; ``receipt``
                    32 bytes: the id of the on-chain ``data.store`` receipt a
                    storage or gateway node signed for this tenant's upload
                    of ``digest`` (so a tenant registers only data it
                    uploaded). It makes ``digest`` version 1 + the highest
                    version of ``name`` for this tenant (``name@version``);
                    one digest may be registered under several names, and
                    registering the digest that is already the name's
                    latest version is refused
``job.submit``      ``type`` a registered job type (``sql`` |
                    ``trend-analysis`` | ``summary``);
                    ``inputs`` {input name: dataset digest} (1..max_inputs);
                    ``params`` map (per type, below); ``replication`` int
                    1..max_replication; ``deadline_blocks`` int in
                    min..max_deadline_blocks
``job.result``      ``job`` 32 bytes; ``receipt`` bytes: the sender's signed
                    ``job.exec`` receipt envelope with subject = job;
                    optional ``error`` text (1..300 printable) when exit != 0
``job.decline``     ``job`` 32 bytes; ``reason`` ``input_unavailable`` |
                    ``local_fault`` | ``policy_unavailable`` (the node
                    holds no DockLock policy of the job's ``policy`` name);
                    ``detail`` text (1..300 printable).
                    The sender, a pending assignee, could not run the job
                    for a reason that is not the job's own (no verified copy
                    of an input from any holder; its own disk, I/O or cage
                    failed): no result is claimed. The slot is given to
                    another node in the same block, or the job fails once its
                    ``max_attempts`` are used up or no registered processing
                    node that has not held it is left; ``local_fault`` also
                    keeps the sender from new work for ``exclusion_blocks``
``job.ack``         ``jobs`` [job id (32 bytes), ...] (1..64 distinct).
                    The sender acknowledges assignments it holds: each
                    job must have a pending assignment of the sender not
                    acknowledged yet. Under the rule ``ack_blocks`` > 0 an
                    assignment not acknowledged (by job.ack, job.result or
                    job.decline) within ``ack_blocks`` blocks is missed
                    and the job goes to another node
``job.cancel``      ``job`` 32 bytes
``receipts.batch``  ``receipts`` [envelope, ...] (1..max_batch_receipts,
                    distinct), each signed by the sender, of kind
                    ``api.call``, ``data.store``, ``job.schedule`` or
                    ``job.verdict`` or ``service.placement`` (``job.exec``
                    travels in job.result). Each of the last three (an
                    attestation) must attest a decision of the chain
                    (:mod:`node.app.decisions`)
``service.deploy``  ``name`` service name (1-64 of ``a-z0-9._-``, starting
                    with a letter or digit); ``type`` a registered job
                    type; ``inputs`` {input name: dataset NAME}
                    (1..max_inputs); ``params`` (the type's schema);
                    ``replicas`` 1..max_replication; ``policy`` a DockLock
                    policy name; ``trigger`` exactly one of
                    {``on_new_version``: true} | {``every_blocks``: N}
                    (N in min_service_interval..1000000);
                    ``deadline_blocks`` as for job.submit
                    (:mod:`node.app.services`)
``service.scale``   ``name``; ``replicas`` 1..max_replication
``service.stop``    ``name``
``gov.propose``     ``action`` map: ``kind`` (``admit_node`` |
                    ``remove_node`` | ``admit_tenant`` | ``remove_tenant`` |
                    ``add_validator`` | ``remove_validator`` | ``set_rule``)
                    and the kind's fields: ``key`` 32 bytes (a public key);
                    for ``set_rule``: ``name`` a chain rule, ``value`` int
                    in its range, optional ``from_height`` uint. Sent by a
                    validator; the proposal id is the tx hash
``gov.vote``        ``proposal`` 32 bytes: a pending proposal's id
                    (:mod:`node.app.governance`: votes, threshold, expiry)
=================== =========================================================

Job parameters are per job type: the schema of each is its entry in the job
type registry (:mod:`node.app.jobtypes`): ``sql`` {``query`` text};
``summary`` {``input`` name of one of the inputs}; ``trend-analysis``
{``input``, ``time_column``, ``value_column`` column names, ``window``
``<n>d`` | ``<n>w`` | ``<n>m``; optional ``group_by`` column name,
``granularity`` ``day`` (default) | ``week`` | ``month``}.

The bounds that come from the chain rules (``max_*``, ``min_*`` above) are
those in force at the block that applies the transaction (a vote may change
them: node/app/rule_changes.py). The mempool's hooks cannot know that block,
so :func:`register_tx_types` checks against the widest bounds a vote could
set (:data:`~node.app.rules.WIDEST_RULES`), and the state machine refuses,
with a recorded reason (``invalid payload: ...``), a transaction that breaks
the rule in force at its block.

The table at the end of this module (:data:`STATE_TX_TYPES`) is the one
place a transaction type is declared: one :class:`TxType` entry names its
payload parser (here), and the hooks the state machine runs
(:mod:`node.app.handlers`): which rows it reads, its state check, the change
it makes, and the receipts it brings into the receipt log. The mempool, the
state machine and the receipt log all read the table. Adding a transaction
type: its payload dataclass in :mod:`node.app.payloads`, its parser here, its
``reads_*``/``check_*``/``apply_*`` in :mod:`node.app.handlers`, and one
entry in the table. Like job types, the table is consensus-critical.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

from node.app import governance, handlers, services
from node.app.fields import MAX_UINT, choice, digest, integer, record, text
from node.app.jobtypes import job_type, job_type_names
from node.app.model import DECLINE_REASONS, BlockContext
from node.app.payloads import (
    DatasetRegister,
    GovAction,
    GovPropose,
    GovVote,
    JobAck,
    JobCancel,
    JobDecline,
    JobResult,
    JobSubmit,
    NodeRegister,
    Payload,
    ReceiptsBatch,
)
from node.app.rule_changes import SET_RULE, check_set_rule_fields
from node.app.rules import DEFAULT_RULES, WIDEST_RULES, ChainRules
from node.app.working import Reads, WorkingState
from node.base.config import ROLES
from node.base.verification import ReceiptError
from node.cage.job import INPUT_NAME
from node.consensus.tx import PayloadError, Transaction, TxTypeRegistry
from node.receipts.envelope import MAX_ENVELOPE_SIZE, Receipt, verify_receipt

__all__ = [
    "BATCH_RECEIPT_KINDS", "DATASET_FORMATS", "DATASET_REGISTER", "GOV_PROPOSE", "GOV_VOTE", "JOB_ACK", "JOB_CANCEL", "JOB_DECLINE", "JOB_RESULT",
    "JOB_SUBMIT", "NODE_REGISTER", "RECEIPTS_BATCH", "SERVICE_DEPLOY", "SERVICE_SCALE", "SERVICE_STOP",
    "STATE_TX_TYPES", "TX_TYPES", "DatasetRegister", "JobAck", "JobCancel",
    "JobDecline", "JobResult",
    "JobSubmit", "NodeRegister", "Payload", "ReceiptsBatch", "TxType", "carried_receipts", "parse_payload",
    "reads_of", "register_tx_types",
]

NODE_REGISTER = "node.register"
DATASET_REGISTER = "dataset.register"
JOB_SUBMIT = "job.submit"
MAX_ERROR_TEXT = 300
JOB_RESULT = "job.result"
JOB_DECLINE = "job.decline"
JOB_ACK = "job.ack"
MAX_ACK_JOBS = 64  # job ids in one job.ack: a processing node's pending assignments fit many times over
JOB_CANCEL = "job.cancel"
RECEIPTS_BATCH = "receipts.batch"
GOV_PROPOSE = governance.GOV_PROPOSE
GOV_VOTE = governance.GOV_VOTE
SERVICE_DEPLOY = services.SERVICE_DEPLOY
SERVICE_SCALE = services.SERVICE_SCALE
SERVICE_STOP = services.SERVICE_STOP

DATASET_FORMATS = ("csv", "parquet", "jsonl")
BATCH_RECEIPT_KINDS = ("api.call", "data.store", "job.schedule", "job.verdict", "service.placement")

_MONIKER = re.compile(r"[A-Za-z0-9._-]{1,64}")
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")
_MAX_NAME = 128


# -- per-type parsers -----------------------------------------------------------

def _parse_node_register(tx: Transaction, rules: ChainRules) -> NodeRegister:
    p = record(tx.payload, "", ("roles", "capacity", "moniker"))
    roles = p["roles"]
    if not isinstance(roles, list) or not 1 <= len(roles) <= len(ROLES):
        raise PayloadError(f"roles: must be a list of 1 to {len(ROLES)} roles")
    for i, role in enumerate(roles):
        choice(role, f"roles[{i}]", ROLES)
    if len(set(roles)) != len(roles):
        raise PayloadError("roles: repeats a role")
    if "processing" in roles:
        capacity = integer(p["capacity"], "capacity", 1, rules.max_capacity)
    elif p["capacity"] != 0 or type(p["capacity"]) is not int:
        raise PayloadError("capacity: must be 0 for a node without the processing role")
    else:
        capacity = 0
    moniker = text(p["moniker"], "moniker", _MONIKER, "1-64 of A-Za-z0-9._-")
    return NodeRegister(tuple(sorted(roles)), capacity, moniker)


def _parse_dataset_register(tx: Transaction, rules: ChainRules) -> DatasetRegister:
    p = record(tx.payload, "", ("digest", "size", "name", "format", "receipt"))
    name = p["name"]
    if not isinstance(name, str) or not 1 <= len(name) <= _MAX_NAME or _CONTROL.search(name):
        raise PayloadError(f"name: must be 1-{_MAX_NAME} characters without control characters")
    return DatasetRegister(
        digest(p["digest"], "digest"),
        integer(p["size"], "size", 0, MAX_UINT),
        name,
        choice(p["format"], "format", DATASET_FORMATS),
        digest(p["receipt"], "receipt"),
    )


def _parse_job_submit(tx: Transaction, rules: ChainRules) -> JobSubmit:
    p = record(tx.payload, "", ("type", "inputs", "params", "replication", "deadline_blocks"))
    kind = job_type(choice(p["type"], "type", job_type_names()))
    inputs = p["inputs"]
    limit = kind.inputs_limit(rules)
    if not isinstance(inputs, dict) or not 1 <= len(inputs) <= limit:
        raise PayloadError(f"inputs: must be a map of 1 to {limit} input names to digests")
    for name in sorted(inputs):
        if not isinstance(name, str) or not INPUT_NAME.fullmatch(name):
            raise PayloadError(f"inputs: {name!r:.80} is not an input name (a-z, 0-9, _; 1-63)")
        digest(inputs[name], f"inputs.{name}")
    params = kind.params(p["params"], inputs, rules)
    return JobSubmit(
        kind.name,
        dict(sorted(inputs.items())),
        params,
        integer(p["replication"], "replication", 1, rules.max_replication),
        integer(p["deadline_blocks"], "deadline_blocks", rules.min_deadline_blocks, rules.max_deadline_blocks),
    )


def _receipt(value: Any, path: str, tx: Transaction, kinds: tuple[str, ...]) -> Receipt:
    if not isinstance(value, bytes) or not 1 <= len(value) <= MAX_ENVELOPE_SIZE:
        raise PayloadError(f"{path}: must be a receipt envelope of 1 to {MAX_ENVELOPE_SIZE} bytes")
    try:
        receipt = verify_receipt(value, issuer_key=tx.sender)
    except ReceiptError as exc:
        raise PayloadError(f"{path}: {exc}") from None
    if receipt.kind not in kinds:
        raise PayloadError(f"{path}: kind {receipt.kind} is not one of {', '.join(kinds)}")
    return receipt


def _parse_job_result(tx: Transaction, rules: ChainRules) -> JobResult:
    optional = ("error",) if isinstance(tx.payload, dict) and "error" in tx.payload else ()
    p = record(tx.payload, "", ("job", "receipt") + optional)
    job = digest(p["job"], "job")
    receipt = _receipt(p["receipt"], "receipt", tx, ("job.exec",))
    if receipt.subject != job:
        raise PayloadError("receipt: its subject is not the job this result is for")
    error = p.get("error")
    if error is not None:
        if not isinstance(error, str) or not 1 <= len(error) <= MAX_ERROR_TEXT or not error.isprintable():
            raise PayloadError(f"error: must be printable text of 1 to {MAX_ERROR_TEXT} characters")
        if receipt.fields["exit"] == 0:
            raise PayloadError("error: only a failed execution (exit != 0) reports an error")
    return JobResult(job, receipt, error)


def _parse_job_decline(tx: Transaction, rules: ChainRules) -> JobDecline:
    p = record(tx.payload, "", ("job", "reason", "detail"))
    detail = p["detail"]
    if not isinstance(detail, str) or not 1 <= len(detail) <= MAX_ERROR_TEXT or not detail.isprintable():
        raise PayloadError(f"detail: must be printable text of 1 to {MAX_ERROR_TEXT} characters")
    return JobDecline(digest(p["job"], "job"), choice(p["reason"], "reason", DECLINE_REASONS), detail)


def _parse_job_ack(tx: Transaction, rules: ChainRules) -> JobAck:
    p = record(tx.payload, "", ("jobs",))
    jobs = p["jobs"]
    if not isinstance(jobs, list) or not 1 <= len(jobs) <= MAX_ACK_JOBS:
        raise PayloadError(f"jobs: must be a list of 1 to {MAX_ACK_JOBS} job ids")
    seen: set[bytes] = set()
    for i, job in enumerate(jobs):
        digest(job, f"jobs[{i}]")
        if job in seen:
            raise PayloadError(f"jobs[{i}]: repeats an earlier job id")
        seen.add(job)
    return JobAck(tuple(jobs))


def _parse_job_cancel(tx: Transaction, rules: ChainRules) -> JobCancel:
    p = record(tx.payload, "", ("job",))
    return JobCancel(digest(p["job"], "job"))


def _parse_receipts_batch(tx: Transaction, rules: ChainRules) -> ReceiptsBatch:
    p = record(tx.payload, "", ("receipts",))
    envelopes = p["receipts"]
    if not isinstance(envelopes, list) or not 1 <= len(envelopes) <= rules.max_batch_receipts:
        raise PayloadError(f"receipts: must be a list of 1 to {rules.max_batch_receipts} envelopes")
    receipts = tuple(
        _receipt(envelope, f"receipts[{i}]", tx, BATCH_RECEIPT_KINDS) for i, envelope in enumerate(envelopes)
    )
    seen: set[bytes] = set()
    for i, receipt in enumerate(receipts):
        if receipt.id in seen:
            raise PayloadError(f"receipts[{i}]: repeats an earlier receipt")
        seen.add(receipt.id)
    return ReceiptsBatch(receipts)


def _parse_gov_propose(tx: Transaction, rules: ChainRules) -> GovPropose:
    p = record(tx.payload, "", ("action",))
    action = p["action"]
    if not isinstance(action, dict):
        record(action, "action", ())  # raises: must be a map
    if "kind" not in action:
        raise PayloadError("action.kind: is missing")
    kind = choice(action["kind"], "action.kind", governance.ACTION_KINDS)
    optional = tuple(name for name in governance.ACTION_OPTIONAL_FIELDS.get(kind, ()) if name in action)
    record(action, "action", ("kind",) + governance.ACTION_FIELDS[kind] + optional)
    if kind == SET_RULE:
        check_set_rule_fields(action)
    else:
        key = action["key"]
        if not isinstance(key, bytes) or len(key) != 32:
            raise PayloadError("action.key: must be a 32-byte Ed25519 public key")
    return GovPropose(GovAction(kind, dict(action)))


def _parse_gov_vote(tx: Transaction, rules: ChainRules) -> GovVote:
    p = record(tx.payload, "", ("proposal",))
    return GovVote(digest(p["proposal"], "proposal"))


# -- the table of transaction types ---------------------------------------------------

P = TypeVar("P")


@dataclass(frozen=True)
class TxType(Generic[P]):
    """One transaction type of the state machine: everything the node does with it.

    ``parse`` is the payload schema: pure (no state, clock or I/O), it is the
    mempool's validation hook and the first step of applying the transaction.
    ``reads`` names the stored rows the check and change may read (loaded in
    bulk for the block), ``check`` says why the state refuses the transaction
    (or None), ``apply`` makes the change once the check passed, and
    ``carries`` (None: nothing) gives the receipts it brings into the receipt
    log, in order."""

    name: str
    parse: Callable[[Transaction, ChainRules], P]
    reads: Callable[[Transaction, P], Reads]
    check: Callable[[WorkingState, Transaction, P], str | None]
    apply: Callable[[WorkingState, BlockContext, Transaction, P], None]
    carries: Callable[[P], Sequence[Receipt]] | None = None


def _table(*entries: TxType[Any]) -> dict[str, TxType[Any]]:
    table: dict[str, TxType[Any]] = {}
    for entry in entries:
        if entry.name in table:
            raise ValueError(f"transaction type {entry.name!r} is declared twice")
        table[entry.name] = entry
    return table


STATE_TX_TYPES: dict[str, TxType[Any]] = _table(
    TxType(
        NODE_REGISTER, _parse_node_register,
        handlers.reads_node_register, handlers.check_node_register, handlers.apply_node_register,
    ),
    TxType(
        DATASET_REGISTER, _parse_dataset_register,
        handlers.reads_dataset_register, handlers.check_dataset_register, handlers.apply_dataset_register,
    ),
    TxType(
        JOB_SUBMIT, _parse_job_submit,
        handlers.reads_job_submit, handlers.check_job_submit, handlers.apply_job_submit,
    ),
    TxType(
        JOB_RESULT, _parse_job_result,
        handlers.reads_job_result, handlers.check_job_result, handlers.apply_job_result,
        carries=lambda p: (p.receipt,),
    ),
    TxType(
        JOB_DECLINE, _parse_job_decline,
        handlers.reads_job_decline, handlers.check_job_decline, handlers.apply_job_decline,
    ),
    TxType(
        JOB_ACK, _parse_job_ack,
        handlers.reads_job_ack, handlers.check_job_ack, handlers.apply_job_ack,
    ),
    TxType(
        JOB_CANCEL, _parse_job_cancel,
        handlers.reads_job_cancel, handlers.check_job_cancel, handlers.apply_job_cancel,
    ),
    TxType(
        RECEIPTS_BATCH, _parse_receipts_batch,
        handlers.reads_receipts_batch, handlers.check_receipts_batch, handlers.apply_receipts_batch,
        carries=lambda p: p.receipts,
    ),
    TxType(
        SERVICE_DEPLOY, services.parse_service_deploy,
        services.reads_service_deploy, services.check_service_deploy, services.apply_service_deploy,
    ),
    TxType(
        SERVICE_SCALE, services.parse_service_scale,
        services.reads_service_change, services.check_service_scale, services.apply_service_scale,
    ),
    TxType(
        SERVICE_STOP, services.parse_service_stop,
        services.reads_service_change, services.check_service_stop, services.apply_service_stop,
    ),
    TxType(
        GOV_PROPOSE, _parse_gov_propose,
        governance.reads_gov, governance.check_gov_propose, governance.apply_gov_propose,
    ),
    TxType(
        GOV_VOTE, _parse_gov_vote,
        governance.reads_gov, governance.check_gov_vote, governance.apply_gov_vote,
    ),
)
"""Every transaction type of the state machine, by name. Types not in it
(``noop``, consensus types) are not the state machine's: it skips them."""

TX_TYPES = tuple(STATE_TX_TYPES)


def parse_payload(tx: Transaction, rules: ChainRules = DEFAULT_RULES) -> Payload:
    """Check ``tx``'s payload against its type's schema; return it typed.

    Pure (no state, clock or I/O). Raises PayloadError naming the field, or
    ValueError if ``tx.type`` is not one of :data:`TX_TYPES`.
    """
    entry = STATE_TX_TYPES.get(tx.type)
    if entry is None:
        raise ValueError(f"{tx.type!r} is not a state machine transaction type")
    return entry.parse(tx, rules)


def reads_of(tx: Transaction, payload: Payload) -> Reads:
    """The stored rows a parsed state transaction may read (see :class:`Reads`)."""
    return STATE_TX_TYPES[tx.type].reads(tx, payload)


def carried_receipts(tx: Transaction, rules: ChainRules = WIDEST_RULES) -> Sequence[Receipt]:
    """The receipts a (validated) transaction brings into the receipt log, in
    order; none for a type that carries none or is not the state machine's.
    Only carrying types are parsed, under the bounds the mempool's hooks
    checked (by default the widest: a block's receipts do not depend on the
    rules in force, only on its transactions)."""
    entry = STATE_TX_TYPES.get(tx.type)
    if entry is None or entry.carries is None:
        return ()
    return entry.carries(entry.parse(tx, rules))


def misdated_receipt(receipts: Sequence[Receipt], block_height: int) -> str | None:
    """Why block ``block_height`` may not carry ``receipts``, or None.

    A receipt's ``height`` is the height its issuer had finalised when it
    acted, so it is below every block that can seal it: a receipt claiming
    ``block_height`` or later claims to have seen a block that did not exist.
    The proposer and every validator leave such a transaction's receipts out
    of the block's log (node/app/chain_app.py) and the state refuses the
    transaction, so the log and the state agree."""
    for receipt in receipts:
        if receipt.height >= block_height:
            return (f"receipt {receipt.id.hex()} claims height {receipt.height}, but the block carrying it is "
                    f"{block_height}: a receipt names a height its issuer had already finalised")
    return None


def register_tx_types(registry: TxTypeRegistry, rules: ChainRules = WIDEST_RULES) -> None:
    """Register every state transaction type with its payload schema as the mempool's hook.

    The chain registers them with the default, :data:`WIDEST_RULES`: the hook
    (which also decides whether a block's transactions are valid) cannot know
    the height a transaction will be applied at, nor the rules a vote sets
    there. ``rules`` pins other bounds (tests, tools)."""
    for entry in STATE_TX_TYPES.values():
        registry.register(entry.name, _hook(entry, rules))


def _hook(entry: TxType[Any], rules: ChainRules) -> Callable[[Transaction], None]:
    parse = entry.parse

    def validate(tx: Transaction) -> None:
        parse(tx, rules)

    validate.__name__ = f"validate_{entry.name.replace('.', '_')}"
    return validate
