"""A proposer with transactions proposes at once; without, at the heartbeat.

The genesis ``min_block_interval_ms`` is the least gap between block
timestamps (a validity rule); ``block_period_ms`` the empty-block heartbeat.
The core is driven with a fake clock (plain integers): it asks for its
proposal (NeedProposal) at parent + min interval once the shell says
transactions wait (``transactions_pending``), at parent + period otherwise.
The shell's part (node/consensus/service.py: telling the core when the
mempool holds reapable transactions, and when one arrives) runs on trio's
virtual clock with the service's clock patched to it.
"""

from __future__ import annotations

import dataclasses
import re
from pathlib import Path
from typing import Any

import pytest
import trio
import trio.testing

from node.base.codec import encode
from node.base.keys import Identity
from node.consensus import messages as m
from node.consensus.block import (
    Block,
    BlockError,
    genesis_header,
    make_seed_proof,
)
from node.consensus.block_rules import (
    build_block,
    check_block_contents,
    earliest_timestamp,
    heartbeat_timestamp,
)
from node.consensus.genesis import Genesis, Limits, parse_genesis
from node.consensus.ibft import IbftCore
from node.consensus.outputs import Broadcast, Finalized, NeedProposal, SetTimer
from node.consensus.tx import sign_tx

T0 = 1_767_225_600_000
PERIOD, INTERVAL = 1_000, 100
DOCS = Path(__file__).resolve().parents[2] / "docs"


def identities(n: int) -> list[Identity]:
    return [Identity.from_label(f"propose-at-once-{i}") for i in range(n)]


def genesis_of(ids: list[Identity], **overrides) -> Genesis:
    fields: dict[str, Any] = dict(chain_id="propose-at-once", genesis_time_ms=T0, validators=tuple(i.public_key for i in ids),
                  block_period_ms=PERIOD, min_block_interval_ms=INTERVAL, round_timeout_base_ms=2_000,
                  round_timeout_cap_ms=16_000,
                  limits=Limits(max_block_bytes=1 << 20, max_txs_per_block=100, max_timestamp_drift_ms=2_000))
    fields.update(overrides)
    return Genesis(**fields)


def proposer_core(genesis: Genesis, ids: list[Identity]) -> IbftCore:
    """The core of round 0's proposer at height 1."""
    tip = genesis_header(genesis)
    key = genesis.validator_set.proposer(tip.proposer, 0)
    return IbftCore(genesis, next(i for i in ids if i.public_key == key), tip)


def needs(outputs) -> list[NeedProposal]:
    return [o for o in outputs if isinstance(o, NeedProposal)]


def proposal_block(core: IbftCore, need: NeedProposal, txs, now: int) -> Block:
    """Answer ``need`` as the shell does (timestamp: its clock, at least the earliest) and return the block."""
    outs = core.propose(need.height, need.round, txs, max(now, need.earliest_timestamp_ms), now)
    blocks = [m.decode_message(o.message, max_size=1 << 24, max_block_size=1 << 24).block
              for o in outs if isinstance(o, Broadcast) and o.kind == m.PROPOSAL]
    assert len(blocks) == 1 and blocks[0] is not None
    return blocks[0]


# -- the core, on a fake clock --------------------------------------------------------
def test_with_transactions_pending_the_proposal_comes_at_parent_plus_min_interval():
    ids = identities(4)
    core = proposer_core(genesis_of(ids), ids)
    assert needs(core.start(T0 + 10)) == []
    assert core.wants_transactions and core.next_deadline_ms == T0 + PERIOD  # the heartbeat, for now
    outs = core.transactions_pending(T0 + 20)  # too early for the timestamp rule: wait for it
    assert needs(outs) == [] and SetTimer(T0 + INTERVAL) in outs and not core.wants_transactions
    assert needs(core.tick(T0 + INTERVAL - 1)) == []
    [need] = needs(core.tick(T0 + INTERVAL))
    assert need.earliest_timestamp_ms == T0 + INTERVAL
    assert proposal_block(core, need, [b"tx"], T0 + INTERVAL).header.timestamp_ms == T0 + INTERVAL


def test_transactions_pending_once_the_interval_has_passed_propose_at_once():
    ids = identities(4)
    core = proposer_core(genesis_of(ids), ids)
    core.start(T0 + 400)
    [need] = needs(core.transactions_pending(T0 + 400))
    assert proposal_block(core, need, [b"tx"], T0 + 400).header.timestamp_ms == T0 + 400  # never before its clock


def test_without_transactions_the_proposal_comes_at_the_heartbeat():
    ids = identities(4)
    core = proposer_core(genesis_of(ids), ids)
    core.start(T0 + 10)
    for now in (T0 + INTERVAL, T0 + 500, T0 + PERIOD - 1):
        assert needs(core.tick(now)) == []
    [need] = needs(core.tick(T0 + PERIOD))
    assert not core.wants_transactions
    assert proposal_block(core, need, [], T0 + PERIOD).header.timestamp_ms == T0 + PERIOD
    assert needs(core.transactions_pending(T0 + PERIOD + 1)) == []  # asked already: nothing twice


def test_a_transaction_arriving_mid_wait_triggers_the_proposal_at_once():
    ids = identities(4)
    core = proposer_core(genesis_of(ids), ids)
    core.start(T0 + 10)
    assert needs(core.tick(T0 + 300)) == []  # idle: nothing to propose, heartbeat not due
    [need] = needs(core.transactions_pending(T0 + 437))
    assert proposal_block(core, need, [b"late"], T0 + 437).header.timestamp_ms == T0 + 437
    assert core.next_deadline_ms == T0 + 10 + 2_000  # only the round timeout is left


def test_only_the_round_zero_proposer_wants_transactions():
    ids = identities(4)
    genesis = genesis_of(ids)
    tip = genesis_header(genesis)
    proposer = genesis.validator_set.proposer(tip.proposer, 0)
    for identity in ids:
        core = IbftCore(genesis, identity, tip)
        core.start(T0 + 10)
        assert core.wants_transactions == (identity.public_key == proposer)
        if identity.public_key != proposer:
            assert core.transactions_pending(T0 + 500) == []
    follower = IbftCore(genesis, None, tip)
    follower.start(T0 + 10)
    assert not follower.wants_transactions


def test_by_default_the_interval_is_the_period_and_nothing_changes():
    """Without the key, earliest and heartbeat are one moment: the core never
    asks the shell about transactions and proposes at parent + period."""
    ids = identities(4)
    genesis = genesis_of(ids, min_block_interval_ms=None)
    assert genesis.min_interval_ms == PERIOD
    tip = genesis_header(genesis)
    assert earliest_timestamp(tip, genesis) == heartbeat_timestamp(tip, genesis) == T0 + PERIOD
    core = proposer_core(genesis, ids)
    core.start(T0 + 10)
    assert not core.wants_transactions and core.transactions_pending(T0 + 500) == []
    [need] = needs(core.tick(T0 + PERIOD))
    assert need.earliest_timestamp_ms == T0 + PERIOD


def test_a_zero_interval_still_needs_strictly_increasing_timestamps():
    ids = identities(4)
    genesis = genesis_of(ids, min_block_interval_ms=0)
    tip = genesis_header(genesis)
    assert earliest_timestamp(tip, genesis) == T0 + 1
    core = proposer_core(genesis, ids)
    core.start(T0)
    outs = core.transactions_pending(T0)
    assert needs(outs) == [] and core.next_deadline_ms == T0 + 1
    assert needs(core.tick(T0 + 1))


# -- validity ---------------------------------------------------------------------------
def _block_at(genesis: Genesis, ids: list[Identity], timestamp_ms: int) -> Block:
    """A round-0 child of the genesis header with exactly this timestamp (build_block would raise it)."""
    tip = genesis_header(genesis)
    key = genesis.validator_set.proposer(tip.proposer, 0)
    identity = next(i for i in ids if i.public_key == key)
    block = build_block(genesis, tip, key, 0, [b"tx"], T0 + PERIOD,
                        seed_proof=make_seed_proof(identity, genesis.hash, tip))
    return Block(dataclasses.replace(block.header, timestamp_ms=timestamp_ms), block.transactions)


def test_a_block_below_parent_plus_min_interval_is_refused():
    ids = identities(4)
    genesis = genesis_of(ids)
    tip = genesis_header(genesis)
    with pytest.raises(BlockError, match=rf"header.timestamp_ms: {T0 + INTERVAL - 1} is before the earliest allowed {T0 + INTERVAL}"):
        check_block_contents(_block_at(genesis, ids, T0 + INTERVAL - 1), tip, genesis.validator_set, genesis)
    # At the interval (well before the period) it is valid.
    check_block_contents(_block_at(genesis, ids, T0 + INTERVAL), tip, genesis.validator_set, genesis)


def test_validators_refuse_a_proposal_below_parent_plus_min_interval_and_vote_for_one_at_it():
    ids = identities(4)
    genesis = genesis_of(ids)
    tip = genesis_header(genesis)
    key = genesis.validator_set.proposer(tip.proposer, 0)
    proposer = next(i for i in ids if i.public_key == key)
    voter = IbftCore(genesis, next(i for i in ids if i.public_key != key), tip)
    voter.start(T0 + 500)
    for stamp, votes in ((T0 + INTERVAL - 1, False), (T0 + INTERVAL, True)):
        block = _block_at(genesis, ids, stamp)
        signed = m.sign_payload(proposer, m.proposal_payload(1, 0, block.hash))
        outs = voter.on_message(m.Message(signed, block, (), ()).encode(), T0 + 500)
        prepares = [o for o in outs if isinstance(o, Broadcast) and o.kind == m.PREPARE]
        assert bool(prepares) == votes, stamp
    assert voter.counters["proposal_invalid_block"] == 1


# -- several heights, with the round timeouts ---------------------------------------------
class Net:
    """n cores over a network with a fixed delay, on a virtual clock; the
    driver plays the shell: it answers NeedProposal, follows each core's
    deadline, and says transactions wait when ``busy`` says so."""

    def __init__(self, genesis: Genesis, ids: list[Identity], delay_ms: int, busy) -> None:
        self.genesis, self.delay, self.busy = genesis, delay_ms, busy
        tip = genesis_header(genesis)
        self.cores = [IbftCore(genesis, i, tip) for i in ids]
        self.now = T0
        self.queue: list[tuple[int, int, int, bytes]] = []  # (at, seq, dst, message)
        self.seq = 0
        self.chain: list[Block] = []
        for i, core in enumerate(self.cores):
            self.carry_out(i, core.start(self.now))

    def carry_out(self, i: int, outs) -> None:
        core, work = self.cores[i], list(outs)
        while True:
            finalized = False
            for out in work:
                if isinstance(out, NeedProposal):
                    txs = [b"tx-%d" % out.height] if self.busy(out.height) else []
                    work.extend(core.propose(out.height, out.round, txs, max(self.now, out.earliest_timestamp_ms), self.now))
                elif isinstance(out, Broadcast):
                    for dst in range(len(self.cores)):
                        if dst != i:
                            self.seq += 1
                            self.queue.append((self.now + self.delay, self.seq, dst, out.message))
                elif isinstance(out, Finalized):
                    finalized = True
                    if i == 0:
                        self.chain.append(out.block)
            work = core.resume(self.now) if finalized else []
            if not work and self.busy(core.height) and core.wants_transactions:
                work = core.transactions_pending(self.now)
            if not work:
                return

    def run_until(self, end: int) -> None:
        while True:
            ticks = [(c.next_deadline_ms, 0, i, b"") for i, c in enumerate(self.cores) if c.next_deadline_ms is not None]
            at, seq, i, message = min(ticks + self.queue)  # at one moment, timers before messages
            if at > end:
                self.now = end
                return
            self.now = max(self.now, at)
            if message:
                self.queue.remove((at, seq, i, message))
                self.carry_out(i, self.cores[i].on_message(message, self.now))
            else:
                self.carry_out(i, self.cores[i].tick(self.now))


@pytest.mark.parametrize("busy", [False, True])
def test_heights_follow_the_heartbeat_or_the_interval_and_nobody_times_out(busy):
    ids = identities(4)
    net = Net(genesis_of(ids), ids, delay_ms=30, busy=lambda height: busy)
    net.run_until(T0 + 6 * PERIOD)
    stamps = [b.header.timestamp_ms for b in net.chain]
    gaps = [b - a for a, b in zip([T0, *stamps], stamps, strict=False)]
    assert all(b.commit_round == 0 for b in net.chain)
    assert sum(c.counters["round_timeouts"] for c in net.cores) == 0
    if busy:
        # Each proposer proposes as soon as it has the parent and the interval has passed.
        assert len(net.chain) >= 40 and all(gap >= INTERVAL for gap in gaps) and min(gaps) == INTERVAL
        assert all(b.transactions for b in net.chain)
    else:
        assert gaps == [PERIOD] * len(gaps) and len(gaps) == 5
        assert not any(b.transactions for b in net.chain)


def test_an_idle_chain_wakes_for_one_transaction():
    ids = identities(4)
    due = T0 + 2 * PERIOD + 250  # a transaction reaches the mempools mid-wait at height 3
    net = Net(genesis_of(ids), ids, delay_ms=30, busy=lambda height: height == 3 and net.now >= due)
    net.run_until(due - 1)
    assert [b.header.timestamp_ms for b in net.chain] == [T0 + PERIOD, T0 + 2 * PERIOD]
    net.now = due
    proposer = next(i for i, c in enumerate(net.cores) if c.wants_transactions)
    net.carry_out(proposer, [])  # the shell's reaction to the arrival
    net.run_until(due + PERIOD + 200)
    assert net.chain[2].header.timestamp_ms == due and net.chain[2].transactions == (b"tx-3",)
    assert net.chain[3].header.timestamp_ms == due + PERIOD  # idle again: the heartbeat, from the new parent


# -- what the shell asks the mempool --------------------------------------------------------
def test_only_reapable_transactions_count_as_pending():
    """A transaction held behind a nonce gap cannot go into a block: it must not
    make a proposer hurry (it would propose an empty block at the interval)."""
    from node.consensus.mempool import Mempool
    from node.consensus.tx import TxTypeRegistry

    committed: dict[bytes, int] = {}
    sender = Identity.from_label("propose-at-once-pool")
    pool = Mempool(chain_id="c", registry=TxTypeRegistry.with_builtins(),
                   committed_nonce=lambda key: committed.get(key, 0))
    make = lambda n: sign_tx(sender, chain_id="c", nonce=n, tx_type="noop", payload={"n": n}).encoded  # noqa: E731
    assert not pool.has_ready()
    assert pool.add(make(1)).accepted and len(pool) == 1 and not pool.has_ready()  # held: nonce 0 missing
    assert pool.add(make(0)).accepted and pool.has_ready()
    committed[sender.public_key] = 2
    pool.on_commit(1, [make(0), make(1)])
    assert len(pool) == 0 and not pool.has_ready()


# -- the genesis key ------------------------------------------------------------------
def test_the_genesis_key_is_optional_hashed_only_when_it_differs_and_bounded_by_the_period():
    ids = identities(4)
    plain = genesis_of(ids, min_block_interval_ms=None)
    same = genesis_of(ids, min_block_interval_ms=PERIOD)
    shorter = genesis_of(ids)
    assert same == plain and same.hash == plain.hash and "min_block_interval_ms" not in plain.to_value()
    assert shorter.hash != plain.hash and shorter.to_value()["min_block_interval_ms"] == INTERVAL
    assert parse_genesis(shorter.to_toml()) == shorter and parse_genesis(plain.to_toml()) == plain
    assert "min_block_interval_ms" not in plain.to_toml()
    with pytest.raises(Exception, match=r"min_block_interval_ms: expected at most block_period_ms \(1000\)"):
        genesis_of(ids, min_block_interval_ms=PERIOD + 1)
    text = shorter.to_toml()
    for bad, problem in (("-1", "expected 0..3600000, got -1"), ('"fast"', "expected an integer")):
        with pytest.raises(Exception, match=re.escape(f"min_block_interval_ms: {problem}")):
            parse_genesis(text.replace(f"min_block_interval_ms = {INTERVAL}", f"min_block_interval_ms = {bad}"), "g.toml")


def test_the_documented_example_hash_is_the_codes():
    """docs/genesis.md gives the example genesis with min_block_interval_ms = 100."""
    example = Genesis(chain_id="docs-example", genesis_time_ms=T0,
                      validators=tuple(Identity.from_label(f"docs/validator-{i}").public_key for i in range(4)),
                      min_block_interval_ms=100)
    text = (DOCS / "genesis.md").read_text(encoding="utf-8")
    assert example.hash.hex() in text
    value = encode(example.to_value())
    entry = "75 6d696e5f626c6f636b5f696e74657276616c5f6d73 1864"
    assert len(value) == 364 and value[0] == 0xa8 and "364 bytes" in text and entry in text
    cap, base = b"round_timeout_cap_ms", b"round_timeout_base_ms"
    assert value.index(cap) < value.index(bytes.fromhex(entry.replace(" ", ""))) < value.index(base)


# -- the shell ------------------------------------------------------------------------
def test_the_shell_proposes_when_a_transaction_arrives_and_idles_to_the_heartbeat(tmp_path, monkeypatch):
    """A one-validator ConsensusService on trio's virtual clock (its wall clock
    patched to it): empty blocks at the heartbeat; transactions submitted
    mid-wait are proposed at once; then empty blocks at the heartbeat again."""
    from node.base.db import open_node_db
    from node.consensus import service as service_module
    from node.consensus.tx import TxTypeRegistry, tx_hash
    from node.p2p.host import build_host

    node_id, sender = Identity.from_label("propose-at-once-shell"), Identity.from_label("propose-at-once-sender")
    genesis = genesis_of([node_id], min_block_interval_ms=INTERVAL, block_period_ms=PERIOD)
    virtual = lambda: T0 + int(trio.current_time() * 1000)  # noqa: E731
    monkeypatch.setattr(service_module, "now_ms", virtual)
    service = service_module.ConsensusService(
        host=build_host(node_id), identity=node_id, genesis=genesis, conn=open_node_db(tmp_path),
        data_dir=tmp_path, registry=TxTypeRegistry.with_builtins(), max_frame=1 << 20)
    txs = [sign_tx(sender, chain_id=genesis.chain_id, nonce=n, tx_type="noop", payload={"n": n}).encoded for n in range(2)]
    blocks: list[tuple[int, int]] = []  # (timestamp, transactions)
    service.on_finalized.append(lambda b: blocks.append((b.header.timestamp_ms, len(b.transactions))))

    async def main() -> None:
        async with trio.open_nursery() as nursery:
            await nursery.start(service.run)
            with trio.fail_after(30):
                while len(blocks) < 2:
                    await trio.sleep(0.001)
            await trio.sleep_until(trio.current_time() + 0.3)  # mid-wait at height 3
            submitted = virtual()
            assert service.submit(txs[0]).accepted and service.submit(txs[1]).accepted
            with trio.fail_after(30):
                await service.commit_event(tx_hash(txs[1])).wait()
            while len(blocks) < 5:
                await trio.sleep(0.01)
            nursery.cancel_scope.cancel()
        assert blocks[1] == (blocks[0][0] + PERIOD, 0)  # (the first waits for start-up sync to give up on peers)
        busy = blocks[2]
        assert busy[1] == 2 and submitted <= busy[0] < submitted + 5  # at once (both in one block)
        assert blocks[3] == (busy[0] + PERIOD, 0)  # idle again: the heartbeat

    trio.run(main, clock=trio.testing.MockClock(autojump_threshold=0))
