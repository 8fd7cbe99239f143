"""The worked examples of docs/*.md, re-derived from the code.

The format documents (docs/encoding.md, transactions.md, blocks.md,
receipts.md, wire.md) promise that someone can implement a compatible
encoder or verifier from them alone; their worked examples are the check
of that promise. Each example in a document is a fenced block preceded by
``<!-- example: NAME -->``; this module computes every NAME from the code
and fails when a document's block differs (whitespace is ignored, so long
hex may be wrapped). A format change therefore fails here until the
documents are brought up to date, and an example nobody derives fails too.

Everything is deterministic: identities come from public labels
(``Identity.from_label``), Ed25519 signatures are deterministic, and the
timestamps are fixed. No daemon, network or disk beyond reading docs/.
"""

from __future__ import annotations

import dataclasses
import hashlib
import re
from collections.abc import Callable
from functools import cache
from pathlib import Path

import pytest

from node.app.txtypes import parse_payload
from node.base import codec
from node.base.keys import Identity, peer_id_from_public_key
from node.base.merkle import (
    consistency_ranges,
    inclusion_ranges,
    leaf_hash,
    merkle_root,
    verify_consistency,
    verify_inclusion,
)
from node.consensus.block import SEAL_TAG, Block, genesis_header, make_seed_proof, seal_message, seed_alpha
from node.consensus.block_rules import build_block
from node.consensus.genesis import Genesis
from node.consensus.messages import Message, commit_payload, decode_message, prepare_payload, sign_payload
from node.consensus.tx import Transaction, decode_tx, sign_tx, verify_signature
from node.consensus.validators import ValidatorSet
from node.p2p.chain_hello import ChainIdentity
from node.p2p.framing import encode_frame, encode_uvarint
from node.p2p.jsonrpc import dump_json
from node.receipts.bundle import Bundle, ValidatorSetTransition, bundle_id, decode_bundle, genesis_validator_sets
from node.receipts.chain import ReceiptIssuer
from node.receipts.envelope import Receipt, build_receipt, verify_receipt
from node.receipts.verify import BundleInvalid, BundleVerifier

DOCS = Path(__file__).resolve().parents[2] / "docs"
DOC_FILES = ("encoding.md", "transactions.md", "blocks.md", "receipts.md", "bundles.md", "wire.md", "genesis.md")
_MARKER = re.compile(r"<!-- example: ([a-z0-9_.-]+) -->\s*\n```[a-z]*\n(.*?)\n```", re.S)

CHAIN_ID = "docs-example"
GENESIS_TIME_MS = 1_767_225_600_000  # 2026-01-01T00:00:00Z


# -- the example world ------------------------------------------------------------------
def tenant() -> Identity:
    return Identity.from_label("docs/tenant")


def gateway() -> Identity:
    return Identity.from_label("docs/gateway")


def processor() -> Identity:
    return Identity.from_label("docs/processor")


def validators() -> list[Identity]:
    return [Identity.from_label(f"docs/validator-{i}") for i in range(4)]


@cache
def genesis() -> Genesis:
    return Genesis(chain_id=CHAIN_ID, genesis_time_ms=GENESIS_TIME_MS,
                   validators=tuple(v.public_key for v in validators()))


def by_key(key: bytes) -> Identity:
    return next(v for v in validators() if v.public_key == key)


def seal(block: Block, commit_round: int = 0) -> Block:
    """The block sealed by the first three validators in key order (a quorum of 4)."""
    keys = genesis().validator_set.keys[:3]
    message = seal_message(block.hash, commit_round)
    return block.with_seals(commit_round, [(k, by_key(k).sign(SEAL_TAG, message)) for k in keys])


DATASET_DIGEST = hashlib.sha256(b"docs example dataset").digest()


@cache
def noop_tx() -> Transaction:
    return sign_tx(tenant(), chain_id=CHAIN_ID, nonce=0, tx_type="noop", payload={"note": "hello"})


@cache
def submit_tx() -> Transaction:
    payload = {"type": "sql", "inputs": {"sales": DATASET_DIGEST},
               "params": {"query": "SELECT count(*) AS n FROM sales"}, "replication": 2, "deadline_blocks": 20}
    return sign_tx(tenant(), chain_id=CHAIN_ID, nonce=1, tx_type="job.submit", payload=payload)


@cache
def cancel_tx() -> Transaction:
    return sign_tx(tenant(), chain_id=CHAIN_ID, nonce=2, tx_type="job.cancel", payload={"job": submit_tx().hash})


@cache
def register_tx() -> Transaction:
    payload = {"roles": ["processing", "storage"], "capacity": 4, "moniker": "proc-1"}
    return sign_tx(processor(), chain_id=CHAIN_ID, nonce=0, tx_type="node.register", payload=payload)


@cache
def exec_receipt() -> Receipt:
    job = submit_tx().hash
    return build_receipt(processor(), "job.exec", height=3, subject=job, prev=None, fields={
        "input_root": merkle_root([codec.encode({"name": "sales", "size": 1234, "sha256": DATASET_DIGEST})]),
        "code": hashlib.sha256(b"docs example code").digest(),
        "policy": hashlib.sha256(b"docs example policy").digest(),
        "seed": hashlib.sha256(b"docs example seed").digest(),
        "result": hashlib.sha256(b"docs example result").digest(),
        "witness": hashlib.sha256(b"docs example witness").digest(),
        "exit": 0,
    })


@cache
def gateway_receipts() -> tuple[Receipt, ...]:
    """The gateway's first three receipts, chained by ``prev``. (Only a scheduler
    node's attestation of a decision of the chain may be a job.schedule: a
    gateway's would be refused, and left out of the log.)"""
    issuer = ReceiptIssuer(gateway())
    submit, cancel = submit_tx(), cancel_tx()
    api_call = issuer.issue("api.call", height=1, subject=hashlib.sha256(submit.encoded).digest(), fields={
        "method": "analytics_submit", "tenant": tenant().public_key, "outcome": "accepted", "code": 0,
        "response": hashlib.sha256(submit.hash).digest()})
    store = issuer.issue("data.store", height=1, subject=DATASET_DIGEST, fields={
        "content": "dataset", "tenant": tenant().public_key, "size": 1234, "replicas": 2})
    cancel_call = issuer.issue("api.call", height=1, subject=hashlib.sha256(cancel.encoded).digest(), fields={
        "method": "analytics_cancel", "tenant": tenant().public_key, "outcome": "accepted", "code": 0,
        "response": hashlib.sha256(cancel.hash).digest()})
    return api_call, store, cancel_call


@cache
def batch_tx() -> Transaction:
    payload = {"receipts": [r.envelope for r in gateway_receipts()]}
    return sign_tx(gateway(), chain_id=CHAIN_ID, nonce=0, tx_type="receipts.batch", payload=payload)


@cache
def block1() -> Block:
    """Height 1: the tenant's noop transaction; the receipt log is still empty."""
    g = genesis()
    parent = genesis_header(g)
    proposer = g.validator_set.proposer(parent.proposer, 0)
    return seal(build_block(g, parent, proposer, 0, [noop_tx().encoded], GENESIS_TIME_MS + 1000,
                            seed_proof=make_seed_proof(by_key(proposer), g.hash, parent)))


@cache
def block2() -> Block:
    """Height 2: the gateway's receipts.batch; the log grows to three leaves."""
    g = genesis()
    parent = block1().header
    ids = [r.id for r in gateway_receipts()]
    proposer = g.validator_set.proposer(parent.proposer, 0)
    return seal(build_block(g, parent, proposer, 0, [batch_tx().encoded], GENESIS_TIME_MS + 2000,
                            receipts_size=len(ids), receipts_root=merkle_root(ids),
                            seed_proof=make_seed_proof(by_key(proposer), g.hash, parent)))


@cache
def bundle_bytes() -> bytes:
    """The bundle of the gateway's data.store receipt (leaf 1 of 3), sealed by block 2."""
    block = block2()
    ids = [r.id for r in gateway_receipts()]
    proof = [merkle_root(ids[s:e]) for s, e in inclusion_ranges(1, 3)]
    return Bundle(receipt=gateway_receipts()[1].envelope, leaf_index=1, proof=tuple(proof),
                  header=codec.encode(block.header.to_value()), commit_round=block.commit_round,
                  seals=block.seals, validator_sets=genesis_validator_sets(genesis()), witness=None).encode()


# -- bundles.md: a validator set change (docs/validator-4 voted in, deciding from height 4) ----------
def validator4() -> Identity:
    return Identity.from_label("docs/validator-4")


@cache
def five() -> ValidatorSet:
    """The set of five that decides from height 4."""
    return ValidatorSet([*genesis().validators, validator4().public_key])


def seal_by(block: Block, vset: ValidatorSet, commit_round: int = 0) -> Block:
    """The block sealed by the first quorum of ``vset`` in key order."""
    identities = {v.public_key: v for v in [*validators(), validator4()]}
    message = seal_message(block.hash, commit_round)
    keys = vset.keys[: vset.quorum]
    return block.with_seals(commit_round, [(k, identities[k].sign(SEAL_TAG, message)) for k in keys])


@cache
def block3() -> Block:
    """Height 3: empty, decided and sealed by the four, the first header committing to the five."""
    g = genesis()
    parent = block2().header
    proposer = g.validator_set.proposer(parent.proposer, 0)
    return seal(build_block(g, parent, proposer, 0, [], GENESIS_TIME_MS + 3000,
                            receipts_size=parent.receipts_size, receipts_root=parent.receipts_root,
                            next_validators=five(), seed_proof=make_seed_proof(by_key(proposer), g.hash, parent)))


@cache
def exec_batch_tx() -> Transaction:
    """The processor's receipts.batch carrying its job.exec receipt (its nonce 1, after node.register)."""
    return sign_tx(processor(), chain_id=CHAIN_ID, nonce=1, tx_type="receipts.batch",
                   payload={"receipts": [exec_receipt().envelope]})


def changed_log_ids() -> list[bytes]:
    return [r.id for r in gateway_receipts()] + [exec_receipt().id]


@cache
def block4() -> Block:
    """Height 4: decided and sealed by the five; the log grows to 4 leaves."""
    g = genesis()
    parent = block3().header
    proposer = five().proposer(parent.proposer, 0)
    identity = next(v for v in [*validators(), validator4()] if v.public_key == proposer)
    ids = changed_log_ids()
    block = build_block(g, parent, proposer, 0, [exec_batch_tx().encoded], GENESIS_TIME_MS + 4000,
                        receipts_size=len(ids), receipts_root=merkle_root(ids), validators=five(),
                        seed_proof=make_seed_proof(identity, g.hash, parent))
    return seal_by(block, five())


def transition_to_five() -> ValidatorSetTransition:
    block = block3()
    return ValidatorSetTransition(4, five().keys, codec.encode(block.header.to_value()), block.commit_round,
                                  block.seals)


@cache
def changed_bundle_bytes() -> bytes:
    """The bundle of the job.exec receipt (leaf 3 of 4), sealed by block 4, across the change to five."""
    block = block4()
    ids = changed_log_ids()
    proof = [merkle_root(ids[s:e]) for s, e in inclusion_ranges(3, 4)]
    return Bundle(receipt=exec_receipt().envelope, leaf_index=3, proof=tuple(proof),
                  header=codec.encode(block.header.to_value()), commit_round=block.commit_round, seals=block.seals,
                  validator_sets=(*genesis_validator_sets(genesis()), transition_to_five()), witness=None).encode()


def prepare_message() -> Message:
    block = block1()
    signed = sign_payload(by_key(genesis().validator_set.keys[1]), prepare_payload(1, 0, block.hash))
    return Message(signed)


def commit_message() -> Message:
    block = block1()
    voter = by_key(genesis().validator_set.keys[1])
    seal_sig = voter.sign(SEAL_TAG, seal_message(block.hash, 0))
    return Message(sign_payload(voter, commit_payload(1, 0, block.hash, seal_sig)))


MERKLE_LEAVES = [bytes([i]) * 32 for i in range(5)]  # five 32-byte leaves 00..00, 01..01, ...


# -- every example, by the name the documents use ----------------------------------------
CBOR_SAMPLE = {"v": 1, "sig": b"\x01\x02", "name": "sales", "n": -300, "ok": True, "none": None,
               "ints": [23, 24, 256, 2**32]}

EXAMPLES: dict[str, Callable[[], str]] = {
    # encoding.md
    "cbor.sample": lambda: codec.encode(CBOR_SAMPLE).hex(),
    "hash.tagged.preimage": lambda: (b"metanode/example/v1" + b"\x00" + b"abc").hex(),
    "hash.tagged": lambda: codec.hash_tagged("metanode/example/v1", b"abc").hex(),
    "key.seed": lambda: tenant().seed.hex(),
    "key.public": lambda: tenant().public_key.hex(),
    "key.peer_id_bytes": lambda: (b"\x00\x24\x08\x01\x12\x20" + tenant().public_key).hex(),
    "key.peer_id": lambda: tenant().peer_id,
    "sig.example": lambda: tenant().sign("metanode/example/v1", b"abc").hex(),
    # transactions.md
    "tx.noop": lambda: noop_tx().encoded.hex(),
    "tx.noop.signing": lambda: noop_tx().signing_bytes().hex(),
    "tx.noop.hash": lambda: noop_tx().hash.hex(),
    "tx.register": lambda: register_tx().encoded.hex(),
    "tx.submit": lambda: submit_tx().encoded.hex(),
    "tx.submit.hash": lambda: submit_tx().hash.hex(),
    "tx.cancel": lambda: cancel_tx().encoded.hex(),
    # blocks.md
    "genesis.value": lambda: codec.encode(genesis().to_value()).hex(),
    "genesis.hash": lambda: genesis().hash.hex(),
    "validators.hash": lambda: genesis().validator_set.hash.hex(),
    "genesis.seed": lambda: genesis_header(genesis()).seed.hex(),
    "block1.seed_alpha": lambda: seed_alpha(genesis().hash, 1, genesis_header(genesis()).seed).hex(),
    "block1.seed_proof": lambda: block1().header.seed_proof.hex(),
    "block1.seed": lambda: block1().header.seed.hex(),
    "block1.header": lambda: codec.encode(block1().header.to_value()).hex(),
    "block1.hash": lambda: block1().hash.hex(),
    "block1.seal_message": lambda: seal_message(block1().hash, 0).hex(),
    "block1.block": lambda: block1().encode().hex(),
    "ibft.prepare.payload": lambda: prepare_message().signed.payload.hex(),
    "ibft.prepare": lambda: prepare_message().encode().hex(),
    "ibft.commit.payload": lambda: commit_message().signed.payload.hex(),
    # receipts.md
    "receipt.exec.body": lambda: exec_receipt().body_bytes.hex(),
    "receipt.exec.envelope": lambda: exec_receipt().envelope.hex(),
    "receipt.exec.id": lambda: exec_receipt().id.hex(),
    "merkle.root5": lambda: merkle_root(MERKLE_LEAVES).hex(),
    "merkle.inclusion.2.5": lambda: "\n".join(merkle_root(MERKLE_LEAVES[s:e]).hex() for s, e in inclusion_ranges(2, 5)),
    "merkle.root3": lambda: merkle_root(MERKLE_LEAVES[:3]).hex(),
    "merkle.consistency.3.5": lambda: "\n".join(
        merkle_root(MERKLE_LEAVES[s:e]).hex() for s, e in consistency_ranges(3, 5)),
    "receipts.ids": lambda: "\n".join(r.id.hex() for r in gateway_receipts()),
    "block2.header": lambda: codec.encode(block2().header.to_value()).hex(),
    "block2.hash": lambda: block2().hash.hex(),
    "bundle": lambda: bundle_bytes().hex(),
    "bundle.id": lambda: bundle_id(bundle_bytes()).hex(),
    # bundles.md
    "validators5.hash": lambda: five().hash.hex(),
    "block3.header": lambda: codec.encode(block3().header.to_value()).hex(),
    "bundle.changed": lambda: changed_bundle_bytes().hex(),
    "bundle.changed.id": lambda: bundle_id(changed_bundle_bytes()).hex(),
    # wire.md
    "varint.300": lambda: encode_uvarint(300).hex(),
    "frame.rpc": lambda: encode_frame(dump_json({"jsonrpc": "2.0", "method": "chain_head", "id": 1})).hex(),
    "frame.sync": lambda: encode_frame(codec.encode({"from": 1, "limit": 64})).hex(),
    "frame.gossip": lambda: encode_frame(codec.encode([noop_tx().encoded])).hex(),
    # genesis.md
    "genesis.rules.value": lambda: codec.encode(dataclasses.replace(genesis(), rules={"max_attempts": 5}).to_value()).hex(),
    "genesis.rules.hash": lambda: dataclasses.replace(genesis(), rules={"max_attempts": 5}).hash.hex(),
    "chain_hello.frame": lambda: encode_frame(
        ChainIdentity.of(genesis().chain_id, genesis().hash, genesis().full_value()).encode()).hex(),
}


# -- the documents ---------------------------------------------------------------------
def _normalise(text: str) -> str:
    return "\n".join("".join(line.split()) for line in text.strip().splitlines() if line.strip())


@cache
def documented() -> dict[str, tuple[str, str]]:
    """Every example block of docs/: name -> (document, content)."""
    found: dict[str, tuple[str, str]] = {}
    for name in DOC_FILES:
        text = (DOCS / name).read_text(encoding="utf-8")
        for match in _MARKER.finditer(text):
            assert match[1] not in found, f"example {match[1]} appears in {found.get(match[1], ('?',))[0]} and {name}"
            found[match[1]] = (name, match[2])
    return found


def _hex_lines(value: str) -> str:
    """Hex wrapped or not compares equal: join the lines of a single value."""
    return value.replace("\n", "")


@pytest.mark.parametrize("name", sorted(EXAMPLES))
def test_documented_example_matches_the_code(name: str) -> None:
    assert name in documented(), f"example {name} is derived here but no document shows it"
    doc, content = documented()[name]
    expected = EXAMPLES[name]()
    multi = "\n" in expected
    got = _normalise(content) if multi else _hex_lines(_normalise(content))
    assert got == expected, f"docs/{doc}: example {name} no longer matches the code:\n{expected}"


def test_every_documented_example_is_derived() -> None:
    unknown = sorted(set(documented()) - set(EXAMPLES))
    assert not unknown, f"examples in docs/ that no test derives: {unknown}"


# -- the examples are what they say they are -------------------------------------------------
def test_example_transactions_are_valid() -> None:
    for tx in (noop_tx(), register_tx(), submit_tx(), cancel_tx(), batch_tx()):
        assert decode_tx(tx.encoded).hash == tx.hash
        assert verify_signature(tx)
    for tx in (register_tx(), submit_tx(), cancel_tx(), batch_tx()):
        parse_payload(tx)
    # The signing bytes are the body map: the envelope without "sig", re-encoded.
    tx = noop_tx()
    body = codec.decode(tx.encoded)
    del body["sig"]
    assert codec.encode(body) == tx.signing_bytes()


def test_example_receipts_and_proofs_verify() -> None:
    verify_receipt(exec_receipt().envelope, issuer_key=processor().public_key)
    root = merkle_root(MERKLE_LEAVES)
    proof = [merkle_root(MERKLE_LEAVES[s:e]) for s, e in inclusion_ranges(2, 5)]
    verify_inclusion(leaf_hash(MERKLE_LEAVES[2]), 2, 5, proof, root)
    consistency = [merkle_root(MERKLE_LEAVES[s:e]) for s, e in consistency_ranges(3, 5)]
    verify_consistency(3, 5, consistency, merkle_root(MERKLE_LEAVES[:3]), root)


def test_example_bundle_verifies_and_a_flipped_byte_is_caught() -> None:
    verified = BundleVerifier(genesis()).verify(bundle_bytes())
    assert verified.receipt.kind == "data.store" and verified.header.height == 2
    assert decode_bundle(bundle_bytes()).leaf_index == 1
    # The worked failure in receipts.md: the last byte of the first proof hash flipped.
    data = bytearray(bundle_bytes())
    first_proof_hash = decode_bundle(bundle_bytes()).proof[0]
    at = bytes(data).index(first_proof_hash) + 31
    data[at] ^= 0x01
    with pytest.raises(BundleInvalid) as failure:
        BundleVerifier(genesis()).verify(bytes(data))
    assert failure.value.exit_code == 12


def test_example_twin_genesis_refusals_are_the_documented_ones() -> None:
    """bundles.md: a twin genesis (one day later) refuses the bundle, relabelled or not, with exit 14."""
    import dataclasses

    from node.receipts.bundle import ValidatorSetEntry

    twin = dataclasses.replace(genesis(), genesis_time_ms=GENESIS_TIME_MS + 86_400_000)
    text = (DOCS / "bundles.md").read_text(encoding="utf-8")
    assert f"genesis_time_ms = {twin.genesis_time_ms}" in text and twin.hash.hex()[:8] in text
    bundle = decode_bundle(bundle_bytes())
    relabelled = dataclasses.replace(bundle, validator_sets=(ValidatorSetEntry(0, twin.hash, twin.validators),))
    for data in (bundle_bytes(), relabelled.encode()):
        with pytest.raises(BundleInvalid) as failure:
            BundleVerifier(twin).verify(data)
        assert failure.value.exit_code == 14
        assert f"invalid: {failure.value}   (exit 14)" in text


def test_example_changed_bundle_verifies_and_its_documented_refusals_are_the_codes() -> None:
    """bundles.md: the bundle across the change to five verifies against the
    genesis of four; without its transition, or with the transition sealed
    by the new set, it is refused with exit 14 and the documented lines."""
    verified = BundleVerifier(genesis()).verify(changed_bundle_bytes())
    assert verified.receipt.kind == "job.exec" and verified.header.height == 4 and verified.validators == five()
    assert block3().header.next_validators_hash == five().hash != block3().header.validators_hash
    text = (DOCS / "bundles.md").read_text(encoding="utf-8")
    bundle = decode_bundle(changed_bundle_bytes())
    new_set_seals = seal_by(block3().unsealed(), ValidatorSet(
        [validator4().public_key, *genesis().validator_set.keys[:3]]))
    cases = (
        dataclasses.replace(bundle, validator_sets=bundle.validator_sets[:1]),
        dataclasses.replace(bundle, validator_sets=(bundle.validator_sets[0], dataclasses.replace(
            transition_to_five(), seals=new_set_seals.seals))),
    )
    for case in cases:
        with pytest.raises(BundleInvalid) as failure:
            BundleVerifier(genesis()).verify(case.encode())
        assert failure.value.exit_code == 14
        assert f"invalid: {failure.value}   (exit 14)" in text, str(failure.value)


def test_example_ibft_messages_decode() -> None:
    for message in (prepare_message(), commit_message()):
        decoded = decode_message(message.encode(), max_size=1 << 20, max_block_size=1 << 20)
        assert decoded.signed.payload == message.signed.payload
    assert peer_id_from_public_key(tenant().public_key) == tenant().peer_id
