"""State checks and transitions of each transaction type.

For every type, ``reads_*`` names the stored rows its check and change may
read (loaded in bulk for the whole block), ``check_*`` reads the state and
returns why the transaction cannot apply (or None), and ``apply_*`` makes the
change once the check has passed. The mempool's pre-screen runs only the
checks; applying a block runs check then apply for each transaction, in
order, on the block's :class:`WorkingState`, so a check sees the effects of
the block's earlier transactions. Reasons are deterministic text: they become
part of the state. The table of transaction types (:mod:`node.app.txtypes`)
names these functions, one entry per type.
"""

from __future__ import annotations

from node.app.decisions import ATTESTED_KINDS, attestation_refusal, receipt_decision
from node.app.governance import node_refusal, tenant_refusal
from node.app.lifecycle import describe_job_ref, finish_job, settle_if_complete
from node.app.model import (
    ACTIVE_STATES,
    CANCELLED,
    DECLINED,
    DELIVERED,
    LOCAL_FAULT,
    MISSED,
    PENDING,
    RUNNING,
    SCHEDULED,
    SUBMITTED,
    BlockContext,
)
from node.app.payloads import (
    DatasetRegister,
    JobAck,
    JobCancel,
    JobDecline,
    JobResult,
    JobSubmit,
    NodeRegister,
    ReceiptsBatch,
)
from node.app.state_rows import AssignmentRow, JobRow, NodeRow, ResultRow
from node.app.working import Reads, WorkingState
from node.base.codec import encode, to_hex
from node.base.keys import peer_id_from_public_key
from node.consensus.tx import Transaction
from node.receipts.envelope import Receipt, decode_receipt


def record_receipt(ws: WorkingState, ctx: BlockContext, tx: Transaction, receipt: Receipt) -> None:
    """Enter a verified receipt into the chain at the block's next log position."""
    ws.add_receipt((receipt.id, ctx.height, len(ctx.effects.receipts), receipt.kind, receipt.issuer_key,
                    tx.hash, receipt.envelope))
    ctx.effects.receipts.append(receipt)


# -- node.register --------------------------------------------------------------

def reads_node_register(tx: Transaction, p: NodeRegister) -> Reads:
    return Reads()  # nodes are loaded whole, on first use


def check_node_register(ws: WorkingState, tx: Transaction, p: NodeRegister) -> str | None:
    # A node may register, and re-register to change roles or capacity, at any
    # time; under a closed node policy the worker roles need admission.
    return node_refusal(ws, tx.sender, p.roles)


def apply_node_register(ws: WorkingState, ctx: BlockContext, tx: Transaction, p: NodeRegister) -> None:
    node = ws.nodes().get(tx.sender)
    if node is None:
        node = NodeRow(tx.sender, peer_id_from_public_key(tx.sender), p.moniker, ",".join(p.roles),
                       p.capacity, ctx.height, ctx.height, 0, 0, None)
    else:
        node.moniker, node.roles, node.capacity = p.moniker, ",".join(p.roles), p.capacity
        node.updated_height = ctx.height
    ws.touch_node(node)


# -- dataset.register -----------------------------------------------------------

def reads_dataset_register(tx: Transaction, p: DatasetRegister) -> Reads:
    return Reads(dataset_names=((tx.sender, p.name),))


def check_dataset_register(ws: WorkingState, tx: Transaction, p: DatasetRegister) -> str | None:
    """A tenant's name has versions 1, 2, 3...: each registration under it adds
    one, and one digest may be registered under several names. Only repeating
    the name's latest version is refused (it would add a version identical to
    the one before); registering older content again makes it the latest."""
    refused = tenant_refusal(ws, tx.sender)
    if refused is not None:
        return refused
    latest = ws.latest_dataset(tx.sender, p.name)
    if latest is not None and latest[1] == p.digest:
        # "already registered" is what clients (node/testnet/jobload.py) match on.
        return (f"dataset {to_hex(p.digest)} is already registered by this tenant: "
                f"already the latest version of {p.name} ({p.name}@{latest[0]})")
    # Digests are public (receipts name them): owning a dataset on chain takes
    # proof that this tenant uploaded those bytes to a storage node.
    envelope = ws.receipt_envelope(p.receipt)
    if envelope is None:
        return f"receipt: data.store receipt {to_hex(p.receipt)} is not on chain (upload first, then wait for its receipt)"
    receipt = decode_receipt(envelope)
    if receipt.kind != "data.store" or receipt.subject != p.digest:
        return f"receipt: {to_hex(p.receipt)} is not a data.store receipt for dataset {to_hex(p.digest)}"
    if receipt.fields.get("tenant") != tx.sender:
        return f"receipt: {to_hex(p.receipt)} records another tenant's upload"
    if receipt.fields.get("size") != p.size:
        return f"size: {p.size} is not the stored size {receipt.fields.get('size')}"
    issuer = ws.nodes().get(receipt.issuer_key)
    if issuer is None or not {"storage", "gateway"} & set(issuer.roles.split(",")):
        return f"receipt: {to_hex(p.receipt)} was not issued by a registered storage or gateway node"
    return None


def apply_dataset_register(ws: WorkingState, ctx: BlockContext, tx: Transaction, p: DatasetRegister) -> None:
    ws.add_dataset(tx.sender, p.name, p.digest, p.size, p.format, ctx.height, tx.hash)
    ctx.new_versions.add((tx.sender, p.name))  # on_new_version services of this name run in this block


# -- job.submit -------------------------------------------------------------------

def reads_job_submit(tx: Transaction, p: JobSubmit) -> Reads:
    return Reads(datasets=tuple((tx.sender, d) for d in p.inputs.values()), jobs=(tx.hash,))


def check_job_submit(ws: WorkingState, tx: Transaction, p: JobSubmit) -> str | None:
    refused = tenant_refusal(ws, tx.sender)
    if refused is not None:
        return refused
    for name, digest in p.inputs.items():  # sorted by name
        if not ws.has_dataset(tx.sender, digest):
            return f"inputs.{name}: dataset {to_hex(digest)} is not registered by this tenant"
    if ws.job(tx.hash) is not None:  # tx hashes are unique on chain; kept as a guard
        return f"{describe_job_ref(tx.hash)} already exists"
    return None


def apply_job_submit(ws: WorkingState, ctx: BlockContext, tx: Transaction, p: JobSubmit) -> None:
    ws.add_job(JobRow(
        tx.hash, ws.next_seq(), tx.sender, p.job_type, encode(p.inputs), encode(p.params), p.replication,
        p.deadline_blocks, SUBMITTED, None, 0, ctx.height,
    ))


# -- job.result -------------------------------------------------------------------

def reads_job_result(tx: Transaction, p: JobResult) -> Reads:
    return Reads(jobs=(p.job,), receipts=(p.receipt.id,))


def _check_pending_assignee(ws: WorkingState, tx: Transaction, job_id: bytes) -> str | None:
    """Why the sender may not answer for ``job_id`` now (job.result, job.decline), or None."""
    job = ws.job(job_id)
    if job is None:
        return f"{describe_job_ref(job_id)} does not exist"
    if job.state not in (SCHEDULED, RUNNING):
        return f"{describe_job_ref(job_id)} is {job.state}, not waiting for results"
    assignment = job.assignments.get(tx.sender)
    if assignment is None:
        return f"the sender is not assigned to {describe_job_ref(job_id)}"
    if assignment.status == DELIVERED:
        return f"the sender already delivered its result for {describe_job_ref(job_id)}"
    if assignment.status == DECLINED:
        return f"the sender already declined {describe_job_ref(job_id)}"
    if assignment.status == MISSED and assignment.note is not None:  # missed for want of an acknowledgement
        return f"the sender's assignment (attempt {assignment.attempt}) was missed: {assignment.note}"
    if assignment.status == MISSED:
        return (
            f"the sender's assignment (attempt {assignment.attempt}) missed its deadline "
            f"at height {assignment.deadline}"
        )
    if assignment.status != PENDING:  # pragma: no cover - withdrawn only once the job is final
        return f"the sender's assignment is {assignment.status}"
    return None


def check_job_result(ws: WorkingState, tx: Transaction, p: JobResult) -> str | None:
    problem = _check_pending_assignee(ws, tx, p.job)
    if problem is not None:
        return problem
    job = ws.job(p.job)
    assert job is not None  # checked
    if p.receipt.fields["seed"] != job.seed:
        return f"receipt: seed is not the seed of {describe_job_ref(p.job)}"
    if ws.receipt_on_chain(p.receipt.id):
        return f"receipt {to_hex(p.receipt.id)} is already on chain"
    return None


def apply_job_result(ws: WorkingState, ctx: BlockContext, tx: Transaction, p: JobResult) -> None:
    job = ws.job(p.job)
    assert job is not None  # checked
    fields = p.receipt.fields
    job.results[tx.sender] = ResultRow(
        p.job, tx.sender, ctx.height, tx.hash, p.receipt.id, fields["result"], fields["witness"], fields["exit"], p.error
    )
    assignment = job.assignments[tx.sender]
    assignment.status = DELIVERED
    acknowledge(assignment, ctx.height)  # a result is the surest sign of life
    node = ws.nodes()[tx.sender]
    node.delivered += 1
    ws.touch_node(node)
    record_receipt(ws, ctx, tx, p.receipt)
    settle_if_complete(ws, ctx, job)


# -- job.decline ------------------------------------------------------------------

def reads_job_decline(tx: Transaction, p: JobDecline) -> Reads:
    return Reads(jobs=(p.job,))


def check_job_decline(ws: WorkingState, tx: Transaction, p: JobDecline) -> str | None:
    return _check_pending_assignee(ws, tx, p.job)


def apply_job_decline(ws: WorkingState, ctx: BlockContext, tx: Transaction, p: JobDecline) -> None:
    """The slot opens at once (the scheduling pass of this block fills it, or
    lifecycle.settle_declines fails the job); the sender never gets the job again."""
    job = ws.job(p.job)
    assert job is not None  # checked
    assignment = job.assignments[tx.sender]
    assignment.status = DECLINED
    assignment.note = f"{p.reason}: {p.detail}"
    acknowledge(assignment, ctx.height)
    node = ws.nodes()[tx.sender]
    node.declined += 1
    if p.reason == LOCAL_FAULT:  # a node that says it is broken gets no new work for a while
        node.last_missed_height = ctx.height
    ws.touch_node(node)
    ws.touch_job(job)
    ctx.declines.pop(p.job, None)  # keep transaction order: the last note given is the latest
    ctx.declines[p.job] = assignment.note
    ctx.declined_by.append((p.job, tx.sender))  # a placed node that declines a service run is replaced


# -- job.ack ----------------------------------------------------------------------

def acknowledge(assignment: AssignmentRow, height: int) -> None:
    """Record the first sign of life of an assignee on its assignment."""
    if assignment.acked_height is None:
        assignment.acked_height = height


def reads_job_ack(tx: Transaction, p: JobAck) -> Reads:
    return Reads(jobs=p.jobs)


def check_job_ack(ws: WorkingState, tx: Transaction, p: JobAck) -> str | None:
    """Every job named has a pending assignment of the sender not acknowledged
    yet; the first that has not is the reason (the whole ack is refused)."""
    for i, job_id in enumerate(p.jobs):
        problem = _check_pending_assignee(ws, tx, job_id)
        if problem is None:
            job = ws.job(job_id)
            assert job is not None  # checked
            acked = job.assignments[tx.sender].acked_height
            if acked is not None:
                problem = f"the sender already acknowledged {describe_job_ref(job_id)} at height {acked}"
        if problem is not None:
            return f"jobs[{i}]: {problem}"
    return None


def apply_job_ack(ws: WorkingState, ctx: BlockContext, tx: Transaction, p: JobAck) -> None:
    for job_id in p.jobs:
        job = ws.job(job_id)
        assert job is not None  # checked
        acknowledge(job.assignments[tx.sender], ctx.height)
        ws.touch_job(job)


# -- job.cancel -------------------------------------------------------------------

def reads_job_cancel(tx: Transaction, p: JobCancel) -> Reads:
    return Reads(jobs=(p.job,))


def check_job_cancel(ws: WorkingState, tx: Transaction, p: JobCancel) -> str | None:
    job = ws.job(p.job)
    if job is None:
        return f"{describe_job_ref(p.job)} does not exist"
    if job.tenant != tx.sender:
        return f"{describe_job_ref(p.job)} belongs to another tenant"
    if job.state not in ACTIVE_STATES:
        return f"{describe_job_ref(p.job)} is {job.state}; only {', '.join(ACTIVE_STATES)} jobs can be cancelled"
    return None


def apply_job_cancel(ws: WorkingState, ctx: BlockContext, tx: Transaction, p: JobCancel) -> None:
    job = ws.job(p.job)
    assert job is not None  # checked
    finish_job(ws, ctx, job, CANCELLED, "cancelled by its tenant")


# -- receipts.batch -------------------------------------------------------------

def reads_receipts_batch(tx: Transaction, p: ReceiptsBatch) -> Reads:
    return Reads(receipts=tuple(r.id for r in p.receipts),
                 decisions=tuple(receipt_decision(r) for r in p.receipts if r.kind in ATTESTED_KINDS))


def check_receipts_batch(ws: WorkingState, tx: Transaction, p: ReceiptsBatch) -> str | None:
    """Every receipt is new to the chain; under the rule ``attest_once`` (the
    rule in force at the block's height), each job.schedule, job.verdict and
    service.placement receipt attests a decision of the chain
    (node/app/decisions.py). One refused receipt refuses the whole batch.
    Without the rule (a chain started before it), only the first check: its
    receipt log holds every scheduler node's receipt of every decision."""
    attested: set[bytes] = set()
    attest_once = bool(ws.rules.attest_once)
    for i, receipt in enumerate(p.receipts):
        if ws.receipt_on_chain(receipt.id):
            return f"receipts[{i}]: receipt {to_hex(receipt.id)} is already on chain"
        if attest_once and receipt.kind in ATTESTED_KINDS:
            problem = attestation_refusal(ws, receipt, attested)
            if problem is not None:
                return f"receipts[{i}]: {problem}"
            attested.add(receipt_decision(receipt))
    return None


def apply_receipts_batch(ws: WorkingState, ctx: BlockContext, tx: Transaction, p: ReceiptsBatch) -> None:
    attest_once = bool(ws.rules.attest_once)
    for receipt in p.receipts:
        record_receipt(ws, ctx, tx, receipt)
        # Without attest_once the check let any receipt through: only one that would have passed it
        # (the first valid attestation of an open decision) marks the decision, so the decisions mean
        # the same under both rules and the scheduler nodes' work list empties the same way.
        if receipt.kind in ATTESTED_KINDS and (attest_once or attestation_refusal(ws, receipt, set()) is None):
            ws.attest(receipt_decision(receipt), receipt.id)
