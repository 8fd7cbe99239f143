"""Building receipt bundles over a real chain (DuckDB ChainStore + ReceiptLog)
and the pure query results the RPC methods return."""

from __future__ import annotations

import cbor2
import duckdb
import pytest
from receipt_samples import VALID_FIELDS

from node.base import codec
from node.base.merkle import leaf_hash, verify_consistency, verify_inclusion
from node.consensus.block import BLOCK_TAG, BlockHeader
from node.receipts.api import (
    BAD_PARAM,
    NOT_FOUND,
    NOT_SEALED,
    ReceiptQueryError,
    build_bundle,
    receipt_bundle,
    receipt_consistency,
    receipt_get,
    receipt_proof,
)
from node.receipts.bundle import BUNDLE_VERSION, BundleError, bundle_id, decode_bundle
from node.receipts.chain import ReceiptIssuer
from node.receipts.devchain import DevChain, dev_genesis, dev_identities
from node.receipts.verify import BundleVerifier

ISSUER = dev_identities(1, "bundle-test-processing")[0]


def _receipts(issuer: ReceiptIssuer, height: int, count: int) -> list:
    kinds = sorted(VALID_FIELDS)
    out = []
    for i in range(count):
        subject, fields = VALID_FIELDS[kinds[i % len(kinds)]]
        out.append(issuer.issue(kinds[i % len(kinds)], height=height, subject=subject, fields=fields))
    return out


@pytest.fixture
def chain() -> DevChain:
    """Blocks 1..6 carrying 3, 0, 5, 1, 0, 4 receipts (empty blocks keep the log size)."""
    validators = dev_identities(4)
    dev = DevChain(dev_genesis(validators), validators, duckdb.connect())
    issuer = ReceiptIssuer(ISSUER)
    for height, count in enumerate([3, 0, 5, 1, 0, 4], start=1):
        dev.add_block(_receipts(issuer, height, count))
    return dev


def test_every_receipt_bundles_and_verifies_against_its_first_covering_block(chain: DevChain) -> None:
    verifier = BundleVerifier(chain.genesis)
    sizes = [block.header.receipts_size for block in chain.blocks]
    for index, receipt in enumerate(chain.receipts):
        data = build_bundle(receipt.id, chain.log, chain.block_source(), chain.genesis)
        verified = verifier.verify(data)
        assert verified.receipt.id == receipt.id and verified.leaf_index == index
        first = next(h for h, size in enumerate(sizes, start=1) if size > index)
        assert verified.header.height == first
        assert verified.header == chain.blocks[first - 1].header


def test_bundles_are_deterministic_and_carry_every_part(chain: DevChain) -> None:
    receipt = chain.receipts[5]
    first = build_bundle(receipt.id, chain.log, chain.block_source(), chain.genesis)
    assert build_bundle(receipt.id.hex(), chain.log, chain.block_source(), chain.genesis) == first
    value = codec.decode(first)
    assert value["version"] == BUNDLE_VERSION and value["receipt"] == receipt.envelope
    block = chain.blocks[2]  # height 3 took the log from 3 to 8 leaves
    assert codec.hash_tagged(BLOCK_TAG, value["header"]) == block.hash
    assert BlockHeader.from_value(codec.decode(value["header"])) == block.header
    assert value["seals"] == [list(seal) for seal in block.seals] and value["commit_round"] == block.commit_round
    [entry] = value["validator_sets"]
    assert entry == {"from_height": 0, "genesis": chain.genesis.hash, "validators": list(chain.genesis.validators)}
    verify_inclusion(leaf_hash(receipt.id), 5, block.header.receipts_size, value["proof"], block.header.receipts_root)
    assert value["witness"] is None
    assert bundle_id(first) == codec.hash_tagged("metanode/receipt-bundle/v1", first)


def test_decode_is_strict(chain: DevChain) -> None:
    data = build_bundle(chain.receipts[0].id, chain.log, chain.block_source(), chain.genesis)
    assert decode_bundle(data).encode() == data
    value = codec.decode(data)
    with pytest.raises(BundleError, match="canonical"):
        # The same map with its keys in reverse order is not the canonical encoding.
        decode_bundle(cbor2.dumps(dict(reversed(list(value.items())))))
    with pytest.raises(BundleError, match="version 3 is not supported"):
        decode_bundle(codec.encode({**value, "version": 3}))
    with pytest.raises(BundleError, match="version 1 bundles are no longer supported"):
        decode_bundle(codec.encode({**value, "version": 1}))
    with pytest.raises(BundleError, match="expected a map"):
        decode_bundle(codec.encode({**value, "extra": 1}))
    with pytest.raises(BundleError, match=r"proof\[0\]"):
        decode_bundle(codec.encode({**value, "proof": [b"short"]}))
    with pytest.raises(BundleError, match="sorted"):
        decode_bundle(codec.encode({**value, "seals": list(reversed(value["seals"]))}))
    with pytest.raises(BundleError, match="exceeds the limit"):
        decode_bundle(data + bytes(8 * 1024 * 1024))
    with pytest.raises(BundleError, match="expected bytes"):
        decode_bundle("text")  # type: ignore[arg-type]


def test_unknown_and_unsealed_receipts_are_refused(chain: DevChain) -> None:
    with pytest.raises(ReceiptQueryError) as missing:
        build_bundle(bytes(32), chain.log, chain.block_source(), chain.genesis)
    assert missing.value.code == NOT_FOUND
    with pytest.raises(ReceiptQueryError) as bad:
        build_bundle("zz", chain.log, chain.block_source(), chain.genesis)
    assert bad.value.code == BAD_PARAM
    # Logged but no block covers it yet.
    pending = _receipts(ReceiptIssuer(dev_identities(1, "late")[0]), 9, 1)
    chain.log.append_receipts(pending)
    with pytest.raises(ReceiptQueryError) as unsealed:
        build_bundle(pending[0].id, chain.log, chain.block_source(), chain.genesis)
    assert unsealed.value.code == NOT_SEALED and unsealed.value.data["index"] == len(chain.receipts)
    chain.add_block([])  # seals the pending leaf
    data = build_bundle(pending[0].id, chain.log, chain.block_source(), chain.genesis)
    assert BundleVerifier(chain.genesis).verify(data).header.height == 7


def test_rpc_results_are_json_and_check_out(chain: DevChain) -> None:
    import json

    receipt = chain.receipts[9]
    got = receipt_get(chain.log, receipt.id.hex())
    assert got["id"] == receipt.id.hex() and got["index"] == 9 and got["kind"] == receipt.kind
    assert bytes.fromhex(got["envelope"]) == receipt.envelope
    assert got["fields"] == json.loads(json.dumps(got["fields"]))
    proof = receipt_proof(chain.log, chain.block_source(), receipt.id)
    sealing = chain.blocks[5]
    assert proof["block"] == {"height": 6, "hash": sealing.hash.hex()}
    assert proof["size"] == sealing.header.receipts_size and proof["root"] == sealing.header.receipts_root.hex()
    verify_inclusion(leaf_hash(receipt.id), 9, proof["size"], [bytes.fromhex(p) for p in proof["proof"]],
                     bytes.fromhex(proof["root"]))
    at_size = receipt_proof(chain.log, chain.block_source(), receipt.id, size=10)
    verify_inclusion(leaf_hash(receipt.id), 9, 10, [bytes.fromhex(p) for p in at_size["proof"]],
                     bytes.fromhex(at_size["root"]))
    with pytest.raises(ReceiptQueryError, match="does not include"):
        receipt_proof(chain.log, chain.block_source(), receipt.id, size=9)
    consistency = receipt_consistency(chain.log, 3, 13)
    verify_consistency(3, 13, [bytes.fromhex(p) for p in consistency["proof"]],
                       bytes.fromhex(consistency["root1"]), bytes.fromhex(consistency["root2"]))
    with pytest.raises(ReceiptQueryError) as too_big:
        receipt_consistency(chain.log, 3, 99)
    assert too_big.value.code == BAD_PARAM
    result = receipt_bundle(chain.log, chain.block_source(), chain.genesis, receipt.id.hex())
    assert result["height"] == 6 and json.loads(json.dumps(result)) == result
    assert BundleVerifier(chain.genesis).verify(bytes.fromhex(result["bundle"])).receipt.id == receipt.id


def test_two_nodes_holding_different_seals_build_byte_identical_bundles() -> None:
    """Each node keeps the commit seals it gathered, so two nodes' stored
    blocks can differ in their seals; the bundle carries the first quorum in
    validator order, so both nodes' bundles of a receipt are the same bytes."""
    validators = dev_identities(4)
    genesis = dev_genesis(validators)
    by_key = sorted(validators, key=lambda v: v.public_key)
    quorum = genesis.validator_set.quorum
    all_seals = DevChain(genesis, validators, duckdb.connect())  # a node that gathered every seal
    a_quorum = DevChain(genesis, validators, duckdb.connect())  # one that stopped at the first quorum
    issuer_a, issuer_b = ReceiptIssuer(ISSUER), ReceiptIssuer(ISSUER)
    for height, count in enumerate([3, 2], start=1):
        all_seals.add_block(_receipts(issuer_a, height, count), signers=by_key)
        a_quorum.add_block(_receipts(issuer_b, height, count), signers=by_key[:quorum])
    for one, other in zip(all_seals.blocks, a_quorum.blocks, strict=True):
        assert one.hash == other.hash and one.seals != other.seals and len(one.seals) == 4
    assert [r.id for r in all_seals.receipts] == [r.id for r in a_quorum.receipts]
    verifier = BundleVerifier(genesis)
    for receipt in all_seals.receipts:
        first = build_bundle(receipt.id, all_seals.log, all_seals.block_source(), genesis)
        second = build_bundle(receipt.id, a_quorum.log, a_quorum.block_source(), genesis)
        assert first == second and bundle_id(first) == bundle_id(second)
        sealed = decode_bundle(first).seals
        assert [key for key, _ in sealed] == list(genesis.validator_set.keys[:quorum])
        verifier.verify(first)
