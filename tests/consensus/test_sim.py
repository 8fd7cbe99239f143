"""The deterministic simulator: many seeds keep every invariant, runs replay
exactly, and the invariant checks do catch broken behaviour."""

from __future__ import annotations

import pytest

from node.consensus.sim import ALL_FAULTS, _check_agreement_and_validity, _run, run_seed
from node.consensus.sim.__main__ import main
from node.consensus.sim.scenario import Crash, Scenario, make_scenario, parse_faults
from node.consensus.sim.world import InvariantViolation, World

SEEDS_PER_SIZE = 150  # 300 runs in all


@pytest.mark.parametrize("n", [4, 7])
def test_seeds_keep_every_invariant(n):
    failures = []
    for seed in range(SEEDS_PER_SIZE):
        result = run_seed(seed, n, ALL_FAULTS)
        if not result.ok:
            failures.append(f"{result.error}\n  replay: {result.replay}")
    assert not failures, "\n".join(failures)


def test_same_seed_same_run():
    a = run_seed(11, 4, ALL_FAULTS)
    b = run_seed(11, 4, ALL_FAULTS)
    assert (a.heights, a.virtual_ms, a.trace_digest) == (b.heights, b.virtual_ms, b.trace_digest)
    assert run_seed(12, 4, ALL_FAULTS).trace_digest != a.trace_digest


def test_scenarios_cover_every_fault():
    seen = set()
    for seed in range(60):
        s = make_scenario(seed, 7, ALL_FAULTS)
        assert len(s.byzantine) <= 2  # never more than f
        seen |= set(s.byzantine.values())
        seen |= {"crash"} if s.crashes else set()
        seen |= {"torn"} if any(c.torn for c in s.crashes) else set()
        seen |= {"partition"} if s.partitions else set()
        seen |= {"drop"} if s.drop_rate else set()
        seen |= {"dup"} if s.dup_rate else set()
    assert seen >= {"silent", "equivocate", "shared-key", "refuser", "crash", "torn", "partition", "drop", "dup"}
    with pytest.raises(ValueError, match="unknown fault"):
        parse_faults("delay,meteor")


def test_a_validator_that_forgets_its_safety_state_is_caught():
    # Crash torn validators repeatedly while they restart with no safety
    # state: some seed must show a conflicting signature.
    caught = []
    for seed in range(40):
        scenario = make_scenario(seed, 4, ("delay", "crash"))
        scenario.crashes = [Crash(node, at, at + 50, True) for node in (0, 1) for at in range(300, 6000, 700)]
        scenario.heal_ms = 6100
        result = run_seed(seed, 4, ("delay", "crash"), scenario=scenario, amnesia=True)
        if not result.ok and "signed two different" in result.error:
            caught.append(seed)
            break
    assert caught


def test_a_core_that_judges_proposals_before_its_parent_is_applied_is_caught(monkeypatch):
    """The shell's validate_block reads applied state (nonces, the receipt log):
    a core that replays buffered proposals for the next height before the
    driver has carried out the Finalized block judges them against the parent's
    state (the soak stall of 2026-12-01). The simulator's invariant catches it."""
    from node.consensus import ibft

    finalize = ibft.IbftCore._finalize

    def replay_at_once(self, block, out):
        finalize(self, block, out)
        out.extend(self.resume(self._now))  # the old order: before Finalized is carried out

    monkeypatch.setattr(ibft.IbftCore, "_finalize", replay_at_once)
    errors = [run_seed(seed, 4, ("delay", "drop")).error or "" for seed in range(30)]
    assert any("judged a proposal for height" in e for e in errors), errors


def test_one_refusing_validator_does_not_stop_the_others():
    scenario = make_scenario(5, 4, ("delay",))
    scenario.byzantine = {2: "refuser"}
    result = run_seed(5, 4, ("delay", "refuser"), scenario=scenario)
    assert result.ok, result.error
    assert min(h for i, h in enumerate(result.heights) if i != 2) >= 3


def test_liveness_check_fails_beyond_f_faults():
    scenario = Scenario(seed=0, n=4, faults=("silent",), heal_ms=1000, byzantine={0: "silent", 1: "silent"}, skew_ms=[0] * 4)
    result = run_seed(0, 4, ("silent",), scenario=scenario)
    assert not result.ok and result.error.startswith("liveness")


def test_agreement_and_validity_checks_catch_a_forged_chain():
    world = World(make_scenario(3, 4, ()))
    _run(world)
    _check_agreement_and_validity(world)
    victim = world.processes[0]
    block = victim.chain[-1]
    victim.chain[-1] = block.with_seals(block.commit_round, block.seals[:2])
    with pytest.raises(InvariantViolation, match="validity"):
        _check_agreement_and_validity(world)


def test_cli_runs_seeds_and_prints_replay(capsys):
    assert main(["--seeds", "3", "--n", "4", "--faults", "none"]) == 0
    assert "3/3 runs passed" in capsys.readouterr().out
    assert main(["--seed", "5", "--n", "7", "--faults", "all", "-v"]) == 0
    out = capsys.readouterr().out
    assert "seed=5 n=7" in out and "1/1 runs passed" in out
