"""A wide-area network and CPU model for the simulator (``Scenario.wan``).

Links: every directed link (a, b) gets a base one-way delay drawn uniformly
from ``[min_ms, max_ms]`` by a random stream of the seed alone, so a run's
topology is fixed before it starts; each message then adds a jitter drawn
uniformly from ``[0, jitter_pct% of the base]`` from the run's own stream.
Links are asymmetric, as routes on the Internet are.

CPU: each process is one core that handles its messages one at a time, in
arrival order. Handling a message costs ``message_us`` (decoding, the core's
bookkeeping) plus ``verify_us`` per Ed25519 signature it carries (a COMMIT's
seal, a justification's round changes and prepares included) plus
``vrf_us`` per seed proof; the core sees it only once that work is done.
Broadcasting costs ``sign_us`` per signature made (plus ``vrf_us`` for a
proposal's seed proof), before the copies leave. So at n validators a node
spends O(n) per height and the network O(n^2): the cost a 64-validator chain
pays that a 4-validator one does not. Finalised blocks travel the links but
cost no CPU: their seals are the COMMITs each node verified already (the
daemon's signature cache serves them).

Times are integers (no float in the run): link delays in ms, CPU costs in
microseconds. A process's CPU clock is kept in microseconds and an event it
enables falls on the next whole millisecond, so rounding never accumulates.
The same seed and model give the same run, byte for byte.
"""

from __future__ import annotations

import random
from collections import Counter
from dataclasses import dataclass

from node.consensus import messages as m
from node.consensus.outputs import Broadcast


@dataclass(frozen=True)
class WanModel:
    """The wide-area model's parameters (all integers)."""

    min_ms: int = 20
    max_ms: int = 150
    jitter_pct: int = 10  # per message, up to this share of the link's base delay
    sign_us: int = 0  # one Ed25519 signature
    verify_us: int = 0  # one Ed25519 verification
    vrf_us: int = 0  # one seed proof (RFC 9381 VRF), made or checked
    message_us: int = 0  # handling one message beyond its signature checks
    block_period_ms: int = 500  # the testnet's (node/testnet/layout.py)
    round_timeout_base_ms: int = 4_000  # the genesis defaults (node/consensus/genesis.py)
    round_timeout_cap_ms: int = 60_000

    def __post_init__(self) -> None:
        if not 1 <= self.min_ms <= self.max_ms:
            raise ValueError(f"link delays: need 1 <= min_ms <= max_ms, got {self.min_ms}..{self.max_ms}")
        if not 0 <= self.jitter_pct <= 100:
            raise ValueError(f"jitter_pct must be 0..100, got {self.jitter_pct}")
        for name in ("sign_us", "verify_us", "vrf_us", "message_us"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must not be negative, got {getattr(self, name)}")
        if self.block_period_ms < 1 or self.round_timeout_base_ms < 1 or self.round_timeout_cap_ms < 1:
            raise ValueError("block_period_ms and the round timeouts must be positive")

    def describe(self) -> str:
        return (f"wan={self.min_ms}-{self.max_ms}ms+{self.jitter_pct}% sign={self.sign_us}us "
                f"verify={self.verify_us}us vrf={self.vrf_us}us msg={self.message_us}us")


def link_delays(model: WanModel, seed: int, processes: int) -> list[list[int]]:
    """``delays[a][b]``: the base one-way delay of link a -> b in ms (0 on the
    diagonal), from the seed alone."""
    rng = random.Random(f"metanode-sim-wan-links/{seed}/{processes}/{model.min_ms}/{model.max_ms}")
    return [[0 if a == b else rng.randint(model.min_ms, model.max_ms) for b in range(processes)]
            for a in range(processes)]


class Wan:
    """The model at work in one run: link delays, each process's CPU clock,
    and what it counted (messages, bytes and CPU, by height)."""

    def __init__(self, model: WanModel, seed: int, processes: int) -> None:
        self.model = model
        self.base = link_delays(model, seed, processes)
        self._jitter = random.Random(f"metanode-sim-wan-jitter/{seed}/{processes}")
        self._cpu_free_us = [0] * processes
        self.cpu_us = [0] * processes  # CPU each process spent, in the model
        self.messages_by_height: Counter[int] = Counter()  # consensus message copies sent, by height
        self.bytes_by_height: Counter[int] = Counter()
        self.blocks_sent = 0  # finalised-block announcements
        self._costs: dict[bytes, int] = {}  # a broadcast's bytes -> its handling cost (one decode per broadcast)

    def arrival(self, src: int, dst: int, depart_ms: int) -> int:
        """When a message leaving ``src`` at ``depart_ms`` reaches ``dst``."""
        base = self.base[src][dst]
        return depart_ms + base + self._jitter.randint(0, base * self.model.jitter_pct // 100)

    def _spend(self, pid: int, now_ms: int, cost_us: int) -> int:
        """Run ``cost_us`` of work on ``pid``'s core after what it has queued;
        the whole millisecond by which it is done."""
        done = max(now_ms * 1000, self._cpu_free_us[pid]) + cost_us
        self._cpu_free_us[pid] = done
        self.cpu_us[pid] += cost_us
        return -(-done // 1000)

    def broadcast(self, pid: int, now_ms: int, out: Broadcast, copies: int) -> int:
        """Sign ``out`` on ``pid``'s core; the ms its copies leave."""
        signatures = 2 if out.kind == m.COMMIT else 1  # a COMMIT signs its seal too
        cost = self.model.sign_us * signatures + (self.model.vrf_us if out.kind == m.PROPOSAL else 0)
        self.messages_by_height[out.height] += copies
        self.bytes_by_height[out.height] += copies * len(out.message)
        return self._spend(pid, now_ms, cost)

    def received(self, pid: int, now_ms: int, data: bytes) -> int:
        """Queue a message that reached ``pid`` at ``now_ms``; the ms its core
        has checked it and may act on it."""
        return self._spend(pid, now_ms, self.cost_us(data))

    def cost_us(self, data: bytes) -> int:
        cost = self._costs.get(data)
        if cost is None:
            cost = self._costs[data] = self._handling_cost(data)
        return cost

    def _handling_cost(self, data: bytes) -> int:
        model = self.model
        try:
            message = m.decode_message(data, max_size=1 << 24, max_block_size=1 << 24)
        except m.MessageError:
            return model.message_us  # refused at decoding: no signature checked
        s = message.signed
        signatures = 1 + (s.seal is not None) + len(message.round_changes) + len(message.prepares)
        proofs = 1 if s.kind == m.PROPOSAL and message.block is not None else 0
        return model.message_us + model.verify_us * signatures + model.vrf_us * proofs
