"""The libp2p Noise handshake, initiator side, and the encrypted channel after it.

Pattern ``Noise_XX_25519_ChaChaPoly_SHA256`` (noiseprotocol.org revision 34)
with libp2p's rules (libp2p/specs noise/README.md), built on PyNaCl's
X25519 and ChaCha20-Poly1305 and hashlib's SHA-256:

* prologue empty; every handshake and transport message is framed by a
  2-byte big-endian length, so a message is at most 65535 bytes including
  its 16-byte tag;
* message 1 (``-> e``) carries an empty payload; message 2 (``<- e, ee, s,
  es``) carries the responder's handshake payload; message 3 (``-> s,
  se``) carries ours;
* the payload is the protobuf ``NoiseHandshakePayload{identity_key = 1:
  bytes, identity_sig = 2: bytes, extensions = 4}`` where identity_key is
  the protobuf ``PublicKey{Type = 1: Ed25519 (1), Data = 2: 32 bytes}`` and
  identity_sig the Ed25519 signature of ``"noise-libp2p-static-key:" ||
  Noise static public key``;
* the initiator checks the responder's payload, and that its identity key
  is the one the address names, before it sends message 3: a wrong node
  learns nothing of who dialled it.

Only Ed25519 identities are accepted from the remote: every metanode node
has one.
"""

from __future__ import annotations

import hashlib
import hmac
import os
import struct

import nacl.bindings
import nacl.exceptions
import nacl.signing
import trio

from node.base.keys import peer_id_from_public_key
from node.p2p.dialer.reader import ByteReader, EndOfStream
from node.p2p.framing import encode_uvarint

PROTOCOL_ID = "/noise"
PROTOCOL_NAME = b"Noise_XX_25519_ChaChaPoly_SHA256"  # exactly 32 bytes: used as h without hashing
MAX_MESSAGE = 65535
TAG_SIZE = 16
MAX_PLAINTEXT = MAX_MESSAGE - TAG_SIZE
SIGNED_PREFIX = b"noise-libp2p-static-key:"
KEY_TYPE_ED25519 = 1
MAX_PAYLOAD = 4096  # a handshake payload with an Ed25519 key is about 100 bytes; extensions stay small
_DH_SIZE = 32


class HandshakeError(Exception):
    """The Noise handshake failed: the message says at which point and why."""


class PeerIdMismatch(HandshakeError):
    """The responder proved an identity other than the one the address names."""

    def __init__(self, actual: str) -> None:
        super().__init__(f"the node is {actual}")
        self.actual = actual


# -- the Noise symmetric state ------------------------------------------------
def _hmac(key: bytes, data: bytes) -> bytes:
    return hmac.new(key, data, hashlib.sha256).digest()


def _hkdf2(chaining_key: bytes, material: bytes) -> tuple[bytes, bytes]:
    temp = _hmac(chaining_key, material)
    first = _hmac(temp, b"\x01")
    return first, _hmac(temp, first + b"\x02")


def _nonce(counter: int) -> bytes:
    return b"\x00\x00\x00\x00" + struct.pack("<Q", counter)


class CipherState:
    """One direction's key and message counter (ChaCha20-Poly1305, IETF nonce)."""

    def __init__(self, key: bytes | None = None) -> None:
        self.key = key
        self.counter = 0

    def encrypt(self, associated: bytes, plaintext: bytes) -> bytes:
        if self.key is None:
            return plaintext
        sealed: bytes = nacl.bindings.crypto_aead_chacha20poly1305_ietf_encrypt(plaintext, associated, _nonce(self.counter), self.key)
        self.counter += 1
        return sealed

    def decrypt(self, associated: bytes, ciphertext: bytes) -> bytes:
        if self.key is None:
            return ciphertext
        try:
            opened: bytes = nacl.bindings.crypto_aead_chacha20poly1305_ietf_decrypt(ciphertext, associated, _nonce(self.counter), self.key)
        except nacl.exceptions.CryptoError:
            raise HandshakeError("a message failed authentication (wrong key or corrupted bytes)") from None
        self.counter += 1
        return opened


class _SymmetricState:
    def __init__(self) -> None:
        self.h = PROTOCOL_NAME
        self.ck = PROTOCOL_NAME
        self.cipher = CipherState()
        self.mix_hash(b"")  # the empty prologue

    def mix_hash(self, data: bytes) -> None:
        self.h = hashlib.sha256(self.h + data).digest()

    def mix_key(self, material: bytes) -> None:
        self.ck, key = _hkdf2(self.ck, material)
        self.cipher = CipherState(key)

    def encrypt_and_hash(self, plaintext: bytes) -> bytes:
        ciphertext = self.cipher.encrypt(self.h, plaintext)
        self.mix_hash(ciphertext)
        return ciphertext

    def decrypt_and_hash(self, ciphertext: bytes) -> bytes:
        plaintext = self.cipher.decrypt(self.h, ciphertext)
        self.mix_hash(ciphertext)
        return plaintext

    def split(self) -> tuple[CipherState, CipherState]:
        first, second = _hkdf2(self.ck, b"")
        return CipherState(first), CipherState(second)


def _dh(private: bytes, public: bytes) -> bytes:
    try:
        shared: bytes = nacl.bindings.crypto_scalarmult(private, public)
    except (nacl.exceptions.CryptoError, nacl.exceptions.RuntimeError):
        # libsodium refuses low-order points (an all-zero shared secret)
        raise HandshakeError("the node sent an invalid X25519 key") from None
    return shared


def _x25519_keypair() -> tuple[bytes, bytes]:
    private = os.urandom(32)
    return private, nacl.bindings.crypto_scalarmult_base(private)


# -- the libp2p handshake payload (protobuf) ------------------------------------
def pb_bytes(field: int, value: bytes) -> bytes:
    """A protobuf length-delimited field."""
    return encode_uvarint(field << 3 | 2) + encode_uvarint(len(value)) + value


def _pb_varint(data: bytes, at: int) -> tuple[int, int]:
    value = shift = 0
    while True:
        if at >= len(data) or shift > 63:
            raise HandshakeError("the node's handshake payload is not valid protobuf")
        byte = data[at]
        at += 1
        value |= (byte & 0x7F) << shift
        shift += 7
        if not byte & 0x80:
            return value, at


def parse_protobuf(data: bytes) -> dict[int, bytes | int]:
    """The fields of a protobuf message (the last of each number wins, as
    protobuf says); length-delimited fields as bytes, varints as ints."""
    fields: dict[int, bytes | int] = {}
    at = 0
    while at < len(data):
        key, at = _pb_varint(data, at)
        number, wire_type = key >> 3, key & 7
        if wire_type == 0:
            fields[number], at = _pb_varint(data, at)
        elif wire_type == 2:
            length, at = _pb_varint(data, at)
            if at + length > len(data):
                raise HandshakeError("the node's handshake payload is truncated")
            fields[number] = data[at:at + length]
            at += length
        elif wire_type in (1, 5):
            at += 8 if wire_type == 1 else 4
        else:
            raise HandshakeError(f"the node's handshake payload has an unknown protobuf wire type {wire_type}")
    if at != len(data):
        raise HandshakeError("the node's handshake payload is truncated")
    return fields


def public_key_protobuf(identity_seed: bytes) -> bytes:
    """libp2p's ``PublicKey{Type = Ed25519, Data = 32 bytes}`` of an identity."""
    public = bytes(nacl.signing.SigningKey(identity_seed).verify_key)
    return _pb_varint_field(1, KEY_TYPE_ED25519) + pb_bytes(2, public)


def make_payload(identity_seed: bytes, static_public: bytes) -> bytes:
    """Our NoiseHandshakePayload: identity key and its signature of our static key."""
    signature = nacl.signing.SigningKey(identity_seed).sign(SIGNED_PREFIX + static_public).signature
    return pb_bytes(1, public_key_protobuf(identity_seed)) + pb_bytes(2, signature)


def _pb_varint_field(field: int, value: int) -> bytes:
    return encode_uvarint(field << 3) + encode_uvarint(value)


def verify_payload(payload: bytes, static_public: bytes) -> str:
    """Check the responder's payload against its Noise static key; its peer id."""
    fields = parse_protobuf(payload)
    identity_key, signature = fields.get(1), fields.get(2)
    if not isinstance(identity_key, bytes) or not isinstance(signature, bytes):
        raise HandshakeError("the node's handshake payload lacks its identity key or signature")
    key_fields = parse_protobuf(identity_key)
    key_type, key_data = key_fields.get(1), key_fields.get(2)
    if key_type != KEY_TYPE_ED25519 or not isinstance(key_data, bytes) or len(key_data) != 32:
        raise HandshakeError(f"the node's identity key is not an Ed25519 key (key type {key_type!r})")
    try:
        nacl.signing.VerifyKey(key_data).verify(SIGNED_PREFIX + static_public, signature)
    except (nacl.exceptions.BadSignatureError, nacl.exceptions.ValueError, nacl.exceptions.TypeError):
        raise HandshakeError("the node's signature of its Noise key does not verify") from None
    return peer_id_from_public_key(key_data)


# -- the handshake ----------------------------------------------------------------
async def _read_message(reader: ByteReader, what: str) -> bytes:
    try:
        length = int.from_bytes(await reader.read_exactly(2), "big")
        return await reader.read_exactly(length)
    except EndOfStream:
        raise HandshakeError(f"the node closed the connection before sending {what}") from None


def _frame(message: bytes) -> bytes:
    if len(message) > MAX_MESSAGE:
        raise HandshakeError(f"a Noise message of {len(message)} bytes exceeds {MAX_MESSAGE}")
    return len(message).to_bytes(2, "big") + message


async def handshake(stream: trio.abc.Stream, reader: ByteReader, identity_seed: bytes, expected_peer_id: str) -> "SecureChannel":
    """Run Noise XX as initiator over ``stream`` (bytes read through ``reader``).

    Raises PeerIdMismatch when the responder proves another identity, and
    HandshakeError for any other failure."""
    state = _SymmetricState()
    ephemeral, ephemeral_public = _x25519_keypair()
    static, static_public = _x25519_keypair()

    # -> e
    state.mix_hash(ephemeral_public)
    message = ephemeral_public + state.encrypt_and_hash(b"")
    await stream.send_all(_frame(message))

    # <- e, ee, s, es
    message = await _read_message(reader, "its handshake reply")
    if len(message) < _DH_SIZE + _DH_SIZE + TAG_SIZE + TAG_SIZE:
        raise HandshakeError(f"the node's handshake reply is {len(message)} bytes, too short for Noise XX")
    remote_ephemeral = message[:_DH_SIZE]
    state.mix_hash(remote_ephemeral)
    state.mix_key(_dh(ephemeral, remote_ephemeral))
    remote_static = state.decrypt_and_hash(message[_DH_SIZE:_DH_SIZE * 2 + TAG_SIZE])
    state.mix_key(_dh(ephemeral, remote_static))
    payload = state.decrypt_and_hash(message[_DH_SIZE * 2 + TAG_SIZE:])
    if len(payload) > MAX_PAYLOAD:
        raise HandshakeError(f"the node's handshake payload is {len(payload)} bytes (at most {MAX_PAYLOAD})")
    remote_peer_id = verify_payload(payload, remote_static)
    if remote_peer_id != expected_peer_id:
        raise PeerIdMismatch(remote_peer_id)

    # -> s, se
    message = state.encrypt_and_hash(static_public)
    state.mix_key(_dh(static, remote_ephemeral))
    message += state.encrypt_and_hash(make_payload(identity_seed, static_public))
    await stream.send_all(_frame(message))

    send, receive = state.split()
    return SecureChannel(stream, reader, send, receive, remote_peer_id)


class SecureChannel:
    """The transport phase: each write is sealed into Noise messages of at
    most :data:`MAX_PLAINTEXT` bytes; each read opens the next message.

    Writes from concurrent tasks are serialized by a lock: the message
    counter must advance in the order messages reach the wire."""

    def __init__(self, stream: trio.abc.Stream, reader: ByteReader, send: CipherState, receive: CipherState, remote_peer_id: str) -> None:
        self.stream = stream
        self._reader = reader
        self._send = send
        self._receive = receive
        self._write_lock = trio.StrictFIFOLock()
        self.remote_peer_id = remote_peer_id

    async def write(self, data: bytes) -> None:
        async with self._write_lock:
            parts = []
            for at in range(0, len(data), MAX_PLAINTEXT):
                sealed = self._send.encrypt(b"", data[at:at + MAX_PLAINTEXT])
                parts.append(len(sealed).to_bytes(2, "big") + sealed)
            await self.stream.send_all(b"".join(parts))

    async def read_message(self) -> bytes:
        """The next non-empty message's plaintext; b"" when the connection ends
        cleanly between messages. Raises HandshakeError on a forged or damaged
        message."""
        while True:
            try:
                header = await self._reader.read_exactly(2)
            except EndOfStream as end:
                if end.got:
                    raise HandshakeError("the connection ended inside a Noise message") from None
                return b""
            try:
                sealed = await self._reader.read_exactly(int.from_bytes(header, "big"))
            except EndOfStream:
                raise HandshakeError("the connection ended inside a Noise message") from None
            if len(sealed) < TAG_SIZE:
                raise HandshakeError("a Noise message shorter than its tag")
            plaintext = self._receive.decrypt(b"", sealed)
            if plaintext:  # an empty message is legal and carries nothing; b"" means the end here
                return plaintext

    async def aclose(self) -> None:
        await self.stream.aclose()
