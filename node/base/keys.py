"""Ed25519 identities, key files, domain-tagged signatures and libp2p peer ids.

A key file is a small TOML document (mode 0600)::

    # metanode Ed25519 identity. Keep it secret.
    type = "ed25519"
    seed = "<64 lowercase hex characters>"

Signatures are always over ``tag || 0x00 || message`` so that a signature
made for one purpose (a block seal, a receipt, a transaction) can never be
accepted as another. The peer id is computed here rather than through
libp2p so that short CLI commands need not import the network stack.
"""

from __future__ import annotations

import functools
import hashlib
import os
import tomllib
from dataclasses import dataclass
from pathlib import Path

import base58
import nacl.exceptions
import nacl.signing

from node.base import vrf

KEY_FILE_MODE = 0o600

# libp2p's protobuf PublicKey{Type=Ed25519(1), Data=<32 bytes>} prefix.
_LIBP2P_ED25519_PUBKEY_PREFIX = b"\x08\x01\x12\x20"


class KeyFileError(Exception):
    """A key file is missing, unreadable, malformed or unsafe."""


def _tagged(tag: str, message: bytes) -> bytes:
    return tag.encode("ascii") + b"\x00" + message


def peer_id_from_public_key(public_key: bytes) -> str:
    """The libp2p peer id (base58btc identity multihash) of an Ed25519 key."""
    return _peer_id(bytes(public_key))


@functools.lru_cache(maxsize=4096)  # base58 is slow (~20 us) and the same few keys are asked every block
def _peer_id(public_key: bytes) -> str:
    if len(public_key) != 32:
        raise ValueError("an Ed25519 public key is 32 bytes")
    proto = _LIBP2P_ED25519_PUBKEY_PREFIX + public_key
    # Keys of 42 bytes or less are embedded with the identity multihash (0x00).
    return base58.b58encode(b"\x00" + bytes([len(proto)]) + proto).decode("ascii")


def public_key_from_peer_id(peer_id: str) -> bytes:
    """Inverse of :func:`peer_id_from_public_key`; ValueError if not Ed25519."""
    try:
        raw = base58.b58decode(peer_id)
    except ValueError:
        raise ValueError(f"peer id {peer_id!r} is not base58") from None
    prefix = b"\x00\x24" + _LIBP2P_ED25519_PUBKEY_PREFIX
    if len(raw) != 38 or not raw.startswith(prefix):
        raise ValueError(f"peer id {peer_id!r} is not an Ed25519 identity")
    return raw[len(prefix):]


def verify(public_key: bytes, tag: str, message: bytes, signature: bytes) -> bool:
    """True when ``signature`` is ``public_key``'s signature of (tag, message)."""
    if len(public_key) != 32 or len(signature) != 64:
        return False
    try:
        nacl.signing.VerifyKey(public_key).verify(_tagged(tag, message), signature)
    except (nacl.exceptions.BadSignatureError, nacl.exceptions.ValueError, TypeError):
        return False
    return True


@dataclass(frozen=True)
class Identity:
    """An Ed25519 key pair: a node's or a tenant's identity."""

    seed: bytes

    def __post_init__(self) -> None:
        if len(self.seed) != 32:
            raise ValueError("an Ed25519 seed is 32 bytes")

    @classmethod
    def generate(cls) -> "Identity":
        return cls(os.urandom(32))

    @classmethod
    def from_label(cls, label: str) -> "Identity":
        """A deterministic identity for tests, simulators and seeded testnets."""
        return cls(hashlib.sha256(b"metanode/test-key/v1\x00" + label.encode()).digest())

    @property
    def _signing_key(self) -> nacl.signing.SigningKey:
        key = self.__dict__.get("_sk")
        if key is None:
            key = nacl.signing.SigningKey(self.seed)
            object.__setattr__(self, "_sk", key)
        return key

    @property
    def public_key(self) -> bytes:
        return bytes(self._signing_key.verify_key)

    @property
    def peer_id(self) -> str:
        return peer_id_from_public_key(self.public_key)

    def sign(self, tag: str, message: bytes) -> bytes:
        """Sign ``message`` for the purpose named by ``tag``."""
        return self._signing_key.sign(_tagged(tag, message)).signature

    def vrf_prove(self, alpha: bytes) -> bytes:
        """The 80-byte RFC 9381 ECVRF proof of ``alpha`` under this identity's key.

        The VRF key is the Ed25519 key itself (same seed, same public key), so
        anyone who knows a validator's key can check its proofs with
        :func:`node.base.vrf.verify`.
        """
        return vrf.prove(self.seed, alpha)

    def __repr__(self) -> str:  # never print the seed
        return f"Identity(peer_id={self.peer_id})"

    # -- key files -------------------------------------------------------
    def write(self, path: str | os.PathLike[str]) -> None:
        """Create a key file with mode 0600; refuse to overwrite one."""
        path = Path(path)
        text = (
            "# metanode Ed25519 identity. Keep it secret: anyone holding it can\n"
            "# act as this node or tenant.\n"
            'type = "ed25519"\n'
            f'seed = "{self.seed.hex()}"\n'
        )
        path.parent.mkdir(parents=True, exist_ok=True)
        try:
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, KEY_FILE_MODE)
        except FileExistsError:
            raise KeyFileError(f"{path}: already exists; refusing to overwrite a key") from None
        except OSError as exc:
            raise KeyFileError(f"{path}: cannot create: {exc.strerror}") from None
        with os.fdopen(fd, "w") as handle:
            handle.write(text)
            handle.flush()
            os.fsync(handle.fileno())

    @classmethod
    def load(cls, path: str | os.PathLike[str]) -> "Identity":
        """Read a key file, checking its format and that others cannot read it."""
        path = Path(path)
        try:
            mode = path.stat().st_mode & 0o777
            raw = path.read_bytes()
        except FileNotFoundError:
            raise KeyFileError(f"{path}: no such key file") from None
        except OSError as exc:
            raise KeyFileError(f"{path}: cannot read key file: {exc.strerror}") from None
        if mode & 0o077:
            raise KeyFileError(
                f"{path}: key file mode is {mode:04o}; it must not be readable by "
                "group or others (chmod 600)"
            )
        try:
            doc = tomllib.loads(raw.decode("utf-8"))
        except (UnicodeDecodeError, tomllib.TOMLDecodeError) as exc:
            raise KeyFileError(f"{path}: not a metanode key file ({exc})") from None
        if doc.get("type") != "ed25519":
            raise KeyFileError(f'{path}: key "type" must be "ed25519"')
        unknown = set(doc) - {"type", "seed"}
        if unknown:
            raise KeyFileError(f"{path}: unknown key(s) {sorted(unknown)}")
        seed = doc.get("seed")
        if not isinstance(seed, str) or len(seed) != 64:
            raise KeyFileError(f'{path}: "seed" must be 64 hex characters')
        try:
            return cls(bytes.fromhex(seed))
        except ValueError:
            raise KeyFileError(f'{path}: "seed" is not hex') from None
