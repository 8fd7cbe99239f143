"""The signing gate judges from every validator peer's copy of the recent blocks.

A finalised block's stored seals are the first quorum the finalising node
collected, so a validator that took part can be missing from one peer's copy
of every recent block while present in another's. A wiped validator that
synced from the first peer only would conclude "not taking part" and sign
at once (test_wiped_validator failed so: "signed height 7 while watching").

Real parts: the wiped validator is a real :class:`ConsensusService` on a real
libp2p host; its peers are real hosts serving their own chain store over the
real sync protocol (``BlockSync.serve``). Peer A's copy lacks the wiped
validator's seals, peer B's holds them; A is the only peer when it syncs.
"""

from __future__ import annotations

import time
from collections.abc import Sequence

import duckdb
import multiaddr
import pytest
import trio
from libp2p.custom_types import TProtocol
from libp2p.peer.peerinfo import info_from_p2p_addr

from node.base.db import open_node_db
from node.base.keys import Identity
from node.consensus.block import SEAL_TAG, Block, genesis_header, make_seed_proof, seal_message
from node.consensus.block_rules import build_block
from node.consensus.gate import AWAIT_SYNC, OPEN, WATCHING, SigningGate, took_part
from node.consensus.genesis import Genesis
from node.consensus.service import ConsensusService
from node.consensus.store import ChainStore
from node.consensus.sync import SYNC_PROTOCOL, BlockSync
from node.consensus.tx import TxTypeRegistry
from node.p2p.host import build_host, running_host

pytestmark = pytest.mark.timeout(60)
LOOPBACK = multiaddr.Multiaddr("/ip4/127.0.0.1/tcp/0")
HEIGHTS, CHECK = 6, 20
FRAME = 1 << 20


def validators() -> list[Identity]:
    return [Identity.from_label(f"gate-copies-{i}") for i in range(4)]


def chain(ids: list[Identity], victim: Identity, *, victim_proposes_at: int | None = None) -> tuple[Genesis, list[Block]]:
    """HEIGHTS unsealed blocks; the victim proposes none of them unless asked
    (a round whose proposer is the victim is skipped otherwise)."""
    genesis = Genesis(chain_id="gate-copies", genesis_time_ms=time.time_ns() // 1_000_000 - 600_000,
                      validators=tuple(i.public_key for i in ids), block_period_ms=500)
    by_key = {i.public_key: i for i in ids}
    parent, blocks = genesis_header(genesis), []
    for height in range(1, HEIGHTS + 1):
        for round_number in range(4):
            proposer = genesis.validator_set.proposer(parent.proposer, round_number)
            if (proposer == victim.public_key) == (height == victim_proposes_at):
                break
        block = build_block(genesis, parent, proposer, round_number, [], parent.timestamp_ms + 1000,
                            seed_proof=make_seed_proof(by_key[proposer], genesis.hash, parent))
        blocks.append(block)
        parent = block.header
    return genesis, blocks


def sealed(blocks: list[Block], sealers: Sequence[Identity]) -> list[Block]:
    """Each block as a node whose first commit quorum was ``sealers`` stored it."""
    return [b.with_seals(b.header.round, [(s.public_key, s.sign(SEAL_TAG, seal_message(b.hash, b.header.round)))
                                          for s in sealers]) for b in blocks]


def store_of(genesis: Genesis, blocks: list[Block]) -> ChainStore:
    store = ChainStore(duckdb.connect(":memory:"), first_height=1, first_parent=genesis_header(genesis).hash)
    for b in blocks:
        store.append_block(height=b.height, block_hash=b.hash, parent_hash=b.header.parent_hash,
                           timestamp_ms=b.header.timestamp_ms, proposer=b.header.proposer, block=b.encode(), txs=[])
    return store


async def wiped_validator_decides(tmp_path, genesis: Genesis, victim: Identity, copies: list[tuple[Identity, list[Block]]]) -> dict:
    """Serve each copy from its own host; the victim (no safety state) syncs from the
    first one alone, the others connect once it has synced. Returns its gate's status."""
    service = ConsensusService(host=build_host(victim), identity=victim, genesis=genesis, conn=open_node_db(tmp_path),
                               data_dir=tmp_path, registry=TxTypeRegistry(), max_frame=FRAME,
                               double_sign_check_height=CHECK)
    hosts = [build_host(identity) for identity, _ in copies]
    for host, (_, blocks) in zip(hosts, copies, strict=True):
        sync = BlockSync(host=host, store=store_of(genesis, blocks), max_frame=FRAME, height=lambda: 0,
                         deliver=lambda block: None)
        host.set_stream_handler(TProtocol(SYNC_PROTOCOL), sync.serve)
    async with running_host(service.host, [LOOPBACK]):
        async with running_host(hosts[0], [LOOPBACK]), running_host(hosts[1], [LOOPBACK]), \
                running_host(hosts[2], [LOOPBACK]):
            await service.host.connect(info_from_p2p_addr(hosts[0].get_addrs()[0]))
            async with trio.open_nursery() as nursery:
                await nursery.start(service.run)
                with trio.fail_after(20):
                    while not service.started:
                        await trio.sleep(0.01)
                head = service.store.head()
                assert head is not None and head.height == HEIGHTS  # synced, from the first peer alone
                for host in hosts[1:]:
                    await service.host.connect(info_from_p2p_addr(host.get_addrs()[0]))
                with trio.fail_after(30):
                    while service.gate.state == AWAIT_SYNC:
                        await trio.sleep(0.02)
                status = dict(service.gate.status())
                nursery.cancel_scope.cancel()
    return status


async def test_seals_missing_from_the_synced_copy_but_in_another_peers_make_it_watch(tmp_path):
    ids = validators()
    victim = ids[3]
    genesis, blocks = chain(ids, victim)
    without, with_victim = sealed(blocks, ids[:3]), sealed(blocks, [ids[0], ids[1], victim])
    status = await wiped_validator_decides(tmp_path, genesis, victim,
                                           [(ids[0], without), (ids[1], with_victim), (ids[2], without)])
    assert status["state"] == WATCHING, status
    assert status["synced_head"] >= HEIGHTS and status["signs_from_height"] == status["synced_head"] + CHECK + 1


async def test_a_key_in_no_copy_signs_once_every_peer_has_been_read(tmp_path):
    ids = validators()
    victim = ids[3]
    genesis, blocks = chain(ids, victim)
    without = sealed(blocks, ids[:3])
    status = await wiped_validator_decides(tmp_path, genesis, victim, [(ids[i], without) for i in range(3)])
    assert status["state"] == OPEN and "sealed none" in status["reason"], status
    assert "3 peers" in status["reason"], status


async def test_a_block_it_proposed_counts_even_with_its_seals_in_no_copy(tmp_path):
    ids = validators()
    victim = ids[3]
    genesis, blocks = chain(ids, victim, victim_proposes_at=HEIGHTS - 1)
    assert blocks[HEIGHTS - 2].header.proposer == victim.public_key
    without = sealed(blocks, ids[:3])
    status = await wiped_validator_decides(tmp_path, genesis, victim, [(ids[i], without) for i in range(3)])
    assert status["state"] == WATCHING, status


# -- the gate's decision, sans I/O ----------------------------------------------------
def waiting_gate(check: int = 2) -> SigningGate:
    return SigningGate.at_start(check_heights=check, has_safety_state=False, unsafe_sign_immediately=False)


def test_took_part_counts_a_checked_seal_or_the_proposer_only():
    ids = validators()
    victim = ids[3]
    _, blocks = chain(ids, victim)
    assert not took_part(victim.public_key, sealed(blocks, ids[:3]))
    assert took_part(victim.public_key, sealed(blocks[-1:], [ids[0], ids[1], victim]))
    forged = blocks[-1].with_seals(blocks[-1].header.round, [(victim.public_key, bytes(64))])
    assert not took_part(victim.public_key, [forged])  # a peer cannot make us watch with a made-up seal
    _, proposed = chain(ids, victim, victim_proposes_at=2)
    assert took_part(victim.public_key, proposed[1:2]) and not took_part(victim.public_key, proposed[2:])


def test_the_gate_decides_from_our_copy_and_every_peer_copy():
    ids = validators()
    victim = ids[3]
    _, blocks = chain(ids, victim)
    g = waiting_gate()
    assert g.window(7) == range(6, 8) and g.window(1) == range(1, 2)
    assert g.wants_copies(7, alone=False) and not g.wants_copies(7, alone=True) and not g.wants_copies(0, alone=False)
    g.copies_read(victim.public_key, [sealed(blocks, ids[:3]), sealed(blocks, [ids[0], ids[1], victim])])
    assert not g.wants_copies(7, alone=False)
    assert not g.synced(7, peer_answered=True, alone=False, sealed_recently=False)  # our copy lacks us, a peer's has us
    assert g.state == WATCHING and g.status()["signs_from_height"] == 10

    none = waiting_gate()
    none.copies_read(victim.public_key, [sealed(blocks, ids[:3])])
    assert none.synced(7, peer_answered=True, alone=False, sealed_recently=False) and none.open
    assert "our copy and 1 peer's copy" in none.reason


def test_no_peer_copy_read_means_watching():
    g = waiting_gate()
    g.copies_read(validators()[3].public_key, [])
    assert not g.synced(7, peer_answered=True, alone=False, sealed_recently=False)
    assert g.state == WATCHING and "no peer sent its copy" in g.reason and g.status()["signs_from_height"] == 10
    assert not waiting_gate().synced(7, peer_answered=True, alone=False, sealed_recently=True)  # our copy is enough to watch
