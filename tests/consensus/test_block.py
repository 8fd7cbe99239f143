"""Block format: tx hashes, encode/decode, and verify_block's every rule."""

from __future__ import annotations

import dataclasses
import hashlib

import pytest

from node.base import vrf
from node.base.codec import decode, encode, hash_tagged
from node.base.merkle import merkle_root
from node.consensus.block import (
    SEAL_TAG,
    Block,
    BlockError,
    BlockHeader,
    genesis_header,
    genesis_seed,
    make_seed_proof,
    seal_message,
    seed_alpha,
    transactions_root,
    tx_hash,
)
from node.consensus.block_rules import build_block, verify_block
from node.consensus.validators import ValidatorSet


@pytest.fixture
def chain(ibft):
    ids = ibft.make_identities(4)
    genesis = ibft.make_genesis(ids)
    vset = genesis.validator_set
    by_key = {i.public_key: i for i in ids}
    parent = genesis_header(genesis)
    proposer = vset.proposer(parent.proposer, 0)
    proof = make_seed_proof(by_key[proposer], genesis.hash, parent)
    block = build_block(genesis, parent, proposer, 0, [b"a", b"b", b"c"], ibft.T0 + 1000, seed_proof=proof)

    def seal(b: Block, signers, commit_round=0) -> Block:
        message = seal_message(b.hash, commit_round)
        return b.with_seals(commit_round, [(k, by_key[k].sign(SEAL_TAG, message)) for k in signers])

    return genesis, vset, parent, block, seal, by_key


def test_tx_hash_and_root():
    assert tx_hash(b"x") == hash_tagged("metanode/tx/v1", b"x")
    assert transactions_root([b"x", b"y"]) == merkle_root([tx_hash(b"x"), tx_hash(b"y")])


def test_round_trip_is_byte_identical(chain):
    genesis, vset, parent, block, seal, _ = chain
    sealed = seal(block, vset.keys[:3])
    data = sealed.encode()
    again = Block.decode(data)
    assert again == sealed and again.encode() == data and again.hash == block.hash
    assert verify_block(again, parent, vset, genesis) == block.hash


def test_header_hash_covers_every_field(chain):
    block = chain[3]
    for name, value in block.header.to_value().items():
        changed = dict(block.header.to_value())
        changed[name] = value + 1 if isinstance(value, int) else (
            value + "x" if isinstance(value, str) else bytes(len(value)) if any(value) else b"\x01" * len(value)
        )
        assert BlockHeader(**changed).hash != block.hash, name


@pytest.mark.parametrize(
    "mutate, message",
    [
        (lambda v: v["header"].pop("round"), "missing fields ['round']"),
        (lambda v: v["header"].update(parent_hash=b"short"), "header.parent_hash: expected 32 bytes"),
        (lambda v: v["header"].update(height=-1), "header.height"),
        (lambda v: v.update(txs=[b""]), "block.txs"),
        (lambda v: v.update(seals=[[b"k" * 32, b"s" * 10]]), "block.seals[0]"),
        (lambda v: v.update(seals=[[b"\x02" * 32, b"s" * 64], [b"\x01" * 32, b"s" * 64]]), "sorted by validator key"),
        (lambda v: v.update(extra=1), "expected a map with header"),
    ],
)
def test_decode_rejects_malformed(chain, mutate, message):
    value = decode(chain[3].encode())
    mutate(value)
    with pytest.raises(BlockError, match=message.replace("[", r"\[").replace("]", r"\]")):
        Block.decode(encode(value))


def test_decode_rejects_non_canonical_and_oversize(chain):
    data = chain[3].encode()
    with pytest.raises(BlockError, match="trailing|canonical|malformed"):
        Block.decode(data + b"\x00")
    with pytest.raises(BlockError, match="exceeds the limit"):
        Block.decode(data, max_size=len(data) - 1)


def test_verify_needs_a_quorum_of_valid_seals(chain):
    genesis, vset, parent, block, seal, by_key = chain
    with pytest.raises(BlockError, match="2 seals, a quorum is 3"):
        verify_block(seal(block, vset.keys[:2]), parent, vset, genesis)
    bad = seal(block, vset.keys[:3])
    forged = bad.with_seals(0, [(k, s if i else bytes(64)) for i, (k, s) in enumerate(bad.seals)])
    with pytest.raises(BlockError, match="bad seal"):
        verify_block(forged, parent, vset, genesis)
    # seals made for another round do not count for this one
    other_round = seal(block, vset.keys[:3], commit_round=1)
    moved = block.with_seals(2, other_round.seals)
    with pytest.raises(BlockError, match="bad seal"):
        verify_block(moved, parent, vset, genesis)
    outsider = bytes(32)
    with pytest.raises(BlockError, match="not a validator"):
        verify_block(block.with_seals(0, list(seal(block, vset.keys[:3]).seals) + [(outsider, bytes(64))]), parent, vset, genesis)


def test_verify_checks_parent_timestamp_proposer_and_contents(chain, ibft):
    genesis, vset, parent, block, seal, _ = chain
    keys = vset.keys[:3]

    def remade(**header_changes):
        value = {**block.header.to_value(), **header_changes}
        return seal(Block(BlockHeader(**value), block.transactions), keys)

    cases = {
        "header.parent_hash": remade(parent_hash=bytes(32)),
        "header.height": remade(height=2),
        "header.timestamp_ms": remade(timestamp_ms=parent.timestamp_ms + 999),
        "header.proposer": remade(proposer=vset.proposer(parent.proposer, 1)),
        "header.tx_root": remade(tx_root=bytes(32)),
        "header.tx_count": remade(tx_count=2),
        "header.chain_id": remade(chain_id="other"),
        # A twin genesis: same chain id and validators, another genesis time.
        "header.genesis_hash": remade(genesis_hash=dataclasses.replace(genesis, genesis_time_ms=genesis.genesis_time_ms + 1).hash),
        "header.validators_hash": remade(validators_hash=bytes(32)),
        "header.seed_proof": remade(seed_proof=bytes(80)),
    }
    for field_name, bad in cases.items():
        with pytest.raises(BlockError, match=field_name):
            verify_block(bad, parent, vset, genesis)
    dup = Block(BlockHeader(**{**block.header.to_value(), "tx_root": transactions_root([b"a", b"a"]), "tx_count": 2}), (b"a", b"a"))
    with pytest.raises(BlockError, match="appears twice"):
        verify_block(seal(dup, keys), parent, vset, genesis)
    with pytest.raises(BlockError, match="ahead of local time"):
        verify_block(seal(block, keys), parent, vset, genesis, now_ms=block.header.timestamp_ms - 10_000)


def test_build_block_enforces_limits(chain):
    genesis, vset, parent, block, _, by_key = chain
    proposer = vset.proposer(parent.proposer, 0)
    proof = make_seed_proof(by_key[proposer], genesis.hash, parent)
    with pytest.raises(BlockError, match="max_txs_per_block"):
        build_block(genesis, parent, proposer, 0, [b"%d" % i for i in range(101)], 0, seed_proof=proof)
    with pytest.raises(BlockError, match="max_block_bytes"):
        build_block(genesis, parent, proposer, 0, [b"x" * (1 << 20), b"y"], 0, seed_proof=proof)
    early = build_block(genesis, parent, proposer, 0, [], 0, seed_proof=proof)
    assert early.header.timestamp_ms == parent.timestamp_ms + genesis.block_period_ms


def test_the_genesis_header_commits_to_the_genesis_set_and_seed(chain):
    genesis, vset, parent, block, _, _ = chain
    assert parent.validators_hash == parent.next_validators_hash == vset.hash
    assert parent.seed_proof == bytes(80)
    assert parent.seed == genesis_seed(genesis.hash) == hashlib.sha512(b"metanode/genesis-seed/v1" + genesis.hash).digest()
    assert block.header.seed == vrf.proof_to_hash(block.header.seed_proof)
    assert vrf.verify(block.header.proposer, block.header.seed_proof, seed_alpha(genesis.hash, 1, parent.seed)) == block.header.seed
    assert seed_alpha(genesis.hash, 1, parent.seed) == encode(["metanode/seed/v1", genesis.hash, 1, parent.seed])


def test_a_proposer_trying_two_candidate_blocks_gets_one_seed(chain):
    """The unbiasable seed: the VRF input names the height and the parent's
    seed, not the block's contents, so every block one proposer can build at
    a height (other transactions, timestamp, round) has the same seed; and a
    header with any other proof (another key's, another height's, a forged
    one) is refused, so it cannot pick among seeds either."""
    genesis, vset, parent, block, seal, by_key = chain
    proposer = block.header.proposer
    proof = make_seed_proof(by_key[proposer], genesis.hash, parent)
    other = build_block(genesis, parent, proposer, 0, [b"d", b"e"], block.header.timestamp_ms + 7, seed_proof=proof)
    assert other.hash != block.hash and other.header.seed == block.header.seed
    assert make_seed_proof(by_key[proposer], genesis.hash, parent) == proof  # ECVRF proofs are deterministic too
    wrong_proofs = {
        "another validator's": make_seed_proof(by_key[vset.keys[-1]], genesis.hash, parent),
        "another height's": vrf.prove(by_key[proposer].seed, seed_alpha(genesis.hash, 2, parent.seed)),
        "another parent seed's": vrf.prove(by_key[proposer].seed, seed_alpha(genesis.hash, 1, bytes(64))),
        "a flipped byte": proof[:40] + bytes([proof[40] ^ 1]) + proof[41:],
        "absent": bytes(80),
    }
    for why, bad in wrong_proofs.items():
        assert bad != proof, why
        with pytest.raises(BlockError, match="header.seed_proof"):
            build_block(genesis, parent, proposer, 0, [b"d"], block.header.timestamp_ms, seed_proof=bad)
        forged = Block(BlockHeader(**{**block.header.to_value(), "seed_proof": bad}), block.transactions)
        with pytest.raises(BlockError, match="header.seed_proof"):
            verify_block(seal(forged, vset.keys[:3]), parent, vset, genesis)


def test_headers_commit_to_the_next_validator_set(chain, ibft):
    """A header names the set of the next height; its child must be decided by
    that set, so a verifier follows changes from sealed headers alone."""
    genesis, vset, parent, _, seal, by_key = chain
    newcomer = ibft.make_identities(5)[4]
    by_key[newcomer.public_key] = newcomer
    grown = ValidatorSet([*vset.keys, newcomer.public_key])
    proposer = vset.proposer(parent.proposer, 0)
    proof = make_seed_proof(by_key[proposer], genesis.hash, parent)
    one = build_block(genesis, parent, proposer, 0, [], 0, next_validators=grown, seed_proof=proof)
    assert one.header.validators_hash == vset.hash and one.header.next_validators_hash == grown.hash
    sealed = seal(one, vset.keys[:3])
    assert verify_block(sealed, parent, vset, genesis, next_validators=grown) == one.hash
    with pytest.raises(BlockError, match="header.next_validators_hash"):
        verify_block(sealed, parent, vset, genesis, next_validators=vset)
    # The child is decided by the grown set: its quorum (4 of 5), its proposer.
    p2 = grown.proposer(one.header.proposer, 0)
    proof2 = make_seed_proof(by_key[p2], genesis.hash, one.header)
    two = build_block(genesis, one.header, p2, 0, [b"x"], 0, validators=grown, seed_proof=proof2)
    with pytest.raises(BlockError, match="3 seals, a quorum is 4"):
        verify_block(seal(two, grown.keys[:3]), one.header, grown, genesis)
    assert verify_block(seal(two, grown.keys[1:]), one.header, grown, genesis, next_validators=grown) == two.hash
    # Built as if the old set still decided: refused against the parent's promise.
    p_old = vset.proposer(one.header.proposer, 0)
    with pytest.raises(BlockError, match="not the parent's next_validators_hash"):
        build_block(genesis, one.header, p_old, 0, [b"x"], 0, validators=vset,
                    seed_proof=make_seed_proof(by_key[p_old], genesis.hash, one.header))
