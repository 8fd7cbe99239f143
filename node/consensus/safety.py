"""Double-sign protection: the validator's last-signed state, kept durably.

A validator must never sign two different messages for the same (height,
round, step). Before it signs, the core emits ``Persist(state)`` with the
state below; the shell writes it with :class:`SafetyStore` (one record
appended to a journal and synced) and only then sends what was signed. After a
crash the core is rebuilt from the stored state and refuses to sign anything
at or below its watermark unless it is byte-identical to what was signed.

The prepared state (round, block, PREPARE certificate) is kept too: a
validator that forgot it could send a ROUND-CHANGE claiming nothing
prepared and so let a different block be decided (QBFT's safety rests on it).
"""

from __future__ import annotations

import hashlib
import mmap
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from node.base.codec import CodecError, decode, encode
from node.base.durable import fsync_dir
from node.base.errors import DataDirError, UserError
from node.consensus import safety_journal as journal

SAFETY_FILE_VERSION = 1
_MAX_OLD_FILE_BYTES = 512 * 1024 * 1024  # the version 1 single-record file
# Compact (rewrite the journal as one record) once it would pass this, or 4x its
# largest record if more: with ~1-50 KB records a compaction (the old fsync +
# rename path) comes every few thousand saves, the file stays small next to the
# chain database, and reading 64 MiB of small records at start costs ~0.5 s CPU.
COMPACT_AT_BYTES = 64 * 1024 * 1024


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
    """The latest :class:`SafetyState`, kept in an append-only journal
    (node/consensus/safety_journal.py, docs/data-dir.md).

    :meth:`load` reads the file; :meth:`save` appends one record and syncs it
    (the file stays open), and rewrites the file as a single record through a
    temporary file and a rename when it passes its budget, when it was never
    loaded, or when it holds the old single-record format (which it thereby
    migrates).
    """

    def __init__(self, path: str | os.PathLike[str], *, compact_at_bytes: int = COMPACT_AT_BYTES) -> None:
        self.path = Path(path)
        self._compact_at = compact_at_bytes
        self._fd: int | None = None  # open for appends
        self._journal: journal.Scan | None = None  # what load() found, if a journal
        self._end = 0  # offset just past the last whole record
        self._sequence = 0
        self._largest = 0
        self._failed: str | None = None  # set when the file may hold a half record: no more appends

    def close(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None

    def __del__(self) -> None:
        if getattr(self, "_fd", None) is not None:
            self.close()

    def load(self) -> SafetyState | None:
        """The stored state, or None when no file exists (a new validator).
        Raises SafetyStateError if the file exists but cannot be trusted."""
        self.close()
        self._journal, self._failed = None, None
        try:
            fd = os.open(self.path, os.O_RDONLY | os.O_CLOEXEC)
        except FileNotFoundError:
            return None
        except OSError as exc:
            raise self._unreadable(exc) from None
        try:
            size = os.fstat(fd).st_size
            if size == 0:
                raise SafetyStateError(self._corrupt("the file is empty"))
            with mmap.mmap(fd, 0, access=mmap.ACCESS_READ) as buf:
                if journal.is_journal(buf):
                    found = journal.scan(buf)
                    self._journal, body = found, found.body
                else:
                    body = self._old_body(buf[:_MAX_OLD_FILE_BYTES + 33])
        except journal.JournalError as exc:
            raise SafetyStateError(self._corrupt(str(exc))) from None
        except OSError as exc:
            raise self._unreadable(exc) from None
        finally:
            os.close(fd)
        try:
            return SafetyState.from_value(decode(body))
        except (CodecError, ValueError) as exc:
            self._journal = None
            raise SafetyStateError(f"{self.path}: consensus safety file is not readable: {exc}") from None

    def _old_body(self, raw: bytes) -> bytes:
        """The body of a version 1 file (SHA-256 of the body, then the body)."""
        if len(raw) < 33 or len(raw) > _MAX_OLD_FILE_BYTES or hashlib.sha256(raw[32:]).digest() != raw[:32]:
            raise SafetyStateError(self._corrupt("checksum mismatch"))
        return raw[32:]

    def _corrupt(self, why: str) -> str:
        return (f"{self.path}: consensus safety file is corrupt ({why}); refusing to start a validator "
                "that could double-sign. Restore it, or move it away only if this key has never signed "
                "on this chain.")

    def _unreadable(self, exc: OSError) -> SafetyStateError:
        return SafetyStateError(f"{self.path}: cannot read the consensus safety file: {exc.strerror or exc}")

    def save(self, state: SafetyState) -> None:
        """Durably store ``state``: when this returns it is on disk, and a
        crash at any point leaves either the old or the new state, never a mix.

        Raises :class:`SafetyWriteError` (naming the file and the cause) when
        the disk refuses: the old state is then still the one a later load
        finds, and the caller must not send what it was about to sign."""
        if self._failed is not None:
            raise SafetyWriteError(self._failed)
        body = state.encode()
        try:
            if self._fd is None and self._journal is not None:
                self._reopen(self._journal)
            record = journal.encode_record(self._sequence + 1, body)
            if self._fd is None or self._end + len(record) > max(self._compact_at, 4 * max(self._largest, len(record))):
                self._compact(record)
            else:
                self._append(record)
        except OSError as exc:
            raise self._write_error(exc) from None
        except journal.JournalError as exc:
            raise SafetyWriteError(f"{self.path}: cannot write the consensus safety state: {exc}") from None
        self._sequence += 1
        self._largest = max(self._largest, len(record))

    def _reopen(self, found: journal.Scan) -> None:
        """Open the loaded journal for appends, cutting off a torn last append first."""
        fd = os.open(self.path, os.O_RDWR | os.O_CLOEXEC)
        try:
            if found.size > found.end:
                os.ftruncate(fd, found.end)
                os.fdatasync(fd)
        except OSError:
            os.close(fd)
            raise
        self._fd, self._journal = fd, None
        self._end, self._sequence, self._largest = found.end, found.sequence, found.largest

    def _append(self, record: bytes) -> None:
        assert self._fd is not None
        try:
            _write_all(self._fd, record, self._end)
            os.fdatasync(self._fd)
        except OSError:
            # Take back what may have reached the file, so nothing of this record is left to be
            # read as the state in force; if even that fails, refuse every later save.
            try:
                os.ftruncate(self._fd, self._end)
                os.fdatasync(self._fd)
            except OSError as exc:
                self._failed = str(self._write_error(exc))
            raise
        self._end += len(record)

    def _compact(self, record: bytes) -> None:
        """Write ``record`` as the only one of a new file and rename it into place."""
        directory = self.path.parent
        tmp = self.path.with_name(self.path.name + ".tmp")
        renamed = False
        try:
            directory.mkdir(parents=True, exist_ok=True)
            fd = os.open(tmp, os.O_RDWR | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o600)
            try:
                _write_all(fd, record, 0)
                os.fsync(fd)
                os.replace(tmp, self.path)
                renamed = True
                fsync_dir(directory)
            except OSError:
                os.close(fd)
                raise
        except OSError as exc:
            try:
                tmp.unlink(missing_ok=True)  # a half-written temp file would only take more room
            except OSError:
                pass
            if renamed:  # the open descriptor no longer names the file: append no more
                self.close()
                self._failed = str(self._write_error(exc))
            raise
        self.close()
        self._fd, self._end = fd, len(record)
        self._largest = 0  # the old records are gone

    def _write_error(self, exc: OSError) -> SafetyWriteError:
        return SafetyWriteError(
            f"{exc.filename or self.path}: cannot write the consensus safety state: "
            f"{exc.strerror or exc} (errno {exc.errno}); this validator stopped voting"
        )


def _write_all(fd: int, data: bytes, offset: int) -> None:
    view = memoryview(data)
    while view:
        written = os.pwrite(fd, view, offset)
        view, offset = view[written:], offset + written
