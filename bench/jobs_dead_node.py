"""The jobs benchmark's dead-node figure: a job with replication 2 when one of
its assigned processing nodes is down (killed with SIGKILL, so it never
declines or answers).

The chain only learns that a node is down when the node's assignment reaches
its acknowledgement deadline (rule ack_blocks: the node did not send job.ack
in time) or, if that comes first, its result deadline: the block at that
height marks it missed and gives the slot to another node. So the figure is
timed twice: from the submit call, and from that block (its header
timestamp, the proposal; and the notification that it was committed) to the
job being seen verified.
"""

from __future__ import annotations

import os
import signal
import time
from typing import Any

import trio

from node.sdk.client import FINAL_STATES, AsyncClient

TRIES = 8  # jobs submitted until one is assigned to the killed node (each has a one-in-two chance)


async def _final(client: AsyncClient, job_id: str, timeout: float) -> dict[str, Any]:
    """Poll the job every 50 ms until it is final (the notification path of the main bench would
    add its own delays; here one job is watched at a time)."""
    with trio.fail_after(timeout):
        while True:
            status = await client.status(job_id)
            if status is not None and status["state"] in FINAL_STATES:
                return status
            await trio.sleep(0.05)


async def _first_assignees(client: AsyncClient, job_id: str, timeout: float) -> tuple[dict[str, Any], float]:
    with trio.fail_after(timeout):
        while True:
            status = await client.status(job_id)
            if status is not None and (status["assignments"] or status["state"] in FINAL_STATES):
                return status, time.time()
            await trio.sleep(0.05)


async def measure(client: AsyncClient, dataset: str, query: str, victim: str, victim_peer_id: str, victim_pid: int,
                  seen: dict[int, float], deadline_blocks: int) -> dict[str, Any]:
    """Kill ``victim`` and time the first job the scheduler assigns to it. ``seen``: height ->
    when this tenant's connection was notified of that block (kept up to date by its session)."""
    os.kill(victim_pid, signal.SIGKILL)
    killed_at = time.time()
    others: list[str] = []
    for tries in range(1, TRIES + 1):
        t_submit = time.time()
        job_id = await client.submit_job(job_type="sql", data_source={"sales": dataset}, parameters={"query": query},
                                         replication=2, deadline_blocks=deadline_blocks)
        status, _ = await _first_assignees(client, job_id, 60)
        if not any(a["peer_id"] == victim_peer_id for a in status["assignments"]):
            others.append((await _final(client, job_id, 60))["state"])  # not ours: let it finish, try again
            continue
        final = await _final(client, job_id, 90)
        t_final = time.time()
        missed = next(a for a in final["assignments"] if a["peer_id"] == victim_peer_id)
        ack = missed.get("ack_deadline")
        unacked = ack is not None and missed.get("acked_height") is None and ack < missed["deadline"]
        expiry = int(ack if unacked else missed["deadline"])
        header = await client.rpc.call("chain_block", {"height": expiry})
        proposed = header["timestamp_ms"] / 1000
        return {
            "victim": victim, "tries": tries, "other_jobs": others, "state": final["state"], "deadline_blocks": deadline_blocks,
            "known_down_by": "no acknowledgement" if unacked else "result deadline",
            "killed_to_submit_ms": (t_submit - killed_at) * 1000,
            "submit_to_verified_ms": (t_final - t_submit) * 1000,
            "expiry_height": expiry, "submitted_height": final["submitted_height"], "finished_height": final["finished_height"],
            # The block that marked the node missed: from its proposal, and from this client seeing it committed.
            "expiry_to_verified_ms": (t_final - proposed) * 1000,
            "expiry_seen_to_verified_ms": (t_final - seen[expiry]) * 1000 if expiry in seen else None,
            "assignments": [{k: a.get(k) for k in ("attempt", "peer_id", "assigned_height", "ack_deadline", "deadline", "status")}
                            for a in final["assignments"]],
        }
    return {"victim": victim, "error": f"none of {TRIES} jobs was assigned to the killed node", "other_jobs": others}
