"""Wide-area runs: how finality grows with n under the WAN model (network.py).

``run_wan(seed, n, model)`` runs n validators over seeded wide-area links,
with each node's CPU spending ``model``'s costs on every signature it makes
and checks, under a steady client load: one transaction every
``tx_interval_ms`` for ``load_ms``, each submitted to one honest validator
(drawn from the seed) and gossiped from there over its links; a proposer
includes the transactions it has heard of and its chain lacks, oldest first.
With ``silent=True`` one validator is silent from the start: the one that
proposes round 0 at height 2 (so every run meets it at least once, and once
every n heights after).

Definitions (all in virtual time):

* a block is *final at a quorum* when the quorum-th validator (2f+1 of n)
  has finalised it, and *final at all honest* when the last honest one has;
* a transaction's finality is from its submission to its block being final
  at a quorum (or at all honest);
* proposal to commit: from the moment the proposal of the round that decided
  a block leaves its proposer to the block being final at a quorum;
* the lower bound: three one-way delays (PROPOSAL, PREPARE, COMMIT) over the
  median base link of the run, ignoring CPU and jitter.

Every run is also checked as ``run_seed``'s are: agreement (no fork) and the
validity of every final block, and liveness (every transaction final at every
honest node before ``deadline_ms``).
"""

from __future__ import annotations

import hashlib
import random
import statistics
from dataclasses import dataclass, field
from typing import Any

from node.consensus import messages as m
from node.consensus.block import Block
from node.consensus.outputs import Broadcast, NeedProposal
from node.consensus.sim import _check_agreement_and_validity
from node.consensus.sim.network import WanModel
from node.consensus.sim.scenario import Scenario
from node.consensus.sim.world import InvariantViolation, Process, World, member_identity

__all__ = ["WanModel", "WanResult", "make_wan_scenario", "percentile", "run_wan", "silent_member"]


def silent_member(n: int) -> int:
    """The member that proposes round 0 at height 2: the second key in the
    set's order (height 1 goes to the first, see ``ValidatorSet.proposer``)."""
    keys = sorted((member_identity(i).public_key, i) for i in range(n))
    return keys[1][1]


def make_wan_scenario(seed: int, n: int, model: WanModel, *, silent: bool = False) -> Scenario:
    """No faults but, with ``silent``, one silent validator; clocks within
    20 ms of each other (NTP-synchronised machines)."""
    if n < 1 or n > 256:
        raise ValueError(f"n must be 1..256, got {n}")
    if silent and n < 4:
        raise ValueError(f"a silent validator needs n >= 4 (f >= 1), got n={n}")
    rng = random.Random(f"metanode-sim-wan-scenario/{seed}/{n}")
    scenario = Scenario(seed=seed, n=n, faults=("silent",) if silent else (), wan=model)
    if silent:
        scenario.byzantine[silent_member(n)] = "silent"
    scenario.skew_ms = [rng.randint(-20, 20) for _ in range(n)]
    return scenario


def percentile(values: list[int], p: int) -> int:
    """Nearest-rank percentile (p in 1..100) of a non-empty list of integers."""
    ordered = sorted(values)
    return ordered[max(0, (p * len(ordered) + 99) // 100 - 1)]


class WanWorld(World):
    """A world with a client load and the timings the report needs."""

    def __init__(self, scenario: Scenario, load_ms: int, tx_interval_ms: int, min_heights: int) -> None:
        super().__init__(scenario)
        self.min_heights = min_heights
        self.load = random.Random(f"metanode-sim-wan-load/{scenario.seed}/{scenario.n}")
        self.honest = [p.pid for p in self.processes if p.correct]
        self.quorum = self.genesis.validator_set.quorum
        self.submissions = load_ms // tx_interval_ms
        self.tx_interval_ms = tx_interval_ms
        self.submit_ms: list[int] = []  # tx i was submitted at submit_ms[i]
        self.known_ms: list[list[int]] = []  # known_ms[i][pid]: when pid has heard of tx i
        self.committed: list[set[int]] = [set() for _ in self.processes]  # tx indices in each process's chain
        self.oldest: list[int] = [0] * len(self.processes)  # every tx below it is in the process's chain
        self.final_ms: dict[int, dict[int, int]] = {}  # height -> pid -> when it finalised it
        self.blocks: dict[int, Block] = {}
        self.tx_height: dict[int, int] = {}
        self.final_everywhere = 0  # transactions final at every honest process
        self._final_count: dict[int, int] = {}
        self.proposal_ms: dict[tuple[int, int], int] = {}  # (height, round) -> when its proposal left

    def start(self) -> None:
        for proc in self.processes:
            self.schedule(0, "start", (proc.pid,))
        for k in range(self.submissions):
            self.schedule(k * self.tx_interval_ms, "client_tx", (k,))

    def done(self) -> bool:
        return (len(self.submit_ms) == self.submissions and self.final_everywhere == self.submissions
                and all(self.processes[pid].height >= self.min_heights for pid in self.honest))

    def _ev_client_tx(self, index: int) -> None:
        assert self.wan is not None and index == len(self.submit_ms)
        entry = self.honest[self.load.randrange(len(self.honest))]
        self.submit_ms.append(self.now)
        self.known_ms.append([self.now if pid == entry else self.wan.arrival(entry, pid, self.now)
                              for pid in range(len(self.processes))])

    def answer_proposal(self, proc: Process, need: NeedProposal) -> list:
        limit = self.genesis.limits.max_txs_per_block
        mine = self.committed[proc.pid]
        txs = []
        for index in range(self.oldest[proc.pid], len(self.submit_ms)):
            if index not in mine and self.known_ms[index][proc.pid] <= self.now:
                txs.append(b"ok/tx/%d" % index)
                if len(txs) == limit:
                    break
        timestamp = max(self.local(proc), need.earliest_timestamp_ms)
        assert proc.core is not None
        return proc.core.propose(need.height, need.round, txs, timestamp, self.local(proc))

    def broadcast_sent(self, proc: Process, out: Broadcast, depart: int) -> None:
        if out.kind == m.PROPOSAL:
            self.proposal_ms.setdefault((out.height, out.round), depart)

    def finalized(self, proc: Process, block: Block) -> None:
        self.final_ms.setdefault(block.height, {})[proc.pid] = self.now
        self.blocks.setdefault(block.height, block)
        mine = self.committed[proc.pid]
        for tx in block.transactions:
            index = int(tx.rsplit(b"/", 1)[1])
            mine.add(index)
            self.tx_height[index] = block.height
            if proc.correct:
                self._final_count[index] = count = self._final_count.get(index, 0) + 1
                if count == len(self.honest):
                    self.final_everywhere += 1
        while self.oldest[proc.pid] in mine:
            self.oldest[proc.pid] += 1

    def quorum_ms(self, height: int) -> int | None:
        times = sorted(self.final_ms.get(height, {}).values())
        return times[self.quorum - 1] if len(times) >= self.quorum else None

    def all_honest_ms(self, height: int) -> int | None:
        times = self.final_ms.get(height, {})
        return max(times[pid] for pid in self.honest) if all(pid in times for pid in self.honest) else None


@dataclass
class WanResult:
    seed: int
    n: int
    silent: bool
    model: WanModel
    ok: bool
    error: str | None
    heights: int  # blocks final at every honest process
    virtual_ms: int
    txs: int
    tx_quorum_ms: list[int]  # per transaction, submit -> final at a quorum
    tx_all_ms: list[int]  # per transaction, submit -> final at all honest
    proposal_ms: list[int]  # per height, proposal -> final at a quorum
    commit_rounds: list[int]  # per height, the round that decided it
    messages_per_height: int
    bytes_per_height: int
    blocks_per_height: int  # finalised-block announcements
    cpu_us_per_height: int  # per honest validator, in the model
    median_link_ms: int
    silent_heights: list[tuple[int, int, int]] = field(default_factory=list)  # (height, round, quorum gap since the previous)
    trace_digest: str = ""

    @property
    def lower_bound_ms(self) -> int:
        return 3 * self.median_link_ms

    @property
    def rounds_per_height(self) -> float:
        return sum(r + 1 for r in self.commit_rounds) / len(self.commit_rounds) if self.commit_rounds else float("nan")

    def summary(self) -> dict[str, Any]:
        """The figures, JSON-ready."""
        def pct(values: list[int], p: int) -> int | None:
            return percentile(values, p) if values else None

        return {
            "n": self.n, "silent": self.silent, "seed": self.seed, "ok": self.ok, "error": self.error,
            "heights": self.heights, "txs": self.txs, "virtual_ms": self.virtual_ms,
            "tx_quorum_p50_ms": pct(self.tx_quorum_ms, 50), "tx_quorum_p99_ms": pct(self.tx_quorum_ms, 99),
            "tx_all_p50_ms": pct(self.tx_all_ms, 50), "tx_all_p99_ms": pct(self.tx_all_ms, 99),
            "proposal_quorum_p50_ms": pct(self.proposal_ms, 50), "proposal_quorum_p99_ms": pct(self.proposal_ms, 99),
            "rounds_per_height": self.rounds_per_height,
            "messages_per_height": self.messages_per_height, "bytes_per_height": self.bytes_per_height,
            "blocks_per_height": self.blocks_per_height, "cpu_ms_per_height": self.cpu_us_per_height / 1000,
            "median_link_ms": self.median_link_ms, "lower_bound_ms": self.lower_bound_ms,
            "silent_heights": [list(h) for h in self.silent_heights],
        }


def run_wan(
    seed: int, n: int, model: WanModel | None = None, *, silent: bool = False,
    load_ms: int = 5_000, tx_interval_ms: int = 50, min_heights: int = 3, deadline_ms: int = 120_000,
) -> WanResult:
    """One seeded wide-area run; every invariant checked (see the module doc).
    It ends once every transaction is final at every honest validator and
    they all hold ``min_heights`` blocks (3: past the silent proposer's)."""
    model = model if model is not None else WanModel()
    if load_ms < tx_interval_ms or tx_interval_ms < 1:
        raise ValueError(f"need 1 <= tx_interval_ms <= load_ms, got {tx_interval_ms} and {load_ms}")
    world = WanWorld(make_wan_scenario(seed, n, model, silent=silent), load_ms, tx_interval_ms, min_heights)
    world.start()
    error = None
    try:
        world.run_until(load_ms + deadline_ms, stop=world.done)
        if not world.done():
            raise InvariantViolation(
                f"liveness: {world.final_everywhere}/{world.submissions} transactions final at every honest "
                f"validator, and heights {[world.processes[pid].height for pid in world.honest]} "
                f"(wanted {min_heights}), {deadline_ms} ms after the load ended"
            )
        _check_agreement_and_validity(world)
    except InvariantViolation as exc:
        error = str(exc)
    return _result(world, seed, n, silent, model, error)


def _result(world: WanWorld, seed: int, n: int, silent: bool, model: WanModel, error: str | None) -> WanResult:
    assert world.wan is not None
    wan = world.wan
    heights = min(world.processes[pid].height for pid in world.honest)
    tx_quorum, tx_all = [], []
    for index, submitted in enumerate(world.submit_ms):
        height = world.tx_height.get(index)
        quorum = None if height is None else world.quorum_ms(height)
        every = None if height is None else world.all_honest_ms(height)
        if quorum is not None and every is not None:
            tx_quorum.append(quorum - submitted)
            tx_all.append(every - submitted)
    proposal, rounds, silent_heights = [], [], []
    silent_pids = {pid for pid in range(len(world.processes)) if pid not in world.honest}
    for height in range(1, heights + 1):
        block = world.blocks[height]
        rounds.append(block.commit_round)
        quorum = world.quorum_ms(height)
        left = world.proposal_ms.get((height, block.commit_round))
        if quorum is not None and left is not None:
            proposal.append(quorum - left)
        parent = world.blocks[height - 1].header if height > 1 else world.genesis_header
        proposer = world.genesis.validator_set.proposer(parent.proposer, 0)
        if any(world.processes[pid].identity.public_key == proposer for pid in silent_pids) and quorum is not None:
            previous = world.quorum_ms(height - 1) if height > 1 else 0
            silent_heights.append((height, block.commit_round, quorum - (previous or 0)))
    links = [wan.base[a][b] for a in range(n) for b in range(n) if a != b] or [0]
    per = max(heights, 1)
    honest_cpu = sum(wan.cpu_us[pid] for pid in world.honest) // max(len(world.honest), 1)
    trace = hashlib.sha256(repr((world.messages_sent, world.now, world.submit_ms, world.final_ms)).encode())
    for proc in world.processes:
        for block in proc.chain:
            trace.update(block.encode())
    return WanResult(
        seed=seed, n=n, silent=silent, model=model, ok=error is None, error=error, heights=heights,
        virtual_ms=world.now, txs=len(world.submit_ms), tx_quorum_ms=tx_quorum, tx_all_ms=tx_all,
        proposal_ms=proposal, commit_rounds=rounds,
        messages_per_height=sum(wan.messages_by_height[h] for h in range(1, heights + 1)) // per,
        bytes_per_height=sum(wan.bytes_by_height[h] for h in range(1, heights + 1)) // per,
        blocks_per_height=wan.blocks_sent // per, cpu_us_per_height=honest_cpu // per,
        median_link_ms=statistics.median_low(links), silent_heights=silent_heights, trace_digest=trace.hexdigest(),
    )
