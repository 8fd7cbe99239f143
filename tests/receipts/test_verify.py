"""The offline verifier: every single-byte flip of a bundle fails with the
code of the part it hit; non-validator issuers, too few seals, forged
headers, other chains and mismatched witnesses fail with theirs."""

from __future__ import annotations

import hashlib
from dataclasses import replace

import duckdb
import pytest
from changing_chain import grow_changing_chain
from receipt_samples import VALID_FIELDS

from node.base import codec
from node.cage.witness import encode_witness_file, witness_digest
from node.consensus.block import BlockHeader
from node.receipts.api import build_bundle
from node.receipts.bundle import ValidatorSetEntry, decode_bundle
from node.receipts.chain import ReceiptIssuer
from node.receipts.devchain import DevChain, dev_genesis, dev_identities, seal_block
from node.receipts.execution import exec_fields
from node.receipts.verify import (
    EXIT_CHAIN,
    EXIT_ISSUER,
    EXIT_MALFORMED,
    EXIT_PROOF,
    EXIT_RECEIPT,
    EXIT_SEALS,
    EXIT_WITNESS,
    BundleInvalid,
    BundleVerifier,
    issuers_in,
)

VALIDATORS = dev_identities(4)
GENESIS = dev_genesis(VALIDATORS)
PROCESSING = dev_identities(1, "verify-test-processing")[0]
OUTSIDERS = dev_identities(4, "verify-test-outsider")


def _digest(label: str) -> bytes:
    return hashlib.sha256(label.encode()).digest()


def _witness_record(result: str) -> dict:
    """A witness record with the fields a job.exec receipt binds (the real
    cage path is tested in test_verify_replay.py)."""
    return {
        "version": 1, "inputs_root": _digest("inputs"), "code": {"job": _digest("job"), "policy": _digest("p")},
        "seed": _digest("seed"), "result_digest": _digest(result), "exit": {"status": "ok", "signal": None},
    }


def _exec_receipt(issuer: ReceiptIssuer, record: dict, height: int):
    return issuer.issue("job.exec", height=height, subject=_digest(f"job {height}"),
                        fields=exec_fields(record, witness_digest(record)))


def _other_receipts(issuer: ReceiptIssuer, height: int) -> list:
    return [issuer.issue(kind, height=height, subject=subject, fields=fields)
            for kind, (subject, fields) in sorted(VALID_FIELDS.items())]


@pytest.fixture(scope="module")
def chain() -> DevChain:
    dev = DevChain(GENESIS, VALIDATORS, duckdb.connect())
    issuer = ReceiptIssuer(PROCESSING)
    for height in range(1, 4):
        dev.add_block(_other_receipts(issuer, height) + [_exec_receipt(issuer, _witness_record("ok"), height)])
    return dev


def _bundle(chain: DevChain, index: int, witness_file: bytes | None = None) -> bytes:
    return build_bundle(chain.receipts[index].id, chain.log, chain.block_source(), chain.genesis,
                        witness_file=witness_file)


def _code(verifier: BundleVerifier, data: bytes) -> int:
    with pytest.raises(BundleInvalid) as failed:
        verifier.verify(data)
    return failed.value.exit_code


# -- the tamper matrix -------------------------------------------------------------
PART_CODES = {
    "version": EXIT_MALFORMED, "receipt": EXIT_RECEIPT, "leaf_index": EXIT_PROOF, "proof": EXIT_PROOF,
    "header": EXIT_SEALS, "commit_round": EXIT_SEALS, "seals": EXIT_SEALS, "validator_sets": EXIT_CHAIN,
    "witness": EXIT_WITNESS,
}


def _allowed_codes(data: bytes) -> list[tuple[str, set[int]]]:
    """For each byte: the part it belongs to and the codes a flip may give.
    Map keys and the outer map's head are structure (10 only); bytes inside
    a byte string (envelope, header, hashes, keys, signatures, witness) give
    exactly their part's code; other bytes of a field (CBOR heads, small
    integers) give their part's code or 10 when the flip breaks the CBOR."""
    value = codec.decode(data)
    allowed: list[tuple[str, set[int]] | None] = [None] * len(data)
    allowed[0] = ("structure", {EXIT_MALFORMED})  # the map head (fewer than 24 entries)
    end = 1
    for key, item in value.items():  # in encoded order
        key_bytes, item_bytes = codec.encode(key), codec.encode(item)
        start = end
        end_key, end = start + len(key_bytes), start + len(key_bytes) + len(item_bytes)
        assert data[start:end] == key_bytes + item_bytes
        code = PART_CODES[key]
        for offset in range(start, end_key):
            allowed[offset] = ("structure", {EXIT_MALFORMED})
        for offset in range(end_key, end):
            allowed[offset] = (key, {code, EXIT_MALFORMED})
        inner: list[bytes] = []
        if isinstance(item, bytes):
            inner = [item]
        elif key == "proof":
            inner = item
        elif key == "seals":
            inner = [part for seal in item for part in seal]
        elif key == "validator_sets":
            inner = [item[0]["genesis"]] + [k for entry in item for k in entry["validators"]]
            for transition in item[1:]:  # their header bytes and seals
                inner += [transition["header"]] + [part for seal in transition["seals"] for part in seal]
        for piece in inner:
            at = data.find(piece, end_key, end)
            assert at >= 0
            for offset in range(at, at + len(piece)):
                allowed[offset] = (key, {code})
    assert end == len(data) and all(entry is not None for entry in allowed)
    return allowed  # type: ignore[return-value]


def test_every_single_byte_flip_fails_with_the_code_of_the_part_it_hit(chain: DevChain) -> None:
    record = _witness_record("ok")
    exec_index = 5  # the job.exec receipt of block 1 (leaves 0-4 are the other kinds)
    assert chain.receipts[exec_index].kind == "job.exec"
    data = _bundle(chain, exec_index, encode_witness_file(record, {"input_paths": {}}))
    verifier = BundleVerifier(GENESIS)
    assert verifier.verify(data).witness_record == record
    _flip_every_byte(verifier, data, PART_CODES)


def test_every_single_byte_flip_of_a_bundle_across_two_set_changes_fails_with_its_part_code() -> None:
    """Flips in a transition (its header, seals, keys, heights) are chain
    failures (14); flips in the sealing header or its seals stay 13."""
    grown = grow_changing_chain()
    data = build_bundle(grown.after.id, grown.chain.log, grown.chain.block_source(), GENESIS,
                        validator_history=grown.chain.validator_history)
    verifier = BundleVerifier(GENESIS)
    assert len(verifier.verify(data).bundle.validator_sets) == 3
    _flip_every_byte(verifier, data, {part: code for part, code in PART_CODES.items() if part != "witness"})


def _flip_every_byte(verifier: BundleVerifier, data: bytes, expected_parts: dict[str, int]) -> None:
    seen: dict[str, set[int]] = {}
    for offset, (part, codes) in enumerate(_allowed_codes(data)):
        for mask in (0x01, 0x80, 0xFF):
            flipped = bytearray(data)
            flipped[offset] ^= mask
            code = _code(verifier, bytes(flipped))
            assert code in codes, f"byte {offset} ({part}) ^ {mask:#x} gave {code}, expected one of {codes}"
            seen.setdefault(part, set()).add(code)
    for part, code in expected_parts.items():
        assert code in seen[part], f"no flip of {part} gave its code {code}: {seen[part]}"


# -- issuers ----------------------------------------------------------------------------
def test_receipts_of_non_validators_pass_by_default_and_fail_under_a_validator_policy(chain: DevChain) -> None:
    data = _bundle(chain, 0)
    assert chain.receipts[0].issuer_key not in GENESIS.validator_set
    assert BundleVerifier(GENESIS).verify(data).receipt.id == chain.receipts[0].id
    strict = BundleVerifier(GENESIS, issuer_allowed=issuers_in(GENESIS.validator_set.keys))
    with pytest.raises(BundleInvalid, match="not allowed") as refused:
        strict.verify(data)
    assert refused.value.exit_code == EXIT_ISSUER
    # A validator's own receipt passes the strict policy.
    dev = DevChain(GENESIS, VALIDATORS, duckdb.connect())
    dev.add_block(_other_receipts(ReceiptIssuer(VALIDATORS[2]), 1))
    assert strict.verify(_bundle(dev, 3)).receipt.issuer_key == VALIDATORS[2].public_key


# -- seals and headers -------------------------------------------------------------------
def test_too_few_seals_fail() -> None:
    dev = DevChain(GENESIS, VALIDATORS, duckdb.connect())
    by_key = sorted(VALIDATORS, key=lambda v: v.public_key)
    quorum = GENESIS.validator_set.quorum
    dev.add_block(_other_receipts(ReceiptIssuer(PROCESSING), 1), signers=by_key[: quorum - 1])
    with pytest.raises(BundleInvalid, match=f"a quorum is {quorum}") as failed:
        BundleVerifier(GENESIS).verify(_bundle(dev, 0))
    assert failed.value.exit_code == EXIT_SEALS


def test_seals_of_non_validators_fail() -> None:
    dev = DevChain(GENESIS, VALIDATORS, duckdb.connect())
    dev.add_block(_other_receipts(ReceiptIssuer(PROCESSING), 1), signers=OUTSIDERS)
    with pytest.raises(BundleInvalid, match="is not a validator") as failed:
        BundleVerifier(GENESIS).verify(_bundle(dev, 0))
    assert failed.value.exit_code == EXIT_SEALS


def test_forged_headers_fail(chain: DevChain) -> None:
    verifier = BundleVerifier(GENESIS)
    bundle = decode_bundle(_bundle(chain, 1))
    header = BlockHeader.from_value(codec.decode(bundle.header))
    # The right log size and root, but another timestamp: the seals are for another hash.
    forged = replace(header, timestamp_ms=header.timestamp_ms + 1)
    forged_bytes = codec.encode(forged.to_value())
    assert forged.receipts_root == header.receipts_root
    cases = {
        "right root, seals of the real header": replace(bundle, header=forged_bytes),
        "seals of another block": replace(bundle, seals=chain.blocks[1].seals),
        "seals from another round": replace(bundle, commit_round=bundle.commit_round + 1),
    }
    # Properly signed seals over the forged header, by keys that are not validators.
    block = seal_block(chain.blocks[0].unsealed(), OUTSIDERS)
    cases["forged header sealed by outsiders"] = replace(bundle, seals=block.seals)
    for name, case in cases.items():
        with pytest.raises(BundleInvalid, match="not sealed by a quorum") as failed:
            verifier.verify(case.encode())
        assert failed.value.exit_code == EXIT_SEALS, name
    # The cache of good headers never lets a variant of a cached header through.
    verifier.verify(bundle.encode())
    assert verifier.cached_headers == 1
    with pytest.raises(BundleInvalid):
        verifier.verify(replace(bundle, seals=bundle.seals[:2]).encode())


def test_header_cache_is_shared_by_bundles_of_one_block(chain: DevChain) -> None:
    verifier = BundleVerifier(GENESIS)
    for index in range(6):  # leaves 0-5 are all sealed by block 1
        verifier.verify(_bundle(chain, index))
    assert verifier.cached_headers == 1
    verifier.verify(_bundle(chain, 6))
    assert verifier.cached_headers == 2


# -- the chain and the genesis -------------------------------------------------------
def test_another_genesis_fails(chain: DevChain) -> None:
    data = _bundle(chain, 0)
    cases = {
        "same validators, another chain id": dev_genesis(VALIDATORS, chain_id="metanode-other"),
        "other validators": dev_genesis(OUTSIDERS),
    }
    for name, genesis in cases.items():
        with pytest.raises(BundleInvalid, match="not the given genesis") as failed:
            BundleVerifier(genesis).verify(data)
        assert failed.value.exit_code == EXIT_CHAIN, name


def test_a_header_of_another_chain_with_the_same_validators_fails() -> None:
    other = dev_genesis(VALIDATORS, chain_id="metanode-other")
    dev = DevChain(other, VALIDATORS, duckdb.connect())
    dev.add_block(_other_receipts(ReceiptIssuer(PROCESSING), 1))
    bundle = decode_bundle(_bundle(dev, 0))
    # Claim our genesis in the set chain: the seals are valid, the chain id is not ours.
    relabelled = replace(bundle, validator_sets=(ValidatorSetEntry(0, GENESIS.hash, GENESIS.validators),))
    with pytest.raises(BundleInvalid, match="from chain 'metanode-other'") as failed:
        BundleVerifier(GENESIS).verify(relabelled.encode())
    assert failed.value.exit_code == EXIT_CHAIN


def _twin(genesis):
    """Another genesis with the same chain id and validator keys (a reset
    testnet, a re-created consortium): only the genesis time differs."""
    twin = replace(genesis, genesis_time_ms=genesis.genesis_time_ms + 86_400_000)
    assert (twin.chain_id, twin.validator_set.hash) == (genesis.chain_id, genesis.validator_set.hash)
    assert twin.hash != genesis.hash
    return twin


def test_a_relabelled_bundle_is_refused_by_the_twin_genesis(chain: DevChain) -> None:
    """The header's seals cover its genesis hash: rewriting the bundle's
    (unsigned) ``validator_sets[0].genesis`` to a twin's hash passes the set
    check, the seals and the chain id, and is refused on the genesis hash."""
    twin = _twin(GENESIS)
    bundle = decode_bundle(_bundle(chain, 0))
    header = BlockHeader.from_value(codec.decode(bundle.header))
    assert header.genesis_hash == GENESIS.hash
    relabelled = replace(bundle, validator_sets=(ValidatorSetEntry(0, twin.hash, twin.validators),))
    with pytest.raises(BundleInvalid, match=f"sealed on genesis {GENESIS.hash.hex()}, not the given genesis") as failed:
        BundleVerifier(twin).verify(relabelled.encode())
    assert failed.value.exit_code == EXIT_CHAIN
    # Unrelabelled, the twin refuses it on the set chain; the original genesis accepts it.
    with pytest.raises(BundleInvalid, match="the bundle is for genesis") as failed:
        BundleVerifier(twin).verify(bundle.encode())
    assert failed.value.exit_code == EXIT_CHAIN
    BundleVerifier(GENESIS).verify(bundle.encode())


def test_a_twin_chains_bundle_is_refused_by_the_original_genesis() -> None:
    """A real chain grown on the twin genesis (same keys sealing), its
    bundle relabelled to the original genesis: refused, exit 14."""
    twin = _twin(GENESIS)
    dev = DevChain(twin, VALIDATORS, duckdb.connect())
    dev.add_block(_other_receipts(ReceiptIssuer(PROCESSING), 1))
    bundle = decode_bundle(_bundle(dev, 0))
    BundleVerifier(twin).verify(bundle.encode())
    relabelled = replace(bundle, validator_sets=(ValidatorSetEntry(0, GENESIS.hash, GENESIS.validators),))
    with pytest.raises(BundleInvalid, match=f"sealed on genesis {twin.hash.hex()}") as failed:
        BundleVerifier(GENESIS).verify(relabelled.encode())
    assert failed.value.exit_code == EXIT_CHAIN


def test_validator_set_chains_are_checked(chain: DevChain) -> None:
    bundle = decode_bundle(_bundle(chain, 0))
    entry = bundle.validator_sets[0]
    cases = {
        "a second genesis-shaped set": (replace(bundle, validator_sets=(entry, replace(entry, from_height=2))),
                                        "must be a transition"),
        "a set from height 1": (replace(bundle, validator_sets=(replace(entry, from_height=1),)), "not 0"),
        "another set": (replace(bundle, validator_sets=(replace(entry, validators=entry.validators[:3]),)),
                        "not the genesis file's"),
    }
    for name, (case, reason) in cases.items():
        with pytest.raises(BundleInvalid, match=reason) as failed:
            BundleVerifier(GENESIS).verify(case.encode())
        assert failed.value.exit_code == EXIT_CHAIN, name


# -- witnesses --------------------------------------------------------------------------
def test_a_witness_must_match_its_job_exec_receipt(chain: DevChain) -> None:
    bundle = decode_bundle(_bundle(chain, 5, encode_witness_file(_witness_record("ok"), {})))
    assert bundle.witness == codec.encode(_witness_record("ok"))  # the record only, not the file
    cases = {
        5: (codec.encode(_witness_record("another result")), "disagrees with the receipt on result, witness"),
        0: (codec.encode(_witness_record("ok")), "belongs to a job.exec receipt"),
        11: (codec.encode({"version": 1}), "lacks the fields"),
        17: (b"\x00not a record", "not a witness record"),
    }
    for index, (witness, reason) in cases.items():
        case = replace(decode_bundle(_bundle(chain, index)), witness=witness)
        with pytest.raises(BundleInvalid, match=reason) as failed:
            BundleVerifier(GENESIS).verify(case.encode())
        assert failed.value.exit_code == EXIT_WITNESS
