"""The rule attest_once decides what the receipt log and the state make of an attestation batch:
absent (0, a chain started before the rule) every batch is kept as before, in the state and in the
log, so a node syncing such a chain from genesis recomputes the log its headers seal; 1 (a new
chain) refuses a batch that attests no open decision. The rule in force at the block's height
decides, also after a vote changes it."""

from __future__ import annotations

from pathlib import Path

import duckdb
import pytest

from node.app.chain_app import ChainApplication
from node.app.decisions import decision_id, unattested_decisions
from node.app.policy import Governance
from node.app.rules import DEFAULT_RULES, ChainRules
from node.base.db import open_node_db
from node.base.keys import Identity
from node.consensus.block import genesis_header, make_seed_proof
from node.consensus.block_rules import build_block
from node.consensus.genesis import Genesis
from node.consensus.store import ChainStore
from node.receipts.envelope import build_receipt
from node.receipts.log import LogHead
from tests.services.test_state_attestations import SCHED_A, SCHED_B, attest, decision_row, scheduled_chain
from tests.services.test_state_rule_changes import GOV, V, carried, set_rule
from tests.services.test_state_support import CHAIN_ID, NODES, START_MS, Chain

ATTEST_ONCE = ChainRules(attest_once=1)


def app_and_chain(rules: ChainRules, governance: Governance | None = None) -> tuple[ChainApplication, Chain]:
    conn = duckdb.connect(":memory:")
    gov = governance or Governance(validators=(SCHED_A.public_key,))
    app = ChainApplication(conn, ChainStore(conn, first_height=1, first_parent=b"\0" * 32), rules=rules,
                           governance=gov)
    return app, Chain(conn, machine=app.state)


def four_batches(chain: Chain, body, height: int):
    """Batches that attest no open decision but the second: a stranger's, the first scheduler's
    (valid), the second scheduler's (late), one of other fields, one dated before the decision."""
    stranger = attest(chain, NODES[1], body, height)
    good = attest(chain, SCHED_A, body, height)
    late = attest(chain, SCHED_B, body, height)
    other = attest(chain, SCHED_B, body, height, fields={**body.fields, "deadline": body.fields["deadline"] + 1})
    early = attest(chain, SCHED_A, body, height - 1)
    return [stranger, good, late, other, early]


@pytest.mark.parametrize("rules", [DEFAULT_RULES, ChainRules(attest_once=0)])
def test_without_the_rule_every_batch_is_kept_and_the_first_valid_one_marks_the_decision(rules):
    app, chain = app_and_chain(rules)
    chain, body, height = scheduled_chain(chain)
    batches = four_batches(chain, body, height)
    txs = [tx for _, tx in batches]
    ids = [receipt.id for receipt, _ in batches]
    next_height = app.state.next_height()
    assert app.refused_attestations(txs, next_height) == set()
    assert [r.id for r in app.receipts_in([tx.encoded for tx in txs], next_height)] == ids
    effects = chain.block(*txs)
    assert effects.rejected == [] and effects.receipt_ids == ids
    # The stranger's came first, but only a receipt the attestation check accepts marks the decision.
    did = decision_id(body.kind, body.subject, body.fields)
    assert bytes(decision_row(chain, did)[3]) == batches[1][0].id
    assert unattested_decisions(chain.conn) == []


def test_with_the_rule_only_the_attestation_of_an_open_decision_is_kept():
    app, chain = app_and_chain(ATTEST_ONCE)
    chain, body, height = scheduled_chain(chain)
    batches = four_batches(chain, body, height)
    txs = [tx for _, tx in batches]
    next_height = app.state.next_height()
    assert app.refused_attestations(txs, next_height) == {0, 2, 3, 4}
    good = batches[1][0].id
    assert [r.id for r in app.receipts_in([tx.encoded for tx in txs], next_height)] == [good]
    effects = chain.block(*txs)
    assert effects.receipt_ids == [good]
    assert [r.tx_hash for r in effects.rejected] == [txs[i].hash for i in (0, 2, 3, 4)]


def test_a_vote_turns_the_rule_on_from_its_activation_height():
    app, chain = app_and_chain(DEFAULT_RULES, GOV)
    chain, body, height = scheduled_chain(chain)
    first, tx = attest(chain, SCHED_A, body, height)
    assert chain.block(tx).receipt_ids == [first.id]
    effects = chain.block(*carried(chain, set_rule(chain, V[0], "attest_once", 1)))
    assert effects.rejected == []
    executed = chain.height
    assert app.state.rules_at(executed + 1).attest_once == 0 and app.state.rules_at(executed + 2).attest_once == 1
    # At executed + 1 the rule is still off: a second attestation of the decision is kept.
    late, tx = attest(chain, SCHED_B, body, chain.height)
    assert app.receipts_in([tx.encoded], executed + 1) == [late]
    effects = chain.block(tx)
    assert effects.rejected == [] and effects.receipt_ids == [late.id]
    # From executed + 2 on, it is refused, in the log as in the state.
    again, tx = attest(chain, SCHED_A, body, chain.height, prev=first.id)
    assert app.refused_attestations([tx], executed + 2) == {0}
    assert app.receipts_in([tx.encoded], executed + 2) == []
    effects = chain.block(tx)
    assert effects.receipts == [] and "is already attested by receipt " + first.id.hex() in effects.rejected[0].reason


def sealed_chain(path: Path, rules: ChainRules) -> tuple[ChainApplication, Genesis, list]:
    """A node whose chain holds a decision attested by both scheduler nodes in one block,
    as every chain before the rule did: (its application, genesis, the stored blocks)."""
    proposer = Identity.from_label("attest-once-proposer")
    genesis = Genesis(chain_id=CHAIN_ID, genesis_time_ms=START_MS, validators=(proposer.public_key,),
                      block_period_ms=0, rules={name: value for name, value in rules.values().items()
                                                if name == "attest_once" and value})
    gov = Governance(validators=(proposer.public_key,))
    conn = open_node_db(path)
    store = ChainStore(conn)
    store.bind_chain(CHAIN_ID, genesis.hash)
    app = ChainApplication(conn, store, rules=rules, governance=gov)
    parent = genesis_header(genesis)
    blocks = []

    def seal(txs):
        nonlocal parent
        number, raw = parent.height + 1, [tx.encoded for tx in txs]
        head = app.receipts_head_after(raw, number)
        block = build_block(genesis, parent, proposer.public_key, 0, raw, START_MS + number * 1000,
                            receipts_size=head.size, receipts_root=head.root,
                            seed_proof=make_seed_proof(proposer, genesis.hash, parent))
        store.append_block(height=number, block_hash=block.hash, parent_hash=parent.hash,
                           timestamp_ms=block.header.timestamp_ms, proposer=proposer.public_key,
                           block=block.encode(), txs=raw)
        app.apply_final_block(block)
        blocks.append(block)
        parent = block.header

    ref = Chain(rules=rules)
    scheduled_chain(ref)
    for _, _, _, txs in ref.blocks:
        seal(txs)
    (decision,) = unattested_decisions(conn)
    _, tx_a = attest(ref, SCHED_A, decision.body, decision.height)
    _, tx_b = attest(ref, SCHED_B, decision.body, decision.height)
    logged = app.receipts.size()
    seal([tx_a, tx_b])
    assert parent.receipts_size == logged + (1 if rules.attest_once else 2)
    return app, genesis, blocks


def replay(path: Path, genesis: Genesis, blocks: list, rules: ChainRules) -> ChainApplication:
    """A new node that syncs ``blocks`` from genesis (stored, then caught up)."""
    conn = open_node_db(path)
    store = ChainStore(conn)
    store.bind_chain(CHAIN_ID, genesis.hash)
    app = ChainApplication(conn, store, rules=rules, governance=Governance(validators=genesis.validators))
    parent = genesis_header(genesis)
    for block in blocks:
        store.append_block(height=block.height, block_hash=block.hash, parent_hash=parent.hash,
                           timestamp_ms=block.header.timestamp_ms, proposer=block.header.proposer,
                           block=block.encode(), txs=list(block.transactions))
        parent = block.header
    app.catch_up()
    return app


def test_a_node_syncing_an_old_chain_from_genesis_recomputes_its_sealed_log(tmp_path):
    old, genesis, blocks = sealed_chain(tmp_path / "old", DEFAULT_RULES)
    synced = replay(tmp_path / "synced", genesis, blocks, ChainRules.from_genesis(genesis))
    head = blocks[-1].header
    assert synced.receipts.head() == LogHead(head.receipts_size, head.receipts_root)
    assert synced.state.dump() == old.state.dump()
    # What went wrong before the rule: the same blocks read as one attestation per decision diverge.
    with pytest.raises(RuntimeError, match="receipt log diverged"):
        replay(tmp_path / "wrong", genesis, blocks, ATTEST_ONCE)


def test_a_new_chain_syncs_under_its_rule(tmp_path):
    _, genesis, blocks = sealed_chain(tmp_path / "new", ATTEST_ONCE)
    assert ChainRules.from_genesis(genesis) == ATTEST_ONCE
    synced = replay(tmp_path / "synced", genesis, blocks, ATTEST_ONCE)
    head = blocks[-1].header
    assert synced.receipts.head() == LogHead(head.receipts_size, head.receipts_root)


def test_a_scheduler_signature_is_one_receipt_either_way():
    """The scheduler nodes' policy (one attestation per decision) is valid under both values."""
    for rules in (DEFAULT_RULES, ATTEST_ONCE):
        chain, body, height = scheduled_chain(Chain(rules=rules))
        receipt = build_receipt(SCHED_A, body.kind, height=height, subject=body.subject, prev=None, fields=body.fields)
        effects = chain.block(chain.tx(SCHED_A, "receipts.batch", {"receipts": [receipt.envelope]}))
        assert effects.rejected == [] and effects.receipt_ids == [receipt.id]
        assert unattested_decisions(chain.conn) == []
