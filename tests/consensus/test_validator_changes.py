"""The IBFT core across validator-set changes, with a scripted ``validators_at``:
four validators grow to five at height 3 and shrink to four (another four) at
height 5. Who may send, who signs, what headers commit to, and what synced
blocks must carry all follow the set of each height."""

from __future__ import annotations

from collections import deque

import pytest

from node.base import vrf
from node.consensus import messages as m
from node.consensus.block import Block, BlockHeader, genesis_header, make_seed_proof, seed_alpha
from node.consensus.block_rules import build_block
from node.consensus.ibft import IbftCore
from node.consensus.outputs import Broadcast, Finalized, NeedProposal, NeedSync
from node.consensus.validators import ValidatorSet

GROWN_AT, SHRUNK_AT, LAST = 3, 5, 7


class Schedule:
    """validators_at(h): 4 keys, then 5 from GROWN_AT (a newcomer), then 4 from
    SHRUNK_AT (one original validator voted out). Records every height asked."""

    def __init__(self, ibft) -> None:
        identities = ibft.make_identities(5)
        self.genesis = ibft.make_genesis(identities[:4])
        self.original = self.genesis.validator_set
        self.newcomer = identities[4]
        self.grown = ValidatorSet([*self.original.keys, self.newcomer.public_key])
        self.leaver = next(i for i in identities[:4] if i.public_key == self.original.keys[1])
        self.shrunk = ValidatorSet(k for k in self.grown.keys if k != self.leaver.public_key)
        self.identities = identities
        self.asked: list[int] = []

    def __call__(self, height: int) -> ValidatorSet:
        self.asked.append(height)
        if height >= SHRUNK_AT:
            return self.shrunk
        return self.grown if height >= GROWN_AT else self.original

    def identity(self, key: bytes):
        return next(i for i in self.identities if i.public_key == key)


def run_network(schedule: Schedule, now: int, until: int):
    """Five cores (every identity, all with the schedule) over a perfect network,
    driven as a shell drives them (resume after each Finalized), until every
    core has finalised ``until``. Returns (blocks by height, broadcast messages
    as (sender, kind, height, round) -> encoded message)."""
    cores = [IbftCore(schedule.genesis, ident, genesis_header(schedule.genesis), validators_at=schedule)
             for ident in schedule.identities]
    sent: dict[tuple[bytes, str, int, int], bytes] = {}
    finalized: dict[int, Block] = {}
    queue: deque = deque()
    for i, core in enumerate(cores):
        queue.extend((i, o) for o in core.start(now))
    while min(core.tip.height for core in cores) < until:
        while queue:
            i, out = queue.popleft()
            if isinstance(out, NeedProposal):
                stamp = max(now, out.earliest_timestamp_ms)
                queue.extend((i, o) for o in cores[i].propose(out.height, out.round, [b"tx-%d" % out.height], stamp, now))
            elif isinstance(out, Broadcast):
                msg = m.decode_message(out.message, max_size=1 << 24, max_block_size=1 << 24)
                sent[(msg.signed.sender, out.kind, out.height, out.round)] = out.message
                for j, other in enumerate(cores):
                    if j != i:
                        queue.extend((j, o) for o in other.on_message(out.message, now))
            elif isinstance(out, Finalized):
                assert finalized.setdefault(out.block.height, out.block).hash == out.block.hash, "a fork"
                queue.extend((i, o) for o in cores[i].resume(now))
        now = min(d for d in (core.next_deadline_ms for core in cores) if d is not None)
        for i, core in enumerate(cores):
            queue.extend((i, o) for o in core.tick(now))
    return finalized, sent


@pytest.fixture
def world(ibft):
    schedule = Schedule(ibft)
    blocks, sent = run_network(schedule, ibft.T0 + 5000, LAST)
    return schedule, blocks, sent, ibft.T0 + 5000


def signers_at(sent, key: bytes, height: int) -> set[str]:
    return {kind for (sender, kind, h, _r) in sent if sender == key and h == height}


def test_the_set_grows_and_shrinks_without_a_fork_and_headers_commit_to_it(world):
    schedule, blocks, sent, _ = world
    assert sorted(blocks) == list(range(1, LAST + 1))
    for height, block in blocks.items():
        assert block.header.validators_hash == schedule(height).hash, height
        assert block.header.next_validators_hash == schedule(height + 1).hash, height
        assert len(block.seals) >= schedule(height).quorum
        assert {key for key, _ in block.seals} <= set(schedule(height).keys), height
        assert block.header.proposer in schedule(height)
        parent = blocks[height - 1].header if height > 1 else genesis_header(schedule.genesis)
        alpha = seed_alpha(schedule.genesis.hash, height, parent.seed)
        assert vrf.verify(block.header.proposer, block.header.seed_proof, alpha) == block.header.seed


def test_the_newcomer_signs_from_its_first_height_and_the_leaver_stops_at_its_last(world):
    schedule, _, sent, _ = world
    newcomer, leaver = schedule.newcomer.public_key, schedule.leaver.public_key
    for height in range(1, LAST + 1):
        assert bool(signers_at(sent, newcomer, height)) == (height >= GROWN_AT), height
        assert bool(signers_at(sent, leaver, height)) == (height < SHRUNK_AT), height
    assert {m.PREPARE, m.COMMIT} <= signers_at(sent, newcomer, GROWN_AT)


def test_the_core_asks_for_the_next_set_only_up_to_two_heights_past_its_tip(world):
    """C1: the set of h + 1 is read once block h - 1 is applied (the tip), never further."""
    schedule, blocks, _, now = world
    schedule.asked.clear()
    follower = IbftCore(schedule.genesis, None, blocks[2].header, validators_at=schedule)
    follower.start(now)
    for height in range(3, LAST + 1):
        tip = follower.tip.height
        follower.on_block(blocks[height], now)
        follower.resume(now)
        assert max(schedule.asked) <= tip + 2, (height, schedule.asked)
        schedule.asked.clear()


def core_at(schedule, blocks, height: int, identity, now: int) -> IbftCore:
    """A core of ``identity`` deciding ``height`` (its tip is block height - 1)."""
    core = IbftCore(schedule.genesis, identity, blocks[height - 1].header, validators_at=schedule)
    core.start(now)
    return core


def feed(core, sent, now, *keys):
    outs = []
    for key in keys:
        outs += core.on_message(sent[key], now)
    return outs


def test_the_newcomers_votes_count_from_its_first_height_and_not_before(world):
    schedule, blocks, sent, now = world
    newcomer = schedule.newcomer.public_key
    # A validator of every height that is not the proposer of height GROWN_AT.
    proposer = blocks[GROWN_AT].header.proposer
    me = next(k for k in schedule.shrunk.keys if k not in (proposer, newcomer))
    core = core_at(schedule, blocks, GROWN_AT - 1, schedule.identity(me), now)
    # Before its first height its vote is a non-validator's: dropped, not counted.
    before = m.sign_payload(schedule.newcomer, m.prepare_payload(GROWN_AT - 1, 0, blocks[GROWN_AT - 1].hash))
    core.on_message(m.Message(before).encode(), now)
    assert core.counters["dropped_non_validator"] == 1
    # Its vote for its first height arrives a height early: kept, not dropped as a non-validator's.
    feed(core, sent, now, (newcomer, m.PREPARE, GROWN_AT, 0))
    assert core.counters["dropped_non_validator"] == 1 and core.counters["buffered_future"] == 1
    core.on_block(blocks[GROWN_AT - 1], now)
    core.resume(now)  # replays it, now at its height
    assert core.height == GROWN_AT and core.validators == schedule.grown and core.validators.quorum == 4
    others = [k for k in schedule.grown.keys if k not in (me, newcomer, proposer)]
    outs = feed(core, sent, now, (proposer, m.PROPOSAL, GROWN_AT, 0), (proposer, m.PREPARE, GROWN_AT, 0))
    # me + proposer + newcomer = 3 of the quorum of 4; one more original makes it.
    assert not [o for o in outs if isinstance(o, Broadcast) and o.kind == m.COMMIT]
    outs = feed(core, sent, now, (others[0], m.PREPARE, GROWN_AT, 0))
    assert [o for o in outs if isinstance(o, Broadcast) and o.kind == m.COMMIT], "the newcomer's PREPARE counted"


def test_the_leavers_messages_are_dropped_after_its_last_height_even_once_buffered(world):
    schedule, blocks, sent, now = world
    leaver = schedule.leaver
    me = next(k for k in schedule.shrunk.keys if k != schedule.newcomer.public_key)
    core = core_at(schedule, blocks, SHRUNK_AT - 2, schedule.identity(me), now)
    # Two heights ahead the core knows neither set of SHRUNK_AT: a member of a set it knows is kept...
    late = m.sign_payload(leaver, m.prepare_payload(SHRUNK_AT, 0, blocks[SHRUNK_AT].hash))
    core.on_message(m.Message(late).encode(), now)
    assert core.counters["buffered_future"] == 1 and core.counters["dropped_non_validator"] == 0
    # ... and checked again, against the exact set, when its height comes.
    for height in (SHRUNK_AT - 2, SHRUNK_AT - 1):
        core.on_block(blocks[height], now)
        core.resume(now)
    assert core.height == SHRUNK_AT and leaver.public_key not in core.validators
    assert core.counters["dropped_non_validator"] == 1
    # At its height, directly.
    core.on_message(m.Message(m.sign_payload(leaver, m.prepare_payload(SHRUNK_AT, 0, bytes(32)))).encode(), now)
    assert core.counters["dropped_non_validator"] == 2
    # And its own core, at that height, signs nothing (not even as proposer-to-be).
    gone = core_at(schedule, blocks, SHRUNK_AT, leaver, now)
    assert not gone.is_validator
    outs = feed(gone, sent, now, *[k for k in sent if k[2] == SHRUNK_AT and k[1] == m.PROPOSAL])
    assert not [o for o in outs if isinstance(o, Broadcast)]


def proposal_of(identity, block: Block) -> bytes:
    signed = m.sign_payload(identity, m.proposal_payload(block.height, 0, block.hash))
    return m.Message(signed, block).encode()


def test_a_proposal_with_a_wrong_next_set_or_seed_proof_is_refused(world):
    schedule, blocks, sent, now = world
    height = GROWN_AT - 1  # its header must name the grown set as the next one
    good = blocks[height]
    proposer = schedule.identity(good.header.proposer)
    parent = blocks[height - 1].header
    me = next(k for k in schedule.original.keys if k != proposer.public_key)
    proof = make_seed_proof(proposer, schedule.genesis.hash, parent)
    stale_next = build_block(schedule.genesis, parent, proposer.public_key, 0, [b"x"], good.header.timestamp_ms,
                             validators=schedule.original, next_validators=schedule.original, seed_proof=proof)
    as_value = build_block(schedule.genesis, parent, proposer.public_key, 0, [b"x"], good.header.timestamp_ms,
                           validators=schedule.original, next_validators=schedule.grown, seed_proof=proof).header.to_value()
    other_key = make_seed_proof(schedule.identity(me), schedule.genesis.hash, parent)
    bad = {
        "a stale next set": stale_next,
        "an absent seed proof": Block(BlockHeader(**{**as_value, "seed_proof": bytes(80)}), (b"x",)),
        "another validator's seed proof": Block(BlockHeader(**{**as_value, "seed_proof": other_key}), (b"x",)),
    }
    for why, block in bad.items():
        core = core_at(schedule, blocks, height, schedule.identity(me), now)
        outs = core.on_message(proposal_of(proposer, block), now)
        assert core.counters["proposal_invalid_block"] == 1, why
        assert not [o for o in outs if isinstance(o, Broadcast)], why
    core = core_at(schedule, blocks, height, schedule.identity(me), now)
    good_block = Block(BlockHeader(**as_value), (b"x",))
    outs = core.on_message(proposal_of(proposer, good_block), now)
    assert [o for o in outs if isinstance(o, Broadcast) and o.kind == m.PREPARE], "the right one is accepted"


def test_a_proposer_with_two_candidate_blocks_gets_one_seed(world):
    """The unbiasable seed, at the core: the proposer asked twice for the same
    height (two cores of one key, other transactions and timestamps) proposes
    two blocks with one seed."""
    schedule, blocks, _, now = world
    height = SHRUNK_AT
    proposer = schedule.identity(blocks[height].header.proposer)
    candidates = []
    at = blocks[height - 1].header.timestamp_ms + schedule.genesis.block_period_ms
    for txs, delay in (([b"a"], 0), ([b"b", b"c"], 300)):
        core = core_at(schedule, blocks, height, proposer, at)
        need = [o for o in core.tick(at) if isinstance(o, NeedProposal)][0]
        outs = core.propose(need.height, 0, txs, need.earliest_timestamp_ms + delay, at)
        proposal = [o for o in outs if isinstance(o, Broadcast) and o.kind == m.PROPOSAL][0]
        candidates.append(m.decode_message(proposal.message, max_size=1 << 24, max_block_size=1 << 24).block)
    one, two = candidates
    assert one.hash != two.hash and one.header.seed == two.header.seed == blocks[height].header.seed
    assert one.header.next_validators_hash == two.header.next_validators_hash == schedule.shrunk.hash


def test_synced_blocks_verify_across_the_changes_and_must_name_the_right_sets(world, ibft):
    schedule, blocks, _, now = world
    follower = IbftCore(schedule.genesis, None, genesis_header(schedule.genesis), validators_at=schedule)
    follower.start(now)
    for height in range(1, LAST + 1):
        follower.on_block(blocks[height], now)
        follower.resume(now)
    assert follower.tip.hash == blocks[LAST].hash and follower.counters["blocks_synced"] == LAST
    # A follower that knows of no change refuses block GROWN_AT - 1: its header names a next set it does not know.
    unaware = IbftCore(schedule.genesis, None, genesis_header(schedule.genesis))
    unaware.start(now)
    for height in range(1, GROWN_AT):
        unaware.on_block(blocks[height], now)
        unaware.resume(now)
    assert unaware.tip.height == GROWN_AT - 2 and unaware.counters["block_invalid"] == 1


def test_a_validator_stuck_at_a_height_asks_peers_for_blocks_with_nobody_seen_ahead(ibft):
    """After a set change the nodes ahead may all be non-validators, who send no
    consensus messages: a second round timeout at one height asks for blocks anyway."""
    identities = ibft.make_identities(4)
    genesis = ibft.make_genesis(identities)
    core = IbftCore(genesis, identities[0], genesis_header(genesis))
    now = genesis.genesis_time_ms + 1_000
    core.start(now)
    first = core.tick(now + genesis.round_timeout_ms(0))  # round 0 times out: a round change, no sync yet
    assert not [o for o in first if isinstance(o, NeedSync)]
    assert core.round == 1
    later = core.tick(now + genesis.round_timeout_ms(0) + genesis.round_timeout_ms(1))
    assert [o for o in later if isinstance(o, NeedSync)] == [NeedSync(1, ())]
