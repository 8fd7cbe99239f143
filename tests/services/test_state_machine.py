"""The state machine as a whole: heights, tenant rights, receipts, determinism, rebuilds, crash safety."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import duckdb
import pytest

from node.app import ChainRules, StateError, StateMachine, catch_up, lifecycle
from node.base.codec import hash_tagged
from node.base.db import open_node_db
from node.base.keys import Identity
from node.consensus.block import genesis_header, make_seed_proof
from node.consensus.block_rules import build_block
from node.consensus.genesis import Genesis
from node.consensus.store import ChainStore
from node.receipts.envelope import build_receipt
from node.receipts.log import ReceiptLog
from tests.services.test_state_support import (
    ALICE,
    BOB,
    CHAIN_ID,
    NODES,
    START_MS,
    Chain,
    content_digest,
    random_scenario,
    replay,
    scenario_digest,
)

ROOT = Path(__file__).resolve().parents[2]
SALES = content_digest("sales")
R1 = b"\x11" * 32


def test_heights_must_follow_one_another():
    chain = Chain()
    with pytest.raises(StateError, match="the next block is 1"):
        chain.machine.apply_block(2, b"\x01" * 32, 0, [], seed=bytes(64))
    chain.block()
    height, digest, timestamp, txs = chain.blocks[0]
    before = chain.machine.dump()
    with pytest.raises(StateError, match="state is at height 1, the next block is 2"):
        chain.machine.apply_block(height, digest, timestamp, txs, seed=bytes(64))  # re-applying is refused
    with pytest.raises(StateError, match="the next block is 2"):
        chain.machine.apply_block(3, digest, timestamp, txs, seed=bytes(64))
    assert chain.machine.dump() == before
    assert chain.machine.head()["height"] == 1


@pytest.mark.parametrize(("args", "message"), [
    ((1, b"short", 0, []), "block_hash"),
    ((-1, b"\x00" * 32, 0, []), "height"),
    ((1, b"\x00" * 32, -5, []), "timestamp_ms"),
    ((1, b"\x00" * 32, 0, [b"raw tx"]), "Transaction"),
])
def test_bad_arguments_are_refused(args, message):
    with pytest.raises(StateError, match=message):
        StateMachine(duckdb.connect(":memory:")).apply_block(*args, seed=bytes(64))


def test_a_seed_that_is_not_a_vrf_output_is_refused():
    with pytest.raises(StateError, match="seed must be 64 bytes"):
        StateMachine(duckdb.connect(":memory:")).apply_block(1, b"\x00" * 32, 0, [], seed=b"\x00" * 32)


def test_state_built_under_other_rules_is_refused():
    conn = duckdb.connect(":memory:")
    StateMachine(conn)
    with pytest.raises(StateError, match="other chain rules"):
        StateMachine(conn, rules=ChainRules(max_attempts=5))
    StateMachine(conn)  # the same rules reopen fine


def test_tenants_cannot_use_or_cancel_each_others_jobs_and_datasets():
    chain = Chain()
    chain.block(chain.register_dataset(ALICE, SALES), *(chain.register_node(n) for n in NODES[:2]))
    alice_job = chain.submit_job(ALICE, {"sales": SALES})
    bob_job = chain.submit_job(BOB, {"stolen": SALES})
    effects = chain.block(alice_job, bob_job, chain.cancel(BOB, alice_job.hash))
    assert [(r.index, r.tx_type) for r in effects.rejected] == [(1, "job.submit"), (2, "job.cancel")]
    assert effects.rejected[0].reason == (
        f"inputs.stolen: dataset {SALES.hex()} is not registered by this tenant"
    )
    assert effects.rejected[1].reason == f"job {alice_job.hash.hex()} belongs to another tenant"
    assert chain.machine.job(bob_job.hash) is None
    assert chain.machine.job(alice_job.hash)["state"] == "scheduled"
    # Bob registering the same content makes his own dataset entry; then his job is accepted.
    effects = chain.block(chain.register_dataset(BOB, SALES), chain.register_dataset(BOB, SALES))
    assert "already registered by this tenant" in effects.rejected[0].reason
    job = chain.submit_job(BOB, {"mine": SALES})
    assert chain.block(job).rejected == []
    assert [d["digest"] for d in chain.machine.datasets_by_tenant(BOB.public_key)] == [SALES.hex()]
    assert [j["id"] for j in chain.machine.jobs_by_tenant(BOB.public_key)["jobs"]] == [job.hash.hex()]


def test_invalid_payloads_in_a_committed_block_are_rejected_not_fatal():
    chain = Chain()
    bad = chain.tx(ALICE, "job.submit", {"type": "sql"})
    noop = chain.tx(ALICE, "noop", {"anything": 1})
    effects = chain.block(bad, noop, chain.register_dataset(ALICE, SALES))
    (rejection,) = effects.rejected
    assert rejection.index == 0 and rejection.reason == "invalid payload: inputs: is missing"
    assert len(chain.machine.datasets_by_tenant(ALICE.public_key)) == 1


def test_node_reregistration_changes_capacity_and_roles():
    chain = Chain()
    chain.block(chain.register_node(NODES[0], capacity=2))
    chain.block(chain.register_node(NODES[0], capacity=5))
    (node,) = chain.machine.nodes()
    assert node["capacity"] == 5 and node["registered_height"] == 1 and node["roles"] == ["processing"]
    chain.block(chain.register_node(NODES[0], capacity=0, roles=["storage", "gateway"]))
    assert chain.machine.nodes() == []
    assert chain.machine.nodes(processing_only=False)[0]["roles"] == ["gateway", "storage"]


def gateway_receipts(count: int, start: int = 0) -> list[bytes]:
    return [
        build_receipt(NODES[9], "api.call", height=1, subject=hash_tagged("req", bytes([start + i])), prev=None,
                      fields={"method": "analytics_submit", "tenant": ALICE.public_key, "outcome": "accepted",
                              "code": 0, "response": hash_tagged("resp", bytes([i]))}).envelope
        for i in range(count)
    ]


def test_receipts_enter_the_chain_once_in_block_order_and_feed_the_receipt_log():
    chain = Chain()
    log = ReceiptLog(chain.conn)
    chain.block(chain.register_dataset(ALICE, SALES), *(chain.register_node(n) for n in NODES[:2]))
    job = chain.submit_job(ALICE, {"sales": SALES})
    chain.block(job)
    a, b = chain.assignees(job.hash)
    envelopes = gateway_receipts(3)
    txs = [
        chain.tx(NODES[9], "receipts.batch", {"receipts": envelopes[:2]}),
        chain.result(a, job.hash, R1),
        chain.tx(NODES[9], "receipts.batch", {"receipts": envelopes[2:]}),
        chain.result(b, job.hash, R1),
    ]
    height = chain.height + 1
    digest = hash_tagged("test/block", b"receipts")
    effects = chain.machine.apply_block(height, digest, 0, txs, seed=bytes(64), on_applied=lambda e: log.append_receipts(e.receipts))
    kinds = [r.kind for r in effects.receipts]
    assert kinds == ["api.call", "api.call", "job.exec", "api.call", "job.exec"]
    assert chain.machine.receipt_ids_for_block(height) == effects.receipt_ids
    assert [r.id for r in chain.machine.receipts_for_block(height)] == effects.receipt_ids
    assert log.size() == 5 and [log.index_of(rid) for rid in effects.receipt_ids] == [0, 1, 2, 3, 4]
    # A receipt already on chain is refused, with nothing recorded twice.
    again = chain.tx(NODES[9], "receipts.batch", {"receipts": [gateway_receipts(1, start=50)[0], envelopes[1]]})
    effects = chain.machine.apply_block(height + 1, hash_tagged("test/block", b"again"), 0, [again], seed=bytes(64))
    assert effects.rejected[0].reason.startswith("receipts[1]: receipt ")
    assert effects.receipts == [] and chain.machine.receipt_ids_for_block(height + 1) == []


def test_check_tx_against_state_predicts_apply_and_writes_nothing():
    chain = Chain()
    chain.block(chain.register_dataset(ALICE, SALES), chain.register_node(NODES[0]))
    good = chain.submit_job(ALICE, {"sales": SALES}, replication=1)
    stolen = chain.submit_job(BOB, {"x": SALES}, replication=1)
    before = chain.machine.dump()
    assert chain.machine.check_tx_against_state(good) is None
    assert chain.machine.check_tx_against_state(stolen).startswith("inputs.x: dataset")
    assert chain.machine.check_tx_against_state(chain.tx(ALICE, "job.cancel", {"job": b"\x00"})) == (
        "invalid payload: job: must be a 32-byte digest, got 1 bytes"
    )
    assert chain.machine.check_tx_against_state(chain.tx(ALICE, "noop", None)) is None
    assert chain.machine.dump() == before
    effects = chain.block(good, stolen)
    assert [r.reason for r in effects.rejected] == [chain.machine.check_tx_against_state(stolen)]


def test_jobs_by_tenant_pages_newest_first():
    chain = Chain()
    chain.block(chain.register_dataset(ALICE, SALES))
    submitted = [chain.submit_job(ALICE, {"sales": SALES}) for _ in range(5)]
    chain.block(*submitted)
    first = chain.machine.jobs_by_tenant(ALICE.public_key, limit=2)
    second = chain.machine.jobs_by_tenant(ALICE.public_key, limit=2, before=first["next"])
    third = chain.machine.jobs_by_tenant(ALICE.public_key, limit=2, before=second["next"])
    ids = [j["id"] for page in (first, second, third) for j in page["jobs"]]
    assert ids == [tx.hash.hex() for tx in reversed(submitted)]
    assert third["next"] is None
    assert chain.machine.jobs_by_tenant(ALICE.public_key, state="verified")["jobs"] == []
    with pytest.raises(ValueError, match="limit"):
        chain.machine.jobs_by_tenant(ALICE.public_key, limit=0)
    with pytest.raises(ValueError, match="state"):
        chain.machine.jobs_by_tenant(ALICE.public_key, state="done")


# -- determinism ------------------------------------------------------------------

def test_same_blocks_give_identical_state_bytes_in_a_fresh_database():
    chain = random_scenario(seed=11)
    other = StateMachine(duckdb.connect(":memory:"))
    replay(chain.blocks, other)
    assert other.dump() == chain.machine.dump()
    states = {j["state"] for t in (ALICE, BOB) for j in chain.machine.jobs_by_tenant(t.public_key, limit=500)["jobs"]}
    assert len(states) >= 3  # the history exercised several lifecycles, not just one


def test_state_bytes_do_not_depend_on_hash_seed_or_duckdb_threads():
    here = scenario_digest(5)
    script = "from tests.services.test_state_support import scenario_digest; print(scenario_digest(5, threads=4))"
    for hash_seed in ("1", "4242"):
        env = {**os.environ, "PYTHONHASHSEED": hash_seed, "PYTHONPATH": str(ROOT)}
        out = subprocess.run([sys.executable, "-c", script], cwd=ROOT, env=env, capture_output=True, text=True,
                             check=True, timeout=120)
        assert out.stdout.strip() == here


def test_rebuild_after_reset_gives_the_same_state():
    chain = random_scenario(seed=3, blocks=25)
    before = chain.machine.dump()
    chain.machine.reset()
    assert chain.machine.height() is None
    replay(chain.blocks, chain.machine)
    assert chain.machine.dump() == before


def store_with_real_blocks(tmp_path, chain: Chain) -> tuple[Any, ChainStore, StateMachine]:
    """A node database whose chain store holds ``chain``'s blocks as real, VRF-seeded
    blocks of a one-validator chain, and the state those blocks give when applied."""
    proposer = Identity.from_label("catch-up-proposer")
    genesis = Genesis(chain_id=CHAIN_ID, genesis_time_ms=START_MS, validators=(proposer.public_key,), block_period_ms=0)
    conn = open_node_db(tmp_path)
    store = ChainStore(conn)
    store.bind_chain(CHAIN_ID, genesis.hash)
    expected = StateMachine(duckdb.connect(":memory:"))
    parent = genesis_header(genesis)
    for height, _, timestamp, txs in chain.blocks:
        raw = [tx.encoded for tx in txs]
        block = build_block(genesis, parent, proposer.public_key, 0, raw, timestamp,
                            seed_proof=make_seed_proof(proposer, genesis.hash, parent))
        store.append_block(height=height, block_hash=block.hash, parent_hash=parent.hash, timestamp_ms=block.header.timestamp_ms,
                           proposer=proposer.public_key, block=block.encode(), txs=raw)
        expected.apply_block(height, block.hash, block.header.timestamp_ms, txs, seed=block.header.seed)
        parent = block.header
    return conn, store, expected


def test_catch_up_from_the_chain_store(tmp_path):
    chain = random_scenario(seed=8, blocks=20)
    conn, store, expected = store_with_real_blocks(tmp_path, chain)
    machine = StateMachine(conn)
    assert catch_up(machine, store) == len(chain.blocks)  # 20 and the storage blocks uploads added
    assert machine.dump() == expected.dump()  # the seeds come from the stored headers, as on the chain
    assert catch_up(machine, store) == 0
    # A state built from other blocks is detected, not silently extended.
    conn.execute("UPDATE state_height SET block_hash = ?", [b"\x09" * 32])
    with pytest.raises(StateError, match="reset it and catch up again"):
        catch_up(machine, store)


# -- crash safety -------------------------------------------------------------------

def test_an_exception_mid_apply_leaves_the_previous_height(monkeypatch):
    chain = Chain()
    chain.block(chain.register_dataset(ALICE, SALES), *(chain.register_node(n) for n in NODES[:3]))
    before, height = chain.machine.dump(), chain.height
    txs = [chain.submit_job(ALICE, {"sales": SALES}), chain.register_node(NODES[4], capacity=3),
           chain.tx(NODES[9], "receipts.batch", {"receipts": gateway_receipts(2)})]

    def explode(work, ctx, rules):
        work.flush()  # the block's transactions and deadlines are written to the tables...
        assert work.conn.execute("SELECT count(*) FROM state_jobs").fetchone() == (1,)
        raise RuntimeError("power cut")  # ...when the scheduling pass dies

    monkeypatch.setattr(lifecycle, "schedule_jobs", explode)
    with pytest.raises(RuntimeError, match="power cut"):
        chain.block(*txs)
    assert chain.machine.dump() == before and chain.machine.height() == height
    monkeypatch.undo()

    def fail_after(effects):
        assert effects.assignments  # the block was fully applied in the transaction...
        raise OSError("log write failed")

    digest = hash_tagged("test/block", b"crash")
    with pytest.raises(OSError):
        chain.machine.apply_block(height + 1, digest, 0, txs, seed=bytes(64), on_applied=fail_after)
    assert chain.machine.dump() == before  # ...and rolled back with the failed log append
    effects = chain.machine.apply_block(height + 1, digest, 0, txs, seed=bytes(64))
    assert len(effects.assignments) == 2 and len(effects.receipts) == 2


def test_reopening_the_database_keeps_the_applied_state(tmp_path):
    conn = open_node_db(tmp_path)
    chain = Chain(conn)
    chain.block(chain.register_dataset(ALICE, SALES), chain.register_node(NODES[0]))
    before = chain.machine.dump()
    conn.close()
    reopened = StateMachine(open_node_db(tmp_path))
    assert reopened.dump() == before and reopened.height() == chain.height


def test_a_state_of_an_older_schema_is_dropped_and_rebuilt_from_the_blocks(tmp_path):
    chain = random_scenario(seed=8, blocks=12)
    conn, store, expected = store_with_real_blocks(tmp_path, chain)
    machine = StateMachine(conn)
    catch_up(machine, store)
    # What an older version left: schema 1, without state_results.error.
    conn.execute("ALTER TABLE state_results DROP COLUMN error")
    conn.execute("UPDATE state_meta SET value = ? WHERE key = 'schema_version'", [b"1"])
    conn.close()
    conn = open_node_db(tmp_path)
    reopened = StateMachine(conn)
    assert reopened.height() is None  # dropped...
    assert catch_up(reopened, ChainStore(conn)) == len(chain.blocks)  # ...and rebuilt from the chain store
    assert reopened.dump() == expected.dump()


def test_a_dataset_is_registered_only_with_the_tenants_own_upload_receipt():
    """Digests are public: Bob cannot claim Alice's upload, nor one no storage node signed."""
    chain = Chain()
    alices = chain.store_upload(ALICE, SALES, 1234)
    claims = {
        "alice's receipt": chain.tx(BOB, "dataset.register", {"digest": SALES, "size": 1234, "name": "s", "format": "csv", "receipt": alices}),
        "no receipt": chain.tx(BOB, "dataset.register", {"digest": SALES, "size": 1234, "name": "s", "format": "csv", "receipt": b"\x07" * 32}),
        "wrong size": chain.tx(ALICE, "dataset.register", {"digest": SALES, "size": 99, "name": "s", "format": "csv", "receipt": alices}),
    }
    effects = chain.block(*claims.values())
    reasons = [r.reason for r in effects.rejected]
    assert len(reasons) == 3
    assert "another tenant's upload" in reasons[0] and "not on chain" in reasons[1] and "not the stored size" in reasons[2]
    # A receipt signed by a node that is not a registered storage/gateway node does not count.
    rogue = Identity.from_label("rogue-node")
    forged = build_receipt(rogue, "data.store", height=chain.height, subject=SALES, prev=None,
                           fields={"content": "dataset", "tenant": BOB.public_key, "size": 1234, "replicas": 1})
    chain.block(chain.register_node(rogue, capacity=1), chain.tx(rogue, "receipts.batch", {"receipts": [forged.envelope]}))
    effects = chain.block(chain.tx(BOB, "dataset.register", {"digest": SALES, "size": 1234, "name": "s", "format": "csv", "receipt": forged.id}))
    assert "not issued by a registered storage or gateway node" in effects.rejected[0].reason
    # Alice's own claim stands.
    effects = chain.block(chain.tx(ALICE, "dataset.register", {"digest": SALES, "size": 1234, "name": "s", "format": "csv", "receipt": alices}))
    assert not effects.rejected
