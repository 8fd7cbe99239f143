"""Safety state: durable store, the signing watermark, and restarts that
never sign a conflicting message."""

from __future__ import annotations

import os

import pytest

from node.consensus import messages as m
from node.consensus.ibft import IbftCore
from node.consensus.outputs import NeedProposal, Persist
from node.consensus.safety import SafetyState, SafetyStateError, SafetyStore


def test_store_round_trip_and_atomic_replace(tmp_path):
    store = SafetyStore(tmp_path / "consensus" / "safety.bin")
    assert store.load() is None
    first = SafetyState(height=3, round=1, step=2, signed_payload=b"p1")
    store.save(first)
    assert store.load() == first
    second = SafetyState(height=3, round=2, step=0, signed_payload=b"p2", prepared_round=1,
                         prepared_block=b"block", prepared_certificate=((b"a" * 32, b"p", b"s" * 64),))
    store.save(second)
    assert store.load() == second
    assert os.listdir(store.path.parent) == ["safety.bin"]  # no temp file left
    assert (store.path.stat().st_mode & 0o777) == 0o600


def test_corrupt_store_refuses_to_start(tmp_path):
    store = SafetyStore(tmp_path / "safety.bin")
    store.save(SafetyState(height=1, round=0, step=1, signed_payload=b"p1"))
    data = bytearray(store.path.read_bytes())
    data[-1] ^= 1
    store.path.write_bytes(bytes(data))
    with pytest.raises(SafetyStateError, match="corrupt"):
        store.load()
    store.path.write_bytes(b"")
    with pytest.raises(SafetyStateError):
        store.load()


def test_watermark_only_allows_later_or_identical_signatures():
    payload = b"signed-bytes"
    state = SafetyState(height=5, round=2, step=2, signed_payload=payload)
    assert state.may_sign(5, 2, 2, payload)  # the very same message again
    assert not state.may_sign(5, 2, 2, b"other")  # a conflicting one
    assert not state.may_sign(5, 2, 1, b"x") and not state.may_sign(5, 1, 3, b"x") and not state.may_sign(4, 9, 3, b"x")
    assert state.may_sign(5, 2, 3, b"x") and state.may_sign(5, 3, 0, b"x") and state.may_sign(6, 0, 0, b"x")


def _persisted(outputs):
    states = [o.state for o in outputs if isinstance(o, Persist)]
    return states[-1] if states else None


def test_restart_never_prepares_a_conflicting_block(ibft, tmp_path):
    cluster = ibft.Cluster(4)
    vset = cluster.vset
    p0 = vset.index(vset.proposer(cluster.tip.proposer, 0))
    victim = (p0 + 1) % 4
    core = cluster.cores[victim]
    store = SafetyStore(tmp_path / "safety.bin")
    core.start(cluster.now)
    a = cluster.block(vset.keys[p0], 0, [b"A"], cluster.now)
    b = cluster.block(vset.keys[p0], 0, [b"B"], cluster.now)
    propose_a = m.Message(cluster.sign(p0, m.proposal_payload(1, 0, a.hash)), a)
    propose_b = m.Message(cluster.sign(p0, m.proposal_payload(1, 0, b.hash)), b)  # equivocating proposer
    outs = core.on_message(propose_a.encode(), cluster.now)
    prepares = ibft.broadcasts(outs, m.PREPARE)
    assert [p.signed.digest for p in prepares] == [a.hash]
    store.save(_persisted(outs))
    # crash; restart from the store alone
    restarted = IbftCore(cluster.genesis, cluster.ids[victim], cluster.tip, safety=store.load())
    restarted.start(cluster.now + 10)
    outs = restarted.on_message(propose_b.encode(), cluster.now + 10)
    assert ibft.broadcasts(outs) == []
    assert restarted.counters["refused_double_sign"] == 1
    # the same proposal again gives the byte-identical prepare, nothing new
    again = IbftCore(cluster.genesis, cluster.ids[victim], cluster.tip, safety=store.load())
    again.start(cluster.now + 20)
    outs = again.on_message(propose_a.encode(), cluster.now + 20)
    assert [p.encode() for p in ibft.broadcasts(outs, m.PREPARE)] == [prepares[0].encode()]
    assert not [o for o in outs if isinstance(o, Persist)]
    # whereas a validator that forgot its state would have signed the conflict
    amnesiac = IbftCore(cluster.genesis, cluster.ids[victim], cluster.tip)
    amnesiac.start(cluster.now + 30)
    assert ibft.broadcasts(amnesiac.on_message(propose_b.encode(), cluster.now + 30), m.PREPARE)


def test_restart_keeps_prepared_state_for_round_changes(ibft, tmp_path):
    cluster = ibft.Cluster(4)
    prepared = 2
    store = SafetyStore(tmp_path / "safety.bin")
    block = ibft.prepare_round_zero_at(cluster, prepared)
    state = cluster.cores[prepared]._safety
    assert state.prepared_round == 0 and state.step == m.STEP[m.COMMIT]
    store.save(state)
    restarted = IbftCore(cluster.genesis, cluster.ids[prepared], cluster.tip, safety=store.load())
    outs = restarted.start(cluster.now + 100)
    assert restarted.round == 0
    outs = restarted.tick(cluster.now + 100 + 2000)
    rc = ibft.broadcasts(outs, m.ROUND_CHANGE)[0]
    assert (rc.signed.round, rc.signed.prepared_round, rc.signed.prepared_digest) == (1, 0, block.hash)
    assert len(rc.prepares) >= cluster.vset.quorum


def test_restarted_proposer_does_not_propose_twice(ibft):
    cluster = ibft.Cluster(4)
    vset = cluster.vset
    p0 = vset.index(vset.proposer(cluster.tip.proposer, 0))
    core = cluster.cores[p0]
    core.start(cluster.now)
    need = [o for o in core.tick(cluster.now) if isinstance(o, NeedProposal)][0]
    outs = core.propose(1, 0, [b"first"], need.earliest_timestamp_ms, cluster.now)
    state = [o.state for o in outs if isinstance(o, Persist)][0]
    restarted = IbftCore(cluster.genesis, cluster.ids[p0], cluster.tip, safety=state)
    outs = restarted.start(cluster.now + 5) + restarted.tick(cluster.now + 5)
    assert not [o for o in outs if isinstance(o, NeedProposal)]


def test_restarted_validator_holding_its_round_resends_the_same_bytes(ibft):
    cluster = ibft.Cluster(4)
    core = cluster.cores[3]
    core.start(cluster.now)
    outs = core.tick(cluster.now + 2000)  # round 1: signs a round change
    sent = [o.message for o in outs if hasattr(o, "message")]
    state = _persisted(outs)
    assert (state.round, state.step) == (1, m.STEP[m.ROUND_CHANGE])
    restarted = IbftCore(cluster.genesis, cluster.ids[3], cluster.tip, safety=state)
    restarted.start(cluster.now + 3000)
    assert restarted.round == 1
    held = restarted.tick(cluster.now + 3000 + 4000)  # alone in round 1: hold and resend
    assert restarted.round == 1
    assert [o.message for o in held if hasattr(o, "message")] == sent
    assert not [o for o in held if isinstance(o, Persist)]
