"""Deterministic simulator for the IBFT core.

``run_seed(seed, n, faults)`` builds a scenario from the seed (network delay,
drops, duplicates, partitions that heal, crashes and restarts, Byzantine
validators, validator-set changes; see ``scenario.py``), runs n genesis
validators' cores (and any spares') over a simulated network in virtual
time, and checks on every run:

* agreement: no two processes finalise different blocks at one height;
* validity: every final block verifies (``verify_block``: parent link,
  limits, the proposer's VRF seed proof, a quorum of valid seals) against the
  validator sets of its height and the next *as the chain itself decides
  them* (replayed from the genesis by a fresh application), and holds only
  admitted transactions; no block carries another set's hash, and no seal of
  a key outside its height's set counts (a removed validator's never does
  after its last height);
* the plan's bound: every set the chain puts in force keeps ``n >= 3b + 1``
  for the run's b Byzantine validators;
* integrity of signing: no correct process signs two different messages for
  one (height, round, kind), across crashes too, nor signs at a height whose
  set does not hold its key;
* liveness: once every fault has healed, every correct running process
  (spares and removed validators that follow included) finalises at least
  ``LIVENESS_BLOCKS`` blocks past the highest height reached at the heal and,
  with set changes, holds every change and ``LIVENESS_BLOCKS`` blocks decided
  by the last set, within ``LIVENESS_BOUND_MS`` of virtual time.

Same seed, same run: a failing seed replays exactly with the printed command.

``wan.run_wan(seed, n, model)`` runs the same checks over a wide-area link
and CPU model (``network.py``) under a client load and measures finality
against n (bench/scaling.py prints it).
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

from node.consensus.block import Block, BlockError, BlockHeader
from node.consensus.block_rules import verify_block
from node.consensus.sim.application import ADMITTED, SimApplication
from node.consensus.sim.scenario import ALL_FAULTS, Scenario, make_scenario, parse_faults
from node.consensus.sim.world import InvariantViolation, Process, World

LIVENESS_BLOCKS = 2
LIVENESS_BOUND_MS = 90_000

__all__ = ["ALL_FAULTS", "SimResult", "make_scenario", "parse_faults", "replay_command", "run_seed"]


@dataclass
class SimResult:
    seed: int
    n: int
    faults: tuple[str, ...]
    ok: bool
    error: str | None
    heights: list[int]
    virtual_ms: int
    scenario: Scenario
    set_changes_executed: list[int]  # height of the block that executed each planned change (-1: never)
    trace_digest: str  # over every process's chain and the message count: equal runs, equal digest

    @property
    def replay(self) -> str:
        return replay_command(self.seed, self.n, self.faults)


def replay_command(seed: int, n: int, faults: tuple[str, ...]) -> str:
    spec = "all" if set(faults) == set(ALL_FAULTS) else (",".join(faults) or "none")
    return f"python -m node.consensus.sim --seed {seed} --n {n} --faults {spec}"


def run_seed(
    seed: int, n: int = 4, faults: tuple[str, ...] = ALL_FAULTS, *,
    scenario: Scenario | None = None, amnesia: bool = False, frozen_sets: bool = False,
) -> SimResult:
    """Run one seeded simulation and check every invariant. ``scenario``
    overrides the one the seed would draw; ``amnesia`` restarts crashed
    validators without their safety state and ``frozen_sets`` gives the cores
    no ``validators_at`` (to test that the checks catch either)."""
    scenario = scenario if scenario is not None else make_scenario(seed, n, faults)
    world = World(scenario, amnesia=amnesia, frozen_sets=frozen_sets)
    error = None
    try:
        _run(world)
        _check_agreement_and_validity(world)
    except InvariantViolation as exc:
        error = str(exc)
    heights = [p.height for p in world.processes]
    trace = hashlib.sha256(str(world.messages_sent).encode())
    for proc in world.processes:
        for block in proc.chain:
            trace.update(block.encode())
    longest = max(world.processes, key=lambda p: (p.correct, p.height))
    executed = [longest.app.executed_at.get(tx, -1) for tx in world.change_txs]
    return SimResult(seed, n, faults, error is None, error, heights, world.now, scenario, executed, trace.hexdigest())


def _run(world: World) -> None:
    scenario = world.scenario
    for proc in world.processes:
        world.schedule(0, "start", (proc.pid,))
    for crash in scenario.crashes:
        world.schedule(crash.at_ms, "crash", (crash.node, crash.torn))
        world.schedule(crash.restart_ms, "restart", (crash.node,))
    for index, change in enumerate(scenario.changes):
        world.schedule(change.at_ms, "submit", (index,))
    world.run_until(scenario.heal_ms)
    target = max((p.height for p in world.processes), default=0) + LIVENESS_BLOCKS
    changes = len(world.change_txs)
    deadline = max(scenario.heal_ms, max((c.at_ms for c in scenario.changes), default=0)) + LIVENESS_BOUND_MS

    def live(proc: Process) -> bool:
        # Every change is in its chain, and LIVENESS_BLOCKS blocks past the
        # heal and past the last set's first height.
        if changes and len(proc.app.included) < changes:
            return False
        last_set_from = proc.app.history()[-1][0]
        return proc.height >= max(target, last_set_from + LIVENESS_BLOCKS - 1)

    def running_correct() -> list[Process]:
        return [p for p in world.processes if p.correct and not p.stopped]

    world.run_until(deadline, stop=lambda: all(live(p) for p in running_correct()))
    lagging = [p for p in running_correct() if not live(p)]
    if lagging:
        detail = ", ".join(
            f"process {p.pid} at height {p.height} holding {len(p.app.included)}/{changes} set changes" for p in lagging
        )
        raise InvariantViolation(
            f"liveness: {LIVENESS_BOUND_MS} ms after the faults healed at {scenario.heal_ms} ms, "
            f"{detail} (target height {target}, and {LIVENESS_BLOCKS} blocks decided by the last set)"
        )


def _check_agreement_and_validity(world: World) -> None:
    """Agreement over every process's chain; validity of each block against
    the sets its own chain decides (replayed by a fresh application, so a
    node's wrong view of the set cannot excuse its blocks)."""
    by_height: dict[int, bytes] = {}
    verified: set[bytes] = set()
    needed = 3 * len(world.scenario.byzantine) + 1
    for proc in world.processes:
        parent = world.genesis_header
        chain_app = SimApplication(world.genesis.validator_set, world.member_keys)
        for block in proc.chain:
            known = by_height.setdefault(block.height, block.hash)
            if known != block.hash:
                raise InvariantViolation(f"agreement: two different blocks finalised at height {block.height}")
            mark = block.encode()
            if mark not in verified:
                _check_block(world, proc, block, parent, chain_app, needed)
                verified.add(mark)
            chain_app.apply_final_block(block)
            parent = block.header


def _check_block(
    world: World, proc: Process, block: Block, parent: BlockHeader, chain_app: SimApplication, needed: int
) -> None:
    height = block.height
    validators = chain_app.validator_set_at(height)
    if len(validators) < needed:
        raise InvariantViolation(
            f"set bound: height {height} is decided by {len(validators)} validators, "
            f"fewer than 3b+1 = {needed} for the run's {needed // 3} Byzantine"
        )
    if block.header.validators_hash != validators.hash:
        raise InvariantViolation(
            f"validity: process {proc.pid} height {height} carries the hash of a set other than its height's"
        )
    for key, _signature in block.seals:
        if key not in validators:
            who = f"v{world.member_keys.index(key)}" if key in world.member_keys else key.hex()[:16]
            last = chain_app.last_height_before(key, height)
            detail = "not a validator before" if last is None else f"removed: its last height was {last}"
            raise InvariantViolation(f"validity: process {proc.pid} height {height} counts a seal of {who} ({detail})")
    try:
        verify_block(
            block, parent, validators, world.genesis, next_validators=chain_app.validator_set_at(height + 1),
            verifier=world.verifier, vrf_verifier=world.vrf_verifier,
        )
    except BlockError as exc:
        raise InvariantViolation(f"validity: process {proc.pid} height {height}: {exc}") from None
    if not all(tx.startswith(ADMITTED) for tx in block.transactions):
        raise InvariantViolation(f"validity: height {height} holds an inadmissible transaction")
