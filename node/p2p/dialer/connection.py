"""Dial a node: TCP, multistream-select, Noise, multistream-select, yamux.

Each step is named, so that a failure says which one failed and why:
the port was closed, something that is not libp2p answered, the node's
identity is not the one the address names, the Noise handshake broke, or
the deadline ran out (and during which step).
"""

from __future__ import annotations

import socket
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass

import multiaddr
import trio

from node.base.errors import UnreachableError
from node.p2p.dialer import multistream, noise, yamux
from node.p2p.dialer.reader import ByteReader
from node.p2p.framing import FramedStream, FrameError, encode_uvarint
from node.p2p.stream_errors import StreamError

# node/p2p/peers.py's keepalive protocol (tests/p2p/test_dialer.py checks they agree;
# importing peers.py would load libp2p).
PING_PROTOCOL = "/metanode/ping/1.0.0"
PING_SIZE = 8
IDENTIFY_PROTOCOL = "/ipfs/id/1.0.0"
AGENT_VERSION = "metanode-dialer/1"
NEGOTIATE_TIMEOUT_S = 10.0  # an inbound stream that names no protocol in this time is reset
RECEIVE_CHUNK = 64 * 1024
SECURITY_STEP = "agreeing on the security protocol (multistream-select)"
# A node that hangs up before its first byte is retried this many times in all,
# after 50, 100, 200 ms... (within the dial's deadline).
CLOSED_ATTEMPTS = 5
CLOSED_BACKOFF_S = 0.05

StreamHandler = Callable[[yamux.Stream], Awaitable[None]]


class DialError(UnreachableError):
    """A dial failed. ``reason`` is one of: ``refused`` (nothing listens),
    ``unreachable`` (any other connect failure), ``not_libp2p`` (the listener
    does not speak multistream-select), ``peer_id_mismatch``, ``handshake``
    (Noise failed), ``protocol`` (the node refused or broke a protocol),
    ``closed`` (the node hung up mid-way), ``timeout``."""

    def __init__(self, message: str, reason: str, *, retryable: bool = False) -> None:
        super().__init__(message)
        self.reason = reason
        self.retryable = retryable


@dataclass(frozen=True)
class NodeAddress:
    """Where a node listens and who it must prove to be."""

    host: str
    port: int
    peer_id: str
    family: socket.AddressFamily | None  # None: a DNS name, resolved at dial time

    @property
    def endpoint(self) -> str:
        return f"[{self.host}]:{self.port}" if self.family == socket.AF_INET6 else f"{self.host}:{self.port}"

    @classmethod
    def from_multiaddr(cls, addr: multiaddr.Multiaddr) -> NodeAddress:
        """From ``/ip4|ip6|dns|dns4|dns6/HOST/tcp/PORT/p2p/PEER_ID``; ValueError otherwise."""
        values: dict[str, str] = {}
        for protocol in addr.protocols():
            values[protocol.name] = addr.value_for_protocol(protocol.code)
        if "tcp" not in values or "p2p" not in values:
            raise ValueError(f"{addr}: expected /ip4/HOST/tcp/PORT/p2p/PEER_ID")
        for name, family in (("ip4", socket.AF_INET), ("ip6", socket.AF_INET6), ("dns", None), ("dns4", None), ("dns6", None)):
            if name in values:
                return cls(values[name], int(values["tcp"]), values["p2p"], family)
        raise ValueError(f"{addr}: no ip4, ip6 or dns host")


class Connection:
    """One authenticated, multiplexed connection to a node."""

    def __init__(self, address: NodeAddress, session: yamux.Session) -> None:
        self.address = address
        self.session = session

    @property
    def remote_peer_id(self) -> str:
        return self.address.peer_id  # the handshake proved it

    async def open_stream(self, protocol: str) -> yamux.Stream:
        """A new stream on which the node agreed to speak ``protocol``.

        Raises multistream.ProtocolRefused when the node does not serve it,
        multistream.NegotiationError or StreamError when the stream fails."""
        stream = await self.session.open_stream()
        try:
            reader = ByteReader(lambda: stream.read(RECEIVE_CHUNK))
            await multistream.select(reader, stream.write, protocol)
        except BaseException:
            with trio.CancelScope(shield=True):
                await stream.reset()
            raise
        stream.unread(reader.peek())
        return stream


async def answer_pings(stream: yamux.Stream) -> None:
    """Echo the node's keepalive pings (node/p2p/peers.py) for as long as it sends them."""
    framed = FramedStream(stream, max_size=PING_SIZE)
    while (frame := await framed.read_frame()) is not None:
        await framed.write_frame(frame)
    await stream.close()


def identify_message(identity_seed: bytes) -> bytes:
    """Our answer on libp2p's identify protocol, varint-framed: protobuf
    ``Identify{publicKey = 1, protocols = 3 (repeated), protocolVersion = 5,
    agentVersion = 6}``. No listen address: a client listens nowhere. The
    node asks every new peer; a client that refused would cost a logged
    error on the node per call."""
    public_key = noise.public_key_protobuf(identity_seed)
    fields = [noise.pb_bytes(1, public_key)]
    fields += [noise.pb_bytes(3, name.encode()) for name in (PING_PROTOCOL, IDENTIFY_PROTOCOL)]
    fields += [noise.pb_bytes(5, b"ipfs/0.1.0"), noise.pb_bytes(6, AGENT_VERSION.encode())]
    message = b"".join(fields)
    return encode_uvarint(len(message)) + message


def _identify_handler(identity_seed: bytes) -> StreamHandler:
    message = identify_message(identity_seed)

    async def answer_identify(stream: yamux.Stream) -> None:
        await stream.write(message)
        await stream.close()

    return answer_identify


async def serve_inbound(stream: yamux.Stream, handlers: dict[str, StreamHandler]) -> None:
    """A stream the node opened: agree on one of ``handlers``' protocols
    (``na`` to any other, reset after a few) and run its handler. Never raises."""
    try:
        reader = ByteReader(lambda: stream.read(RECEIVE_CHUNK))
        protocol = None
        with trio.move_on_after(NEGOTIATE_TIMEOUT_S):
            protocol = await multistream.answer(reader, stream.write, handlers)
        if protocol is None:
            await stream.reset()
            return
        stream.unread(reader.peek())
        await handlers[protocol](stream)
    except (StreamError, multistream.NegotiationError, FrameError):
        await stream.reset()


async def _connect_tcp(address: NodeAddress) -> trio.SocketStream:
    family, host = address.family, address.host
    if family is None:
        try:
            infos = await trio.socket.getaddrinfo(host, address.port, type=socket.SOCK_STREAM)
        except OSError as exc:
            raise DialError(f"cannot resolve {host}: {exc}", "unreachable") from None
        if not infos:
            raise DialError(f"cannot resolve {host}: no address", "unreachable")
        family, host = infos[0][0], str(infos[0][4][0])
    sock = trio.socket.socket(family, socket.SOCK_STREAM)
    try:
        await sock.connect((host, address.port))
    except ConnectionRefusedError:
        sock.close()
        raise DialError(f"connection refused at {address.endpoint} (is the node running?)", "refused") from None
    except OSError as exc:
        sock.close()
        raise DialError(f"cannot connect to {address.endpoint}: {exc.strerror or exc}", "unreachable") from None
    except BaseException:
        sock.close()
        raise
    return trio.SocketStream(sock)


async def _upgrade(tcp: trio.SocketStream, address: NodeAddress, identity_seed: bytes, step: list[str]) -> tuple[noise.SecureChannel, ByteReader]:
    """multistream /noise, the Noise handshake, multistream /yamux/1.0.0."""
    endpoint = address.endpoint

    async def receive() -> bytes:
        return await tcp.receive_some(RECEIVE_CHUNK)

    raw = ByteReader(receive)
    step[0] = SECURITY_STEP
    try:
        await multistream.select(raw, tcp.send_all, noise.PROTOCOL_ID)
    except multistream.NotMultistream as exc:
        raise DialError(f"{endpoint} is not a libp2p node: it does not speak multistream-select: it sent {exc}", "not_libp2p") from None
    except multistream.ProtocolRefused:
        raise DialError(f"{endpoint} does not offer the Noise security protocol ({noise.PROTOCOL_ID})", "protocol") from None
    step[0] = "in the Noise handshake"
    try:
        channel = await noise.handshake(tcp, raw, identity_seed, address.peer_id)
    except noise.PeerIdMismatch as exc:
        raise DialError(f"peer id mismatch: the node at {endpoint} is {exc.actual}, not {address.peer_id}", "peer_id_mismatch") from None
    except noise.HandshakeError as exc:
        raise DialError(f"Noise handshake failed with {endpoint}: {exc}", "handshake") from None
    step[0] = "agreeing on the stream multiplexer (multistream-select)"
    secure = ByteReader(channel.read_message)
    try:
        await multistream.select(secure, channel.write, yamux.PROTOCOL_ID)
    except noise.HandshakeError as exc:
        raise DialError(f"the secure channel to {endpoint} failed: {exc}", "handshake") from None
    except multistream.ProtocolRefused:
        raise DialError(f"{endpoint} does not offer the yamux multiplexer ({yamux.PROTOCOL_ID})", "protocol") from None
    except multistream.NotMultistream as exc:
        raise DialError(f"{endpoint} broke multistream-select after the handshake: {exc}", "protocol") from None
    return channel, secure


async def _dial_once(address: NodeAddress, identity_seed: bytes, step: list[str]) -> tuple[noise.SecureChannel, ByteReader]:
    """One attempt: connect and upgrade, the socket closed on any failure."""
    step[0] = f"connecting to {address.endpoint}"
    tcp = await _connect_tcp(address)
    try:
        return await _upgrade(tcp, address, identity_seed, step)
    except BaseException as exc:
        with trio.CancelScope(shield=True), trio.move_on_after(1):
            await tcp.aclose()
        before_a_word = step[0] == SECURITY_STEP
        if isinstance(exc, multistream.PeerClosed):
            raise DialError(f"the node at {address.endpoint} closed the connection while {step[0]}", "closed",
                            retryable=before_a_word) from None
        if isinstance(exc, (OSError, trio.BrokenResourceError, trio.ClosedResourceError)):
            if isinstance(exc, ConnectionResetError) or isinstance(exc.__cause__, ConnectionResetError):
                raise DialError(f"the node at {address.endpoint} closed the connection while {step[0]} (reset)", "closed",
                                retryable=before_a_word) from None
            raise DialError(f"the connection to {address.endpoint} broke while {step[0]}: {exc}", "closed") from None
        raise


@asynccontextmanager
async def open_connection(address: NodeAddress, identity_seed: bytes, *, timeout: float = 10.0,
                          handlers: dict[str, StreamHandler] | None = None) -> AsyncIterator[Connection]:
    """Dial ``address`` as the Ed25519 identity ``identity_seed``; DialError if
    that fails within ``timeout`` seconds. The node's own streams are served
    by ``handlers`` (by default: its keepalive pings and identify); the connection is
    closed (GO_AWAY, then the socket) on exit."""
    inbound: dict[str, StreamHandler] = handlers if handlers is not None else {
        PING_PROTOCOL: answer_pings, IDENTIFY_PROTOCOL: _identify_handler(identity_seed)}
    step = [f"connecting to {address.endpoint}"]
    attempts = 0
    try:
        with trio.fail_after(timeout):
            while True:
                attempts += 1
                try:
                    channel, secure = await _dial_once(address, identity_seed, step)
                    break
                except DialError as exc:
                    # Hung up on before a word: a node whose pending-handshake table is
                    # full of a flood's connections closes newcomers at once
                    # (node/p2p/admission.py ConnectionAdmission). Worth a few more tries.
                    if not exc.retryable:
                        raise
                    if attempts >= CLOSED_ATTEMPTS:
                        raise DialError(f"{exc} ({attempts} attempts)", exc.reason) from None
                    await trio.sleep(min(CLOSED_BACKOFF_S * 2 ** (attempts - 1), 1.0))
    except trio.TooSlowError:
        tried = f" (attempt {attempts})" if attempts > 1 else ""
        raise DialError(f"timed out after {timeout:g} s while {step[0]}{tried}", "timeout") from None
    async with trio.open_nursery() as nursery:

        async def on_inbound(stream: yamux.Stream) -> None:
            await serve_inbound(stream, inbound)

        session = yamux.Session(channel, secure, nursery, on_inbound)
        nursery.start_soon(session.run)
        try:
            yield Connection(address, session)
        finally:
            with trio.CancelScope(shield=True):
                await session.aclose()
            nursery.cancel_scope.cancel()

