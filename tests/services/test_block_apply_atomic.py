"""A finalised block's state change and its receipt-log append are one DuckDB
transaction: a log that would diverge from the sealed head leaves the state
as it was too, and the block then applies whole."""

from __future__ import annotations

from dataclasses import replace

import pytest

from node.app.chain_app import ChainApplication
from node.app.decisions import unattested_decisions
from node.app.policy import Governance
from node.app.rules import ChainRules
from node.base.db import open_node_db
from node.base.keys import Identity
from node.consensus.block import Block, genesis_header, make_seed_proof
from node.consensus.block_rules import build_block
from node.consensus.genesis import Genesis
from node.consensus.store import ChainStore
from tests.services.test_state_attestations import SCHED_A, attest, scheduled_chain
from tests.services.test_state_support import CHAIN_ID, START_MS, Chain

ATTEST_ONCE = ChainRules(attest_once=1)


def test_a_diverging_log_rolls_the_state_back_with_it(tmp_path):
    proposer = Identity.from_label("atomic-proposer")
    genesis = Genesis(chain_id=CHAIN_ID, genesis_time_ms=START_MS, validators=(proposer.public_key,),
                      block_period_ms=0, rules={"attest_once": 1})
    conn = open_node_db(tmp_path)
    store = ChainStore(conn)
    store.bind_chain(CHAIN_ID, genesis.hash)
    app = ChainApplication(conn, store, governance=Governance(validators=genesis.validators), rules=ATTEST_ONCE)
    parent = genesis_header(genesis)

    def make_block(txs) -> Block:
        number, raw = parent.height + 1, [tx.encoded for tx in txs]
        head = app.receipts_head_after(raw, number)
        return build_block(genesis, parent, proposer.public_key, 0, raw, START_MS + number * 1000,
                           receipts_size=head.size, receipts_root=head.root,
                           seed_proof=make_seed_proof(proposer, genesis.hash, parent))

    def store_block(block: Block) -> None:
        store.append_block(height=block.height, block_hash=block.hash, parent_hash=block.header.parent_hash,
                           timestamp_ms=block.header.timestamp_ms, proposer=proposer.public_key,
                           block=block.encode(), txs=list(block.transactions))

    ref = Chain(rules=ATTEST_ONCE)
    scheduled_chain(ref)
    for _, _, _, txs in ref.blocks:
        block = make_block(txs)
        store_block(block)
        app.apply_final_block(block)
        parent = block.header
    (decision,) = unattested_decisions(conn)
    good, tx_good = attest(ref, SCHED_A, decision.body, decision.height)
    block = make_block([tx_good])
    assert block.header.receipts_size == app.receipts.size() + 1
    store_block(block)
    state_before, log_before = app.state.dump(), app.receipts.head()
    # The same block as this node would see it if its log had diverged: the sealed head differs.
    wrong = replace(block, header=replace(block.header, receipts_root=bytes(32)))
    with pytest.raises(RuntimeError, match="receipt log diverged"):
        app.apply_final_block(wrong)
    assert app.state.dump() == state_before
    assert app.receipts.head() == log_before
    assert app.state.height() == len(ref.blocks)
    app.apply_final_block(block)
    assert app.receipts.size() == log_before.size + 1
    assert app.state.height() == len(ref.blocks) + 1
    assert unattested_decisions(conn) == []
