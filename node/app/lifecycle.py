"""Job lifecycle steps run while a block is applied: verdicts, deadlines, scheduling.

Each function works on the block's :class:`WorkingState` (finding its jobs
with one query, loading them in bulk, changing them in memory) and records
what it did in the block's :class:`BlockEffects`. Every loop runs in a
total order (job sequence, node key), so the result never depends on row,
dict or set order.
"""

from __future__ import annotations

from collections.abc import Sequence

from node.app.decisions import decision_id, record_decision
from node.app.governance import schedulable_nodes
from node.app.model import (
    ACTIVE_STATES,
    DECLINED,
    DELIVERED,
    DISPUTED,
    FAILED,
    MISSED,
    PENDING,
    RUNNING,
    SCHEDULED,
    SERVICE_ACTIVE,
    SUBMITTED,
    VERIFIED,
    WITHDRAWN,
    Assignment,
    BlockContext,
    JobFinished,
    ReceiptBody,
    job_clock,
    job_seed,
)
from node.app.rules import ChainRules
from node.app.scheduler import Candidate, choose_nodes
from node.app.state_hints import NO_EXPIRY
from node.app.state_rows import AssignmentRow, JobRow, NodeRow
from node.app.working import WorkingState
from node.base.codec import to_hex


def finish_job(ws: WorkingState, ctx: BlockContext, job: JobRow, state: str, reason: str | None) -> None:
    """Put a job in a final state; its pending assignments are withdrawn."""
    job.state, job.reason, job.finished_height = state, reason, ctx.height
    for assignment in job.assignments.values():
        if assignment.status == PENDING:
            assignment.status = WITHDRAWN
    ws.touch_job(job)
    ctx.effects.finished.append(JobFinished(job.job_id, state, reason))


def settle_if_complete(ws: WorkingState, ctx: BlockContext, job: JobRow) -> None:
    """After a result: once ``replication`` results are in, give the verdict."""
    ws.touch_job(job)
    if len(job.results) < job.replication:
        if job.state == SCHEDULED:
            job.state = RUNNING
        return
    results = [job.results[key] for key in sorted(job.results)]
    outcomes = {(r.result, r.exit) for r in results}
    digests = {r.result for r in results}
    if len(outcomes) == 1:
        ((_, exit_status),) = outcomes
        if exit_status == 0:
            state, reason = VERIFIED, None
        else:
            state = FAILED
            reason = f"the job failed identically on all {len(results)} assignees (exit status {exit_status})"
            errors = sorted({r.error for r in results if r.error})
            if errors:
                reason += ": " + errors[0] + (f" (and {len(errors) - 1} other error texts)" if len(errors) > 1 else "")
    else:
        state = DISPUTED
        reason = (
            f"results differ: {len(digests)} distinct result digests and "
            f"{len({e for _, e in outcomes})} exit statuses among {len(results)} results"
        )
    finish_job(ws, ctx, job, state, reason)
    # A job.verdict body must be verified with one digest or disputed with
    # several; equal digests with differing exits fit neither, so none is emitted.
    if state == VERIFIED or (state == DISPUTED and len(digests) > 1):
        nodes = ws.nodes()
        body = ReceiptBody("job.verdict", job.job_id, {
            "verdict": state,
            "results": [{"node": nodes[r.node_key].peer_id, "result": r.result} for r in results],
        })
        record_decision(ws, ctx, body)
        # A job gets one verdict (it is final after it): no earlier block recorded this one.
        ws.new_decision(decision_id(body.kind, body.subject, body.fields))


def unacknowledged_by(assignment: AssignmentRow, height: int) -> bool:
    """Whether a pending assignment is missed at ``height`` for want of an
    acknowledgement (its result deadline, when it comes first, decides instead)."""
    return (assignment.ack_deadline is not None and assignment.acked_height is None
            and assignment.ack_deadline <= height and assignment.ack_deadline < assignment.deadline)


def expire_deadlines(ws: WorkingState, ctx: BlockContext, rules: ChainRules) -> None:
    """Pending assignments whose deadline is this height or earlier are missed,
    and so are those not acknowledged by their ack deadline (rule ``ack_blocks``).

    Their nodes are excluded from new work for ``rules.exclusion_blocks``;
    their jobs either get replacements in the scheduling pass or, with no
    attempt left, fail. An assignment missed for want of an acknowledgement
    carries the note ``no acknowledgement by height H``.
    """
    floor = ws.hints.expiry_floor
    if floor is not None and floor > ctx.height:  # the query below would find nothing
        return
    # The table holds the state before this block; the block's own changes
    # only withdrew, delivered or acknowledged assignments, on jobs held in memory.
    # Every job with a pending assignment and its earliest expiry (few rows: the
    # open jobs): those due now, and the next block's hint from the others.
    job_ids, later = [], []
    for job_id, expiry in ws.conn.execute(
        "SELECT job_id, min(CASE WHEN ack_deadline IS NOT NULL AND acked_height IS NULL "
        "THEN least(deadline, ack_deadline) ELSE deadline END) FROM state_assignments "
        "WHERE status = ? GROUP BY job_id ORDER BY job_id",
        [PENDING],
    ).fetchall():
        if expiry <= ctx.height:
            job_ids.append(bytes(job_id))
        else:
            later.append(int(expiry))
    ws.expiry_floor_after = min(later, default=NO_EXPIRY)
    if not job_ids:
        return
    ws.load_jobs(job_ids)
    nodes = ws.nodes()
    for job_id in job_ids:
        job = ws.job(job_id)
        assert job is not None
        pending = [a for _, a in sorted(job.assignments.items()) if a.status == PENDING]
        late = [a for a in pending if a.deadline <= ctx.height]
        silent = [a for a in pending if a.deadline > ctx.height and unacknowledged_by(a, ctx.height)]
        if not late and not silent:  # delivered, acknowledged or withdrawn earlier in this block
            continue
        for assignment in late + silent:
            assignment.status = MISSED
            node = nodes[assignment.node_key]
            node.missed += 1
            node.last_missed_height = ctx.height
            ws.touch_node(node)
        for assignment in silent:
            assignment.note = f"no acknowledgement by height {assignment.ack_deadline}"
        ws.touch_job(job)
        if job.attempt >= rules.max_attempts:
            why = []
            if late:
                why.append(f"{len(late)} assignee(s) missed the deadline at height {max(a.deadline for a in late)}")
            if silent:
                why.append(f"{len(silent)} assignee(s) did not acknowledge by height "
                           f"{max(a.ack_deadline or 0 for a in silent)}")
            finish_job(ws, ctx, job, FAILED, (
                f"attempts exhausted: {len(job.results)} of {job.replication} results after "
                f"{job.attempt} attempt(s); {'; '.join(why)}"
            ))


def settle_declines(ws: WorkingState, ctx: BlockContext, rules: ChainRules) -> None:
    """Jobs an assignee declined in this block (job.decline): fail them, or leave
    the open slot to this block's scheduling pass.

    A declined job fails at once when its ``max_attempts`` are used up (as a
    missed deadline would fail it at its last attempt), or when fewer registered
    processing nodes that have never held it are left than it has open slots
    (no one could ever take them: without this a job whose input every node
    finds unavailable would wait for nodes forever). Otherwise the scheduling
    pass of the same block gives the slot to another node as the next attempt,
    without waiting for the deadline. Runs in job id order.
    """
    if not ctx.declines:
        return
    processing = {key for key, node in schedulable_nodes(ws).items() if node.capacity > 0}
    for job_id in sorted(ctx.declines):
        job = ws.job(job_id)
        assert job is not None  # a decline was applied to it in this block
        if job.state not in ACTIVE_STATES:  # finished by a later transaction of the block
            continue
        open_slots = _open_slots(job)
        if open_slots == 0:
            continue
        unheld = len(processing - set(job.assignments))
        summary = decline_summary(job, ctx.declines[job_id])
        if job.attempt >= rules.max_attempts:
            finish_job(ws, ctx, job, FAILED, (
                f"attempts exhausted: {len(job.results)} of {job.replication} results after "
                f"{job.attempt} attempt(s); {summary}"
            ))
        elif unheld < open_slots:
            finish_job(ws, ctx, job, FAILED, (
                f"no processing node left to run it: {open_slots} open slot(s), {unheld} registered "
                f"processing node(s) that have not held it; {summary}"
            ))


def decline_summary(job: JobRow, latest: str) -> str:
    """How many assignees could not run a job and why, for its failure reason."""
    reasons: dict[str, int] = {}
    for _, assignment in sorted(job.assignments.items()):
        if assignment.status == DECLINED and assignment.note:
            code = assignment.note.split(":", 1)[0]
            reasons[code] = reasons.get(code, 0) + 1
    counted = ", ".join(f"{code} x{count}" for code, count in sorted(reasons.items()))
    return f"{sum(reasons.values())} assignee(s) could not run it ({counted}); latest: {latest}"


def eligible_candidates(nodes: dict[bytes, NodeRow], height: int, rules: ChainRules) -> tuple[list[Candidate], int]:
    """Processing nodes that may get new work at ``height``, and how many are excluded.

    A node that missed a deadline at height m is excluded for heights
    m .. m + exclusion_blocks - 1. A node's weight is its declared capacity,
    at most ``rules.max_capacity`` (a vote that lowers the rule caps the
    nodes registered before it).
    """
    processing = [nodes[key] for key in sorted(nodes) if nodes[key].capacity > 0]
    eligible = [
        Candidate(n.node_key, min(n.capacity, rules.max_capacity))
        for n in processing
        if n.last_missed_height is None or height - n.last_missed_height >= rules.exclusion_blocks
    ]
    return eligible, len(processing) - len(eligible)


def schedule_jobs(ws: WorkingState, ctx: BlockContext, rules: ChainRules) -> None:
    """Assign every active job that has open slots, in submission order."""
    # Jobs with open slots are those the table shows so before this block,
    # plus jobs this block changed: all of those are loaded in memory.
    stored = [bytes(job_id) for (job_id,) in ws.conn.execute(
        "SELECT j.job_id FROM state_jobs j LEFT JOIN state_assignments a "
        "ON a.job_id = j.job_id AND a.status IN (?, ?) "
        f"WHERE j.state IN ({', '.join('?' * len(ACTIVE_STATES))}) "
        "GROUP BY j.job_id, j.replication HAVING count(a.node_key) < j.replication",
        [PENDING, DELIVERED, *ACTIVE_STATES],
    ).fetchall()] if ws.hints.open_slots else []
    ws.load_jobs(stored)
    jobs = sorted(
        (job for job in ws.loaded_jobs() if job.state in ACTIVE_STATES and _open_slots(job) > 0),
        key=lambda job: job.seq,
    )
    # Every job that may have open slots is in memory now: after this pass the
    # state holds open slots only if one of these keeps some (the next block's hint).
    ws.open_slots_after = bool(jobs)
    if not jobs:
        return
    _schedule(ws, ctx, rules, jobs)
    ws.open_slots_after = any(_open_slots(job) > 0 for job in jobs)


def _schedule(ws: WorkingState, ctx: BlockContext, rules: ChainRules, jobs: list[JobRow]) -> None:
    nodes = schedulable_nodes(ws)  # under a closed node policy: admitted nodes only
    eligible, excluded = eligible_candidates(nodes, ctx.height, rules)
    for job in jobs:
        job_id = job.job_id
        open_slots = _open_slots(job)
        held = sorted(job.assignments)  # every node that ever held the job, whatever became of it
        if job.service_id is not None:  # a service run: its service's placed nodes only
            chosen, waiting = _placed_for_run(ws, job, open_slots)
        else:
            chosen = choose_nodes(job_id, eligible, open_slots, exclude=held)
            waiting = None if chosen is not None else _waiting_reason(job.state, open_slots, eligible, held, excluded)
        if chosen is None:
            reason = waiting
            if job.reason != reason:  # the common case (still waiting, same reason) writes nothing
                job.reason = reason
                ws.touch_job(job)
            continue
        if job.state == SUBMITTED:
            job.state, job.attempt = SCHEDULED, 1
            job.scheduled_height, job.schedule_block = ctx.height, ctx.block_hash
            job.seed, job.clock = job_seed(ctx.seed, job_id), job_clock(ctx.timestamp_ms)
        else:
            job.attempt += 1
        job.reason = None
        _assign(ws, ctx, job, sorted(chosen), ctx.height + job.deadline_blocks, rules.ack_blocks)


def _placed_for_run(ws: WorkingState, job: JobRow, open_slots: int) -> tuple[list[bytes] | None, str | None]:
    """The placed nodes (slot order) that take a service run's open slots, or
    (None, why it waits). The block's service pass placed only candidates."""
    assert job.service_id is not None
    service = ws.service(job.service_id)
    placed = [] if service is None or service.state != SERVICE_ACTIVE else [p.node_key for p in service.placements]
    usable = [key for key in placed if key not in job.assignments]
    if len(usable) >= open_slots:
        return usable[:open_slots], None
    name = service.name if service is not None else "?"
    replicas = service.replicas if service is not None else 0
    return None, (
        f"waiting for the placement of service {name}: the run needs {open_slots} node(s), "
        f"{len(usable)} placed node(s) have not held it ({len(placed)} of {replicas} replicas placed)"
    )


def _open_slots(job: JobRow) -> int:
    return job.replication - sum(1 for a in job.assignments.values() if a.status in (PENDING, DELIVERED))


def _waiting_reason(
    state: str, open_slots: int, eligible: Sequence[Candidate], held: Sequence[bytes], excluded: int
) -> str:
    note = f" ({excluded} excluded after missed deadlines)" if excluded else ""
    if state == SUBMITTED:
        return (
            f"waiting for processing nodes: the job needs {open_slots} distinct nodes, "
            f"{len(eligible)} eligible{note}"
        )
    held_set = set(held)
    usable = sum(1 for c in eligible if c.node_key not in held_set)
    return (
        f"waiting for {open_slots} replacement processing node(s): {usable} eligible "
        f"that have not held the job{note}"
    )


def _assign(ws: WorkingState, ctx: BlockContext, job: JobRow, nodes: list[bytes], deadline: int,
            ack_blocks: int) -> None:
    peer_ids = {key: ws.nodes()[key].peer_id for key in nodes}
    ack_deadline = ctx.height + ack_blocks if ack_blocks > 0 else None
    for key in nodes:
        job.assignments[key] = AssignmentRow(job.job_id, key, job.attempt, ctx.height, deadline, PENDING,
                                             ack_deadline=ack_deadline)
        ctx.effects.assignments.append(Assignment(job.job_id, key, peer_ids[key], job.attempt, deadline))
    ws.touch_job(job)
    body = ReceiptBody("job.schedule", job.job_id, {
        "block": ctx.block_hash,
        "assignees": [peer_ids[key] for key in nodes],
        "seed": job.seed,
        "deadline": deadline,
    })
    record_decision(ws, ctx, body)
    # Its fields name this block (each block has its own hash): no earlier block recorded it.
    ws.new_decision(decision_id(body.kind, body.subject, body.fields))


def describe_job_ref(job_id: bytes) -> str:
    """How reasons name a job."""
    return f"job {to_hex(job_id)}"
