"""The IBFT core's rules, driven directly: finality, drops, round changes,
justification, re-proposal of a prepared block, f+1 round skip, timers."""

from __future__ import annotations

from node.base.keys import Identity
from node.consensus import messages as m
from node.consensus.block import SEAL_TAG, Block, seal_message
from node.consensus.ibft import FUTURE_PER_SENDER, IbftCore
from node.consensus.outputs import Broadcast, Finalized, NeedProposal, NeedSync, Persist, RoundStarted, SetTimer


def feed(core, messages, now):
    outs = []
    for msg in messages:
        outs += core.on_message(msg.encode() if isinstance(msg, m.Message) else msg, now)
    return outs


def test_four_validators_and_an_observer_finalise_one_block(ibft):
    cluster = ibft.Cluster(4)
    seen = ibft.run_to_finality(cluster, txs=[b"t1", b"t2"])
    finals = [[o.block for o in outs if isinstance(o, Finalized)] for outs in seen]
    assert all(len(f) == 1 for f in finals)
    hashes = {f[0].hash for f in finals}
    assert len(hashes) == 1
    block = finals[0][0]
    assert block.transactions == (b"t1", b"t2") and len(block.seals) >= 3
    assert all(core.height == 2 for core in cluster.cores)
    # an observer (no key) that sees every message finalises the same block
    observer = IbftCore(cluster.genesis, None, cluster.tip)
    observer.start(cluster.now)
    every = [o.message for outs in seen for o in outs if isinstance(o, Broadcast)]
    outs = feed(observer, every, cluster.now)
    assert [o.block.hash for o in outs if isinstance(o, Finalized)] == [block.hash]
    assert not [o for o in outs if isinstance(o, (Broadcast, Persist))]


def test_every_signature_is_persisted_before_it_is_sent(ibft):
    cluster = ibft.Cluster(4)
    seen = ibft.run_to_finality(cluster)
    for outs in seen:
        persisted = set()
        sent = 0
        for out in outs:
            if isinstance(out, Persist):
                persisted.add((out.state.height, out.state.round, out.state.step))
            elif isinstance(out, Broadcast):
                sent += 1
                assert (out.height, out.round, m.STEP[out.kind]) in persisted
        assert sent >= 2  # prepare and commit at least


def test_drops_are_counted_not_stored(ibft):
    cluster = ibft.Cluster(4)
    core = cluster.cores[1]
    core.start(cluster.now)
    digest = bytes(32)
    outsider = m.Message(m.sign_payload(Identity.from_label("outsider"), m.prepare_payload(1, 0, digest)))
    good = m.Message(cluster.sign(2, m.prepare_payload(1, 0, digest)))
    forged = m.Message(m.Signed(**{**good.signed.__dict__, "signature": bytes(64)}))
    far_height = m.Message(cluster.sign(2, m.prepare_payload(9, 0, digest)))
    far_round = m.Message(cluster.sign(2, m.prepare_payload(1, 10_000, digest)))
    feed(core, [outsider, forged, far_height, far_round, b"\xff\x00garbage", good, good], cluster.now)
    c = core.counters
    assert c["dropped_non_validator"] == 1
    assert c["dropped_bad_signature"] == 1
    assert c["dropped_far_future_height"] == 1
    assert c["dropped_far_future_round"] == 1
    assert c["dropped_malformed"] == 1
    assert c["duplicate"] == 1
    # future heights are buffered, but only so many per sender
    future = [m.Message(cluster.sign(3, m.prepare_payload(2, r, digest))) for r in range(3 * FUTURE_PER_SENDER)]
    feed(core, future, cluster.now)
    assert c["buffered_future"] == FUTURE_PER_SENDER
    assert c["dropped_future_buffer_full"] == 2 * FUTURE_PER_SENDER
    assert len(core._future) == FUTURE_PER_SENDER


def test_round_timer_doubles_caps_and_sends_round_change(ibft):
    cluster = ibft.Cluster(4)
    core = cluster.cores[3]  # not the round-0 proposer
    outs = core.start(cluster.now)
    deadline = [o.deadline_ms for o in outs if isinstance(o, SetTimer)][-1]
    assert deadline == cluster.now + 2000
    expected_timeouts = [4000, 8000, 16000, 16000]  # base 2000, cap 16000
    for r, timeout in enumerate(expected_timeouts, start=1):
        outs = core.tick(deadline)
        assert RoundStarted(1, r, "timeout") in outs
        rcs = ibft.broadcasts(outs, m.ROUND_CHANGE)
        assert [(rc.signed.round, rc.signed.prepared_round) for rc in rcs] == [(r, None)]
        new_deadline = [o.deadline_ms for o in outs if isinstance(o, SetTimer)][-1]
        assert new_deadline - deadline == timeout
        deadline = new_deadline
        # two more validators reach this round, so a quorum may move past it
        feed(core, _round_changes(cluster, r, [1, 2]), deadline - 1)
    assert core.tick(deadline - 1) == []  # nothing before the deadline


def test_a_validator_alone_in_its_round_holds_it_and_resends(ibft):
    cluster = ibft.Cluster(4)
    core = cluster.cores[3]
    core.start(cluster.now)
    first = core.tick(cluster.now + 2000)  # round 0 -> 1 needs no quorum
    assert core.round == 1
    held = core.tick(cluster.now + 2000 + 4000)  # nobody else seen in round 1
    assert core.round == 1 and core.counters["round_timeouts_held"] == 1
    resent = [o.message for o in held if isinstance(o, Broadcast)]
    assert resent == [o.message for o in first if isinstance(o, Broadcast)]  # same bytes, no new signature
    assert not [o for o in held if isinstance(o, Persist)]
    feed(core, _round_changes(cluster, 1, [0, 1]), cluster.now + 7000)
    core.tick(cluster.now + 2000 + 8000)
    assert core.round == 2


def test_f_plus_one_round_changes_skip_to_the_lowest_of_them(ibft):
    cluster = ibft.Cluster(4)  # f = 1
    core = cluster.cores[0]
    core.start(cluster.now)
    one = m.Message(cluster.sign(1, m.round_change_payload(1, 5, None, None)))
    assert not ibft.broadcasts(feed(core, [one], cluster.now))
    assert core.round == 0
    two = m.Message(cluster.sign(2, m.round_change_payload(1, 7, None, None)))
    outs = feed(core, [two], cluster.now)
    assert core.round == 5
    assert [rc.signed.round for rc in ibft.broadcasts(outs, m.ROUND_CHANGE)] == [5]


def _round_changes(cluster, round_number, senders):
    return [m.Message(cluster.sign(i, m.round_change_payload(1, round_number, None, None))) for i in senders]


def test_new_round_proposal_needs_a_quorum_of_round_changes(ibft):
    cluster = ibft.Cluster(4)
    vset = cluster.vset
    p1 = vset.index(vset.proposer(cluster.tip.proposer, 1))
    block = cluster.block(vset.keys[p1], 1, [b"x"], cluster.now)
    voter = cluster.cores[(p1 + 1) % 4]
    voter.start(cluster.now)

    def proposal(rcs):
        signed = cluster.sign(p1, m.proposal_payload(1, 1, block.hash))
        return m.Message(signed, block, tuple(rc.signed for rc in rcs))

    others = [i for i in range(4) if i != p1]
    outs = feed(voter, [proposal(_round_changes(cluster, 1, others[:2]))], cluster.now)  # 2 < quorum 3
    assert voter.counters["dropped_invalid_proposal"] == 1 and not ibft.broadcasts(outs)
    wrong_round = _round_changes(cluster, 2, others[:1]) + _round_changes(cluster, 1, others[1:])
    feed(voter, [proposal(wrong_round)], cluster.now)
    assert voter.counters["dropped_invalid_proposal"] == 2
    outs = feed(voter, [proposal(_round_changes(cluster, 1, others))], cluster.now)
    assert voter.round == 1  # a justified proposal for a later round moves us there
    assert [(p.signed.round, p.signed.digest) for p in ibft.broadcasts(outs, m.PREPARE)] == [(1, block.hash)]


def test_prepared_block_must_be_re_proposed_with_its_certificate(ibft):
    cluster = ibft.Cluster(4)
    vset = cluster.vset
    p1 = vset.index(vset.proposer(cluster.tip.proposer, 1))
    prepared = (p1 + 1) % 4
    block = ibft.prepare_round_zero_at(cluster, prepared)
    later = cluster.now + 2000
    rcs = []
    for core in cluster.cores:
        rcs += ibft.broadcasts(core.tick(later), m.ROUND_CHANGE)
    mine = [rc for rc in rcs if rc.signed.sender == vset.keys[prepared]][0]
    assert (mine.signed.prepared_round, mine.signed.prepared_digest) == (0, block.hash)
    assert len(mine.prepares) >= vset.quorum
    # the round-1 proposer, given a quorum including the prepared one, re-proposes it
    others = [rc for rc in rcs if rc.signed.sender != vset.keys[p1]]
    outs = feed(cluster.cores[p1], others, later)
    proposals = ibft.broadcasts(outs, m.PROPOSAL)
    assert not [o for o in outs if isinstance(o, NeedProposal)]
    assert [(p.signed.round, p.signed.digest) for p in proposals] == [(1, block.hash)]
    assert len(proposals[0].prepares) >= vset.quorum
    # a proposer that tries a fresh block despite the prepared round change is refused
    fresh = cluster.block(vset.keys[p1], 1, [b"other"], later)
    cheat = m.Message(cluster.sign(p1, m.proposal_payload(1, 1, fresh.hash)), fresh, proposals[0].round_changes, proposals[0].prepares)
    voter_index = next(i for i in range(4) if i not in (p1, prepared))
    voter = cluster.cores[voter_index]
    feed(voter, [cheat], later)
    assert voter.counters["dropped_invalid_proposal"] == 1
    # a prepared round change without a valid certificate is refused too
    stripped = m.Message(mine.signed, mine.block, (), mine.prepares[:2])
    feed(voter, [stripped], later)
    assert voter.counters["dropped_invalid_round_change"] == 1


def test_commit_quorum_for_an_unknown_block_asks_for_sync(ibft):
    cluster = ibft.Cluster(4)
    core = cluster.cores[0]
    core.start(cluster.now)
    digest = b"\x07" * 32
    commits = []
    for i in (1, 2, 3):
        seal = cluster.ids[i].sign(SEAL_TAG, seal_message(digest, 0))
        commits.append(m.Message(cluster.sign(i, m.commit_payload(1, 0, digest, seal))))
    outs = feed(core, commits, cluster.now)
    assert [o for o in outs if isinstance(o, NeedSync)] == [NeedSync(1, tuple(sorted(cluster.vset.keys[1:])))]
    bad_seal = m.Message(cluster.sign(1, m.commit_payload(1, 0, b"\x08" * 32, bytes(64))))
    feed(core, [bad_seal], cluster.now)
    assert core.counters["dropped_bad_seal"] == 1


def test_on_block_verifies_before_accepting(ibft):
    cluster = ibft.Cluster(4)
    seen = ibft.run_to_finality(cluster)
    block = [o.block for o in seen[0] if isinstance(o, Finalized)][0]
    follower = IbftCore(cluster.genesis, None, cluster.tip)
    follower.start(cluster.now)
    short = Block(block.header, block.transactions, block.commit_round, block.seals[:2])
    assert follower.on_block(short, cluster.now) == [] and follower.counters["block_invalid"] == 1
    outs = follower.on_block(block, cluster.now)
    assert Finalized(block) in outs and follower.height == 2
    assert follower.on_block(block, cluster.now) == [] and follower.counters["block_old"] == 1


def test_future_buffer_bounds_bytes_per_sender(ibft):
    from node.consensus.buffer import FutureBuffer

    cluster = ibft.Cluster(4)
    block = cluster.block(cluster.vset.keys[0], 0, [b"x" * 2000], cluster.now)
    big = [m.Message(cluster.sign(0, m.proposal_payload(2, r, block.hash)), block) for r in range(3)]
    small = m.Message(cluster.sign(0, m.prepare_payload(3, 0, block.hash)))
    size = len(big[0].encode())
    buffer = FutureBuffer(per_sender=10, bytes_per_sender=2 * size + len(small.encode()) + 10)
    assert [buffer.add(msg) for msg in big] == [True, True, False]  # the third is over budget
    assert buffer.add(small)
    assert buffer.take(3) == [small] and len(buffer) == 0  # lower heights are released too
    assert all(buffer.add(msg) for msg in big[:2])
