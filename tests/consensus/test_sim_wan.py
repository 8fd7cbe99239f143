"""The simulator's wide-area model (node/consensus/sim/network.py, wan.py):
seeded links and CPU costs replay exactly, finality grows with the links'
delay and with n (structurally: in virtual time, never wall-clock), and no
run forks."""

from __future__ import annotations

import pytest

from node.consensus.sim.network import Wan, WanModel, link_delays
from node.consensus.sim.wan import make_wan_scenario, percentile, run_wan, silent_member

COSTS = WanModel(sign_us=25, verify_us=60, vrf_us=300, message_us=40)


def test_link_delays_come_from_the_seed_alone():
    a = link_delays(COSTS, 7, 16)
    assert a == link_delays(COSTS, 7, 16)
    assert a != link_delays(COSTS, 8, 16)
    assert all(a[i][i] == 0 for i in range(16))
    off = [a[i][j] for i in range(16) for j in range(16) if i != j]
    assert min(off) >= 20 and max(off) <= 150 and len(set(off)) > 50  # spread over the range
    assert any(a[i][j] != a[j][i] for i in range(16) for j in range(16))  # directed links


def test_jitter_stays_within_its_share_and_cpu_queues_in_order():
    wan = Wan(WanModel(min_ms=100, max_ms=100, jitter_pct=10), 1, 4)
    arrivals = [wan.arrival(0, 1, 1_000) for _ in range(200)]
    assert min(arrivals) >= 1_100 and max(arrivals) <= 1_110 and len(set(arrivals)) > 5
    # One core: the second message waits for the first; microseconds carry over, never rounded per message.
    wan = Wan(WanModel(verify_us=300, message_us=0), 1, 2)
    assert [wan._spend(0, 5, 300) for _ in range(4)] == [6, 6, 6, 7]
    assert wan.cpu_us[0] == 1_200


def test_same_seed_same_wan_run():
    a = run_wan(3, 7, COSTS, load_ms=1_500)
    b = run_wan(3, 7, COSTS, load_ms=1_500)
    assert a.ok, a.error
    assert a.trace_digest == b.trace_digest
    assert a.summary() == b.summary()
    other = run_wan(4, 7, COSTS, load_ms=1_500)
    assert other.trace_digest != a.trace_digest
    assert other.median_link_ms != a.median_link_ms or other.tx_quorum_ms != a.tx_quorum_ms


def test_existing_scenarios_do_not_use_the_model():
    from node.consensus.sim import run_seed
    from node.consensus.sim.scenario import make_scenario

    assert make_scenario(5, 4, ("delay",)).wan is None
    assert run_seed(5, 4, ("delay",)).ok


def test_finality_grows_with_the_links_delay():
    near = run_wan(1, 4, WanModel(min_ms=20, max_ms=20, jitter_pct=0), load_ms=2_000)
    far = run_wan(1, 4, WanModel(min_ms=150, max_ms=150, jitter_pct=0), load_ms=2_000)
    assert near.ok and far.ok, (near.error, far.error)
    # With no CPU cost and equal links a block is final at a quorum three one-way delays after its proposal.
    assert set(near.proposal_ms) == {60} and set(far.proposal_ms) == {450}
    assert near.lower_bound_ms == 60 and far.lower_bound_ms == 450
    assert percentile(far.tx_quorum_ms, 50) > percentile(near.tx_quorum_ms, 50)


def test_finality_grows_with_n_under_cpu_cost():
    # Equal links, so n changes only the work: 2(n-1) checked votes per node per height, O(n^2) messages.
    model = WanModel(min_ms=50, max_ms=50, jitter_pct=0, sign_us=50, verify_us=100, vrf_us=500, message_us=100)
    runs = {n: run_wan(2, n, model, load_ms=1_500) for n in (4, 16, 40)}
    assert all(r.ok for r in runs.values()), [r.error for r in runs.values()]
    proposal = {n: percentile(r.proposal_ms, 50) for n, r in runs.items()}
    assert 150 < proposal[4] < proposal[16] < proposal[40]
    messages = {n: r.messages_per_height for n, r in runs.items()}
    assert messages[16] > 10 * messages[4] and messages[40] > 5 * messages[16]
    cpu = {n: r.cpu_us_per_height for n, r in runs.items()}
    assert cpu[4] < cpu[16] < cpu[40]


def test_a_silent_proposer_costs_a_round_timeout():
    model = WanModel(round_timeout_base_ms=1_000)
    fine = run_wan(5, 4, model, load_ms=3_000)
    faulty = run_wan(5, 4, model, silent=True, load_ms=3_000)
    assert fine.ok and faulty.ok, (fine.error, faulty.error)
    assert set(fine.commit_rounds) == {0}
    height, deciding_round, gap = faulty.silent_heights[0]
    assert height == 2 and deciding_round == 1 and gap > 1_000
    assert percentile(faulty.tx_quorum_ms, 99) > percentile(fine.tx_quorum_ms, 99) + 500  # txs that waited out the timeout
    assert make_wan_scenario(5, 4, model, silent=True).byzantine == {silent_member(4): "silent"}
    with pytest.raises(ValueError, match="n >= 4"):
        make_wan_scenario(5, 3, model, silent=True)


@pytest.mark.parametrize("silent", [False, True])
def test_no_fork_at_sixteen_validators_over_wide_area_links(silent):
    # Wide jitter reorders messages between links; every run is checked for agreement, validity and liveness.
    model = WanModel(min_ms=20, max_ms=150, jitter_pct=100, sign_us=25, verify_us=60, vrf_us=300, message_us=40,
                     round_timeout_base_ms=1_000)
    for seed in range(4):
        result = run_wan(seed, 16, model, silent=silent, load_ms=2_500)
        assert result.ok, f"seed {seed}: {result.error}"
        assert result.heights >= 2 and len(result.tx_all_ms) == result.txs


def test_bad_model_parameters_are_refused_with_their_name():
    with pytest.raises(ValueError, match="min_ms <= max_ms"):
        WanModel(min_ms=200, max_ms=100)
    with pytest.raises(ValueError, match="verify_us"):
        WanModel(verify_us=-1)
    with pytest.raises(ValueError, match="tx_interval_ms"):
        run_wan(1, 4, load_ms=10, tx_interval_ms=50)


def test_cli_runs_wide_area_seeds(capsys):
    from node.consensus.sim.__main__ import main

    assert main(["--wan", "--seeds", "2", "--n", "4", "--faults", "silent", "-v"]) == 0
    out = capsys.readouterr().out
    assert "2/2 wide-area runs passed" in out and "rounds/height=" in out
    assert main(["--wan", "--seeds", "1", "--faults", "drop"]) == 2
    assert "--wan takes --faults none or silent" in capsys.readouterr().err
