"""The consensus safety file's byte layout: an append-only journal.

Each save appends one record and syncs it (one write, one fdatasync) instead
of rewriting and renaming a whole file. A record is::

    magic "mnsafe" | version u16 | sequence u64 | length u32 | body | SHA-256

(big-endian; the digest covers everything before it). The state in force is
the body of the last whole record. Only the last append can be cut short by
a crash, so after the last whole record there may be one partial or garbled
record, which is cut off before the next append; damage anywhere else, or
records whose sequence numbers do not run on by one, is refused: starting
afresh over a damaged safety file is how a validator would double-sign.
docs/data-dir.md documents the layout byte by byte.
"""

from __future__ import annotations

import hashlib
import struct
from dataclasses import dataclass
from typing import Protocol

MAGIC = b"mnsafe"
VERSION = 1
_HEADER = struct.Struct(">6sHQI")  # magic, version, sequence, body length
HEADER_BYTES = _HEADER.size  # 20
DIGEST_BYTES = 32
MAX_BODY_BYTES = 512 * 1024 * 1024  # above any state: max_block_bytes is at most 256 MiB


class JournalError(ValueError):
    """The journal is damaged (the caller names the file)."""


class _Buffer(Protocol):  # bytes or an mmap of the file
    def __len__(self) -> int: ...
    def __getitem__(self, index: slice, /) -> bytes: ...
    def find(self, sub: bytes, start: int = ..., /) -> int: ...


def encode_record(sequence: int, body: bytes) -> bytes:
    """One journal record holding ``body``."""
    if len(body) > MAX_BODY_BYTES:
        raise JournalError(f"safety state of {len(body)} bytes exceeds {MAX_BODY_BYTES}")
    header = _HEADER.pack(MAGIC, VERSION, sequence, len(body))
    digest = hashlib.sha256(header)
    digest.update(body)
    return b"".join((header, body, digest.digest()))


def record_bytes(body_length: int) -> int:
    return HEADER_BYTES + body_length + DIGEST_BYTES


@dataclass(frozen=True)
class Scan:
    """What reading a journal found."""

    body: bytes  # the last whole record's body: the state in force
    sequence: int  # its sequence number
    end: int  # offset just past it; bytes beyond are a torn append to cut off
    size: int  # the file's size
    largest: int  # the largest record in the file, in bytes


def _header(buf: _Buffer, pos: int) -> tuple[bytes, int, int, int] | None:
    if len(buf) - pos < HEADER_BYTES:
        return None
    magic, version, sequence, length = _HEADER.unpack(buf[pos:pos + HEADER_BYTES])
    return magic, version, sequence, length


def _record_at(buf: _Buffer, pos: int, min_sequence: int = 0) -> tuple[int, int] | None:
    """(sequence, end) of a whole record with a good digest at ``pos``, else None."""
    head = _header(buf, pos)
    if head is None:
        return None
    magic, version, sequence, length = head
    if magic != MAGIC or version != VERSION or length > MAX_BODY_BYTES or sequence < min_sequence:
        return None
    end = pos + record_bytes(length)
    if end > len(buf) or hashlib.sha256(buf[pos:end - DIGEST_BYTES]).digest() != buf[end - DIGEST_BYTES:end]:
        return None
    return sequence, end


def is_journal(buf: _Buffer) -> bool:
    return buf[:len(MAGIC)] == MAGIC


def scan(buf: _Buffer) -> Scan:
    """Read the journal in ``buf``; raises JournalError if it is damaged
    anywhere but in a torn last append."""
    head = _header(buf, 0)
    if head is not None and head[0] == MAGIC and head[1] != VERSION:
        raise JournalError(f"journal version {head[1]} is not supported (this node reads version {VERSION})")
    pos, last, largest = 0, -1, 0
    while (found := _record_at(buf, pos)) is not None:
        sequence, end = found
        if last >= 0 and sequence != last + 1:
            raise JournalError(f"record at offset {pos} has sequence {sequence}, expected {last + 1}")
        last, largest, previous, pos = sequence, max(largest, end - pos), pos, end
    if last < 0:
        # Never a torn append: the first record is written to a temporary file and renamed into place.
        raise JournalError("the first record fails its checksum")
    if pos < len(buf):
        _check_tail(buf, pos, last)
    body = buf[previous + HEADER_BYTES:pos - DIGEST_BYTES]
    return Scan(body=body, sequence=last, end=pos, size=len(buf), largest=largest)


def _check_tail(buf: _Buffer, pos: int, last: int) -> None:
    """Bytes after the last whole record at ``pos`` are accepted (to be cut
    off) only if they can be one append cut short by a crash."""
    # A whole later record means the bytes at pos were once whole too: damage, not a torn append
    # (searched for even when a header at pos claims to reach the end: its length may be the damage).
    at = buf.find(MAGIC, pos)
    while at != -1:
        if _record_at(buf, at, min_sequence=last + 1) is not None:
            raise JournalError(f"damaged bytes at offset {pos} before a whole record at offset {at}")
        at = buf.find(MAGIC, at + 1)
    head = _header(buf, pos)
    if head is not None and head[0] == MAGIC:
        _, version, sequence, length = head
        # Its header came through: it must be the next record and reach the end of the file.
        if version != VERSION or sequence != last + 1 or length > MAX_BODY_BYTES:
            raise JournalError(f"record at offset {pos} has a damaged header")
        if pos + record_bytes(length) < len(buf):
            raise JournalError(f"record at offset {pos} fails its checksum and bytes follow it")
