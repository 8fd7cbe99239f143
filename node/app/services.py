"""Services: named, long-running workloads of a tenant (``service.deploy`` / ``scale`` / ``stop``).

A service is a job template (type, inputs BY DATASET NAME, params, the
DockLock policy name its nodes run it under), a replica count and a trigger
(``on_new_version``, or ``every_blocks N``). The chain places its replicas on
processing nodes (:mod:`node.app.service_pass`, a pure function of the
committed state) and starts a *run* on each trigger: an ordinary job in
``state_jobs`` (its own job.schedule / job.exec / job.verdict receipts) whose
assignees are the placed nodes. The latest verified run is the service's result.

This module holds the identities, the payload schemas (read by the table of
transaction types, :mod:`node.app.txtypes`) and the state checks and changes
of the three transaction types. The sender of each is the tenant.
"""

from __future__ import annotations

import re
from typing import Any

from node.app.fields import choice, integer, record, text
from node.app.fields import type_name as type_name_of
from node.app.governance import tenant_refusal
from node.app.jobtypes import job_type, job_type_names
from node.app.lifecycle import finish_job
from node.app.model import ACTIVE_STATES, CANCELLED, SERVICE_ACTIVE, SERVICE_STOPPED, BlockContext
from node.app.payloads import ServiceDeploy, ServiceScale, ServiceStop
from node.app.rules import ChainRules
from node.app.state_rows import ServiceRow
from node.app.working import Reads, WorkingState
from node.base.codec import encode, hash_tagged
from node.cage.job import INPUT_NAME
from node.consensus.tx import PayloadError, Transaction

SERVICE_DEPLOY = "service.deploy"
SERVICE_SCALE = "service.scale"
SERVICE_STOP = "service.stop"

SERVICE_ID_TAG = "metanode/service-id/v1"
SERVICE_RUN_TAG = "metanode/service-run/v1"
ACTIVE = SERVICE_ACTIVE
STOPPED = SERVICE_STOPPED
STOP_REASON = "service stopped"
MAX_EVERY_BLOCKS = 1_000_000

SERVICE_NAME = re.compile(r"[a-z0-9][a-z0-9._-]{0,63}")
SERVICE_NAME_WORDS = "1-64 of a-z, 0-9, '.', '_', '-', starting with a letter or digit"
POLICY_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")
POLICY_NAME_WORDS = "a policy name: 1-64 of A-Za-z0-9._-, starting with a letter or digit"
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")
_MAX_DATASET_NAME = 128  # as dataset.register allows
_PLACEHOLDER = bytes(32)  # job types check params against input NAMES only


def service_id(tenant: bytes, name: str) -> bytes:
    """``H("metanode/service-id/v1", tenant key || name)``: the same on every redeploy."""
    return hash_tagged(SERVICE_ID_TAG, tenant + name.encode())


def run_job_id(sid: bytes, run: int) -> bytes:
    """The job id of run ``run`` (1, 2, 3...) of service ``sid``."""
    return hash_tagged(SERVICE_RUN_TAG, sid + run.to_bytes(8, "big"))


# -- payload schemas ---------------------------------------------------------------

def _name(value: Any) -> str:
    return text(value, "name", SERVICE_NAME, SERVICE_NAME_WORDS)


def parse_service_deploy(tx: Transaction, rules: ChainRules) -> ServiceDeploy:
    p = record(tx.payload, "", ("name", "type", "inputs", "params", "replicas", "policy", "trigger",
                                "deadline_blocks"))
    name = _name(p["name"])
    kind = job_type(choice(p["type"], "type", job_type_names()))
    inputs = p["inputs"]
    limit = kind.inputs_limit(rules)
    if not isinstance(inputs, dict) or not 1 <= len(inputs) <= limit:
        raise PayloadError(f"inputs: must be a map of 1 to {limit} input names to dataset names")
    for key in sorted(inputs, key=str):
        if not isinstance(key, str) or not INPUT_NAME.fullmatch(key):
            raise PayloadError(f"inputs: {key!r:.80} is not an input name (a-z, 0-9, _; 1-63)")
        dataset = inputs[key]
        if (not isinstance(dataset, str) or not 1 <= len(dataset) <= _MAX_DATASET_NAME
                or _CONTROL.search(dataset)):
            got = repr(dataset[:80]) if isinstance(dataset, str) else type_name_of(dataset)
            raise PayloadError(f"inputs.{key}: must be a dataset name (1-{_MAX_DATASET_NAME} characters "
                               f"without control characters), got {got}")
    params = kind.params(p["params"], {key: _PLACEHOLDER for key in inputs}, rules)
    replicas = integer(p["replicas"], "replicas", 1, rules.max_replication)
    policy = text(p["policy"], "policy", POLICY_NAME, POLICY_NAME_WORDS)
    every_blocks = _trigger(p["trigger"], rules)
    deadline = integer(p["deadline_blocks"], "deadline_blocks", rules.min_deadline_blocks, rules.max_deadline_blocks)
    return ServiceDeploy(name, kind.name, dict(sorted(inputs.items())), params, replicas, policy, every_blocks,
                         deadline)


def _trigger(value: Any, rules: ChainRules) -> int | None:
    """``{"on_new_version": true}`` (None) or ``{"every_blocks": N}`` (N)."""
    if not isinstance(value, dict) or len(value) != 1 or not {"on_new_version", "every_blocks"} & set(value):
        raise PayloadError('trigger: must be a map with exactly one of {"on_new_version": true} or '
                           '{"every_blocks": N}')
    if "on_new_version" in value:
        if value["on_new_version"] is not True:
            raise PayloadError(f"trigger.on_new_version: must be true, got {value['on_new_version']!r:.80}")
        return None
    return integer(value["every_blocks"], "trigger.every_blocks", rules.min_service_interval, MAX_EVERY_BLOCKS)


def parse_service_scale(tx: Transaction, rules: ChainRules) -> ServiceScale:
    p = record(tx.payload, "", ("name", "replicas"))
    return ServiceScale(_name(p["name"]), integer(p["replicas"], "replicas", 1, rules.max_replication))


def parse_service_stop(tx: Transaction, rules: ChainRules) -> ServiceStop:
    p = record(tx.payload, "", ("name",))
    return ServiceStop(_name(p["name"]))


# -- state checks and changes ----------------------------------------------------------

def _active_service(ws: WorkingState, tenant: bytes, name: str) -> ServiceRow | None:
    service = ws.service(service_id(tenant, name))
    return service if service is not None and service.state == ACTIVE else None


def reads_service_deploy(tx: Transaction, p: ServiceDeploy) -> Reads:
    return Reads(dataset_names=tuple((tx.sender, dataset) for dataset in p.inputs.values()))


def check_service_deploy(ws: WorkingState, tx: Transaction, p: ServiceDeploy) -> str | None:
    refused = tenant_refusal(ws, tx.sender)
    if refused is not None:
        return refused
    for key, dataset in p.inputs.items():  # sorted by input name
        if ws.latest_dataset(tx.sender, dataset) is None:
            return f"inputs.{key}: no dataset named {dataset!r} is registered by this tenant"
    if _active_service(ws, tx.sender, p.name) is not None:
        return f"name: service {p.name} is already active (scale or stop it, or deploy under another name)"
    active = sum(1 for s in ws.services_of(tx.sender) if s.state == ACTIVE)
    if active >= ws.rules.max_services:
        return f"this tenant already has {active} active services, the most max_services ({ws.rules.max_services}) allows"
    return None


def apply_service_deploy(ws: WorkingState, ctx: BlockContext, tx: Transaction, p: ServiceDeploy) -> None:
    """A new service, or a stopped one deployed again (same id; its run numbers
    continue; its template, trigger and result start afresh). The service pass
    of this block places it and starts its first run."""
    sid = service_id(tx.sender, p.name)
    previous = ws.service(sid)
    ws.touch_service(ServiceRow(
        sid, tx.sender, p.name, p.job_type, encode(p.inputs), encode(p.params), p.replicas, p.policy,
        p.every_blocks is None, p.every_blocks, p.deadline_blocks, ACTIVE, ctx.height, ctx.height,
        previous.runs if previous is not None else 0, None,
    ))
    ctx.service_actions[sid] = "deploy"


def reads_service_change(tx: Transaction, p: ServiceScale | ServiceStop) -> Reads:
    return Reads()  # services are loaded on first use


def _no_active(name: str) -> str:
    return f"name: this tenant has no active service {name}"


def check_service_scale(ws: WorkingState, tx: Transaction, p: ServiceScale) -> str | None:
    service = _active_service(ws, tx.sender, p.name)
    if service is None:
        return _no_active(p.name)
    if service.replicas == p.replicas:
        return f"replicas: service {p.name} already has {p.replicas} replicas"
    return None


def apply_service_scale(ws: WorkingState, ctx: BlockContext, tx: Transaction, p: ServiceScale) -> None:
    """The service pass grows or shrinks the placement; active runs keep their replication."""
    service = _active_service(ws, tx.sender, p.name)
    assert service is not None  # checked
    service.replicas, service.updated_height = p.replicas, ctx.height
    ws.touch_service(service)
    ctx.service_actions[service.service_id] = "scale"


def check_service_stop(ws: WorkingState, tx: Transaction, p: ServiceStop) -> str | None:
    return _no_active(p.name) if _active_service(ws, tx.sender, p.name) is None else None


def apply_service_stop(ws: WorkingState, ctx: BlockContext, tx: Transaction, p: ServiceStop) -> None:
    """Stopped: placements cleared, active runs cancelled (their pending assignments withdrawn)."""
    service = _active_service(ws, tx.sender, p.name)
    assert service is not None  # checked
    sid = service.service_id
    service.state, service.updated_height = STOPPED, ctx.height
    ctx.service_moves.setdefault(sid, []).extend((placement.node_key, None) for placement in service.placements)
    service.placements = []
    ws.touch_service(service)
    ctx.service_actions[sid] = "stop"
    # Runs are rows of state_jobs; those started in this block are in memory only (none:
    # runs start after the block's transactions), and memory wins over the table.
    stored = [bytes(job_id) for (job_id,) in ws.conn.execute(
        f"SELECT job_id FROM state_jobs WHERE service_id = ? AND state IN ({', '.join('?' * len(ACTIVE_STATES))}) "
        "ORDER BY run",
        [sid, *ACTIVE_STATES],
    ).fetchall()]
    ws.load_jobs(stored)
    runs = sorted((job for job in ws.loaded_jobs() if job.service_id == sid and job.state in ACTIVE_STATES),
                  key=lambda job: job.run or 0)
    for job in runs:
        finish_job(ws, ctx, job, CANCELLED, STOP_REASON)
