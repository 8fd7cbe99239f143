"""Double-sign protection: the validator's last-signed state, kept durably.

A validator must never sign two different messages for the same (height,
round, step). Before it signs, the core emits ``Persist(state)`` with the
state below; the shell writes it with :class:`SafetyStore` (temp file, fsync,
rename, fsync of the directory) and only then sends what was signed. After a
crash the core is rebuilt from the stored state and refuses to sign anything
at or below its watermark unless it is byte-identical to what was signed.

The prepared state (round, block, PREPARE certificate) is kept too: a
validator that forgot it could send a ROUND-CHANGE claiming nothing
prepared and so let a different block be decided (QBFT's safety rests on it).
"""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from node.base.codec import CodecError, decode, encode
from node.base.errors import DataDirError, UserError

SAFETY_FILE_VERSION = 1
_MAX_FILE_BYTES = 512 * 1024 * 1024


class SafetyStateError(UserError):
    """The safety file is unreadable or corrupt. Never start afresh over it:
    that is exactly how a validator would come to double-sign."""


class SafetyWriteError(DataDirError):
    """The safety state could not be made durable (disk full, read-only,
    I/O error). What was about to be signed must then not be sent: the
    validator stops voting, and the daemon stops with one line saying why."""


@dataclass(frozen=True)
class SafetyState:
    """What a validator has signed at its current height, and what it prepared.

    ``(height, round, step)`` is the watermark of the last signature and
    ``signed_payload`` the payload it signed (at most 512 bytes; kept whole so
    that a restarted validator can resend exactly that message, signatures
    being deterministic). ``step`` is -1 when nothing has been signed yet.
    """

    height: int
    round: int = 0
    step: int = -1
    signed_payload: bytes | None = None
    prepared_round: int | None = None
    prepared_block: bytes | None = None  # encoded unsealed block
    prepared_certificate: tuple[tuple[bytes, bytes, bytes], ...] = ()  # signed prepares

    def may_sign(self, height: int, round_number: int, step: int, payload: bytes) -> bool:
        """True unless signing ``payload`` at (height, round, step) could conflict
        with something already signed: it must be strictly above the watermark,
        or be exactly the payload last signed."""
        mark = (self.height, self.round, self.step)
        at = (height, round_number, step)
        if at > mark:
            return True
        return at == mark and payload == self.signed_payload

    def to_value(self) -> dict[str, Any]:
        return {
            "version": SAFETY_FILE_VERSION,
            "height": self.height,
            "round": self.round,
            "step": self.step,
            "signed_payload": self.signed_payload,
            "prepared_round": self.prepared_round,
            "prepared_block": self.prepared_block,
            "prepared_certificate": [list(p) for p in self.prepared_certificate],
        }

    @classmethod
    def from_value(cls, value: Any) -> "SafetyState":
        if not isinstance(value, dict) or value.get("version") != SAFETY_FILE_VERSION:
            raise ValueError(f"expected a version {SAFETY_FILE_VERSION} safety state")
        try:
            certificate = tuple(
                (bytes(a), bytes(b), bytes(c)) for a, b, c in value["prepared_certificate"]
            )
            state = cls(
                height=value["height"],
                round=value["round"],
                step=value["step"],
                signed_payload=value["signed_payload"],
                prepared_round=value["prepared_round"],
                prepared_block=value["prepared_block"],
                prepared_certificate=certificate,
            )
        except (KeyError, TypeError, ValueError) as exc:
            raise ValueError(f"malformed safety state: {exc}") from None
        ints = (state.height, state.round, state.step)
        if any(isinstance(v, bool) or not isinstance(v, int) for v in ints) or state.step < -1:
            raise ValueError("malformed safety state: height, round, step")
        if not isinstance(state.signed_payload, (bytes, type(None))) or not isinstance(state.prepared_block, (bytes, type(None))):
            raise ValueError("malformed safety state: signed_payload, prepared_block")
        if (state.prepared_round is None) != (state.prepared_block is None):
            raise ValueError("malformed safety state: prepared round without block")
        return state

    def encode(self) -> bytes:
        return encode(self.to_value())


class SafetyStore:
    """A single file holding the latest :class:`SafetyState`, replaced atomically.

    Layout: 32-byte SHA-256 of the body, then the body (deterministic CBOR).
    """

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = Path(path)

    def load(self) -> SafetyState | None:
        """The stored state, or None when no file exists (a new validator).
        Raises SafetyStateError if the file exists but cannot be trusted."""
        try:
            raw = self.path.read_bytes()
        except FileNotFoundError:
            return None
        except OSError as exc:
            raise SafetyStateError(f"{self.path}: cannot read the consensus safety file: {exc.strerror}") from None
        if len(raw) < 33 or len(raw) > _MAX_FILE_BYTES or hashlib.sha256(raw[32:]).digest() != raw[:32]:
            raise SafetyStateError(
                f"{self.path}: consensus safety file is corrupt (checksum mismatch); refusing to "
                "start a validator that could double-sign. Restore it, or move it away only if "
                "this key has never signed on this chain."
            )
        try:
            return SafetyState.from_value(decode(raw[32:]))
        except (CodecError, ValueError) as exc:
            raise SafetyStateError(f"{self.path}: consensus safety file is not readable: {exc}") from None

    def save(self, state: SafetyState) -> None:
        """Durably replace the stored state: when this returns, a crash at any
        point leaves either the old or the new state, never a mix.

        Raises :class:`SafetyWriteError` (naming the file and the cause) when
        the disk refuses: the old state is then still in place, and the caller
        must not send what it was about to sign."""
        body = state.encode()
        data = hashlib.sha256(body).digest() + body
        directory = self.path.parent
        tmp = self.path.with_name(self.path.name + ".tmp")
        try:
            directory.mkdir(parents=True, exist_ok=True)
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
            try:
                view = memoryview(data)
                while view:
                    written = os.write(fd, view)
                    view = view[written:]
                os.fsync(fd)
            finally:
                os.close(fd)
            os.replace(tmp, self.path)
            dir_fd = os.open(directory, os.O_RDONLY)
            try:
                os.fsync(dir_fd)
            finally:
                os.close(dir_fd)
        except OSError as exc:
            try:
                tmp.unlink(missing_ok=True)  # a half-written temp file would only take more room
            except OSError:
                pass
            raise SafetyWriteError(
                f"{exc.filename or self.path}: cannot write the consensus safety state: "
                f"{exc.strerror or exc} (errno {exc.errno}); this validator stopped voting"
            ) from None
