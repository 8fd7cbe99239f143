"""The node's receipt issuer: one per-issuer hash chain (``prev``) per node key,
shared by every role that signs receipts, persisted so restarts continue it.

Crash safety: :meth:`NodeIssuer.issue` makes the new receipt's id durable
before it returns the receipt, so no receipt can leave the node (be
submitted, gossiped or handed to a client) before its id is on disk, and a
restart always continues from the last receipt issued: it never reuses a
``prev`` and never forks the chain. A receipt whose id could not be stored
is not returned (the error says why), the chain does not advance, and the
issuer refuses every later receipt until the node restarts (after a failed
``fdatasync`` nothing tells what reached the disk).

Where: ``DATA_DIR/receipt-issuer.state``, written in place with one
``pwrite`` and one ``fdatasync`` per receipt (about 0.06 ms of CPU). An
``INSERT OR REPLACE`` into DuckDB cost 2-4 ms of CPU and 13-38 ms with the
event loop blocked per receipt: 21-23% of a node's work under the jobs
bench. The layout, byte by byte, is in docs/receipts.md ("The issuer's
state file"): two checksummed 80-byte slots in separate 4 KiB blocks,
written alternately, so a write torn by a power cut damages only the slot
being written (whose receipt had not left yet) and the other slot still
holds the previous head.

A file that exists but cannot be trusted (no valid slot, another key's, or
a head the receipt log shows a successor of) stops the node with a
:class:`DataDirError` naming it: starting afresh over it could fork the
chain. So does a missing file when the database shows this key issued
receipts from this data directory (the marker table ``node_issuer_file``,
written once when the file is created, or this key's receipts in the
receipt log). Older data directories kept the head in the table
``node_receipt_issuer``; it is carried into the file once, then its row is
deleted so a stale head can never be read again. A node whose database is
in memory (tests) keeps the head in memory only: nothing of such a node
survives a restart anyway.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import duckdb
import trio

from node.base.db import transaction
from node.base.durable import fsync_dir
from node.base.errors import DataDirError
from node.base.keys import Identity
from node.receipts.chain import ReceiptIssuer
from node.receipts.envelope import Receipt

ISSUER_FILENAME = "receipt-issuer.state"
SLOT_SIZE = 80
SLOT_STRIDE = 4096  # slot 1 starts in the next 4 KiB block: writing one slot never rewrites the other's block
FILE_SIZE = SLOT_STRIDE + SLOT_SIZE
_BODY = 72  # sequence (8), key (32), head (32); then 8 bytes of checksum
_NONE = bytes(32)  # the head before the first receipt
_LEGACY_TABLE = "node_receipt_issuer"
_MARKER_TABLE = "node_issuer_file"


class IssuerStateError(DataDirError):
    """The issuer's state file cannot be read, trusted or written (the daemon stops, exit code 5)."""


def slot_bytes(sequence: int, key: bytes, head: bytes | None) -> bytes:
    """One slot: sequence (8 bytes, big-endian), key (32), head (32; zeros: none), SHA-256(first 72)[:8]."""
    body = sequence.to_bytes(8, "big") + key + (head or _NONE)
    return body + hashlib.sha256(body).digest()[:8]


def read_slot(raw: bytes, index: int) -> tuple[int, bytes, bytes | None] | None:
    """(sequence, key, head) of slot ``index`` of a file's bytes, or None
    when it is short, fails its checksum, or sits in the wrong slot for its
    sequence (slot = sequence % 2)."""
    part = raw[index * SLOT_STRIDE:index * SLOT_STRIDE + SLOT_SIZE]
    if len(part) != SLOT_SIZE or hashlib.sha256(part[:_BODY]).digest()[:8] != part[_BODY:]:
        return None
    sequence = int.from_bytes(part[:8], "big")
    if sequence % 2 != index:
        return None
    head = part[40:_BODY]
    return sequence, part[8:40], None if head == _NONE else head


def database_path(conn: Any) -> Path | None:
    """``conn``'s database file; None for an in-memory database."""
    row = conn.execute("SELECT path FROM duckdb_databases() WHERE database_name = current_database()").fetchone()
    return Path(row[0]) if row and row[0] else None


class IssuerFile:
    """The durable head of one key's receipt chain (see the module docstring)."""

    def __init__(self, path: Path, key: bytes) -> None:
        self.path = path
        self.key = key
        self.sequence = -1  # of the newest valid slot; -1: no file yet

    def load(self) -> tuple[bool, bytes | None]:
        """(whether the file exists, the head it holds). IssuerStateError if
        it exists but holds no valid slot of this key."""
        try:
            raw = self.path.read_bytes()
        except FileNotFoundError:
            return False, None
        except OSError as exc:
            raise IssuerStateError(f"{self.path}: cannot read the receipt issuer state: {exc.strerror or exc}") from None
        slots = [s for s in (read_slot(raw, 0), read_slot(raw, 1)) if s is not None]
        if not slots:
            raise IssuerStateError(
                f"{self.path}: the receipt issuer state is corrupt ({len(raw)} bytes, no slot passes its checksum); "
                "refusing to sign receipts that could fork this node's receipt chain. Restore the file; set it "
                "aside only if this key has never issued a receipt on this chain")
        sequence, key, head = max(slots, key=lambda s: s[0])
        if key != self.key:
            raise IssuerStateError(
                f"{self.path}: the receipt issuer state belongs to another key ({key.hex()[:16]}..., this node's "
                f"is {self.key.hex()[:16]}...); if this node's key was replaced on purpose, move the file aside")
        self.sequence = sequence
        return True, head

    def create(self, head: bytes | None) -> None:
        """Write a new file holding ``head`` as sequence 0, atomically (a
        temporary file, fsync, rename, fsync of the directory): a crash leaves
        either no file or a whole one, never one that refuses to load."""
        temporary = self.path.with_name(self.path.name + ".tmp")
        content = slot_bytes(0, self.key, head).ljust(FILE_SIZE, b"\x00")  # slot 1 all zeros: not valid
        try:
            fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
            try:
                os.write(fd, content)
                os.fsync(fd)
            finally:
                os.close(fd)
            os.replace(temporary, self.path)
            fsync_dir(self.path.parent)
        except OSError as exc:
            raise IssuerStateError(f"{self.path}: cannot create the receipt issuer state: {exc.strerror or exc} "
                                   f"(errno {exc.errno})") from None
        self.sequence = 0

    def store(self, head: bytes | None) -> None:
        """Durably record ``head`` in the slot the newest one is not in."""
        sequence = self.sequence + 1
        try:
            fd = os.open(self.path, os.O_WRONLY)  # no O_CREAT: a file removed under the node is an error
            try:
                if os.pwrite(fd, slot_bytes(sequence, self.key, head), (sequence % 2) * SLOT_STRIDE) != SLOT_SIZE:
                    raise OSError(0, "short write")
                os.fdatasync(fd)  # the file's size never changes: its data is all that must reach the disk
            finally:
                os.close(fd)
        except OSError as exc:
            raise IssuerStateError(f"{self.path}: cannot write the receipt issuer state: {exc.strerror or exc} "
                                   f"(errno {exc.errno}); no receipt was issued") from None
        self.sequence = sequence


def _table_exists(conn: Any, name: str) -> bool:
    return bool(conn.execute("SELECT 1 FROM duckdb_tables() WHERE table_name = ? AND database_name = current_database()",
                             [name]).fetchall())


def _has_row(conn: Any, table: str, key: bytes) -> bool:
    return _table_exists(conn, table) and conn.execute(f"SELECT 1 FROM {table} WHERE issuer = ?", [key]).fetchone() is not None


class NodeIssuer:
    """Issues this node's receipts. ``path``: the state file (default: next
    to ``conn``'s database file; none for an in-memory database)."""

    def __init__(self, conn: Any, identity: Identity, *, path: Path | None = None) -> None:
        self.identity = identity
        if path is None:
            database = database_path(conn)
            path = database.parent / ISSUER_FILENAME if database is not None else None
        self.file = IssuerFile(path, identity.public_key) if path is not None else None
        self._failed: str | None = None
        self._failure = trio.Event()  # set (from the loop's thread) when a write failed: see watch()
        head: bytes | None = None
        if self.file is not None:
            exists, head = self.file.load()
            if not exists:
                head = self._head_for_new_file(conn)
            self._check_against_log(conn, head, exists)
            if not exists:
                self.file.create(head)
            self._retire_database_head(conn)  # after the file holds the head: a crash before redoes it
        self._issuer = ReceiptIssuer(identity, prev_id=head)

    def _head_for_new_file(self, conn: Any) -> bytes | None:
        """The head to start a new file with: the legacy table's (a data
        directory from before the file), else none, unless the database
        shows this key issued receipts here (the file was lost)."""
        assert self.file is not None
        key = self.identity.public_key
        if _has_row(conn, _MARKER_TABLE, key):
            raise IssuerStateError(
                f"{self.file.path}: the receipt issuer state is missing, but this data directory's database shows "
                "it existed: the receipts this key issued from here may be out, and starting its chain again would "
                "fork it. Restore the file")
        if _table_exists(conn, _LEGACY_TABLE):
            row = conn.execute(f"SELECT prev_id FROM {_LEGACY_TABLE} WHERE issuer = ?", [key]).fetchone()
            if row is not None and row[0] is not None:
                return bytes(row[0])
        return None

    def _check_against_log(self, conn: Any, head: bytes | None, exists: bool) -> None:
        """Refuse a head the receipt log shows a successor of (a stale or
        lost file, a restored backup): the next receipt would fork the chain."""
        assert self.file is not None
        if not _table_exists(conn, "receipt_envelopes"):
            return
        row = conn.execute("SELECT count(*) FROM receipt_envelopes WHERE issuer = ? AND prev IS NOT DISTINCT FROM ?",
                           [self.identity.peer_id, head]).fetchone()
        if row is not None and row[0]:
            if not exists:
                raise IssuerStateError(
                    f"{self.file.path}: the receipt issuer state is missing, but the receipt log holds receipts of "
                    "this key: starting its chain again would fork it. Restore the file")
            held = "no receipt yet" if head is None else f"receipt {head.hex()}"
            raise IssuerStateError(
                f"{self.file.path}: the receipt issuer state is behind the chain: it names {held} as this key's "
                "last, but the receipt log holds a later one of this key; continuing would fork its receipt chain. "
                "Restore the newest copy of the file")

    def _retire_database_head(self, conn: Any) -> None:
        """Record that the file holds this key's head (so its loss is seen)
        and delete the legacy row (so a stale head is never read again)."""
        key = self.identity.public_key
        legacy = _table_exists(conn, _LEGACY_TABLE)
        if _has_row(conn, _MARKER_TABLE, key) and not _has_row(conn, _LEGACY_TABLE, key):
            return  # done at an earlier start: a restart writes nothing
        try:
            with transaction(conn):
                conn.execute(f"CREATE TABLE IF NOT EXISTS {_MARKER_TABLE} (issuer BLOB PRIMARY KEY)")
                conn.execute(f"INSERT OR IGNORE INTO {_MARKER_TABLE} VALUES (?)", [key])
                if legacy:
                    conn.execute(f"DELETE FROM {_LEGACY_TABLE} WHERE issuer = ?", [key])
        except duckdb.Error as exc:
            raise IssuerStateError(f"{database_path(conn)}: cannot record the receipt issuer state in the node "
                                   f"database: {str(exc).splitlines()[0][:200]}") from None

    @property
    def prev_id(self) -> bytes | None:
        """The id of the last receipt issued (what the next one's ``prev`` names)."""
        return self._issuer.prev_id

    def issue(self, kind: str, *, height: int, subject: bytes, fields: Mapping[str, Any]) -> Receipt:
        """Sign the next receipt; its id is durable when this returns.
        IssuerStateError (and the chain does not advance) if it cannot be stored."""
        if self._failed is not None:
            raise IssuerStateError(f"{self._failed}; no receipt is issued until the node restarts")
        before = self._issuer.prev_id
        receipt = self._issuer.issue(kind, height=height, subject=subject, fields=fields)
        if self.file is not None:
            try:
                self.file.store(receipt.id)
            except IssuerStateError as exc:
                self._issuer = ReceiptIssuer(self.identity, prev_id=before)  # this receipt never existed
                self._failed = str(exc)
                self._failure.set()
                raise
        return receipt

    async def watch(self) -> None:
        """Raise IssuerStateError once a write of the state failed, wherever
        the receipt was asked for (an RPC handler's error does not stop the
        daemon by itself): a node that cannot record what it signs stops."""
        await self._failure.wait()
        raise IssuerStateError(f"{self._failed}; the node stopped")
