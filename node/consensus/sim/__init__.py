"""Deterministic simulator for the IBFT core.

``run_seed(seed, n, faults)`` builds a scenario from the seed (network delay,
drops, duplicates, partitions that heal, crashes and restarts, Byzantine
validators; see ``scenario.py``), runs n validators' cores over a simulated
network in virtual time, and checks on every run:

* agreement: no two processes finalise different blocks at one height;
* validity: every final block verifies (quorum of valid seals, parent link,
  limits) and holds only admitted transactions;
* integrity of signing: no correct process signs two different messages for
  one (height, round, kind), across crashes too;
* liveness: once every fault has healed, every correct process finalises at
  least ``LIVENESS_BLOCKS`` blocks past the highest height reached at the
  heal, within ``LIVENESS_BOUND_MS`` of virtual time.

Same seed, same run: a failing seed replays exactly with the printed command.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

from node.consensus.block import BlockError, verify_block
from node.consensus.sim.scenario import ALL_FAULTS, Scenario, make_scenario, parse_faults
from node.consensus.sim.world import ADMITTED, InvariantViolation, World

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
    trace_digest: str  # over every process's chain and the message count: equal runs, equal digest

    @property
    def replay(self) -> str:
        return replay_command(self.seed, self.n, self.faults)


def replay_command(seed: int, n: int, faults: tuple[str, ...]) -> str:
    spec = "all" if set(faults) == set(ALL_FAULTS) else (",".join(faults) or "none")
    return f"python -m node.consensus.sim --seed {seed} --n {n} --faults {spec}"


def run_seed(
    seed: int, n: int = 4, faults: tuple[str, ...] = ALL_FAULTS, *,
    scenario: Scenario | None = None, amnesia: bool = False,
) -> SimResult:
    """Run one seeded simulation and check every invariant. ``scenario``
    overrides the one the seed would draw; ``amnesia`` restarts crashed
    validators without their safety state (to test that the checks catch it)."""
    scenario = scenario if scenario is not None else make_scenario(seed, n, faults)
    world = World(scenario, amnesia=amnesia)
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
    return SimResult(seed, n, faults, error is None, error, heights, world.now, scenario, trace.hexdigest())


def _run(world: World) -> None:
    scenario = world.scenario
    for proc in world.processes:
        world.schedule(0, "start", (proc.pid,))
    for crash in scenario.crashes:
        world.schedule(crash.at_ms, "crash", (crash.node, crash.torn))
        world.schedule(crash.restart_ms, "restart", (crash.node,))
    world.run_until(scenario.heal_ms)
    correct = [p for p in world.processes if p.correct]
    target = max((p.height for p in world.processes), default=0) + LIVENESS_BLOCKS
    deadline = scenario.heal_ms + LIVENESS_BOUND_MS
    world.run_until(deadline, stop=lambda: all(p.height >= target for p in correct))
    lagging = [p for p in correct if p.height < target]
    if lagging:
        detail = ", ".join(f"process {p.pid} at height {p.height}" for p in lagging)
        raise InvariantViolation(
            f"liveness: {LIVENESS_BOUND_MS} ms after the faults healed at {scenario.heal_ms} ms, "
            f"{detail} (target height {target})"
        )


def _check_agreement_and_validity(world: World) -> None:
    by_height: dict[int, bytes] = {}
    verified: set[bytes] = set()
    for proc in world.processes:
        parent = world.genesis_header
        for block in proc.chain:
            known = by_height.setdefault(block.height, block.hash)
            if known != block.hash:
                raise InvariantViolation(f"agreement: two different blocks finalised at height {block.height}")
            mark = block.encode()
            if mark not in verified:
                try:
                    verify_block(block, parent, world.genesis.validator_set, world.genesis, verifier=world.verifier)
                except BlockError as exc:
                    raise InvariantViolation(f"validity: process {proc.pid} height {block.height}: {exc}") from None
                if not all(tx.startswith(ADMITTED) for tx in block.transactions):
                    raise InvariantViolation(f"validity: height {block.height} holds an inadmissible transaction")
                verified.add(mark)
            parent = block.header
