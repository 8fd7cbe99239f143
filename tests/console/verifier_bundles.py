"""Bundles for the browser verifier tests: valid ones, and every tamper class.

Built on the receipts tests' shared chains (tests/receipts/changing_chain.py,
receipt_samples.py): :func:`build_kinds_chain` has a receipt of every kind,
:func:`tampered_cases` makes each tamper class of tests/receipts/test_verify.py
and test_bundle_set_changes.py, as (genesis to verify against, bundle bytes).
"""

from __future__ import annotations

import hashlib
import sys
from dataclasses import replace
from pathlib import Path
from typing import Any

import duckdb

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "receipts"))  # the receipts tests' shared builders

from changing_chain import GENESIS as CHANGING_GENESIS  # noqa: E402
from changing_chain import GROWN, LEAVER, NEWCOMER, SHRUNK, VALIDATORS, ChangingChain  # noqa: E402
from receipt_samples import VALID_FIELDS  # noqa: E402

from node.base import codec  # noqa: E402
from node.cage.witness import witness_digest  # noqa: E402
from node.consensus.block import BlockHeader  # noqa: E402
from node.consensus.genesis import Genesis  # noqa: E402
from node.consensus.validators import ValidatorSet  # noqa: E402
from node.receipts.api import build_bundle, validator_set_chain  # noqa: E402
from node.receipts.bundle import ValidatorSetEntry, ValidatorSetTransition, decode_bundle  # noqa: E402
from node.receipts.chain import ReceiptIssuer  # noqa: E402
from node.receipts.devchain import DevChain, dev_genesis, dev_identities, seal_block  # noqa: E402
from node.receipts.execution import exec_fields  # noqa: E402

GENESIS = CHANGING_GENESIS  # dev_genesis(dev_identities(4)): the same genesis as the receipts tests'
PROCESSING = dev_identities(1, "browser-verifier-processing")[0]
OUTSIDERS = dev_identities(4, "browser-verifier-outsider")


def digest(label: str) -> bytes:
    return hashlib.sha256(label.encode()).digest()


def witness_record(result: str) -> dict[str, Any]:
    return {
        "version": 1, "inputs_root": digest("inputs"), "code": {"job": digest("job"), "policy": digest("p")},
        "seed": digest("seed"), "result_digest": digest(result), "exit": {"status": "ok", "signal": None},
    }


def build_kinds_chain() -> DevChain:
    """Three blocks, each with a receipt of every kind, the job.exec last (leaves 5, 11, 17)."""
    dev = DevChain(GENESIS, list(VALIDATORS), duckdb.connect())
    issuer = ReceiptIssuer(PROCESSING)
    for height in range(1, 4):
        receipts = [issuer.issue(kind, height=height, subject=subject, fields=fields)
                    for kind, (subject, fields) in sorted(VALID_FIELDS.items())]
        record = witness_record("ok")
        receipts.append(issuer.issue("job.exec", height=height, subject=digest(f"job {height}"),
                                     fields=exec_fields(record, witness_digest(record))))
        dev.add_block(receipts)
    return dev


def kinds_bundle(chain: DevChain, index: int, witness_file: bytes | None = None) -> bytes:
    return build_bundle(chain.receipts[index].id, chain.log, chain.block_source(), chain.genesis, witness_file=witness_file)


def changing_bundle(grown: ChangingChain, receipt: Any) -> bytes:
    chain = grown.chain
    return build_bundle(receipt.id, chain.log, chain.block_source(), chain.genesis, validator_history=chain.validator_history)


def twin_genesis(genesis: Genesis) -> Genesis:
    return replace(genesis, genesis_time_ms=genesis.genesis_time_ms + 86_400_000)


def tampered_cases(chain: DevChain, grown: ChangingChain) -> dict[str, tuple[Genesis, bytes]]:
    """Every tamper class of the receipts tests, as (genesis to verify against, bundle bytes)."""
    g = GENESIS
    cases: dict[str, tuple[Genesis, bytes]] = {}
    # seals and headers (test_verify.py)
    by_key = sorted(VALIDATORS, key=lambda v: v.public_key)
    few = DevChain(g, list(VALIDATORS), duckdb.connect())
    few.add_block([ReceiptIssuer(PROCESSING).issue("data.store", height=1, subject=VALID_FIELDS["data.store"][0],
                                                   fields=VALID_FIELDS["data.store"][1])], signers=by_key[:2])
    cases["too few seals"] = (g, kinds_bundle(few, 0))
    outsiders = DevChain(g, list(VALIDATORS), duckdb.connect())
    outsiders.add_block([ReceiptIssuer(PROCESSING).issue("data.store", height=1, subject=VALID_FIELDS["data.store"][0],
                                                         fields=VALID_FIELDS["data.store"][1])], signers=OUTSIDERS)
    cases["seals of non-validators"] = (g, kinds_bundle(outsiders, 0))
    bundle = decode_bundle(kinds_bundle(chain, 1))
    header = BlockHeader.from_value(codec.decode(bundle.header))
    forged = codec.encode(replace(header, timestamp_ms=header.timestamp_ms + 1).to_value())
    cases["forged header, seals of the real one"] = (g, replace(bundle, header=forged).encode())
    cases["seals of another block"] = (g, replace(bundle, seals=chain.blocks[1].seals).encode())
    cases["seals from another round"] = (g, replace(bundle, commit_round=bundle.commit_round + 1).encode())
    cases["forged header sealed by outsiders"] = (g, replace(bundle, seals=seal_block(chain.blocks[0].unsealed(), OUTSIDERS).seals).encode())
    cases["two seals of a quorum of three"] = (g, replace(bundle, seals=bundle.seals[:2]).encode())
    # the chain and the genesis
    cases["same validators, another chain id"] = (dev_genesis(VALIDATORS, chain_id="metanode-other"), kinds_bundle(chain, 0))
    cases["other validators"] = (dev_genesis(OUTSIDERS), kinds_bundle(chain, 0))
    other = dev_genesis(VALIDATORS, chain_id="metanode-other")
    other_chain = DevChain(other, list(VALIDATORS), duckdb.connect())
    other_chain.add_block([ReceiptIssuer(PROCESSING).issue("data.store", height=1, subject=VALID_FIELDS["data.store"][0],
                                                           fields=VALID_FIELDS["data.store"][1])])
    entry = ValidatorSetEntry(0, g.hash, g.validators)
    cases["a header of another chain, relabelled"] = (g, replace(decode_bundle(kinds_bundle(other_chain, 0)), validator_sets=(entry,)).encode())
    twin = twin_genesis(g)
    plain = decode_bundle(kinds_bundle(chain, 0))
    cases["relabelled to the twin genesis"] = (twin, replace(plain, validator_sets=(ValidatorSetEntry(0, twin.hash, twin.validators),)).encode())
    cases["unrelabelled, against the twin"] = (twin, plain.encode())
    twin_chain = DevChain(twin, list(VALIDATORS), duckdb.connect())
    twin_chain.add_block([ReceiptIssuer(PROCESSING).issue("data.store", height=1, subject=VALID_FIELDS["data.store"][0],
                                                          fields=VALID_FIELDS["data.store"][1])])
    twin_bundle = decode_bundle(kinds_bundle(twin_chain, 0))
    cases["twin chain's bundle, valid against the twin"] = (twin, twin_bundle.encode())
    cases["twin chain's bundle relabelled to the original"] = (g, replace(twin_bundle, validator_sets=(entry,)).encode())
    cases["a second genesis-shaped set"] = (g, replace(plain, validator_sets=(entry, replace(entry, from_height=2))).encode())
    cases["a set from height 1"] = (g, replace(plain, validator_sets=(replace(entry, from_height=1),)).encode())
    cases["another set"] = (g, replace(plain, validator_sets=(replace(entry, validators=entry.validators[:3]),)).encode())
    # witnesses
    for index, witness in ((5, codec.encode(witness_record("another result"))), (0, codec.encode(witness_record("ok"))),
                           (11, codec.encode({"version": 1})), (17, b"\x00not a record"),
                           (5, codec.encode({**witness_record("ok"), "version": True})),
                           (5, codec.encode({**witness_record("ok"), "version": 2})),
                           (5, codec.encode({**witness_record("ok"), "exit": {"status": "killed", "signal": 9}})),
                           (5, codec.encode({**witness_record("ok"), "job_seed": b"short"}))):
        case = replace(decode_bundle(kinds_bundle(chain, index)), witness=witness)
        cases[f"witness {witness[:24].hex()} on leaf {index}"] = (g, case.encode())
    # the validator set chain (test_bundle_set_changes.py)
    after = decode_bundle(changing_bundle(grown, grown.after))
    genesis_entry, first, second = after.validator_sets
    between = decode_bundle(changing_bundle(grown, grown.between))
    before = decode_bundle(changing_bundle(grown, grown.before))
    sets = {
        "first transition removed": (after, (genesis_entry, second)),
        "last transition removed": (after, (genesis_entry, first)),
        "both transitions removed": (after, (genesis_entry,)),
        "between, its transition removed": (between, between.validator_sets[:1]),
        "transitions swapped": (after, (genesis_entry, second, first)),
        "second transition moved to 6": (after, (genesis_entry, first, replace(second, from_height=6))),
        "first transition twice": (after, (genesis_entry, first, first)),
        "a genesis entry as a transition": (after, (genesis_entry, replace(genesis_entry, from_height=2))),
        "a transition after the sealing height": (between, after.validator_sets),
        "a change and its undoing": (before, (*after.validator_sets[:2], ValidatorSetTransition(
            9, g.validator_set.keys, second.header, second.commit_round, second.seals))),
    }
    for name, (base, links) in sets.items():
        cases[name] = (g, replace(base, validator_sets=links).encode())
    proof_block = grown.chain.blocks[first.from_height - 2]
    resealed = seal_block(proof_block.unsealed(), [NEWCOMER, *VALIDATORS[:3]], proof_block.commit_round)
    cases["transition sealed by the new set"] = (g, replace(after, validator_sets=(genesis_entry, replace(first, seals=resealed.seals), second)).encode())
    cases["transition with two seals"] = (g, replace(after, validator_sets=(genesis_entry, replace(first, seals=first.seals[:2]), second)).encode())
    b_entry, b_first = between.validator_sets
    outsider_set = ValidatorSet([*g.validator_set.keys, bytes(range(32))])
    b_header = BlockHeader.from_value(codec.decode(b_first.header))
    forged_next = codec.encode(replace(b_header, next_validators_hash=outsider_set.hash).to_value())
    cases["forged next_validators_hash"] = (g, replace(between, validator_sets=(b_entry, replace(b_first, header=forged_next, validators=outsider_set.keys))).encode())
    cases["transition claiming another set"] = (g, replace(between, validator_sets=(b_entry, replace(b_first, validators=outsider_set.keys))).encode())
    unchanged = grown.chain.blocks[0]
    cases["a header that changed nothing"] = (g, replace(between, validator_sets=(b_entry, replace(
        b_first, header=codec.encode(unchanged.header.to_value()), commit_round=unchanged.commit_round,
        seals=unchanged.seals, from_height=2))).encode())
    cases["a transition to the same set"] = (g, replace(between, validator_sets=(b_entry, replace(b_first, validators=g.validator_set.keys))).encode())
    twin_grown = DevChain(twin, list(VALIDATORS), duckdb.connect())
    twin_grown.add_block()
    twin_grown.change_validators(GROWN)
    for _ in range(3):
        twin_grown.add_block()
    twin_links = validator_set_chain(twin_grown.block_source(), twin, 4, twin_grown.validator_history)
    cases["a transition of the twin chain"] = (g, replace(between, validator_sets=(b_entry, twin_links[1])).encode())
    grown_set = ValidatorSet(v.public_key for v in GROWN)
    a_header = BlockHeader.from_value(codec.decode(after.header))
    renamed = codec.encode(replace(a_header, validators_hash=grown_set.hash).to_value())
    cases["sealing header renamed to the set of 5"] = (g, replace(after, header=renamed, validator_sets=after.validator_sets[:2]).encode())
    last_block = grown.chain.blocks[-1]
    leaver_sealed = seal_block(last_block.unsealed(), [LEAVER, *sorted(SHRUNK, key=lambda v: v.public_key)[:2]])
    cases["the leaver's seal after it left"] = (g, replace(after, seals=leaver_sealed.seals).encode())
    value = codec.decode(after.encode())
    for field, replacement in (("header", b"\x01\x02"), ("seals", list(reversed(value["validator_sets"][1]["seals"]))),
                               ("validators", list(reversed(value["validator_sets"][1]["validators"]))), ("commit_round", None)):
        broken = codec.decode(after.encode())
        if replacement is None:
            del broken["validator_sets"][1][field]
        else:
            broken["validator_sets"][1][field] = replacement
        cases[f"malformed transition {field}"] = (g, codec.encode(broken))
    for version in (1, 3, True, "2"):
        old = codec.decode(before.encode())
        old["version"] = version
        cases[f"version {version!r}"] = (g, codec.encode(old))
    oversized = codec.decode(after.encode())
    oversized["witness"] = bytes(8 * 1024 * 1024)
    cases["larger than 8 MiB"] = (g, codec.encode(oversized))
    return cases
