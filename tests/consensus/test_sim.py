"""The deterministic simulator: many seeds keep every invariant, runs replay
exactly, and the invariant checks do catch broken behaviour."""

from __future__ import annotations

import pytest

from node.consensus.block import SEAL_TAG, BlockHeader, make_seed_proof, seal_message
from node.consensus.block_rules import build_block
from node.consensus.sim import ALL_FAULTS, _check_agreement_and_validity, _run, run_seed
from node.consensus.sim.__main__ import main
from node.consensus.sim.application import SimApplication, parse_set_change, set_change_tx
from node.consensus.sim.scenario import Crash, Scenario, SetChange, make_scenario, parse_faults
from node.consensus.sim.world import InvariantViolation, World
from node.consensus.validators import ACTIVATION_DELAY

SEEDS_PER_SIZE = 150  # 300 runs in all


@pytest.mark.parametrize("n", [4, 7])
def test_seeds_keep_every_invariant(n):
    failures = []
    changed = added = removed = 0
    for seed in range(SEEDS_PER_SIZE):
        result = run_seed(seed, n, ALL_FAULTS)
        if not result.ok:
            failures.append(f"{result.error}\n  replay: {result.replay}")
        executed = [h for h in result.set_changes_executed if h >= 0]
        changed += bool(executed)
        added += any(c.action == "add" for c in result.scenario.changes)
        removed += any(c.action == "remove" for c in result.scenario.changes)
    assert not failures, "\n".join(failures)
    # A share of the runs changes the validator set under the other faults.
    assert changed >= SEEDS_PER_SIZE // 4 and added and removed, (changed, added, removed)


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
    # Caught as it judges the proposal, or before: as it asks for the set of a
    # height whose parent's parent its application has not applied.
    assert any("judged a proposal for height" in e or "asked for the validator set of height" in e for e in errors), errors


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


# -- validator-set changes ------------------------------------------------------------------

def _changing_scenario(changes, *, n=4, byzantine=None, faults=("delay", "set-change"), spares=1, heal_ms=3_000):
    """A hand-written scenario: n genesis validators, ``spares`` spares, the given changes."""
    scenario = Scenario(seed=0, n=n, faults=faults, heal_ms=heal_ms, byzantine=dict(byzantine or {}),
                        spares=spares, changes=list(changes))
    scenario.skew_ms = [0] * scenario.processes
    return scenario


def _run_world(scenario, **options):
    world = World(scenario, **options)
    _run(world)
    _check_agreement_and_validity(world)
    return world


def test_set_changes_take_effect_from_each_nodes_own_chain():
    # Add the spare v4, then remove v0, which stops once the chain is past it.
    world = _run_world(_changing_scenario([SetChange(400, "add", 4), SetChange(1_500, "remove", 0, stop=True)]))
    keys = world.member_keys
    follower = world.processes[1]
    added_at, removed_at = (follower.app.executed_at[tx] for tx in world.change_txs)
    add_from, remove_from = added_at + ACTIVATION_DELAY, removed_at + ACTIVATION_DELAY
    assert [(h, set(s.keys)) for h, s in follower.app.history()] == [
        (0, set(keys[:4])), (add_from, set(keys[:5])), (remove_from, set(keys[1:5]))
    ]
    for proc in world.processes:  # every node derived the same schedule from its own chain
        assert proc.app.history() == follower.app.history()[: len(proc.app.history())]
    chain = follower.chain
    assert len(chain) >= remove_from + 1  # the chain kept finalising with the last set
    spare_seals = [b.height for b in chain if any(k == keys[4] for k, _ in b.seals)]
    assert spare_seals and min(spare_seals) >= add_from  # the added spare signs, and only from its first height
    assert all(keys[0] not in dict(b.seals) for b in chain[remove_from - 1:])
    assert all(b.header.validators_hash == follower.app.validator_set_at(b.height).hash for b in chain)
    assert all(b.header.next_validators_hash == follower.app.validator_set_at(b.height + 1).hash for b in chain)
    v0 = world.processes[0]
    assert v0.stopped and v0.core is None and remove_from <= v0.height < len(chain)
    spare = world.processes[4]
    assert [b.hash for b in spare.chain] == [b.hash for b in chain[: spare.height]]  # it followed from height 1


def test_a_removed_validator_that_keeps_voting_is_never_counted():
    # v1 equivocates; once removed it keeps signing PREPAREs and COMMITs
    # (real seals) for what it sees. The others drop them: no block counts them.
    scenario = _changing_scenario([SetChange(400, "add", 4), SetChange(1_200, "remove", 1)],
                                  byzantine={1: "equivocate"}, faults=("delay", "equivocate", "set-change"))
    world = _run_world(scenario)
    removed, honest = world.processes[1], world.processes[0]
    out_from = honest.app.executed_at[world.change_txs[1]] + ACTIVATION_DELAY
    assert removed.forged_votes and min(h for h, _, _ in removed.forged_votes) >= out_from
    assert all(world.member_keys[1] not in dict(b.seals) for b in honest.chain[out_from - 1:])
    dropped = sum(p.core.counters["dropped_non_validator"] for p in world.processes if p.correct and p.core)
    assert dropped > 0


def test_a_core_that_keeps_the_genesis_set_is_caught():
    # A core given no validators_at (the genesis set at every height, as the
    # core was before set changes) seals blocks with the wrong set.
    scenario = _changing_scenario([SetChange(400, "add", 4), SetChange(900, "remove", 2)])
    assert run_seed(0, 4, scenario.faults, scenario=scenario).ok
    result = run_seed(0, 4, scenario.faults, scenario=scenario, frozen_sets=True)
    assert not result.ok
    assert "where its chain's validator set does not hold its key" in result.error, result.error


def test_a_seal_of_a_removed_validator_is_caught():
    world = _run_world(_changing_scenario([SetChange(400, "remove", 3)], spares=0))
    victim = world.processes[0]
    out_from = victim.app.executed_at[world.change_txs[0]] + ACTIVATION_DELAY
    index = out_from - 1  # chain[i] is height i + 1: the first block v3 no longer decides
    block = victim.chain[index]
    v3 = world.identities[3]
    forged_seal = (v3.public_key, v3.sign(SEAL_TAG, seal_message(block.hash, block.commit_round)))
    victim.chain[index] = block.with_seals(block.commit_round, list(block.seals[1:]) + [forged_seal])
    with pytest.raises(InvariantViolation, match=f"seal of v3 \\(removed: its last height was {out_from - 1}\\)"):
        _check_agreement_and_validity(world)


def test_every_block_carries_a_verified_seed_proof():
    world = _run_world(_changing_scenario([SetChange(400, "add", 4)]))
    memo = world.vrf_verifier
    assert 0 < memo.computed < memo.asked  # each proof checked once for the whole run, asked many times
    # Another member's proof (a valid VRF proof, of the wrong key) in block 4, on every node.
    block, parent = world.processes[0].chain[3], world.processes[0].chain[2].header
    other = next(i for i in world.identities if i.public_key != block.header.proposer)
    header = BlockHeader(**{**block.header.to_value(), "seed_proof": make_seed_proof(other, world.genesis.hash, parent)})
    for proc in world.processes:
        proc.chain[3] = type(block)(header, block.transactions, block.commit_round, block.seals)
    with pytest.raises(InvariantViolation, match="seed_proof"):
        _check_agreement_and_validity(world)


def test_every_plan_keeps_the_set_bound_and_replays():
    planned = 0
    for seed in range(200):
        for n in (1, 4, 7, 10):
            scenario = make_scenario(seed, n, ALL_FAULTS)
            needed = 3 * len(scenario.byzantine) + 1
            assert all(len(s) >= needed for s in scenario.planned_sets())
            assert scenario.spares <= 2 and len(scenario.skew_ms) == scenario.processes
            assert all(c.at_ms <= max(scenario.heal_ms, 1_500) for c in scenario.changes)
            assert all(f"{c.action}=v{c.member}@{c.at_ms}" in scenario.describe() for c in scenario.changes)
            planned += bool(scenario.changes)
            assert make_scenario(seed, n, ALL_FAULTS) == scenario
        assert not make_scenario(seed, 4, ("delay", "crash")).changes
    assert 250 < planned < 550  # about half of the 800


def test_a_set_change_seed_replays_exactly():
    seed = next(s for s in range(50) if make_scenario(s, 4, ALL_FAULTS).changes)
    a, b = run_seed(seed, 4, ALL_FAULTS), run_seed(seed, 4, ALL_FAULTS)
    assert a.ok and a.scenario.changes and min(a.set_changes_executed) > 0
    assert (a.heights, a.virtual_ms, a.trace_digest, a.set_changes_executed) == (
        b.heights, b.virtual_ms, b.trace_digest, b.set_changes_executed)


def test_cli_runs_set_changes_alone(capsys):
    assert main(["--seeds", "4", "--n", "4", "--faults", "set-change"]) == 0
    out = capsys.readouterr().out
    assert "4/4 runs passed" in out and "4 runs changed the validator set" in out


def test_the_simulated_application_schedules_each_change_from_its_own_chain():
    world = World(_changing_scenario([], spares=2))
    keys, genesis_set = world.member_keys, world.genesis.validator_set
    app = SimApplication(genesis_set, keys)
    header = world.genesis_header

    def apply(*txs):
        nonlocal header
        block = build_block(world.genesis, header, genesis_set.proposer(header.proposer, 0), 0, txs,
                            header.timestamp_ms + 1_000, seed_proof=bytes(80), vrf_verifier=lambda *a: True)
        app.apply_final_block(block)
        header = block.header

    apply(set_change_tx("add", 4, 0), set_change_tx("add", 5, 1))  # two changes in block 1: one new set
    assert app.validator_set_at(2) == genesis_set and set(app.validator_set_at(3).keys) == set(keys[:6])
    apply(set_change_tx("add", 4, 0), set_change_tx("add", 4, 2), set_change_tx("remove", 9, 3), b"ok/set/add/x/4")
    assert len(app.history()) == 2  # a change seen before, an add of a member, an unknown member, a malformed one
    apply(set_change_tx("remove", 0, 5))
    assert [h for h, _ in app.history()] == [0, 3, 5] and keys[0] not in app.validator_set_at(5)
    assert app.last_height_before(keys[0], 7) == 4 and app.last_height_before(keys[4], 3) is None
    assert app.decides_at_or_after(keys[0], 4) and not app.decides_at_or_after(keys[0], 5)
    assert app.queries_beyond == 0
    app.validator_set_at(6)  # past the last applied height + ACTIVATION_DELAY: only provisional
    assert app.queries_beyond == 1
    proc = world.processes[0]
    assert world.validators_at(proc, ACTIVATION_DELAY) == genesis_set
    with pytest.raises(InvariantViolation, match="asked for the validator set of height 3 with only 0 blocks applied"):
        world.validators_at(proc, ACTIVATION_DELAY + 1)
    assert parse_set_change(b"ok/set/remove/3/7") == ("remove", 3) and parse_set_change(b"ok/1/2") is None


def test_a_restarted_sole_validator_syncs_before_it_waits_for_votes():
    # v2 is down while the others vote themselves out: v2 alone decides from
    # the change's activation on, and nobody left in the set can tell it it
    # is behind. It must sync when it restarts, as the shell does.
    scenario = _changing_scenario(
        [SetChange(2_300, "remove", 0), SetChange(2_301, "remove", 3), SetChange(2_302, "remove", 1)],
        spares=0, faults=("delay", "crash", "set-change"), heal_ms=7_000,
    )
    scenario.crashes = [Crash(2, 400, 5_900, False)]
    world = _run_world(scenario)
    v2 = world.processes[2]
    assert len(set(v2.app.executed_at.values())) == 1  # one block took all three out at once
    assert set(v2.app.validator_set_at(v2.height).keys) == {world.member_keys[2]}
    assert all(dict(b.seals).keys() == {world.member_keys[2]} for b in v2.chain[v2.app.history()[-1][0] - 1:])
