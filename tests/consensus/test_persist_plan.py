"""The service saves a batch's run of Persists once, before the run's first
message, with the run's last (highest) state: the proposer's PROPOSAL and
PREPARE then cost one fsync'd save instead of two, and every message sent is
still covered by a saved watermark at or above its own."""

from __future__ import annotations

from node.consensus import messages as m
from node.consensus.outputs import Broadcast, NeedSync, Persist, persist_plan
from node.consensus.safety import SafetyState


def saved_before_each_broadcast(outputs: list) -> list[tuple[tuple[int, int, int], SafetyState]]:
    """(the broadcast's (height, round, step), the state last saved before it), for each broadcast."""
    plan = persist_plan(outputs)
    saved: SafetyState | None = None
    found = []
    for index, out in enumerate(outputs):
        if isinstance(out, Persist) and index in plan:
            saved = plan[index]
        elif isinstance(out, Broadcast):
            assert saved is not None, "a message sent before any save"
            found.append(((out.height, out.round, m.STEP[out.kind]), saved))
    return found


def test_steady_state_is_two_saves_per_height_for_every_validator(ibft):
    cluster = ibft.Cluster(4)
    seen = ibft.run_to_finality(cluster)
    proposer = cluster.vset.index(cluster.vset.proposer(cluster.tip.proposer, 0))
    for index, outs in enumerate(seen):
        persists = [o for o in outs if isinstance(o, Persist)]
        assert len(persists) == (3 if index == proposer else 2)  # what the core asks for
    # The run_to_finality outputs are per core, not per batch: plan the proposer's own batch.
    cluster = ibft.Cluster(4)
    for core in cluster.cores:
        core.start(cluster.now)
    core = cluster.cores[proposer]
    need = [o for o in core.tick(cluster.now) if type(o).__name__ == "NeedProposal"][0]
    batch = core.propose(1, 0, [b"tx"], need.earliest_timestamp_ms, cluster.now)
    assert [m.STEP[o.kind] for o in batch if isinstance(o, Broadcast)] == [m.STEP[m.PROPOSAL], m.STEP[m.PREPARE]]
    plan = persist_plan(batch)
    assert len([o for o in batch if isinstance(o, Persist)]) == 2 and len(plan) == 1
    for (height, round_number, step), saved in saved_before_each_broadcast(batch):
        assert (saved.height, saved.round, saved.step) >= (height, round_number, step)
        # after a crash the node may sign nothing new at this message's place
        assert not saved.may_sign(height, round_number, step, b"another payload")


def state(height: int, round_number: int, step: int) -> SafetyState:
    return SafetyState(height=height, round=round_number, step=step, signed_payload=b"%d/%d/%d" % (height, round_number, step))


def bcast(height: int, round_number: int, kind: str) -> Broadcast:
    return Broadcast(b"msg", kind, height, round_number)


def test_runs_break_at_another_round_height_or_a_finalised_block():
    outputs = [
        Persist(state(1, 0, 1)), bcast(1, 0, m.PROPOSAL),
        Persist(state(1, 0, 2)), bcast(1, 0, m.PREPARE),
        Persist(state(1, 1, 0)), bcast(1, 1, m.ROUND_CHANGE),  # another round: its own save
        NeedSync(2, ()),
        Persist(state(2, 0, 2)), bcast(2, 0, m.PREPARE),  # after a boundary: its own save
    ]
    assert persist_plan(outputs) == {0: state(1, 0, 2), 4: state(1, 1, 0), 7: state(2, 0, 2)}
    for place, saved in saved_before_each_broadcast(outputs):
        assert (saved.height, saved.round, saved.step) >= place


def test_a_lower_state_is_never_saved_over_a_higher_one():
    outputs = [Persist(state(1, 0, 3)), bcast(1, 0, m.COMMIT), Persist(state(1, 0, 2)), bcast(1, 0, m.PREPARE)]
    assert persist_plan(outputs) == {0: state(1, 0, 3), 2: state(1, 0, 2)}
