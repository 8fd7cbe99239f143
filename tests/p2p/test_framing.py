"""Varint-length frames: round trips at any split, and every violation rejected."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from node.p2p.framing import FrameDecoder, FrameError, encode_frame, encode_uvarint


@given(st.lists(st.binary(max_size=300), max_size=10), st.data())
def test_frames_survive_any_chunking(frames, data):
    stream = b"".join(encode_frame(f, max_size=1000) for f in frames)
    cuts = sorted(data.draw(st.lists(st.integers(0, len(stream)), max_size=8)))
    decoder = FrameDecoder(max_size=1000)
    out, last = [], 0
    for cut in [*cuts, len(stream)]:
        out += decoder.feed(stream[last:cut])
        last = cut
    assert out == frames
    assert decoder.at_boundary()


@given(st.binary(max_size=64))
def test_garbage_either_decodes_or_raises_frame_error(data):
    decoder = FrameDecoder(max_size=16)
    try:
        frames = decoder.feed(data)
    except FrameError:
        return
    assert all(len(f) <= 16 for f in frames)


def test_oversize_frame_is_rejected_from_its_prefix_alone():
    decoder = FrameDecoder(max_size=1024)
    with pytest.raises(FrameError, match="exceeds"):
        decoder.feed(encode_uvarint(1025))  # no payload needed to refuse it


def test_non_minimal_varint_rejected():
    with pytest.raises(FrameError, match="minimal"):
        FrameDecoder().feed(b"\x81\x00" + b"x")


def test_overlong_prefix_rejected():
    with pytest.raises(FrameError):
        FrameDecoder(max_size=2**40).feed(b"\xff" * 6)


def test_encode_refuses_oversize():
    with pytest.raises(FrameError):
        encode_frame(b"x" * 11, max_size=10)


def test_partial_frame_is_not_a_boundary():
    decoder = FrameDecoder()
    assert decoder.feed(encode_frame(b"hello")[:3]) == []
    assert not decoder.at_boundary()
