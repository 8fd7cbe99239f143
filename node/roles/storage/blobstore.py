"""Content-addressed blob files: ``root/ab/cdef...`` named by SHA-256 hex.

A blob is written to a temporary file under ``root/incoming`` (same file
system as its final place), fsynced, checked against its digest, and only
then renamed to its name, so a crash never leaves a partial blob under a
digest. Every read re-hashes what it reads: a blob whose bytes no longer
match its name is moved to ``root/quarantine`` and never served, and
``on_quarantine(digest)`` is called (the repair loop fetches it again; it may
be called from a worker thread).
"""

from __future__ import annotations

import hashlib
import os
import secrets
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path

from node.base.durable import fsync_dir
from node.roles.storage.errors import (
    BlobCorrupt,
    BlobNotFound,
    BlobTooLarge,
    DigestMismatch,
)

DEFAULT_MAX_BLOB_SIZE = 256 * 1024 * 1024
DEFAULT_CHUNK_SIZE = 256 * 1024
DIGEST_SIZE = 32
_INCOMING = "incoming"
_QUARANTINE = "quarantine"


def _check_digest(digest: bytes) -> bytes:
    if not isinstance(digest, (bytes, bytearray)) or len(digest) != DIGEST_SIZE:
        raise ValueError("a blob digest is 32 bytes (SHA-256)")
    return bytes(digest)


class BlobWriter:
    """One blob being written; :meth:`commit` publishes it under its digest.

    ``expected`` (when known up front) is checked before publishing;
    ``expected_size`` is checked too. Writing past the store's size limit
    raises BlobTooLarge and discards the partial file.
    """

    def __init__(self, store: "BlobStore", expected: bytes | None, expected_size: int | None) -> None:
        self.store = store
        self.expected = None if expected is None else _check_digest(expected)
        self.expected_size = expected_size
        self.size = 0
        self._hash = hashlib.sha256()
        self._path = store.root / _INCOMING / f"{secrets.token_hex(8)}.part"
        self._file = open(self._path, "xb")
        self._done = False

    def write(self, chunk: bytes) -> None:
        total = self.size + len(chunk)
        if self.expected_size is not None and total > self.expected_size:
            self.abort()
            raise DigestMismatch(f"more than the announced {self.expected_size} bytes")
        if total > self.store.max_blob_size:
            self.abort()
            raise BlobTooLarge(f"blob exceeds the limit of {self.store.max_blob_size} bytes", limit=self.store.max_blob_size)
        self._file.write(chunk)
        self._hash.update(chunk)
        self.size += len(chunk)

    @property
    def digest(self) -> bytes:
        """SHA-256 of what has been written so far."""
        return self._hash.digest()

    def commit(self) -> bytes:
        """fsync, verify, rename into place; return the digest."""
        digest = self._hash.digest()
        try:
            if self.expected is not None and digest != self.expected:
                raise DigestMismatch(f"content hashes to {digest.hex()}, not the announced {self.expected.hex()}")
            if self.expected_size is not None and self.size != self.expected_size:
                raise DigestMismatch(f"received {self.size} bytes, not the announced {self.expected_size}")
            self._file.flush()
            os.fsync(self._file.fileno())
            self._file.close()
            final = self.store.path(digest)
            final.parent.mkdir(exist_ok=True)
            os.replace(self._path, final)  # identical content if it already existed
            fsync_dir(final.parent)
            self._done = True
            return digest
        finally:
            if not self._done:
                self.abort()

    def abort(self) -> None:
        """Discard the partial blob (idempotent)."""
        self._done = True
        if not self._file.closed:
            self._file.close()
        try:
            self._path.unlink()
        except FileNotFoundError:
            pass


class BlobStore:
    """Blobs under ``root`` (the data directory's ``blobs/``)."""

    def __init__(self, root: Path, *, max_blob_size: int = DEFAULT_MAX_BLOB_SIZE) -> None:
        self.root = Path(root)
        self.max_blob_size = max_blob_size
        self.on_quarantine: Callable[[bytes], None] | None = None  # told of every blob quarantined
        (self.root / _INCOMING).mkdir(parents=True, exist_ok=True)
        (self.root / _QUARANTINE).mkdir(exist_ok=True)
        # Partial files of a previous run can never be completed: drop them.
        for leftover in (self.root / _INCOMING).iterdir():
            leftover.unlink(missing_ok=True)

    def path(self, digest: bytes) -> Path:
        hex_ = _check_digest(digest).hex()
        return self.root / hex_[:2] / hex_[2:]

    def has(self, digest: bytes) -> bool:
        return self.path(digest).is_file()

    def size(self, digest: bytes) -> int:
        try:
            return self.path(digest).stat().st_size
        except FileNotFoundError:
            raise BlobNotFound(f"no blob {bytes(digest).hex()}") from None

    def delete(self, digest: bytes) -> bool:
        """Remove a blob; False if it was not there."""
        try:
            self.path(digest).unlink()
            return True
        except FileNotFoundError:
            return False

    def digests(self) -> Iterator[bytes]:
        for sub in sorted(self.root.iterdir()):
            if len(sub.name) == 2 and sub.is_dir():
                for f in sorted(sub.iterdir()):
                    if len(f.name) == 62:
                        yield bytes.fromhex(sub.name + f.name)

    def total_bytes(self) -> int:
        return sum(self.path(d).stat().st_size for d in self.digests())

    def writer(self, expected: bytes | None = None, expected_size: int | None = None) -> BlobWriter:
        if expected_size is not None and expected_size > self.max_blob_size:
            raise BlobTooLarge(f"blob of {expected_size} bytes exceeds the limit of {self.max_blob_size}", limit=self.max_blob_size)
        return BlobWriter(self, expected, expected_size)

    def put_stream(self, chunks: Iterable[bytes], expected: bytes | None = None) -> bytes:
        """Store the concatenated ``chunks``; refuse them unless they hash to
        ``expected`` (when given). Returns the digest."""
        writer = self.writer(expected)
        try:
            for chunk in chunks:
                writer.write(chunk)
        except BaseException:
            writer.abort()
            raise
        return writer.commit()

    def put(self, data: bytes, expected: bytes | None = None) -> bytes:
        return self.put_stream([data], expected)

    def work_path(self, suffix: str) -> Path:
        """A fresh path under ``incoming/`` (same file system as the blobs) for a
        file this node writes itself, such as re-encoded good rows; publish it
        with :meth:`adopt` (leftovers are dropped at the next start)."""
        return self.root / _INCOMING / f"{secrets.token_hex(8)}{suffix}"

    def adopt(self, path: Path) -> tuple[bytes, bool]:
        """Publish the file at ``path`` (under ``incoming/``) as a blob: hash it,
        fsync it and rename it into place; return its digest and whether that
        blob was here already. The file is gone afterwards either way."""
        try:
            hasher = hashlib.sha256()
            size = 0
            with open(path, "rb") as handle:
                while block := handle.read(DEFAULT_CHUNK_SIZE):
                    hasher.update(block)
                    size += len(block)
                os.fsync(handle.fileno())
            if size > self.max_blob_size:
                raise BlobTooLarge(f"blob exceeds the limit of {self.max_blob_size} bytes", limit=self.max_blob_size)
            digest = hasher.digest()
            final = self.path(digest)
            existed = final.is_file()
            final.parent.mkdir(exist_ok=True)
            os.replace(path, final)
            fsync_dir(final.parent)
            return digest, existed
        finally:
            path.unlink(missing_ok=True)

    def read_chunks(self, digest: bytes, chunk_size: int = DEFAULT_CHUNK_SIZE, offset: int = 0) -> Iterator[bytes]:
        """The blob's bytes from ``offset``, re-hashed as they are read.

        The last chunk is held back until the whole blob has been hashed:
        a corrupt blob raises BlobCorrupt (and is quarantined) before its
        end is ever handed out, so no reader sees a complete bad copy."""
        path = self.path(digest)
        try:
            f = open(path, "rb")
        except FileNotFoundError:
            raise BlobNotFound(f"no blob {bytes(digest).hex()}") from None
        hasher = hashlib.sha256()
        position = 0
        pending: bytes | None = None
        with f:
            while block := f.read(chunk_size):
                hasher.update(block)
                start = max(0, offset - position)
                position += len(block)
                if start >= len(block):
                    continue
                if pending is not None:
                    yield pending
                pending = block[start:]
        if hasher.digest() != digest:
            self.quarantine(digest)
            raise BlobCorrupt(f"blob {bytes(digest).hex()} does not match its digest; quarantined")
        if offset > position:
            raise ValueError(f"offset {offset} is past the end of the blob ({position} bytes)")
        if pending is not None:
            yield pending

    def read(self, digest: bytes) -> bytes:
        """The whole blob, verified."""
        return b"".join(self.read_chunks(digest))

    open = read  # the name the storage API documents

    def verify(self, digest: bytes) -> int:
        """Re-hash the blob; return its size or raise BlobCorrupt / BlobNotFound."""
        return sum(len(c) for c in self.read_chunks(digest))

    def quarantine(self, digest: bytes) -> None:
        """Move a corrupt blob out of its name so it is never served again."""
        target = self.root / _QUARANTINE / f"{bytes(digest).hex()}.{secrets.token_hex(4)}"
        try:
            os.replace(self.path(digest), target)
        except FileNotFoundError:
            return
        if self.on_quarantine is not None:
            self.on_quarantine(bytes(digest))

    def quarantined_count(self) -> int:
        """Files in the quarantine directory (corrupt copies kept for inspection)."""
        try:
            return sum(1 for _ in (self.root / _QUARANTINE).iterdir())
        except OSError:
            return 0
