"""Load for a running testnet: signed transactions submitted over JSON-RPC at a
steady rate, spread across nodes, surviving nodes that die or vanish.

This module's load is ``noop`` transactions. Analytics jobs plug in through
:class:`JobWorkload`, which the runner calls when a manifest sets
``[load] job_rate``; the implementation is
:class:`node.testnet.jobload.AnalyticsWorkload` (jobs submitted across nodes,
then checked: every job final, every receipt verifies offline).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Protocol

import trio

from node.base.keys import Identity
from node.consensus.tx import Transaction, sign_tx
from node.p2p.client import call_node
from node.p2p.rpc import RpcCallError

SUBMIT_TIMEOUT_S = 5.0
PER_SENDER_RATE = 1.0  # a sender submits sequentially; more rate means more senders
DRAIN_WINDOW = 32  # transactions re-sent per pass; within the mempool's per-sender nonce window (64)
FULL_RETRY_S = 0.2  # first wait before resending a transaction refused for want of room (doubles)
FULL_RETRIES = 3  # then the next transaction's answer (or drain) brings it back


class JobWorkload(Protocol):
    """Extension point for analytics jobs (implemented by node.testnet.jobload.AnalyticsWorkload).

    ``run`` submits jobs until ``trio.current_time() >= stop_at``; ``check``
    runs after the network caught up and returns one line per problem (a job
    not in a final state, a receipt that fails offline verification);
    ``summary`` is one line of figures for the report (jobs per state, latency).
    """

    async def run(self, addresses: list[str], stop_at: float) -> None: ...

    async def check(self, addresses: list[str]) -> list[str]: ...

    def summary(self) -> str: ...


@dataclass
class SenderLog:
    identity: Identity
    txs: list[Transaction] = field(default_factory=list)  # index == nonce


@dataclass(frozen=True)
class SubmitAnswer:
    """What one submission came to. ``expected_nonce``: the node needs that
    nonce of the sender next (every refusal about nonces or room says so, and
    an admission held behind a gap too)."""

    reached: bool  # some node answered (accepted or refused)
    accepted: bool = False
    reason: str | None = None  # the mempool's stable reason when refused
    expected_nonce: int | None = None


@dataclass
class LoadGenerator:
    """Submits ``noop`` transactions at ``tx_rate`` per second until stopped.

    Each sender submits its nonces in order (mode ``sync``: admitted to a
    mempool). When a node answers that it needs an earlier nonce of the sender
    (``expected_nonce``: one was refused, for a full pool say, or lost), the
    sender resends from there before going on, as README's table of rejection
    codes tells every client to. A node that is down or cut off is skipped for
    the next; a transaction a dying node took with it is re-sent by :meth:`drain`.
    """

    addresses: list[str]
    chain_id: str
    tx_rate: float
    label: str = "loadgen"
    senders: list[SenderLog] = field(default_factory=list)
    unreachable_attempts: int = 0
    rejected: int = 0
    resent: int = 0  # submissions of an earlier nonce because a node said it expected it

    def __post_init__(self) -> None:
        count = max(1, math.ceil(self.tx_rate / PER_SENDER_RATE)) if self.tx_rate > 0 else 0
        self.senders = [SenderLog(Identity.from_label(f"{self.label}/sender{i}")) for i in range(count)]

    @property
    def submitted(self) -> list[Transaction]:
        return [tx for s in self.senders for tx in s.txs]

    async def run(self, stop_at: float) -> None:
        """Submit until ``trio.current_time() >= stop_at``."""
        if not self.senders:
            return
        interval = len(self.senders) / self.tx_rate
        async with trio.open_nursery() as nursery:
            for i, sender in enumerate(self.senders):
                nursery.start_soon(self._sender_loop, i, sender, interval, stop_at)

    async def _sender_loop(self, index: int, sender: SenderLog, interval: float, stop_at: float) -> None:
        # Stagger senders so submissions spread evenly over each interval.
        next_at = trio.current_time() + interval * index / len(self.senders)
        while True:
            await trio.sleep_until(next_at)
            if trio.current_time() >= stop_at:
                return
            nonce = len(sender.txs)
            tx = sign_tx(sender.identity, chain_id=self.chain_id, nonce=nonce, tx_type="noop", payload={"sender": index, "n": nonce})
            sender.txs.append(tx)
            await self._submit_in_order(sender, nonce, start=index + nonce)
            next_at = max(next_at + interval, trio.current_time())

    async def _submit_in_order(self, sender: SenderLog, nonce: int, *, start: int) -> None:
        """Submit the sender's transaction ``nonce``, first resending from
        whatever earlier nonce the node says it expects. Bounded: at most
        :data:`DRAIN_WINDOW` resends and :data:`FULL_RETRIES` waits for room per
        call; what is still missing then is taken up by the next transaction's
        answer, or by :meth:`drain`."""
        position, resends, waits = nonce, 0, 0
        while position <= nonce:
            answer = await self._submit(sender.txs[position], start=start, mode="sync", timeout=SUBMIT_TIMEOUT_S)
            if not answer.reached:
                return
            expected = answer.expected_nonce
            if expected is not None and expected < position:
                # A gap before this one (refused or lost): resend from it; the
                # transactions held behind it follow by themselves.
                if resends >= DRAIN_WINDOW:
                    return
                self.resent += 1
                position = expected
                continue
            if answer.reason in ("mempool_full", "sender_limit") and expected == position and waits < FULL_RETRIES:
                # No room for it now: a block or two makes some.
                await trio.sleep(FULL_RETRY_S * 2**waits)
                waits += 1
                continue
            if position < nonce:
                resends += 1
            position += 1  # accepted, already pending or committed, or given up on for now

    async def _submit(self, tx: Transaction, *, start: int, mode: str, timeout: float) -> SubmitAnswer:
        """Try nodes in turn from ``start`` until one answers (accepts or refuses)."""
        for k in range(len(self.addresses)):
            address = self.addresses[(start + k) % len(self.addresses)]
            try:
                with trio.fail_after(timeout + 2):
                    result = await call_node(address, "tx_submit", {"tx": tx.encoded.hex(), "mode": mode, "timeout": timeout}, timeout=timeout + 1)
                expected = result.get("expected_nonce") if isinstance(result, dict) else None
                return SubmitAnswer(True, accepted=True, expected_nonce=expected if isinstance(expected, int) else None)
            except RpcCallError as exc:
                # Refused (duplicate, a nonce the node does not expect, no room...): the node is up.
                self.rejected += 1
                data = exc.data if isinstance(exc.data, dict) else {}
                expected = data.get("expected_nonce")
                reason = data.get("reason")
                return SubmitAnswer(True, reason=reason if isinstance(reason, str) else None,
                                    expected_nonce=expected if isinstance(expected, int) else None)
            except (Exception, trio.TooSlowError):
                self.unreachable_attempts += 1
        return SubmitAnswer(False)

    async def drain(self, *, deadline: float, commit_timeout: float = 20.0) -> None:
        """Re-send, in nonce order, every transaction the chain does not hold yet
        (lost with a killed node's mempool, or refused while the chain stalled
        and the sender ran more than a mempool's nonce window ahead), until
        committed or ``deadline``. Each pass sends up to :data:`DRAIN_WINDOW`
        of them (admitted in order), then waits for the last to commit."""

        async def settle(index: int, sender: SenderLog) -> None:
            attempt = 0
            while trio.current_time() < deadline:
                committed_next = await self._committed_next(sender, attempt)
                if committed_next is not None and committed_next >= len(sender.txs):
                    return
                if committed_next is not None:
                    window = sender.txs[committed_next:committed_next + DRAIN_WINDOW]
                    for tx in window[:-1]:
                        await self._submit(tx, start=attempt, mode="sync", timeout=SUBMIT_TIMEOUT_S)
                    await self._submit(window[-1], start=attempt, mode="commit", timeout=commit_timeout)
                else:
                    await trio.sleep(1.0)
                attempt += 1

        async with trio.open_nursery() as nursery:
            for i, sender in enumerate(self.senders):
                nursery.start_soon(settle, i, sender)

    async def _committed_next(self, sender: SenderLog, start: int) -> int | None:
        for k in range(len(self.addresses)):
            address = self.addresses[(start + k) % len(self.addresses)]
            try:
                with trio.fail_after(SUBMIT_TIMEOUT_S + 2):
                    answer = await call_node(address, "chain_nonce", {"sender": sender.identity.public_key.hex()}, timeout=SUBMIT_TIMEOUT_S)
                return int(answer["committed_next"])
            except (Exception, trio.TooSlowError):
                continue
        return None
