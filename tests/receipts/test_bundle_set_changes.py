"""Bundles across validator set changes: receipts sealed before, between and
after two changes verify against the original genesis alone; every way of
breaking the chain of transitions is refused with exit 14 (or 13 where the
sealing header itself is what is wrong); two nodes build the same bytes."""

from __future__ import annotations

from dataclasses import replace

import duckdb
import pytest
from changing_chain import GENESIS, GROWN, LEAVER, NEWCOMER, SHRUNK, VALIDATORS, ChangingChain, grow_changing_chain

from node.base import codec
from node.consensus.block import BlockHeader
from node.consensus.validators import ValidatorSet
from node.receipts.api import INCONSISTENT, ReceiptQueryError, build_bundle, receipt_bundle, validator_set_chain
from node.receipts.bundle import (
    BUNDLE_VERSION,
    Bundle,
    ValidatorSetEntry,
    ValidatorSetTransition,
    bundle_id,
    decode_bundle,
)
from node.receipts.devchain import seal_block
from node.receipts.envelope import Receipt
from node.receipts.verify import (
    EXIT_CHAIN,
    EXIT_ISSUER,
    EXIT_MALFORMED,
    EXIT_SEALS,
    BundleInvalid,
    BundleVerifier,
    sealing_validators,
)


@pytest.fixture(scope="module")
def grown() -> ChangingChain:
    return grow_changing_chain()


def _bundle(grown: ChangingChain, receipt: Receipt, **kwargs: object) -> bytes:
    chain = grown.chain
    return build_bundle(receipt.id, chain.log, chain.block_source(), chain.genesis,
                        validator_history=chain.validator_history, **kwargs)  # type: ignore[arg-type]


def _refused(bundle: Bundle | bytes, match: str, code: int = EXIT_CHAIN, verifier: BundleVerifier | None = None) -> None:
    data = bundle.encode() if isinstance(bundle, Bundle) else bundle
    with pytest.raises(BundleInvalid, match=match) as failed:
        (verifier or BundleVerifier(GENESIS)).verify(data)
    assert failed.value.exit_code == code, str(failed.value)


def test_the_chain_changes_as_the_consensus_rule_says(grown: ChangingChain) -> None:
    chain = grown.chain
    assert (grown.first_change, grown.second_change) == (4, 7)
    grown_set, shrunk_set = ValidatorSet(v.public_key for v in GROWN), ValidatorSet(v.public_key for v in SHRUNK)
    assert chain.validator_history() == [(0, GENESIS.validator_set.keys), (4, grown_set.keys), (7, shrunk_set.keys)]
    headers = {block.height: block.header for block in chain.blocks}
    # Block E-1 is decided by the old set and commits to the new one; block E is decided by the new one.
    assert headers[3].validators_hash == GENESIS.validator_set.hash and headers[3].next_validators_hash == grown_set.hash
    assert headers[4].validators_hash == grown_set.hash
    assert headers[6].validators_hash == grown_set.hash and headers[6].next_validators_hash == shrunk_set.hash
    assert headers[7].validators_hash == shrunk_set.hash == headers[7].next_validators_hash


def test_receipts_sealed_before_between_and_after_two_changes_verify_against_the_genesis(grown: ChangingChain) -> None:
    verifier = BundleVerifier(GENESIS)
    expected = {
        "before": (grown.before, 1, 1, GENESIS.validator_set),
        "between": (grown.between, grown.first_change, 2, ValidatorSet(v.public_key for v in GROWN)),
        "after": (grown.after, grown.second_change, 3, ValidatorSet(v.public_key for v in SHRUNK)),
    }
    for name, (receipt, height, links, validators) in expected.items():
        data = _bundle(grown, receipt)
        bundle = decode_bundle(data)
        assert len(bundle.validator_sets) == links, name
        assert [link.from_height for link in bundle.validator_sets] == [0, 4, 7][:links], name
        verified = verifier.verify(data)
        assert (verified.receipt.id, verified.header.height, verified.validators) == (receipt.id, height, validators)
    # Each transition's seals were checked once, then reused.
    assert verifier.cached_transitions == 2
    verifier.verify(_bundle(grown, grown.after))
    assert verifier.cached_transitions == 2


def test_receipts_sealed_after_a_change_but_before_the_next_carry_only_the_changes_so_far(grown: ChangingChain) -> None:
    chain = grown.chain
    for height in range(1, grown.second_change + 1):
        links = validator_set_chain(chain.block_source(), GENESIS, height, chain.validator_history)
        assert [link.from_height for link in links] == [e for e in (0, 4, 7) if e <= height]


def test_the_issuer_policy_is_the_validators_of_the_sealing_height(grown: ChangingChain) -> None:
    strict = BundleVerifier(GENESIS, issuer_allowed=sealing_validators)
    assert strict.verify(_bundle(grown, grown.newcomer_after)).receipt.issuer_key == NEWCOMER.public_key
    for receipt in (grown.newcomer_before, grown.leaver_after, grown.after):
        _refused(_bundle(grown, receipt), "not allowed by the issuer policy", EXIT_ISSUER, strict)


# -- a broken chain of transitions ---------------------------------------------------------
def test_a_missing_transition_is_refused(grown: ChangingChain) -> None:
    bundle = decode_bundle(_bundle(grown, grown.after))
    genesis_entry, first, second = bundle.validator_sets
    _refused(replace(bundle, validator_sets=(genesis_entry, second)), r"validator_sets\[1\].*decided by another set")
    _refused(replace(bundle, validator_sets=(genesis_entry, first)), "does not end with")
    _refused(replace(bundle, validator_sets=(genesis_entry,)), "does not end with")
    between = decode_bundle(_bundle(grown, grown.between))
    _refused(replace(between, validator_sets=between.validator_sets[:1]), "does not end with")


def test_reordered_or_misplaced_transitions_are_refused(grown: ChangingChain) -> None:
    bundle = decode_bundle(_bundle(grown, grown.after))
    genesis_entry, first, second = bundle.validator_sets
    _refused(replace(bundle, validator_sets=(genesis_entry, second, first)), "missing or out of order")
    _refused(replace(bundle, validator_sets=(genesis_entry, first, replace(second, from_height=6))),
             "is not of height 5")
    _refused(replace(bundle, validator_sets=(genesis_entry, first, first)), "increasing height order")
    # A genesis-shaped entry after the first is not a transition (a v1-style second set).
    _refused(replace(bundle, validator_sets=(genesis_entry, replace(genesis_entry, from_height=2))),
             "must be a transition")


def test_a_transition_after_the_sealing_height_is_refused(grown: ChangingChain) -> None:
    later = decode_bundle(_bundle(grown, grown.after)).validator_sets
    between = decode_bundle(_bundle(grown, grown.between))
    _refused(replace(between, validator_sets=later), "does not end with")
    # Even when the set after it is the sealing set again (a change and its undoing).
    before = decode_bundle(_bundle(grown, grown.before))
    undo = ValidatorSetTransition(9, GENESIS.validator_set.keys, later[2].header, later[2].commit_round, later[2].seals)
    _refused(replace(before, validator_sets=(*later[:2], undo)), r"validator_sets\[2\].*is not of height 8")


def test_a_transition_sealed_by_the_new_set_instead_of_the_old_is_refused(grown: ChangingChain) -> None:
    bundle = decode_bundle(_bundle(grown, grown.after))
    genesis_entry, first, second = bundle.validator_sets
    proof_block = grown.chain.blocks[first.from_height - 2]  # block E-1
    assert proof_block.height == first.from_height - 1
    new_set = [NEWCOMER, *VALIDATORS[:3]]  # a quorum of the set of 5, with the newcomer
    resealed = seal_block(proof_block.unsealed(), new_set, proof_block.commit_round)
    forged = replace(first, seals=resealed.seals)
    _refused(replace(bundle, validator_sets=(genesis_entry, forged, second)),
             r"not sealed by a quorum of validator_sets\[0\]: .* is not a validator")
    # Too few seals of the old set fail the same way.
    _refused(replace(bundle, validator_sets=(genesis_entry, replace(first, seals=first.seals[:2]), second)),
             r"not sealed by a quorum of validator_sets\[0\]")


def test_a_forged_next_validators_hash_is_refused(grown: ChangingChain) -> None:
    bundle = decode_bundle(_bundle(grown, grown.between))
    genesis_entry, first = bundle.validator_sets
    outsider_set = ValidatorSet([*GENESIS.validator_set.keys, bytes(range(32))])
    header = BlockHeader.from_value(codec.decode(first.header))
    # The header rewritten to commit to another set: its seals no longer match it.
    forged_header = codec.encode(replace(header, next_validators_hash=outsider_set.hash).to_value())
    forged = replace(first, header=forged_header, validators=outsider_set.keys)
    _refused(replace(bundle, validator_sets=(genesis_entry, forged)), r"not sealed by a quorum of validator_sets\[0\]")
    # The transition claiming another set than the (genuine) header commits to.
    claimed = replace(first, validators=outsider_set.keys)
    _refused(replace(bundle, validator_sets=(genesis_entry, claimed)), "commits to next validator set")
    # A header of a block that changed nothing is no proof of a change.
    unchanged = grown.chain.blocks[0]
    not_a_change = replace(first, header=codec.encode(unchanged.header.to_value()), commit_round=unchanged.commit_round,
                           seals=unchanged.seals, from_height=2)
    _refused(replace(bundle, validator_sets=(genesis_entry, not_a_change)), "commits to next validator set")
    _refused(replace(bundle, validator_sets=(genesis_entry, replace(first, validators=GENESIS.validator_set.keys))),
             "not a change")


def test_a_transition_header_of_another_genesis_is_refused(grown: ChangingChain) -> None:
    """A twin chain (same chain id and keys, other genesis time) changed its
    set the same way: its transition proof does not carry over."""
    twin = replace(GENESIS, genesis_time_ms=GENESIS.genesis_time_ms + 86_400_000)
    from node.receipts.devchain import DevChain

    other = DevChain(twin, list(VALIDATORS), duckdb.connect())
    other.add_block()
    other.change_validators(GROWN)
    for _ in range(3):
        other.add_block()
    twin_links = validator_set_chain(other.block_source(), twin, 4, other.validator_history)
    bundle = decode_bundle(_bundle(grown, grown.between))
    _refused(replace(bundle, validator_sets=(bundle.validator_sets[0], twin_links[1])),
             f"sealed on genesis {twin.hash.hex()}, not the given genesis")


def test_a_sealing_header_of_another_set_is_refused(grown: ChangingChain) -> None:
    """The sealing header's validators_hash must be the last set's: the
    header of block 7 (decided by the shrunk set) with the chain up to the
    set of 5 is refused on the chain; a header altered to name the last set
    is refused on its seals."""
    bundle = decode_bundle(_bundle(grown, grown.after))
    _refused(replace(bundle, validator_sets=bundle.validator_sets[:2]), "decided by validator set .* does not end with")
    header = BlockHeader.from_value(codec.decode(bundle.header))
    grown_set = ValidatorSet(v.public_key for v in GROWN)
    renamed = codec.encode(replace(header, validators_hash=grown_set.hash).to_value())
    _refused(replace(bundle, header=renamed, validator_sets=bundle.validator_sets[:2]), "not sealed by a quorum",
             EXIT_SEALS)
    # The leaver's seal on a block after it left is not a validator's.
    block = grown.chain.blocks[-1]
    leaver_sealed = seal_block(block.unsealed(), [LEAVER, *sorted(SHRUNK, key=lambda v: v.public_key)[:2]])
    _refused(replace(bundle, seals=leaver_sealed.seals), "is not a validator", EXIT_SEALS)


def test_malformed_transitions_are_chain_failures(grown: ChangingChain) -> None:
    value = codec.decode(_bundle(grown, grown.after))
    cases = {
        "a header that is not one": ("header", b"\x01\x02", "header is malformed"),
        "unsorted seals": ("seals", list(reversed(value["validator_sets"][1]["seals"])), "sorted by key"),
        "unsorted keys": ("validators", list(reversed(value["validator_sets"][1]["validators"])), "sorted"),
        "a missing field": ("commit_round", None, "must be a transition"),
    }
    for name, (field, replacement, reason) in cases.items():
        broken = codec.decode(codec.encode(value))
        if replacement is None:
            del broken["validator_sets"][1][field]
        else:
            broken["validator_sets"][1][field] = replacement
        _refused(codec.encode(broken), reason)
        assert name


def test_version_1_bundles_are_refused_with_a_clear_message(grown: ChangingChain) -> None:
    value = codec.decode(_bundle(grown, grown.before))
    assert value["version"] == BUNDLE_VERSION == 2
    value["version"] = 1
    _refused(codec.encode(value), "version 1 bundles are no longer supported", EXIT_MALFORMED)


# -- building ------------------------------------------------------------------------------
def test_two_nodes_holding_different_seals_build_byte_identical_bundles_across_changes() -> None:
    everyone = grow_changing_chain(seal_with_everyone=True)
    a_quorum = grow_changing_chain()
    for one, other in zip(everyone.chain.blocks, a_quorum.chain.blocks, strict=True):
        assert one.hash == other.hash and one.seals != other.seals
    verifier = BundleVerifier(GENESIS)
    for receipt in (everyone.before, everyone.between, everyone.after):
        first, second = _bundle(everyone, receipt), _bundle(a_quorum, receipt)
        assert first == second and bundle_id(first) == bundle_id(second)
        verifier.verify(first)
        links = decode_bundle(first).validator_sets
        for previous, link in zip(links, links[1:]):
            assert isinstance(link, ValidatorSetTransition)
            previous_set = ValidatorSet(previous.validators)
            assert [key for key, _ in link.seals] == list(previous_set.keys[: previous_set.quorum])


def test_the_builder_refuses_what_would_not_verify(grown: ChangingChain) -> None:
    chain = grown.chain
    # Without the history, a receipt sealed by a changed set is not bundled.
    with pytest.raises(ReceiptQueryError, match="another validator set than the validator history") as refused:
        build_bundle(grown.after.id, chain.log, chain.block_source(), GENESIS)
    assert refused.value.code == INCONSISTENT
    # A receipt sealed before any change needs none.
    assert build_bundle(grown.before.id, chain.log, chain.block_source(), GENESIS) == _bundle(grown, grown.before)
    # A history that does not start at the genesis set, or names a change the blocks do not commit to.
    wrong_start = lambda: [(0, SHRUNK_KEYS)]  # noqa: E731
    wrong_height = lambda: [*chain.validator_history()[:1], (5, chain.validator_history()[1][1])]  # noqa: E731
    for history, reason in ((wrong_start, "does not start with the genesis set"),
                            (wrong_height, "does not commit to the validator set change at 5")):
        with pytest.raises(ReceiptQueryError, match=reason) as refused:
            build_bundle(grown.after.id, chain.log, chain.block_source(), GENESIS, validator_history=history)
        assert refused.value.code == INCONSISTENT


SHRUNK_KEYS = tuple(sorted(v.public_key for v in SHRUNK))


def test_the_rpc_answer_carries_the_changes(grown: ChangingChain) -> None:
    chain = grown.chain
    answer = receipt_bundle(chain.log, chain.block_source(), GENESIS, grown.after.id.hex(),
                            validator_history=chain.validator_history)
    assert answer["height"] == grown.second_change
    data = bytes.fromhex(answer["bundle"])
    assert data == _bundle(grown, grown.after) and answer["bundle_id"] == bundle_id(data).hex()
    first = decode_bundle(data).validator_sets[0]
    assert first == ValidatorSetEntry(0, GENESIS.hash, GENESIS.validator_set.keys)
