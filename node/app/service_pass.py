"""The block's service pass: results, placements and runs of the services.

Runs once per block, after the deadlines expired and before the scheduler
assigns jobs (node/app/machine.py), in service id order:

1. a service run that verified in this block becomes its service's result
   when its run number is the highest verified yet;
2. placement (sticky weighted rendezvous on the service id): a placed node
   stays while it is a candidate (a schedulable processing node not excluded
   after a missed deadline or a local fault, as for any job). A placed node
   that is no longer one, or that declined one of the service's runs in this
   block, is replaced in its slot by the best-ranked candidate not placed;
   slots beyond ``replicas`` (scale down) drop the lowest-ranked placed
   nodes; open slots (deploy, scale up, earlier lack of nodes) take the
   best-ranked candidates not placed. Nodes that join move nothing. Fewer
   candidates than replicas: what exists is placed;
3. every service whose placement changed, or that a transaction of this
   block deployed, scaled or stopped, gets ONE ``service.placement``
   receipt body (signed by scheduler nodes like ``job.schedule``);
4. runs start: at deploy; with ``every_blocks N`` at each height h with
   (h - deployed_height) % N == 0; with ``on_new_version`` in a block where
   a dataset.register gave one of the service's input names a new latest
   version. A run resolves each input name to its latest digest; it does not
   start while the previous run is active with the same resolved inputs.

The run is an ordinary job: the scheduling pass gives its open slots to the
service's placed nodes that have not held it, in slot order
(:func:`node.app.lifecycle.schedule_jobs`).
"""

from __future__ import annotations

from collections import defaultdict

from node.app.decisions import record_decision
from node.app.governance import schedulable_nodes
from node.app.lifecycle import eligible_candidates
from node.app.model import (
    ACTIVE_STATES,
    SERVICE_ACTIVE,
    SUBMITTED,
    VERIFIED,
    BlockContext,
    ReceiptBody,
)
from node.app.rules import ChainRules
from node.app.scheduler import Candidate, rank_nodes
from node.app.services import run_job_id
from node.app.state_rows import JobRow, PlacementRow, ServiceRow
from node.app.working import WorkingState
from node.base.codec import decode, encode

PLACEMENT_KIND = "service.placement"
Move = tuple[bytes | None, bytes | None]  # (node leaving a slot or None, node entering it or None)


def run_services(ws: WorkingState, ctx: BlockContext, rules: ChainRules) -> None:
    """The service pass of block ``ctx.height`` (see the module docstring)."""
    _record_verified(ws, ctx)
    services = ws.active_services()
    if not services and not ctx.service_actions:
        return
    eligible, _ = eligible_candidates(schedulable_nodes(ws), ctx.height, rules)
    keys = {candidate.node_key for candidate in eligible}
    declined: dict[bytes, set[bytes]] = defaultdict(set)
    for job_id, node_key in ctx.declined_by:
        job = ws.job(job_id)
        if job is not None and job.service_id is not None:
            declined[job.service_id].add(node_key)
    reported = {service.service_id: service for service in services}
    for sid in ctx.service_actions:  # stopped in this block: reported once more
        stopped = ws.service(sid)
        assert stopped is not None  # a transaction of this block acted on it
        reported.setdefault(sid, stopped)
    for sid in sorted(reported):
        service = reported[sid]
        moves = list(ctx.service_moves.get(sid, ()))
        if service.state == SERVICE_ACTIVE:
            moves += _update_placement(ws, ctx, service, eligible, keys, declined.get(sid, set()))
        if moves or sid in ctx.service_actions:
            _emit(ws, ctx, service, moves)
    for service in services:
        if service.state == SERVICE_ACTIVE:
            _maybe_start_run(ws, ctx, service)


def _record_verified(ws: WorkingState, ctx: BlockContext) -> None:
    for finished in ctx.effects.finished:  # in the order the jobs finished
        if finished.state != VERIFIED:
            continue
        job = ws.job(finished.job_id)
        if job is None or job.service_id is None or job.run is None:
            continue
        service = ws.service(job.service_id)
        if service is None or (service.verified_run is not None and service.verified_run >= job.run):
            continue
        service.verified_job, service.verified_run, service.verified_height = job.job_id, job.run, ctx.height
        ws.touch_service(service)


def _update_placement(
    ws: WorkingState, ctx: BlockContext, service: ServiceRow, eligible: list[Candidate], keys: set[bytes],
    declined: set[bytes],
) -> list[Move]:
    """Bring the service's placement to its replicas over the candidates; the moves made."""
    placed = service.placements
    kept = {p.node_key for p in placed if p.node_key in keys and p.node_key not in declined}
    if len(kept) == len(placed) == service.replicas:
        return []  # the common case: nothing to rank
    sid = service.service_id
    ranked = rank_nodes(sid, eligible)
    position = {key: i for i, key in enumerate(ranked)}
    dropped = set(sorted(kept, key=position.__getitem__)[service.replicas:])  # scale down: the lowest-ranked
    kept -= dropped
    taken = {p.node_key for p in placed} | declined
    fresh = iter([key for key in ranked if key not in taken][:max(0, service.replicas - len(kept))])
    moves: list[Move] = []
    result: list[PlacementRow] = []
    for p in placed:  # slot order: a replacement takes the slot it fills
        if p.node_key in kept:
            result.append(p)
            continue
        new = None if p.node_key in dropped else next(fresh, None)
        moves.append((p.node_key, new))
        if new is not None:
            result.append(PlacementRow(sid, 0, new, ctx.height))
    for new in fresh:
        moves.append((None, new))
        result.append(PlacementRow(sid, 0, new, ctx.height))
    if not moves:
        return []
    for slot, row in enumerate(result):
        row.slot = slot
    service.placements = result
    ws.touch_service(service)
    return moves


def _emit(ws: WorkingState, ctx: BlockContext, service: ServiceRow, moves: list[Move]) -> None:
    nodes = ws.nodes()

    def peer(key: bytes | None) -> str | None:
        return None if key is None else nodes[key].peer_id

    if service.state == SERVICE_ACTIVE and service.deployed_height == ctx.height:
        action = "deploy"
    else:
        action = ctx.service_actions.get(service.service_id) or (
            "replace" if any(old is not None for old, _ in moves) else "fill")
    record_decision(ws, ctx, ReceiptBody(PLACEMENT_KIND, service.service_id, {
        "block": ctx.block_hash,
        "action": action,
        "replicas": service.replicas,
        "placements": [nodes[p.node_key].peer_id for p in service.placements],
        "moved": [{"from": peer(old), "to": peer(new)} for old, new in moves],
    }))


def _maybe_start_run(ws: WorkingState, ctx: BlockContext, service: ServiceRow) -> None:
    height = ctx.height
    names: dict[str, str] = decode(service.inputs)
    if service.every_blocks is not None:
        due = (height - service.deployed_height) % service.every_blocks == 0
    else:
        due = service.deployed_height == height or any(
            (service.tenant, name) in ctx.new_versions for name in names.values())
    if not due:
        return
    resolved: dict[str, bytes] = {}
    for key in sorted(names):
        latest = ws.latest_dataset(service.tenant, names[key])
        if latest is None:  # pragma: no cover - deploy checked every name; names are never removed
            return
        resolved[key] = latest[1]
    inputs = encode(resolved)
    sid = service.service_id
    if service.runs:
        previous = ws.job(run_job_id(sid, service.runs))
        if previous is not None and previous.state in ACTIVE_STATES and service.last_inputs == inputs:
            return  # the same work is under way
    run = service.runs + 1
    ws.add_job(JobRow(
        run_job_id(sid, run), ws.next_seq(), service.tenant, service.type, inputs, service.params,
        service.replicas, service.deadline_blocks, SUBMITTED, None, 0, height,
        service_id=sid, run=run, policy=service.policy,
    ))
    service.runs, service.last_inputs = run, inputs
    ws.touch_service(service)
