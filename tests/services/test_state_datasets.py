"""The chain's dataset registry: a tenant's names have versions 1, 2, 3...; one
digest may be registered under several names; repeating a name's latest version
is refused; jobs keep naming digests; the state stays deterministic."""

from __future__ import annotations

import hashlib
import re
from pathlib import Path

import duckdb
import pytest

from node.app import StateMachine, parse_payload
from node.app.queries import BAD_DATASET_REF, DatasetRef, parse_dataset_ref
from node.app.tables import dump_state
from node.base.codec import decode, encode
from node.consensus.tx import sign_tx
from tests.services.test_state_support import ALICE, BOB, NODES, Chain, content_digest, replay

V1, V2, V3 = (content_digest(f"sales-v{i}") for i in (1, 2, 3))


def versions(chain: Chain, name: str, tenant=ALICE) -> list[tuple[int, str, bool]]:
    return [(d["version"], d["digest"], d["latest"])
            for d in chain.machine.datasets_by_tenant(tenant.public_key, name=name)]


def test_each_registration_under_a_name_adds_the_next_version():
    chain = Chain()
    assert chain.block(chain.register_dataset(ALICE, V1, "sales")).rejected == []
    assert chain.block(chain.register_dataset(ALICE, V2, "sales")).rejected == []
    assert chain.block(chain.register_dataset(ALICE, V3, "costs")).rejected == []
    # Older content registered again becomes the newest version; it is not the latest, so it is allowed.
    assert chain.block(chain.register_dataset(ALICE, V1, "sales")).rejected == []
    assert versions(chain, "sales") == [(1, V1.hex(), False), (2, V2.hex(), False), (3, V1.hex(), True)]
    assert versions(chain, "costs") == [(1, V3.hex(), True)]
    # Names are per tenant: Bob's "sales" starts at 1.
    chain.block(chain.register_dataset(BOB, V2, "sales"))
    assert versions(chain, "sales", BOB) == [(1, V2.hex(), True)]
    rows = chain.machine.datasets_by_tenant(ALICE.public_key)
    assert [(d["name"], d["version"]) for d in rows] == [("costs", 1), ("sales", 1), ("sales", 2), ("sales", 3)]
    assert set(rows[0]) == {"name", "version", "digest", "size", "format", "height", "tx", "latest"}


def test_versions_within_one_block_see_the_earlier_transactions():
    chain = Chain()
    first, second, third = (chain.register_dataset(ALICE, d, "sales") for d in (V1, V2, V2))
    effects = chain.block(first, second, third)  # all three receipts are already on chain
    assert [(r.index, r.reason) for r in effects.rejected] == [(2, (
        f"dataset {V2.hex()} is already registered by this tenant: already the latest version of sales (sales@2)"))]
    assert versions(chain, "sales") == [(1, V1.hex(), False), (2, V2.hex(), True)]


def test_the_latest_version_is_refused_again_by_the_state_and_the_pre_screen():
    chain = Chain()
    chain.block(chain.register_dataset(ALICE, V1, "sales"))
    again = chain.register_dataset(ALICE, V1, "sales")
    reason = f"dataset {V1.hex()} is already registered by this tenant: already the latest version of sales (sales@1)"
    assert chain.machine.check_tx_against_state(again) == reason
    (rejection,) = chain.block(again).rejected
    assert rejection.reason == reason
    assert versions(chain, "sales") == [(1, V1.hex(), True)]


def test_one_digest_under_several_names_and_jobs_on_any_version():
    chain = Chain()
    chain.block(chain.register_dataset(ALICE, V1, "sales"), *(chain.register_node(n) for n in NODES[:2]))
    assert chain.block(chain.register_dataset(ALICE, V1, "sales-2024")).rejected == []
    chain.block(chain.register_dataset(ALICE, V2, "sales"))
    assert versions(chain, "sales-2024") == [(1, V1.hex(), True)]
    # A digest answers its newest registration.
    assert chain.machine.dataset(ALICE.public_key, V1.hex())["name"] == "sales-2024"
    # Jobs name digests: an older version of a name stays usable, in the same block as a new version too.
    old = chain.submit_job(ALICE, {"sales": V1})
    new = chain.submit_job(ALICE, {"sales": V3})
    effects = chain.block(chain.register_dataset(ALICE, V3, "sales"), old, new)
    assert effects.rejected == []
    assert chain.machine.job(old.hash)["state"] == "scheduled"
    assert chain.machine.job(new.hash)["inputs"] == {"sales": V3.hex()}


def test_jsonl_is_a_format_a_dataset_may_be_registered_in():
    chain = Chain()
    receipt = chain.store_upload(ALICE, V1, 1234)
    tx = chain.tx(ALICE, "dataset.register", {"digest": V1, "size": 1234, "name": "events", "format": "jsonl",
                                              "receipt": receipt})
    assert chain.block(tx).rejected == []
    assert chain.machine.dataset(ALICE.public_key, "events")["format"] == "jsonl"


def test_two_machines_applying_the_same_blocks_dump_the_same_versions():
    chain = Chain()
    chain.block(chain.register_dataset(ALICE, V1, "sales"), chain.register_dataset(BOB, V1, "sales"))
    chain.block(chain.register_dataset(ALICE, V2, "sales"), chain.register_dataset(ALICE, V2, "other"),
                chain.register_dataset(ALICE, V2, "sales"))
    chain.block(chain.register_dataset(ALICE, V1, "sales"), chain.register_dataset(BOB, V3, "sales"))
    other = StateMachine(duckdb.connect(":memory:"))
    replay(chain.blocks, other)
    assert other.dump() == chain.machine.dump()
    table = decode(dump_state(chain.conn))["state_datasets"]
    assert table["columns"][:3] == ["tenant", "name", "version"]
    keys = [tuple(row[:3]) for row in table["rows"]]
    assert keys == sorted(keys) and len(keys) == 6  # one of the seven was refused
    assert versions(chain, "sales") == [(1, V1.hex(), False), (2, V2.hex(), False), (3, V1.hex(), True)]
    # Rebuilt from the blocks after a reset: the same bytes again.
    before = chain.machine.dump()
    chain.machine.reset()
    replay(chain.blocks, chain.machine)
    assert chain.machine.dump() == before


def test_state_of_an_older_schema_is_rebuilt_not_misread():
    conn = duckdb.connect(":memory:")
    StateMachine(conn)
    conn.execute("UPDATE state_meta SET value = ? WHERE key = 'schema_version'", [b"3"])
    conn.execute("DROP TABLE state_datasets")
    conn.execute("CREATE TABLE state_datasets (tenant BLOB, digest BLOB, name VARCHAR, size BIGINT, format VARCHAR,"
                 " height BIGINT, tx_hash BLOB, PRIMARY KEY (tenant, digest))")
    machine = StateMachine(conn)  # a schema change drops the state, to be re-applied from the blocks
    assert machine.height() is None
    columns = [row[0] for row in conn.execute("DESCRIBE state_datasets").fetchall()]
    assert columns[:3] == ["tenant", "name", "version"]


# -- resolving references ---------------------------------------------------------------

@pytest.mark.parametrize(("ref", "parsed"), [
    ("sales", DatasetRef(None, "sales", None)),
    ("sales@2", DatasetRef(None, "sales", 2)),
    ("me@example.com", DatasetRef(None, "me@example.com", None)),  # names may hold "@"
    ("a@b@12", DatasetRef(None, "a@b", 12)),
    ("AB" * 32, DatasetRef(bytes.fromhex("ab" * 32), None, None)),
])
def test_references_name_a_digest_a_name_or_a_version(ref, parsed):
    assert parse_dataset_ref(ref) == parsed


@pytest.mark.parametrize("ref", ["", "sales@0", "x" * 129, "a\nb", "x" * 129 + "@1"])
def test_references_no_registration_can_have_are_refused_in_words(ref):
    with pytest.raises(ValueError, match=BAD_DATASET_REF):
        parse_dataset_ref(ref)


def test_queries_resolve_names_versions_and_digests_of_the_caller_only():
    chain = Chain()
    chain.block(chain.register_dataset(ALICE, V1, "sales"))
    chain.block(chain.register_dataset(ALICE, V2, "sales"))
    machine, alice = chain.machine, ALICE.public_key
    assert (machine.dataset(alice, "sales")["version"], machine.dataset(alice, "sales")["latest"]) == (2, True)
    assert (machine.dataset(alice, "sales@1")["digest"], machine.dataset(alice, "sales@1")["latest"]) == (V1.hex(), False)
    assert machine.dataset(alice, V1.hex())["version"] == 1
    assert machine.dataset(alice, "sales@3") is None and machine.dataset(alice, "costs") is None
    assert machine.dataset(BOB.public_key, "sales") is None and machine.dataset(BOB.public_key, V1.hex()) is None
    assert machine.dataset_names(alice) == ["sales"] and machine.dataset_names(BOB.public_key) == []
    assert len(machine.datasets_by_tenant(alice, limit=1000)) == 2
    assert [d["version"] for d in machine.datasets_by_tenant(alice, limit=1, offset=1)] == [2]
    with pytest.raises(ValueError, match="limit"):
        machine.datasets_by_tenant(alice, limit=1001)
    with pytest.raises(ValueError, match=BAD_DATASET_REF):
        machine.dataset(alice, "sales@0")


# -- the document ---------------------------------------------------------------------------

def test_the_documented_payload_example_is_what_the_code_encodes_and_accepts():
    doc = (Path(__file__).resolve().parents[2] / "docs" / "dataset-registry.md").read_text(encoding="utf-8")
    (block,) = re.findall(r"<!-- registry-example: payload -->\s*\n```\n(.*?)\n```", doc, re.S)
    payload = {"digest": hashlib.sha256(b"docs example dataset").digest(), "size": 1234, "name": "sales",
               "format": "csv", "receipt": hashlib.sha256(b"docs example receipt").digest()}
    assert "".join(block.split()) == encode(payload).hex()
    parse_payload(sign_tx(ALICE, chain_id="docs", nonce=0, tx_type="dataset.register", payload=payload))
