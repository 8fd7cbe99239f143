"""``--follow``: a job's progress as the user wants to read it, on stderr.

One line says how long we have been waiting and what for, from what
``analytics_status`` answers (node/app/queries.py ``job``: the assignments of
each attempt with their deadline heights, the results committed so far) and
the chain's height::

    running 12.4 s · 2/2 nodes assigned, 1 result in, waiting for 12D3…hkMd (reassigned in ~20 s)
    running 1.1 s · 2/2 nodes assigned, 0 results in, 12D3…hkMd has not acknowledged; replaced at height 41 (in ~2 s), waiting for 12D3…x9Qe (reassigned in ~20 s, at height 60)

An assignee that has not acknowledged its assignment on chain (``job.ack``,
under the chain rule ``ack_blocks``) is named apart, with the height at which
the chain replaces it if it stays silent (its ``ack_deadline``): a dead node
shows there within a block or two, long before the job's deadline.

Seconds are estimated from the block timestamps (``chain_head`` and a block a
few heights back); without an estimate the line counts blocks. On a terminal
the line is redrawn in place (rich's status spinner) and the final verdict
stays; on a pipe a line is written only when its content changes (not for
every tick of the clock), so a log of a follow is short and diffable; with
``--quiet`` / ``--json`` nothing is written.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Mapping, Sequence
from typing import Any

from node.cli.present import is_terminal

FINAL_STATES = ("verified", "disputed", "failed", "cancelled")
POLL_SECONDS = 0.5
BLOCKS_SAMPLED = 10  # how many blocks back the seconds-per-block estimate looks


def short_peer(peer_id: str) -> str:
    """``12D3KooW…hkMd``-style: enough of a peer id to tell nodes apart in one line."""
    return peer_id if len(peer_id) <= 12 else f"{peer_id[:4]}…{peer_id[-4:]}"


def _plural(n: int, word: str) -> str:
    return f"{n} {word}{'' if n == 1 else 's'}"


def _in_time(blocks: int, seconds_per_block: float | None) -> str:
    if blocks <= 0:
        return "now"
    if seconds_per_block:
        return f"in ~{max(1, round(blocks * seconds_per_block))} s"
    return f"in {_plural(blocks, 'block')}"


def awaited(status: Mapping[str, Any] | None, *, height: int | None, seconds_per_block: float | None) -> str:
    """What the job is waiting for (or how it ended), without the clock: the part
    of the progress line whose change makes a new line on a pipe. The number of
    attempts is the chain's (``max_attempts`` of the status: a rule votes may
    change); a node that does not say it gets no "of N"."""
    if status is None:
        return "waiting for the job to be committed to a block"
    state, reason = status["state"], status.get("reason")
    results: Sequence[Mapping[str, Any]] = status.get("results") or []
    if state == "submitted":
        return "waiting to be scheduled" + (f": {reason}" if reason else "")
    if state in FINAL_STATES:
        if state == "verified":
            return f"{len(results)}/{status.get('replication', len(results))} results agree"
        return reason or state
    assignments: Sequence[Mapping[str, Any]] = status.get("assignments") or []
    wanted = int(status.get("replication") or 1)
    delivered = {r["node"] for r in results}
    active = {a["node"] for a in assignments if a.get("status") in ("pending", "delivered")}
    pending = [a for a in assignments if a.get("status") == "pending" and a["node"] not in delivered]
    silent = [a for a in pending if _unacknowledged(a)]
    waiting = [a for a in pending if not _unacknowledged(a)]
    attempt = int(status.get("attempt") or 1)
    max_attempts = status.get("max_attempts")
    parts = [f"attempt {attempt}" + (f"/{max_attempts}" if max_attempts else "")] if attempt > 1 else []
    parts.append(f"{len(active | delivered)}/{wanted} nodes assigned, {len(results)} result{'' if len(results) == 1 else 's'} in")
    last = max_attempts is not None and attempt >= int(max_attempts)
    for a in silent[:3]:
        due = int(a["ack_deadline"])
        when = (f" ({_in_time(due - height, seconds_per_block)})" if height is not None else "")
        parts.append(f"{short_peer(str(a.get('peer_id') or a['node']))} has not acknowledged; "
                     f"{'the job fails' if last else 'replaced'} at height {due}{when}")
    if len(silent) > 3:
        parts.append(f"{len(silent) - 3} more have not acknowledged")
    if waiting:
        names = ", ".join(short_peer(str(a.get("peer_id") or a["node"])) for a in waiting[:3])
        more = f" and {len(waiting) - 3} more" if len(waiting) > 3 else ""
        deadline = min(int(a["deadline"]) for a in waiting)
        then = "the job fails" if last else "reassigned"
        when = (f" ({then} {_in_time(deadline - height, seconds_per_block)}, at height {deadline})"
                if height is not None else f" (deadline height {deadline})")
        parts.append(f"waiting for {names}{more}{when}")
    elif wanted > len(active | delivered) and not silent:
        parts.append("waiting for more nodes" + (f": {reason}" if reason else ""))
    return ", ".join(parts)


def _unacknowledged(assignment: Mapping[str, Any]) -> bool:
    """A pending assignment the chain replaces at its ack deadline unless the node
    acknowledges it first (the deadline before the result deadline: else that decides)."""
    due = assignment.get("ack_deadline")
    return due is not None and assignment.get("acked_height") is None and int(due) < int(assignment["deadline"])


def progress_line(status: Mapping[str, Any] | None, elapsed: float, what: str) -> str:
    """``running 12.4 s · <what>``: the state, how long we have followed it, and what it waits for."""
    state = "submitted" if status is None else status["state"]
    return f"{state} {elapsed:.1f} s · {what}"


class FollowDisplay:
    """Where the progress line goes: redrawn on a terminal, a line per change on a pipe, or nowhere."""

    def __init__(self, enabled: bool) -> None:
        self.enabled = enabled
        self.styled = enabled and is_terminal(sys.stderr)
        self._last: str | None = None
        self._status: Any = None  # rich.status.Status while following on a terminal

    def update(self, status: Mapping[str, Any] | None, elapsed: float, what: str) -> None:
        if not self.enabled:
            return
        line = progress_line(status, elapsed, what)
        if self.styled:
            if self._status is None:
                from rich.console import Console
                from rich.status import Status

                console = Console(stderr=True, highlight=False, markup=False, emoji=False)
                self._status = Status(line, console=console, spinner="dots")
                self._status.start()
            else:
                self._status.update(line)
            return
        key = f"{'-' if status is None else status['state']}|{what}"
        if key != self._last:
            self._last = key
            print(line, file=sys.stderr, flush=True)

    def finish(self, status: Mapping[str, Any] | None, elapsed: float, what: str) -> None:
        """The last line: on a terminal the in-place line is replaced by a lasting one."""
        if not self.enabled:
            return
        if self._status is not None:
            self._status.stop()
            from rich.text import Text

            style = "green" if status is not None and status["state"] == "verified" else "bold red"
            self._status.console.print(Text(progress_line(status, elapsed, what), style=style))
            self._status = None
            return
        self.update(status, elapsed, what)

    def close(self) -> None:
        """Stop redrawing (also when following ends in an error)."""
        if self._status is not None:
            self._status.stop()
            self._status = None


class BlockClock:
    """Seconds per block, estimated from block timestamps, and the chain's height now."""

    def __init__(self) -> None:
        self.seconds_per_block: float | None = None
        self.height: int | None = None
        self._first: tuple[int, int] | None = None  # (height, timestamp ms) of the oldest block seen

    async def tick(self, rpc: Any) -> None:
        head = await rpc.call("chain_head")
        self.height = int(head["height"])
        if self._first is None:
            self._first = (self.height, int(head["timestamp_ms"]))
            if self.height > BLOCKS_SAMPLED:
                old = await rpc.call("chain_block", {"height": self.height - BLOCKS_SAMPLED})
                self._first = (int(old["height"]), int(old["timestamp_ms"]))
        blocks = self.height - self._first[0]
        if blocks > 0:
            self.seconds_per_block = max(0.0, (int(head["timestamp_ms"]) - self._first[1]) / 1000 / blocks)


async def status_or_none(rpc: Any, job_id: str) -> dict[str, Any] | None:
    """The job's status, or None while it is not in a committed block yet."""
    from node.base.errors import ErrorCode
    from node.p2p.rpc_client import RpcCallError

    try:
        answer: dict[str, Any] = await rpc.call("analytics_status", {"job_id": job_id})
        return answer
    except RpcCallError as exc:
        if exc.code == ErrorCode.NOT_FOUND:
            return None
        raise


async def follow_job(client: Any, job_id: str, *, display: FollowDisplay, include_result: bool = True,
                     started: float | None = None, timeout: float = 600.0) -> dict[str, Any]:
    """Poll the job until it is final, showing progress; its last status (with
    ``result`` for a verified job when ``include_result``). A job that is still
    not committed after ``timeout`` seconds, or not final, raises trio.TooSlowError."""
    import trio

    started = time.monotonic() if started is None else started
    clock = BlockClock()
    try:
        with trio.fail_after(timeout):
            while True:
                status = await status_or_none(client.rpc, job_id)
                await clock.tick(client.rpc)
                what = awaited(status, height=clock.height, seconds_per_block=clock.seconds_per_block)
                if status is not None and status["state"] in FINAL_STATES:
                    if include_result and status["state"] == "verified":
                        status["result"] = await client.result(job_id)
                    display.finish(status, time.monotonic() - started, what)
                    return status
                display.update(status, time.monotonic() - started, what)
                await trio.sleep(POLL_SECONDS)
    finally:
        display.close()
