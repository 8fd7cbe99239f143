"""multistream-select 1.0: agreeing on a protocol before speaking it.

Spec: libp2p/specs connections/README.md and multiformats/multistream-select.
Every message is ``uvarint(len) || UTF-8 text || "\\n"``; both sides first
send the header ``/multistream/1.0.0``; the initiator then proposes a
protocol and the responder echoes it (accepted) or answers ``na``.

The initiator here sends its header and its proposal at once (one write,
no extra round trip), as go-libp2p and py-libp2p accept. Messages are
capped at :data:`MAX_MESSAGE` bytes: every protocol name this client
speaks is far shorter, and a peer that sends more is not speaking
multistream at all.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Collection

from node.p2p.dialer.reader import ByteReader, EndOfStream
from node.p2p.framing import encode_uvarint

MULTISTREAM = "/multistream/1.0.0"
NOT_AVAILABLE = "na"
MAX_MESSAGE = 1024
MAX_PROPOSALS = 8  # an inbound stream gets this many "na" before it is reset

Send = Callable[[bytes], Awaitable[None]]


class NegotiationError(Exception):
    """The negotiation failed; the message says how."""


class NotMultistream(NegotiationError):
    """The peer's bytes are not multistream-select (not a libp2p peer, or a broken one)."""

    def __init__(self, what: str, raw: bytes) -> None:
        super().__init__(f"{what} (got {excerpt(raw)})" if raw else what)
        self.raw = raw


class PeerClosed(NegotiationError):
    """The peer closed before answering."""


class ProtocolRefused(NegotiationError):
    """The peer answered ``na``: it does not speak the protocol proposed."""

    def __init__(self, protocol: str) -> None:
        super().__init__(f"the peer does not speak {protocol}")
        self.protocol = protocol


def excerpt(raw: bytes, limit: int = 48) -> str:
    """Bytes as a short printable literal, for error messages."""
    shown = repr(raw[:limit])
    return shown + ("..." if len(raw) > limit else "")


def encode(text: str) -> bytes:
    body = text.encode("utf-8") + b"\n"
    return encode_uvarint(len(body)) + body


async def read_message(reader: ByteReader) -> str:
    """One multistream message, without its newline."""
    try:
        length = await reader.read_uvarint(2)  # 2 varint bytes hold up to 16383, past MAX_MESSAGE
        if length is None:
            raise NotMultistream("a length prefix longer than multistream-select allows", reader.peek())
        if not 0 < length <= MAX_MESSAGE:
            raise NotMultistream(f"a message of {length} bytes where multistream-select sends at most {MAX_MESSAGE}",
                                 encode_uvarint(length) + reader.peek())
        body = await reader.read_exactly(length)
    except EndOfStream as end:
        if not end.got:
            raise PeerClosed("the peer closed the connection without answering") from None
        raise NotMultistream("the connection ended inside a message", end.got) from None
    if not body.endswith(b"\n"):
        raise NotMultistream("a message without the closing newline", encode_uvarint(length) + body)
    try:
        return body[:-1].decode("utf-8")
    except UnicodeDecodeError:
        raise NotMultistream("a message that is not UTF-8 text", encode_uvarint(length) + body) from None


async def _read_header(reader: ByteReader) -> None:
    """The peer's header, checked byte by byte as it arrives: a peer that is
    not libp2p (an HTTP server, say) is known by its first byte, without
    waiting for a message that will never be complete."""
    expected = encode(MULTISTREAM)
    for at in range(len(expected)):
        try:
            byte = await reader.read_exactly(1)
        except EndOfStream:
            if not at:
                raise PeerClosed("the peer closed the connection without answering") from None
            raise NotMultistream("the connection ended inside the multistream-select header", expected[:at]) from None
        if byte[0] != expected[at]:
            raise NotMultistream(f"where the header {MULTISTREAM!r} was expected", expected[:at] + byte + reader.peek())


async def select(reader: ByteReader, send: Send, protocol: str) -> None:
    """As initiator: agree on ``protocol`` or raise (ProtocolRefused on ``na``)."""
    await send(encode(MULTISTREAM) + encode(protocol))
    await _read_header(reader)
    answer = await read_message(reader)
    if answer == protocol:
        return
    if answer == NOT_AVAILABLE:
        raise ProtocolRefused(protocol)
    raise NotMultistream(f"{answer[:60]!r} in answer to the proposal {protocol!r}", b"")


async def answer(reader: ByteReader, send: Send, protocols: Collection[str]) -> str | None:
    """As responder: the protocol agreed on, or None after :data:`MAX_PROPOSALS`
    proposals of protocols we do not speak (the caller resets the stream)."""
    await send(encode(MULTISTREAM))
    await _read_header(reader)
    for _ in range(MAX_PROPOSALS):
        proposal = await read_message(reader)
        if proposal in protocols:
            await send(encode(proposal))
            return proposal
        await send(encode(NOT_AVAILABLE))
    return None
