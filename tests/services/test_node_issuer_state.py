"""The node's receipt issuer keeps its chain's head in a small file, durable
before a receipt is returned: restarts continue the chain, a torn write
falls back to the previous head; damage, another key's file, a lost file or
a stale one is refused as a data-directory error (exit code 5), never
started afresh over (that would fork the chain)."""

from __future__ import annotations

import shutil
from pathlib import Path

import duckdb
import pytest
import trio

from node.base.errors import EXIT_DATA_DIR, DataDirError
from node.base.keys import Identity
from node.receipts.log import ReceiptLog
from node.roles.issuer import FILE_SIZE, ISSUER_FILENAME, SLOT_SIZE, SLOT_STRIDE, IssuerStateError, NodeIssuer
from node.roles.supervise import daemon_failure

KEY = Identity.from_label("issuer-state-node")
OTHER = Identity.from_label("issuer-state-other")
FIELDS = {"method": "analytics_submit", "tenant": bytes(32), "outcome": "accepted", "code": 0, "response": bytes(32)}


def issue(issuer: NodeIssuer, n: int) -> bytes:
    return issuer.issue("api.call", height=1, subject=n.to_bytes(32, "big"), fields=FIELDS).id


def open_issuer(data_dir: Path, identity: Identity = KEY) -> NodeIssuer:
    conn = duckdb.connect(str(data_dir / "node.duckdb"))
    try:
        return NodeIssuer(conn, identity)
    finally:
        conn.close()  # the issuer keeps nothing of the connection


def test_restart_continues_the_chain(tmp_path: Path) -> None:
    issuer = open_issuer(tmp_path)
    assert issuer.prev_id is None and (tmp_path / ISSUER_FILENAME).exists()
    ids = [issue(issuer, n) for n in range(3)]
    again = open_issuer(tmp_path)
    assert again.prev_id == ids[-1]
    nxt = again.issue("api.call", height=2, subject=bytes(32), fields=FIELDS)
    assert nxt.prev == ids[-1]


def test_the_file_survives_a_database_moved_away(tmp_path: Path) -> None:
    # Resyncing the chain from peers starts a new database; the chain of receipts must not restart.
    last = issue(open_issuer(tmp_path), 0)
    (tmp_path / "node.duckdb").unlink()
    assert open_issuer(tmp_path).prev_id == last


def test_in_memory_database_keeps_the_head_in_memory() -> None:
    issuer = NodeIssuer(duckdb.connect(), KEY)
    assert issuer.file is None
    first = issue(issuer, 0)
    assert issuer.issue("api.call", height=1, subject=bytes(32), fields=FIELDS).prev == first


def test_a_legacy_table_head_is_carried_over_once(tmp_path: Path) -> None:
    legacy = bytes(range(32))
    conn = duckdb.connect(str(tmp_path / "node.duckdb"))
    conn.execute("CREATE TABLE node_receipt_issuer (issuer BLOB PRIMARY KEY, prev_id BLOB)")
    conn.execute("INSERT INTO node_receipt_issuer VALUES (?, ?)", [KEY.public_key, legacy])
    issuer = NodeIssuer(conn, KEY)
    conn.close()
    assert issuer.prev_id == legacy
    newest = issue(issuer, 0)
    assert open_issuer(tmp_path).prev_id == newest  # the file, not the stale table


def test_a_torn_newest_slot_falls_back_to_the_one_before(tmp_path: Path) -> None:
    issuer = open_issuer(tmp_path)
    first, second = issue(issuer, 0), issue(issuer, 1)
    path = tmp_path / ISSUER_FILENAME
    raw = bytearray(path.read_bytes())
    sequence = issuer.file.sequence if issuer.file else -1
    raw[(sequence % 2) * SLOT_STRIDE + 50] ^= 0xFF  # the slot holding `second`, torn
    path.write_bytes(bytes(raw))
    assert open_issuer(tmp_path).prev_id == first != second


def test_a_file_with_no_valid_slot_is_refused(tmp_path: Path) -> None:
    issue(open_issuer(tmp_path), 0)
    (tmp_path / ISSUER_FILENAME).write_bytes(b"\x00" * FILE_SIZE)
    with pytest.raises(IssuerStateError, match="corrupt") as info:
        open_issuer(tmp_path)
    assert isinstance(info.value, DataDirError) and info.value.exit_code == EXIT_DATA_DIR
    assert str(tmp_path / ISSUER_FILENAME) in str(info.value)
    (tmp_path / ISSUER_FILENAME).write_bytes(b"")  # empty (the file is never created in place, but a disk may lose it)
    with pytest.raises(IssuerStateError, match="corrupt"):
        open_issuer(tmp_path)


def test_another_keys_file_is_refused(tmp_path: Path) -> None:
    issue(open_issuer(tmp_path, OTHER), 0)
    with pytest.raises(IssuerStateError, match="another key"):
        open_issuer(tmp_path, KEY)


def test_a_receipt_that_cannot_be_stored_is_not_issued(tmp_path: Path) -> None:
    data_dir = tmp_path / "data"
    data_dir.mkdir()
    issuer = open_issuer(data_dir)
    first = issue(issuer, 0)
    shutil.rmtree(data_dir)  # the disk refuses the next write
    with pytest.raises(IssuerStateError, match="cannot write"):
        issue(issuer, 1)
    assert issuer.prev_id == first  # the chain did not advance past a receipt nobody got
    data_dir.mkdir()  # the disk is back: still nothing until a restart re-reads what reached it
    with pytest.raises(IssuerStateError, match="until the node restarts"):
        issue(issuer, 1)
    assert issuer.prev_id == first


def test_the_file_is_two_slots_in_separate_blocks(tmp_path: Path) -> None:
    issuer = open_issuer(tmp_path)
    raw = (tmp_path / ISSUER_FILENAME).read_bytes()
    assert len(raw) == FILE_SIZE == SLOT_STRIDE + SLOT_SIZE and raw[SLOT_STRIDE:] == bytes(SLOT_SIZE)
    assert raw[:8] == bytes(8) and raw[8:40] == KEY.public_key and raw[40:72] == bytes(32)  # sequence 0, no head
    first, second = issue(issuer, 0), issue(issuer, 1)
    raw = (tmp_path / ISSUER_FILENAME).read_bytes()
    assert len(raw) == FILE_SIZE  # written in place: the size never changes
    assert raw[SLOT_STRIDE:SLOT_STRIDE + 8] == (1).to_bytes(8, "big") and raw[SLOT_STRIDE + 40:SLOT_STRIDE + 72] == first
    assert raw[:8] == (2).to_bytes(8, "big") and raw[40:72] == second


def test_a_slot_copied_into_the_other_place_is_not_trusted(tmp_path: Path) -> None:
    # A slot's place is its sequence's parity: a block written to the wrong offset is not a head.
    issuer = open_issuer(tmp_path)
    issue(issuer, 0), issue(issuer, 1)  # sequence 1 in slot 1, sequence 2 in slot 0
    path = tmp_path / ISSUER_FILENAME
    raw = bytearray(path.read_bytes())
    raw[SLOT_STRIDE:SLOT_STRIDE + SLOT_SIZE] = raw[:SLOT_SIZE]  # slot 1 now holds a copy of sequence 2
    raw[:SLOT_SIZE] = bytes(SLOT_SIZE)
    path.write_bytes(bytes(raw))
    with pytest.raises(IssuerStateError, match="corrupt"):
        open_issuer(tmp_path)


def test_a_lost_file_is_refused_once_the_database_knew_it(tmp_path: Path) -> None:
    issue(open_issuer(tmp_path), 0)
    (tmp_path / ISSUER_FILENAME).unlink()
    with pytest.raises(IssuerStateError, match="missing"):
        open_issuer(tmp_path)
    assert not (tmp_path / ISSUER_FILENAME).exists()  # nothing started afresh


def test_a_lost_file_is_refused_when_the_log_holds_this_keys_receipts(tmp_path: Path) -> None:
    # A database without the marker (moved in from elsewhere) whose receipt log holds this key's receipts.
    memory = NodeIssuer(duckdb.connect(), KEY)
    receipt = memory.issue("api.call", height=1, subject=bytes(32), fields=FIELDS)
    conn = duckdb.connect(str(tmp_path / "node.duckdb"))
    ReceiptLog(conn).append_receipts([receipt])
    conn.close()
    with pytest.raises(IssuerStateError, match="missing, but the receipt log holds"):
        open_issuer(tmp_path)
    assert not (tmp_path / ISSUER_FILENAME).exists()


def test_a_stale_file_is_refused_when_the_log_holds_a_later_receipt(tmp_path: Path) -> None:
    # A file restored from a backup: the log shows a receipt chained after the head it names.
    conn = duckdb.connect(str(tmp_path / "node.duckdb"))
    issuer = NodeIssuer(conn, KEY)
    issuer.issue("api.call", height=1, subject=bytes(32), fields=FIELDS)
    backup = (tmp_path / ISSUER_FILENAME).read_bytes()
    later = issuer.issue("api.call", height=2, subject=bytes(32), fields=FIELDS)
    ReceiptLog(conn).append_receipts([later])
    conn.close()
    assert open_issuer(tmp_path).prev_id == later.id  # the newest file agrees with the log
    (tmp_path / ISSUER_FILENAME).write_bytes(backup)
    with pytest.raises(IssuerStateError, match="behind the chain"):
        open_issuer(tmp_path)


def test_a_migrated_legacy_head_is_never_read_again(tmp_path: Path) -> None:
    conn = duckdb.connect(str(tmp_path / "node.duckdb"))
    conn.execute("CREATE TABLE node_receipt_issuer (issuer BLOB PRIMARY KEY, prev_id BLOB)")
    conn.execute("INSERT INTO node_receipt_issuer VALUES (?, ?)", [KEY.public_key, bytes(range(32))])
    NodeIssuer(conn, KEY)
    assert conn.execute("SELECT count(*) FROM node_receipt_issuer").fetchone() == (0,)
    conn.close()
    (tmp_path / ISSUER_FILENAME).unlink()  # the file lost after the migration: the stale row must not come back
    with pytest.raises(IssuerStateError, match="missing"):
        open_issuer(tmp_path)


def test_a_legacy_data_dir_that_never_issued_starts_its_chain(tmp_path: Path) -> None:
    conn = duckdb.connect(str(tmp_path / "node.duckdb"))
    conn.execute("CREATE TABLE node_receipt_issuer (issuer BLOB PRIMARY KEY, prev_id BLOB)")  # every old start made it
    assert NodeIssuer(conn, KEY).prev_id is None
    conn.close()


def test_a_crash_before_the_new_file_was_renamed_leaves_no_file(tmp_path: Path) -> None:
    # create() writes a temporary file and renames it: a crash before the rename leaves only the temporary.
    (tmp_path / (ISSUER_FILENAME + ".tmp")).write_bytes(b"\x01" * 17)
    issuer = open_issuer(tmp_path)
    assert issuer.prev_id is None and len((tmp_path / ISSUER_FILENAME).read_bytes()) == FILE_SIZE


async def test_a_failed_write_stops_the_node_through_watch(tmp_path: Path) -> None:
    # A gateway's RPC handler that hit the failure answers an error; watch() is what stops the daemon.
    data_dir = tmp_path / "data"
    data_dir.mkdir()
    issuer = open_issuer(data_dir)
    issue(issuer, 0)
    with pytest.raises(BaseExceptionGroup) as info:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(issuer.watch)
            await trio.sleep(0)
            shutil.rmtree(data_dir)
            with pytest.raises(IssuerStateError):
                issue(issuer, 1)
            await trio.sleep_forever()
    failure = daemon_failure(info.value, data_dir)
    assert failure is not None
    error, unexpected = failure
    assert isinstance(error, DataDirError) and not unexpected and error.exit_code == EXIT_DATA_DIR
    assert "cannot write the receipt issuer state" in str(error) and "the node stopped" in str(error)
