"""Consensus messages: round trip, and hostile bytes never crash a decoder
or the core (they are dropped and counted)."""

from __future__ import annotations

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from node.base.codec import decode, encode
from node.consensus import messages as m
from node.consensus.block import Block, BlockError
from node.consensus.ibft import IbftCore

MAX = 1 << 22


@pytest.fixture
def samples(ibft):
    cluster = ibft.Cluster(4)
    block = cluster.block(cluster.vset.keys[0], 0, [b"a", b"b"], cluster.now)
    rc = m.Message(cluster.sign(1, m.round_change_payload(1, 2, 1, block.hash)), block)
    proposal = m.Message(cluster.sign(0, m.proposal_payload(1, 2, block.hash)), block, (rc.signed,), ())
    commit = m.Message(cluster.sign(2, m.commit_payload(1, 0, block.hash, b"s" * 64)))
    return cluster, [proposal, rc, commit, m.Message(cluster.sign(3, m.prepare_payload(1, 0, block.hash)))]


def test_round_trip(samples):
    _, messages = samples
    for message in messages:
        data = message.encode()
        again = m.decode_message(data, max_size=MAX, max_block_size=MAX)
        assert again.encode() == data and again.signed == message.signed
        assert again.block == message.block


@pytest.mark.parametrize(
    "change, error",
    [
        (lambda v: v.update(block=None), "proposal: carries its block"),
        (lambda v: v["signed"].__setitem__(2, b"x"), "signature: expected 64 bytes"),
        (lambda v: v["signed"].__setitem__(1, encode({"kind": "vote", "height": 1, "round": 0})), "payload.kind"),
        (lambda v: v["signed"].__setitem__(1, encode({"kind": "prepare", "height": 1, "round": -1, "digest": b"d" * 32})), "round"),
        (lambda v: v["signed"].__setitem__(1, encode({"kind": "round-change", "height": 1, "round": 1, "prepared_round": 1, "prepared_digest": b"d" * 32})), "prepared_round must be below round"),
        (lambda v: v.update(prepares=[[b"k" * 32, b"p", b"s" * 64]] * 300), "at most 256"),
    ],
)
def test_malformed_fields_are_named(samples, change, error):
    value = decode(samples[1][0].encode())
    change(value)
    with pytest.raises(m.MessageError, match=error):
        m.decode_message(encode(value), max_size=MAX, max_block_size=MAX)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.data())
def test_mutated_messages_never_crash_the_decoder_or_core(samples, data):
    cluster, messages = samples
    original = data.draw(st.sampled_from(messages)).encode()
    raw = bytearray(original)
    for _ in range(data.draw(st.integers(1, 4))):
        i = data.draw(st.integers(0, len(raw) - 1))
        raw[i] = data.draw(st.integers(0, 255))
    cut = data.draw(st.integers(1, len(raw)))
    blob = bytes(raw[:cut])
    try:
        m.decode_message(blob, max_size=MAX, max_block_size=MAX)
    except m.MessageError:
        pass
    try:
        Block.decode(blob)
    except BlockError:
        pass
    core = IbftCore(cluster.genesis, cluster.ids[1], cluster.tip)
    core.start(cluster.now)
    core.on_message(blob, cluster.now)  # must not raise: bad input is dropped and counted


@given(st.binary(max_size=300))
@settings(max_examples=300, deadline=None)
def test_random_bytes_are_rejected_cleanly(blob):
    with pytest.raises(m.MessageError):
        m.decode_message(blob, max_size=MAX, max_block_size=MAX)
