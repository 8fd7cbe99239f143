"""A scheduler decision is recorded once by the state, and a receipt of it is
accepted once: from a scheduler node, matching the decision exactly, at a height
that had seen it. The receipt log leaves out what the state refuses."""

from __future__ import annotations

import duckdb
import pytest

from node.app.chain_app import ChainApplication
from node.app.decisions import decision_id, unattested_decisions
from node.app.policy import Governance
from node.app.rules import ChainRules
from node.base.keys import Identity
from node.consensus.store import ChainStore
from node.receipts.envelope import build_receipt
from tests.services.test_state_support import ALICE, NODES, Chain, content_digest

SCHED_A = Identity.from_label("scheduler-a")
SCHED_B = Identity.from_label("scheduler-b")
SALES = content_digest("sales")
R1 = b"\x11" * 32
# One attestation per decision is the rule attest_once (a new chain's); without it, see test_attest_once_rule.py.
ATTEST_ONCE = ChainRules(attest_once=1)


def scheduled_chain(chain: Chain | None = None):
    """A chain with two scheduler nodes and a job just scheduled: (chain, job.schedule body, its height)."""
    chain = chain or Chain(rules=ATTEST_ONCE)
    chain.block(*(chain.register_node(n, capacity=2) for n in NODES[:2]),
                chain.register_node(SCHED_A, capacity=0, roles=["scheduler"]),
                chain.register_node(SCHED_B, capacity=0, roles=["scheduler", "gateway"]),
                chain.register_dataset(ALICE, SALES))
    tx = chain.submit_job(ALICE, {"sales": SALES}, replication=2, deadline_blocks=5)
    effects = chain.block(tx)
    (body,) = effects.receipt_bodies
    assert body.kind == "job.schedule"
    return chain, body, chain.height


def attest(chain: Chain, signer: Identity, body, height: int, *, fields=None, prev=None, kind=None):
    receipt = build_receipt(signer, kind or body.kind, height=height, subject=body.subject, prev=prev,
                            fields=body.fields if fields is None else fields)
    return receipt, chain.tx(signer, "receipts.batch", {"receipts": [receipt.envelope]})


def decision_row(chain: Chain, did: bytes):
    return chain.conn.execute("SELECT kind, subject, height, attested FROM state_decisions WHERE decision_id = ?",
                              [did]).fetchone()


def test_a_decision_is_recorded_then_attested_once_by_a_scheduler_node():
    chain, body, height = scheduled_chain()
    did = decision_id(body.kind, body.subject, body.fields)
    kind, subject, at, attested = decision_row(chain, did)
    assert (kind, bytes(subject), at, attested) == ("job.schedule", body.subject, height, None)

    receipt, tx = attest(chain, SCHED_A, body, height)
    effects = chain.block(tx)
    assert effects.rejected == [] and effects.receipt_ids == [receipt.id]
    assert bytes(decision_row(chain, did)[3]) == receipt.id

    # Another scheduler (or the same one again) comes too late: refused, nothing logged.
    second, tx = attest(chain, SCHED_B, body, chain.height)
    effects = chain.block(tx)
    assert effects.receipts == []
    (rejection,) = effects.rejected
    assert rejection.reason == (f"receipts[0]: job.schedule for job {body.subject.hex()} is already attested by "
                                f"receipt {receipt.id.hex()}")
    assert bytes(decision_row(chain, did)[3]) == receipt.id


@pytest.mark.parametrize("field", ["block", "assignees", "seed", "deadline"])
def test_a_body_that_differs_in_any_field_matches_no_decision(field):
    chain, body, height = scheduled_chain()
    other = dict(body.fields)
    other[field] = {"block": b"\x01" * 32, "seed": b"\x02" * 32, "deadline": body.fields["deadline"] + 1,
                    "assignees": list(reversed(body.fields["assignees"]))}[field]
    _, tx = attest(chain, SCHED_A, body, height, fields=other)
    (rejection,) = chain.block(tx).rejected
    assert rejection.reason == f"receipts[0]: job.schedule for job {body.subject.hex()} matches no decision of the chain"
    # The decision is still open: the right body is accepted after.
    _, tx = attest(chain, SCHED_A, body, height)
    assert chain.block(tx).rejected == []


def test_a_non_scheduler_issuer_is_refused():
    chain, body, height = scheduled_chain()
    _, tx = attest(chain, NODES[0], body, height)  # a processing node signing the decision
    (rejection,) = chain.block(tx).rejected
    assert rejection.reason == "receipts[0]: issuer is not a scheduler node"


def test_a_receipt_older_than_its_decision_is_refused():
    chain, body, height = scheduled_chain()
    _, tx = attest(chain, SCHED_A, body, height - 1)
    (rejection,) = chain.block(tx).rejected
    assert rejection.reason == (f"receipts[0]: job.schedule for job {body.subject.hex()} claims height {height - 1}, "
                                f"below the height {height} of the block that made the decision")


def test_two_attestations_of_one_decision_in_one_block_or_batch():
    chain, body, height = scheduled_chain()
    first, tx_a = attest(chain, SCHED_A, body, height)
    _, tx_b = attest(chain, SCHED_B, body, height)
    effects = chain.block(tx_a, tx_b)
    assert effects.receipt_ids == [first.id]
    assert [r.tx_hash for r in effects.rejected] == [tx_b.hash]
    assert "already attested by receipt " + first.id.hex() in effects.rejected[0].reason

    chain, body, height = scheduled_chain(Chain(rules=ATTEST_ONCE))
    one = build_receipt(SCHED_A, body.kind, height=height, subject=body.subject, prev=None, fields=body.fields)
    two = build_receipt(SCHED_A, body.kind, height=height, subject=body.subject, prev=one.id, fields=body.fields)
    (rejection,) = chain.block(chain.tx(SCHED_A, "receipts.batch", {"receipts": [one.envelope, two.envelope]})).rejected
    assert rejection.reason.startswith("receipts[1]: ") and "earlier receipt of this batch" in rejection.reason


def test_verdicts_are_decisions_too_and_a_mixed_batch_stands_or_falls_whole():
    chain, body, height = scheduled_chain()
    a, b = chain.assignees(body.subject)
    effects = chain.block(chain.result(a, body.subject, R1), chain.result(b, body.subject, R1))
    (verdict,) = effects.receipt_bodies
    assert verdict.kind == "job.verdict"
    assert decision_row(chain, decision_id(verdict.kind, verdict.subject, verdict.fields))[2] == chain.height
    # A batch mixing an attestation with another kind stands or falls whole, in the state and in the log.
    call = build_receipt(SCHED_B, "api.call", height=chain.height, subject=b"\x05" * 32, prev=None, fields={
        "method": "job_submit", "tenant": ALICE.public_key, "outcome": "accepted", "code": 0, "response": b"\x07" * 32})
    wrong = build_receipt(SCHED_B, "job.verdict", height=chain.height, subject=verdict.subject, prev=None,
                          fields={**verdict.fields, "verdict": "verified", "results": verdict.fields["results"][:1]})
    effects = chain.block(chain.tx(SCHED_B, "receipts.batch", {"receipts": [call.envelope, wrong.envelope]}))
    assert effects.receipts == [] and effects.rejected[0].reason.startswith("receipts[1]: job.verdict for job ")
    mine = build_receipt(SCHED_B, "job.verdict", height=chain.height, subject=verdict.subject, prev=None,
                         fields=verdict.fields)
    effects = chain.block(chain.tx(SCHED_B, "receipts.batch", {"receipts": [call.envelope, mine.envelope]}))
    assert effects.rejected == [] and effects.receipt_ids == [call.id, mine.id]


def test_the_receipt_log_leaves_out_what_the_state_refuses():
    conn = duckdb.connect(":memory:")
    gov = Governance(validators=(SCHED_A.public_key,))
    app = ChainApplication(conn, ChainStore(conn, first_height=1, first_parent=b"\0" * 32), governance=gov,
                           rules=ATTEST_ONCE)
    chain, body, height = scheduled_chain(Chain(conn, machine=app.state))
    good, tx_good = attest(chain, SCHED_A, body, height)
    _, tx_late = attest(chain, SCHED_B, body, height)  # the same decision, second
    _, tx_stranger = attest(chain, NODES[1], body, height)
    txs = [tx_stranger, tx_good, tx_late]
    logged = app.receipts_in([tx.encoded for tx in txs], app.state.next_height())
    assert [r.id for r in logged] == [good.id]
    effects = chain.block(*txs)
    assert effects.receipt_ids == [good.id]
    assert {r.tx_hash for r in effects.rejected} == {tx_stranger.hash, tx_late.hash}


def test_the_log_sees_an_earlier_batch_of_the_block_as_the_state_does():
    """A plain batch bringing in a receipt makes a later mixed batch repeating it a
    refusal, in the log as in the state."""
    conn = duckdb.connect(":memory:")
    gov = Governance(validators=(SCHED_A.public_key,))
    app = ChainApplication(conn, ChainStore(conn, first_height=1, first_parent=b"\0" * 32), governance=gov,
                           rules=ATTEST_ONCE)
    chain, body, height = scheduled_chain(Chain(conn, machine=app.state))
    call = build_receipt(SCHED_A, "api.call", height=height, subject=b"\x05" * 32, prev=None, fields={
        "method": "job_submit", "tenant": ALICE.public_key, "outcome": "accepted", "code": 0, "response": b"\x07" * 32})
    sched = build_receipt(SCHED_A, body.kind, height=height, subject=body.subject, prev=call.id, fields=body.fields)
    plain = chain.tx(SCHED_A, "receipts.batch", {"receipts": [call.envelope]})
    mixed = chain.tx(SCHED_A, "receipts.batch", {"receipts": [call.envelope, sched.envelope]})
    logged = app.receipts_in([plain.encoded, mixed.encoded], app.state.next_height())
    effects = chain.block(plain, mixed)
    assert [r.id for r in logged] == effects.receipt_ids == [call.id]
    assert [r.tx_hash for r in effects.rejected] == [mixed.hash]


def test_an_old_state_schema_is_rebuilt_with_its_decisions_and_the_log_catches_up_block_by_block(tmp_path):
    """A receipt log behind the chain store (a crash between storing a block and
    logging it) catches up, the block's attestation check reading the state
    before it; and a data directory of state schema 9 (no state_decisions) is
    rebuilt from the blocks, as every schema change is."""
    from node.app.tables import SCHEMA_VERSION
    from node.base.db import open_node_db
    from node.consensus.block import genesis_header, make_seed_proof
    from node.consensus.block_rules import build_block
    from node.consensus.genesis import Genesis
    from tests.services.test_state_support import CHAIN_ID, START_MS

    proposer = Identity.from_label("attest-proposer")
    genesis = Genesis(chain_id=CHAIN_ID, genesis_time_ms=START_MS, validators=(proposer.public_key,), block_period_ms=0,
                      rules={"attest_once": 1})
    gov = Governance(validators=(proposer.public_key,))
    conn = open_node_db(tmp_path)
    store = ChainStore(conn)
    store.bind_chain(CHAIN_ID, genesis.hash)
    app = ChainApplication(conn, store, governance=gov, rules=ATTEST_ONCE)
    chain = Chain(conn, machine=app.state)
    parent = genesis_header(genesis)

    def store_block(txs, *, apply: bool):
        nonlocal parent
        number, raw = parent.height + 1, [tx.encoded for tx in txs]
        head = app.receipts_head_after(raw, number)
        block = build_block(genesis, parent, proposer.public_key, 0, raw, START_MS + number * 1000,
                            receipts_size=head.size, receipts_root=head.root,
                            seed_proof=make_seed_proof(proposer, genesis.hash, parent))
        store.append_block(height=number, block_hash=block.hash, parent_hash=parent.hash,
                           timestamp_ms=block.header.timestamp_ms, proposer=proposer.public_key,
                           block=block.encode(), txs=raw)
        if apply:
            app.apply_final_block(block)
        parent = block.header

    # Schedulers and a job (the blocks of scheduled_chain), as real blocks.
    ref = Chain(rules=ATTEST_ONCE)
    scheduled_chain(ref)
    for _, _, _, txs in ref.blocks:
        store_block(txs, apply=True)
    (decision,) = unattested_decisions(conn)
    body, height = decision.body, decision.height
    good, tx_good = attest(ref, SCHED_A, body, height)
    _, tx_late = attest(ref, SCHED_B, body, height)
    logged = app.receipts.size()
    # A crash: the block of two attestations of the decision (the second refused) is stored, neither
    # logged nor applied; its header seals the log with the first one only.
    store_block([tx_good, tx_late], apply=False)
    assert parent.receipts_size == logged + 1
    assert app.receipts.size() == logged and app.state.height() == len(ref.blocks)
    app.catch_up()
    assert app.receipts.size() == logged + 1 and app.state.height() == len(ref.blocks) + 1
    did = decision_id(body.kind, body.subject, body.fields)
    assert bytes(decision_row(chain, did)[3]) == good.id
    expected = app.state.dump()

    # What schema 9 left: no state_decisions. Reopened, the state is rebuilt from the blocks.
    conn.execute("DROP TABLE state_decisions")
    conn.execute("UPDATE state_meta SET value = ? WHERE key = 'schema_version'", [b"9"])
    conn.close()
    conn = open_node_db(tmp_path)
    reopened = ChainApplication(conn, ChainStore(conn), governance=gov, rules=ATTEST_ONCE)
    assert reopened.state.height() is None
    reopened.catch_up()
    assert reopened.state.dump() == expected and reopened.receipts.size() == logged + 1
    row = conn.execute("SELECT value FROM state_meta WHERE key = 'schema_version'").fetchone()
    assert bytes(row[0]) == str(SCHEMA_VERSION).encode()


def test_a_decision_implied_again_keeps_its_first_height_and_attestation():
    """The working state adds a decision without a read; an earlier block's row wins, checked at flush or on read."""
    from node.app.state_rows import DecisionRow
    from node.app.working import WorkingState

    chain, body, height = scheduled_chain()
    receipt, tx = attest(chain, SCHED_A, body, height)
    chain.block(tx)
    did = decision_id(body.kind, body.subject, body.fields)
    machine = chain.machine
    later = chain.height + 1
    again = DecisionRow(did, body.kind, body.subject, later, b"\xa0", None)
    ws = WorkingState(chain.conn, machine.governance, machine.validator_keys_at(later), later,
                      rules=machine.rules_at(later), genesis_rules=machine.rules)
    ws.add_decision(again)
    stored = ws.decision(did)  # read in the block: the stored row, attested
    assert stored is not None and (stored.height, stored.attested) == (height, receipt.id)
    ws = WorkingState(chain.conn, machine.governance, machine.validator_keys_at(later), later,
                      rules=machine.rules_at(later), genesis_rules=machine.rules)
    ws.add_decision(again)
    ws.flush()  # not read in the block: the flush keeps the stored row
    assert decision_row(chain, did)[2:] == (height, receipt.id)
