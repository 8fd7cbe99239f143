"""A consensus service built on a data directory that already holds blocks.

This is every restart of a node: stop 23's tip-header cache was first read
while the core was being built, before it existed, so any node with a stored
chain failed to start (only fresh chains were exercised in-process).
"""

from __future__ import annotations

import pytest

from node.base.db import open_node_db
from node.consensus.block import genesis_header
from node.consensus.service import ConsensusService
from node.consensus.store import ChainStore
from node.consensus.tx import TxTypeRegistry
from node.p2p.host import build_host
from tests.consensus.test_gate_peer_copies import FRAME, HEIGHTS, chain, sealed, validators

pytestmark = pytest.mark.timeout(60)


def test_a_service_on_a_stored_chain_starts_at_its_tip(tmp_path):
    ids = validators()
    genesis, blocks = chain(ids, ids[3])
    blocks = sealed(blocks, ids[:3])
    conn = open_node_db(tmp_path)
    store = ChainStore(conn, first_height=1, first_parent=genesis_header(genesis).hash)
    for b in blocks:
        store.append_block(height=b.height, block_hash=b.hash, parent_hash=b.header.parent_hash,
                           timestamp_ms=b.header.timestamp_ms, proposer=b.header.proposer, block=b.encode(), txs=[])

    service = ConsensusService(host=build_host(ids[0]), identity=ids[0], genesis=genesis, conn=conn,
                               data_dir=tmp_path, store=store, registry=TxTypeRegistry(), max_frame=FRAME)

    assert service.tip_header() == blocks[-1].header
    assert service.core.height == HEIGHTS + 1  # deciding the block after the stored tip
    assert service.tip_header() is service.tip_header()  # kept until the head moves
