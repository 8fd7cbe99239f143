"""The simulated world: processes running IbftCore, a seeded network, faults.

Discrete-event: a heap of (time, sequence, event). Nothing sleeps; virtual
time jumps to the next event. Every process keeps only what it persisted
(its Persist outputs and its Finalized blocks, with the application state
they imply) across a crash.

Processes are the genesis validators (pid i runs identity i), the second
process of a shared key (pid n), then the spares. Every process runs a core
and follows the chain; which of them sign at a height is up to the validator
set its own application derives from its own chain (``SimApplication``).
"""

from __future__ import annotations

import heapq
import random
from collections import deque
from dataclasses import dataclass, field
from typing import Any

from node.base.keys import Identity
from node.consensus import messages as m
from node.consensus.block import SEAL_TAG, Block, BlockHeader, genesis_header, seal_message, transactions_root
from node.consensus.genesis import Genesis, Limits
from node.consensus.ibft import IbftCore
from node.consensus.outputs import Broadcast, Finalized, NeedProposal, NeedSync, Persist, RoundStarted, SetTimer
from node.consensus.safety import SafetyState
from node.consensus.sim.application import ADMITTED, SimApplication, admitted, set_change_tx
from node.consensus.sim.memo import MemoVerifier, MemoVrfVerifier
from node.consensus.sim.network import Wan
from node.consensus.sim.scenario import Scenario
from node.consensus.validators import ACTIVATION_DELAY, ValidatorSet

GENESIS_TIME_MS = 1_767_225_600_000
# The fault runs' genesis: a proposer told transactions wait proposes this soon
# after its parent, one with none at the heartbeat (block_period_ms, 500).
MIN_BLOCK_INTERVAL_MS = 100

__all__ = [
    "ADMITTED", "GENESIS_TIME_MS", "InvariantViolation", "MemoVerifier", "MemoVrfVerifier", "Process", "World", "member_identity",
]


def member_identity(index: int) -> Identity:
    """The identity simulated member ``index`` runs (the same in every run)."""
    return Identity.from_label(f"sim-validator-{index}")


class InvariantViolation(AssertionError):
    """A safety property broke; the message says which and where."""


@dataclass
class Process:
    pid: int
    member: int  # the identity index it runs
    identity: Identity
    behaviour: str  # "honest", "silent", "equivocate", "shared-key", "refuser"
    skew_ms: int
    app: SimApplication
    core: IbftCore | None = None
    safety: SafetyState | None = None  # durable
    chain: list[Block] = field(default_factory=list)  # durable, chain[i] is height i+1
    timer: int | None = None  # global time of the pending tick
    epoch: int = 0  # bumps at every crash so stale events are ignored
    torn_crash: bool = False
    tx_counter: int = 0
    stop_after: bytes | None = None  # a removal: stop once the chain holds it and is past its last height as a validator
    stopped: bool = False  # for good: no restart
    votes_after_removal: bool = False  # Byzantine: keeps signing votes at heights it no longer decides
    forged_votes: set[tuple[int, int, bytes]] = field(default_factory=set)  # (height, round, digest) it voted for
    syncing_until: tuple[int, int] = (-1, -1)  # (epoch, time its blocks arrive): one sync in flight, as in the shell

    @property
    def correct(self) -> bool:
        return self.behaviour == "honest"

    @property
    def height(self) -> int:
        return len(self.chain)


class World:
    def __init__(self, scenario: Scenario, *, amnesia: bool = False, frozen_sets: bool = False) -> None:
        self.scenario = scenario
        # amnesia: restart without the persisted safety state, as a broken shell
        # would; frozen_sets: cores built without validators_at (the genesis set
        # at every height, as before set changes existed). Only the checker's
        # own tests use them (a run must then fail).
        self.amnesia = amnesia
        self.frozen_sets = frozen_sets
        self.rng = random.Random(f"metanode-sim-run/{scenario.seed}/{scenario.n}/{','.join(scenario.faults)}")
        self.identities = [member_identity(i) for i in range(scenario.members)]
        self.member_keys = [identity.public_key for identity in self.identities]
        self.genesis = Genesis(
            chain_id="metanode-sim",
            genesis_time_ms=GENESIS_TIME_MS,
            validators=tuple(self.member_keys[: scenario.n]),
            block_period_ms=scenario.wan.block_period_ms if scenario.wan else 500,
            round_timeout_base_ms=scenario.wan.round_timeout_base_ms if scenario.wan else 1_000,
            round_timeout_cap_ms=scenario.wan.round_timeout_cap_ms if scenario.wan else 8_000,
            min_block_interval_ms=None if scenario.wan else MIN_BLOCK_INTERVAL_MS,
            limits=Limits(max_block_bytes=1 << 20, max_txs_per_block=64, max_timestamp_drift_ms=1_000),
        )
        self.genesis_header = genesis_header(self.genesis)
        self.verifier = MemoVerifier()
        self.vrf_verifier = MemoVrfVerifier()
        self.now = 0
        self._queue: list[tuple[int, int, str, Any]] = []
        self._seq = 0
        # The set-change transactions, in submission order, and how many the
        # world has submitted so far (every proposer offers those its chain lacks).
        self.change_txs = [set_change_tx(c.action, c.member, i) for i, c in enumerate(scenario.changes)]
        self.changes_submitted = 0
        twin = [] if scenario.twin_of is None else [scenario.twin_of]
        members = list(range(scenario.n)) + twin + list(range(scenario.n, scenario.members))
        self.processes: list[Process] = []
        for pid, member in enumerate(members):
            behaviour = scenario.byzantine.get(member, "honest")
            removals = [i for i, c in enumerate(scenario.changes) if c.action == "remove" and c.member == member]
            app = SimApplication(self.genesis.validator_set, self.member_keys)
            proc = Process(pid, member, self.identities[member], behaviour, scenario.skew_ms[pid], app)
            proc.votes_after_removal = behaviour != "honest" and bool(removals)
            stops = [self.change_txs[i] for i in removals if scenario.changes[i].stop]
            proc.stop_after = stops[-1] if stops else None
            self.processes.append(proc)
        self.signed: dict[tuple[bytes, int, int, str], bytes] = {}  # correct processes' signatures
        self.round_starts = 0
        self.messages_sent = 0
        self.stops = 0
        self.wan = Wan(scenario.wan, scenario.seed, len(self.processes)) if scenario.wan else None

    # -- event queue ----------------------------------------------------------------
    def schedule(self, at: int, kind: str, data: Any) -> None:
        self._seq += 1
        heapq.heappush(self._queue, (max(at, self.now), self._seq, kind, data))

    def run_until(self, until: int, stop: Any = None) -> None:
        while self._queue and self._queue[0][0] <= until:
            at, _, kind, data = heapq.heappop(self._queue)
            self.now = at
            getattr(self, "_ev_" + kind)(*data)
            if stop is not None and stop():
                return
        self.now = max(self.now, until)

    # -- processes ----------------------------------------------------------------------
    def local(self, proc: Process) -> int:
        return GENESIS_TIME_MS + self.now + proc.skew_ms

    def boot(self, proc: Process) -> None:
        tip = proc.chain[-1].header if proc.chain else self.genesis_header

        def validate(header: BlockHeader, transactions: Any) -> bool:
            # The daemon's shell judges a block against the state it has applied
            # (nonces, the receipt log): the parent must be carried out by then.
            if header.height != proc.height + 1:
                raise InvariantViolation(
                    f"process {proc.pid} judged a proposal for height {header.height} with only "
                    f"{proc.height} blocks applied (its parent's Finalized not carried out yet)"
                )
            if proc.behaviour == "refuser" and header.hash[0] % 2 == 0:
                return False
            return admitted(header, transactions)

        proc.core = IbftCore(
            self.genesis, proc.identity, tip, safety=None if self.amnesia else proc.safety,
            validate_block=validate, verifier=self.verifier, vrf_verifier=self.vrf_verifier,
            validators_at=None if self.frozen_sets else lambda height: self.validators_at(proc, height),
        )
        self.carry_out(proc, proc.core.start(self.local(proc)))
        if proc.core is not None and proc.epoch > 0:
            # A restarted node syncs from a peer, as the shell does before its
            # core votes: the validators that could tell it it is behind may
            # all have left the set meanwhile (and followers send no votes).
            self.sync(proc, NeedSync(proc.height + 1, ()))

    def validators_at(self, proc: Process, height: int) -> ValidatorSet:
        """What ``proc``'s core is given as ``validators_at``: its own
        application's answer, asked only for heights the application has
        decided (contract C1: up to the last applied height + ACTIVATION_DELAY)."""
        if height > proc.app.applied_height + ACTIVATION_DELAY:
            raise InvariantViolation(
                f"process {proc.pid}'s core asked for the validator set of height {height} "
                f"with only {proc.app.applied_height} blocks applied"
            )
        return proc.app.validator_set_at(height)

    def crash(self, proc: Process) -> None:
        proc.core = None
        proc.timer = None
        proc.epoch += 1
        proc.torn_crash = False

    def stop(self, proc: Process) -> None:
        """Stop a process for good (an operator retiring a removed validator)."""
        self.crash(proc)
        proc.stopped = True
        self.stops += 1

    def _ev_start(self, pid: int) -> None:
        proc = self.processes[pid]
        if proc.behaviour != "silent":
            self.boot(proc)

    def _ev_submit(self, index: int) -> None:
        """The world submits set change ``index``: from now on every proposer
        offers it until its own chain holds it."""
        self.changes_submitted = max(self.changes_submitted, index + 1)
        for proc in self.processes:
            self.offer_transactions(proc)  # it reaches every mempool now, mid-wait or not

    def _ev_crash(self, pid: int, torn: bool, epoch: int | None = None) -> None:
        proc = self.processes[pid]
        if proc.core is None or (epoch is not None and epoch != proc.epoch):
            return
        if torn:
            proc.torn_crash = True  # crash inside the next batch of outputs
            self.schedule(self.now + 300, "crash", (pid, False, proc.epoch))
        else:
            self.crash(proc)

    def _ev_restart(self, pid: int) -> None:
        proc = self.processes[pid]
        if proc.core is not None and proc.torn_crash:
            self.crash(proc)  # the torn crash had no batch to tear yet
        if proc.core is None and not proc.stopped:
            self.boot(proc)

    def _ev_tick(self, pid: int, epoch: int, at: int) -> None:
        proc = self.processes[pid]
        if proc.core is None or proc.epoch != epoch or proc.timer != at:
            return
        proc.timer = None
        self.carry_out(proc, proc.core.tick(self.local(proc)))

    def _ev_deliver(self, pid: int, data: bytes) -> None:
        if self.wan is not None and self.processes[pid].core is not None:
            # Its core checks the message once it has checked those before it.
            self.schedule(self.wan.received(pid, self.now, data), "handle", (pid, data))
            return
        self._ev_handle(pid, data)

    def _ev_handle(self, pid: int, data: bytes) -> None:
        proc = self.processes[pid]
        if proc.core is not None:
            if proc.votes_after_removal:
                self.vote_after_removal(proc, data)
            self.carry_out(proc, proc.core.on_message(data, self.local(proc)))

    def _ev_block(self, pid: int, block: Block) -> None:
        proc = self.processes[pid]
        if proc.core is not None:
            self.carry_out(proc, proc.core.on_block(block, self.local(proc)))

    # -- carrying out outputs -------------------------------------------------------------
    def carry_out(self, proc: Process, outputs: list) -> None:
        work = deque(outputs)
        cut = self.rng.randint(0, len(work)) if proc.torn_crash and work else None
        done = 0
        finalized = False
        while work:
            if cut is not None and done == cut:
                self.crash(proc)
                return
            out = work.popleft()
            done += 1
            if isinstance(out, Persist):
                proc.safety = out.state
            elif isinstance(out, Broadcast):
                self.record_signature(proc, out.message)
                sends = self.tamper(proc, out)
                depart = None
                if self.wan is not None:
                    depart = self.wan.broadcast(proc.pid, self.now, out, sum(len(targets) for _, targets in sends))
                    self.broadcast_sent(proc, out, depart)
                for data, targets in sends:
                    for dst in targets:
                        self.send(proc.pid, dst, data, depart)
            elif isinstance(out, SetTimer):
                at = max(self.now, out.deadline_ms - GENESIS_TIME_MS - proc.skew_ms)
                proc.timer = at
                self.schedule(at, "tick", (proc.pid, proc.epoch, at))
            elif isinstance(out, NeedProposal):
                work.extend(self.answer_proposal(proc, out))
            elif isinstance(out, Finalized):
                if out.block.height != proc.height + 1:
                    raise InvariantViolation(f"process {proc.pid} finalised height {out.block.height} after {proc.height}")
                proc.chain.append(out.block)
                proc.app.apply_final_block(out.block)  # as the shell does, before anything else sees it
                finalized = True
                self.finalized(proc, out.block)
                for dst in self.others(proc.pid):
                    self.send_block(proc.pid, dst, out.block)
            elif isinstance(out, NeedSync):
                self.sync(proc, out)
            elif isinstance(out, RoundStarted):
                self.round_starts += 1
        if cut is not None and done == cut:
            self.crash(proc)
        elif finalized and proc.core is not None:
            if proc.stop_after is not None and self.past_last_height(proc, proc.stop_after):
                self.stop(proc)
                return
            self.carry_out(proc, proc.core.resume(self.local(proc)))  # as the shell does, once the block is applied
        if cut is None:
            self.offer_transactions(proc)

    def offer_transactions(self, proc: Process) -> None:
        """As the shell does after each batch (and when a transaction arrives):
        a round-0 proposer waiting for the heartbeat is told when transactions wait."""
        core = proc.core
        if core is not None and core.wants_transactions and self.has_transactions(proc):
            self.carry_out(proc, core.transactions_pending(self.local(proc)))

    def has_transactions(self, proc: Process) -> bool:
        """Whether ``proc``'s mempool holds something to propose: a submitted set
        change its chain lacks, or (a client load drawn from nothing random, so
        runs replay) at two heights in three."""
        if (proc.height * 7 + proc.pid) % 3 != 0:
            return True
        return any(tx not in proc.app.included for tx in self.change_txs[: self.changes_submitted])

    def broadcast_sent(self, proc: Process, out: Broadcast, depart: int) -> None:
        """Under the WAN model, ``proc``'s copies of ``out`` leave at ``depart`` (for measurements)."""

    def finalized(self, proc: Process, block: Block) -> None:
        """``proc`` has just applied ``block`` (for measurements)."""

    def past_last_height(self, proc: Process, removal: bytes) -> bool:
        """Whether ``proc``'s chain holds ``removal`` and a block its key does
        not decide, with no later set holding the key (so a quorum of the new
        set holds every block it helped decide, and it is needed no more)."""
        return removal in proc.app.included and not proc.app.decides_at_or_after(proc.identity.public_key, proc.height)

    def answer_proposal(self, proc: Process, need: NeedProposal) -> list:
        # Submitted set changes first, in submission order (so the chain
        # executes them in the order the scenario planned), then ordinary ones.
        txs = [tx for tx in self.change_txs[: self.changes_submitted] if tx not in proc.app.included]
        for _ in range(self.rng.randint(0, 4)):
            proc.tx_counter += 1
            txs.append(b"ok/%d/%d" % (proc.pid, proc.tx_counter))
        timestamp = max(self.local(proc), need.earliest_timestamp_ms)
        assert proc.core is not None  # a NeedProposal comes from the running core; a crash stops carrying out its outputs
        return proc.core.propose(need.height, need.round, txs, timestamp, self.local(proc))

    def others(self, pid: int) -> list[int]:
        return [p.pid for p in self.processes if p.pid != pid]

    def record_signature(self, proc: Process, data: bytes) -> None:
        """No correct process ever signs two different payloads for one
        (height, round, kind), nor signs at a height whose set (by its own
        chain) does not hold its key: checked on every message it sends."""
        if not proc.correct:
            return
        signed = m.decode_message(data, max_size=1 << 24, max_block_size=1 << 24).signed
        if signed.sender not in proc.app.validator_set_at(signed.height):
            raise InvariantViolation(
                f"process {proc.pid} signed a {signed.kind} at height {signed.height}, "
                f"where its chain's validator set does not hold its key"
            )
        key = (signed.sender, signed.height, signed.round, signed.kind)
        previous = self.signed.setdefault(key, signed.payload)
        if previous != signed.payload:
            raise InvariantViolation(
                f"process {proc.pid} signed two different {signed.kind} messages at "
                f"height {signed.height} round {signed.round}"
            )

    # -- the network ----------------------------------------------------------------------
    def connected(self, a: int, b: int) -> bool:
        for part in self.scenario.partitions:
            if part.start_ms <= self.now < part.end_ms and ((a in part.side) != (b in part.side)):
                return False
        return True

    def delay(self) -> int:
        return self.rng.randint(1, self.scenario.max_delay_ms)

    def link(self, src: int, dst: int, depart: int | None = None) -> int:
        """When a message leaving ``src`` (at ``depart``, default now) reaches ``dst``."""
        if self.wan is not None:
            return self.wan.arrival(src, dst, self.now if depart is None else depart)
        return self.now + self.delay()

    def send(self, src: int, dst: int, data: bytes, depart: int | None = None) -> None:
        self.messages_sent += 1
        if not self.connected(src, dst):
            return
        faulty = self.now < self.scenario.heal_ms
        if faulty and self.scenario.drop_rate and self.rng.random() < self.scenario.drop_rate:
            return
        self.schedule(self.link(src, dst, depart), "deliver", (dst, data))
        if faulty and self.scenario.dup_rate and self.rng.random() < self.scenario.dup_rate:
            self.schedule(self.link(src, dst, depart), "deliver", (dst, data))

    def send_block(self, src: int, dst: int, block: Block) -> None:
        if self.connected(src, dst) and not (
            self.now < self.scenario.heal_ms and self.scenario.drop_rate and self.rng.random() < self.scenario.drop_rate
        ):
            if self.wan is not None:
                self.wan.blocks_sent += 1
            self.schedule(self.link(src, dst), "block", (dst, block))

    def sync(self, proc: Process, need: NeedSync) -> None:
        """Block sync: ask one peer (a validator seen ahead, else anyone) for
        the blocks from ``need.height`` on; they arrive in order. One sync at
        a time, as the shell runs it: a NeedSync while one is in flight is
        dropped (else a node that refuses the chain's blocks, as a removed
        Byzantine validator that disowns its removal would, would ask again for
        every block each answer brings, without end)."""
        epoch, until = proc.syncing_until
        if epoch == proc.epoch and self.now < until:
            return
        keys = set(need.peers)
        candidates = [p for p in self.processes if p.pid != proc.pid and (not keys or p.identity.public_key in keys)]
        candidates = [p for p in candidates if p.core is not None and p.height >= need.height and self.connected(proc.pid, p.pid)]
        if not candidates:
            return
        peer = self.rng.choice(candidates)
        if self.wan is not None:  # the request's way there and the blocks' way back
            at = self.wan.arrival(peer.pid, proc.pid, self.wan.arrival(proc.pid, peer.pid, self.now))
        else:
            at = self.now + 2 * self.delay()
        proc.syncing_until = (proc.epoch, at)
        for block in peer.chain[need.height - 1 : need.height + 15]:
            self.schedule(at, "block", (proc.pid, block))

    # -- Byzantine behaviour -----------------------------------------------------------------
    def tamper(self, proc: Process, out: Broadcast) -> list[tuple[bytes, list[int]]]:
        """What a process actually sends for one Broadcast."""
        targets = self.others(proc.pid)
        if proc.behaviour != "equivocate":
            return [(out.message, targets)]
        message = m.decode_message(out.message, max_size=1 << 24, max_block_size=1 << 24)
        self.rng.shuffle(targets)
        half = len(targets) // 2
        s = message.signed
        if s.kind == m.PROPOSAL and message.block is not None:
            alt = self.conflicting_block(message.block)
            fields = m.proposal_payload(s.height, s.round, alt.hash)
            forged = m.Message(m.sign_payload(proc.identity, fields), alt, message.round_changes, message.prepares)
            return [(out.message, targets[:half]), (forged.encode(), targets[half:])]
        if s.kind in (m.PREPARE, m.COMMIT) and self.rng.random() < 0.5:
            other = self.rng.randbytes(32)
            if s.kind == m.PREPARE:
                fields = m.prepare_payload(s.height, s.round, other)
            else:
                seal = proc.identity.sign(SEAL_TAG, seal_message(other, s.round))
                fields = m.commit_payload(s.height, s.round, other, seal)
            forged = m.Message(m.sign_payload(proc.identity, fields))
            return [(out.message, targets[:half]), (forged.encode(), targets[half:])]
        return [(out.message, targets)]

    def vote_after_removal(self, proc: Process, data: bytes) -> None:
        """A removed Byzantine validator's votes: for each block it sees
        proposed or voted for at a height it no longer decides, a PREPARE and
        a COMMIT with a real seal, to everyone. None may ever count."""
        try:
            signed = m.decode_message(data, max_size=1 << 24, max_block_size=1 << 24).signed
        except m.MessageError:
            return
        key = proc.identity.public_key
        if signed.digest is None or key in proc.app.validator_set_at(signed.height):
            return
        if proc.app.last_height_before(key, signed.height) is None:
            return  # never a validator before this height: nothing was taken from it
        vote = (signed.height, signed.round, signed.digest)
        if vote in proc.forged_votes:
            return
        proc.forged_votes.add(vote)
        seal = proc.identity.sign(SEAL_TAG, seal_message(signed.digest, signed.round))
        for fields in (m.prepare_payload(*vote), m.commit_payload(*vote, seal)):
            forged = m.Message(m.sign_payload(proc.identity, fields)).encode()
            for dst in self.others(proc.pid):
                self.send(proc.pid, dst, forged)

    def conflicting_block(self, block: Block) -> Block:
        """Same height and parent, other transactions; sometimes inadmissible."""
        prefix = ADMITTED if self.rng.random() < 0.5 else b"bad/"
        txs = block.transactions + (prefix + self.rng.randbytes(8).hex().encode(),)
        header = BlockHeader(**{**block.header.to_value(), "tx_root": transactions_root(txs), "tx_count": len(txs)})
        return Block(header, txs)
