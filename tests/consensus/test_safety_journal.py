"""The safety file as an append-only journal: appends, torn tails, damage,
compaction and its crashes, migration from the single-record file, and a
disk that refuses (real files throughout)."""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
import textwrap

import pytest

from node.consensus import safety as safety_module
from node.consensus import safety_journal as journal
from node.consensus.safety import SafetyState, SafetyStateError, SafetyStore, SafetyWriteError
from tests.consensus.test_chain_local_faults import fill, needs_root, small_tmpfs


def state(n: int, block: int = 0) -> SafetyState:
    prepared = bytes([n % 256]) * block if block else None
    return SafetyState(height=n, round=n % 3, step=n % 4, signed_payload=b"p%d" % n,
                       prepared_round=0 if prepared else None, prepared_block=prepared,
                       prepared_certificate=((b"k" * 32, b"pay%d" % n, b"s" * 64),) if prepared else ())


def reopened(path) -> SafetyState | None:
    return SafetyStore(path).load()


def test_round_trip_and_reopen_after_many_saves(tmp_path):
    path = tmp_path / "consensus-safety.cbor"
    store = SafetyStore(path)
    assert store.load() is None
    for n in range(1, 301):
        store.save(state(n, block=n % 7 * 40))
        if n % 50 == 0:
            assert reopened(path) == state(n, block=n % 7 * 40)
    inode = path.stat().st_ino
    again = SafetyStore(path)
    assert again.load() == state(300, block=300 % 7 * 40)
    for n in range(301, 311):  # appends go on after a reopen, in place
        again.save(state(n))
    assert path.stat().st_ino == inode and os.listdir(tmp_path) == [path.name]
    found = journal.scan(path.read_bytes())
    assert found.sequence == 310 and found.end == found.size
    assert reopened(path) == state(310)
    assert (path.stat().st_mode & 0o777) == 0o600


def test_torn_last_record_at_every_length_loads_the_previous_state(tmp_path):
    path = tmp_path / "safety"
    store = SafetyStore(path)
    store.save(state(1))
    store.save(state(2, block=90))
    before = path.stat().st_size
    store.save(state(3, block=120))
    whole = path.read_bytes()
    for length in range(before, len(whole)):
        path.write_bytes(whole[:length])
        torn = SafetyStore(path)
        assert torn.load() == state(2, block=90), length
        torn.save(state(4))  # the torn tail is cut off before the append
        assert reopened(path) == state(4), length
        assert path.stat().st_size == before + journal.record_bytes(len(state(4).encode()))


def test_a_garbled_or_zeroed_last_append_loads_the_previous_state(tmp_path):
    # A crash between the write and its sync can leave the last record whole in
    # length but garbled: that save never returned, so nothing it guarded was sent.
    path = tmp_path / "safety"
    store = SafetyStore(path)
    store.save(state(1))
    start = path.stat().st_size
    store.save(state(2, block=64))
    whole = path.read_bytes()
    for garbled in (whole[:start] + bytes(len(whole) - start),
                    whole[:-40] + bytes([whole[-40] ^ 1]) + whole[-39:]):
        path.write_bytes(garbled)
        assert reopened(path) == state(1)


def test_damage_before_the_last_whole_record_is_refused(tmp_path):
    path = tmp_path / "safety"
    store = SafetyStore(path)
    ends = []
    for n in (1, 2, 3):
        store.save(state(n, block=20))
        ends.append(path.stat().st_size)
    whole = path.read_bytes()
    # Every byte of the first and the middle record: never started afresh, never rolled back.
    for offset in range(ends[1]):
        damaged = bytearray(whole)
        damaged[offset] ^= 0x40
        path.write_bytes(bytes(damaged))
        with pytest.raises(SafetyStateError, match="corrupt") as info:
            reopened(path)
        assert str(path) in str(info.value), offset
    # Bytes past a damaged last record (it was whole once) are refused too.
    path.write_bytes(whole[:-1] + bytes([whole[-1] ^ 1]) + b"more")
    with pytest.raises(SafetyStateError, match="bytes follow it"):
        reopened(path)


def test_sequence_numbers_must_run_on_by_one(tmp_path):
    path = tmp_path / "safety"
    bodies = [state(n).encode() for n in range(3)]
    for sequences in ((1, 2, 4), (1, 2, 2), (5, 4, 5)):
        path.write_bytes(b"".join(journal.encode_record(s, b) for s, b in zip(sequences, bodies)))
        with pytest.raises(SafetyStateError, match="sequence"):
            reopened(path)
    path.write_bytes(b"".join(journal.encode_record(s, b) for s, b in zip((7, 8, 9), bodies)))
    assert reopened(path) == state(2)


def test_empty_or_unknown_files_are_refused(tmp_path):
    path = tmp_path / "safety"
    for raw in (b"", b"x", b"mnsafe", b"\0" * 200):
        path.write_bytes(raw)
        with pytest.raises(SafetyStateError, match="corrupt"):
            reopened(path)
    record = bytearray(journal.encode_record(1, state(1).encode()))
    record[7] = 2  # version 2
    path.write_bytes(bytes(record))
    with pytest.raises(SafetyStateError, match="version 2 is not supported"):
        reopened(path)


def test_compaction_keeps_the_state_and_bounds_the_file(tmp_path):
    path = tmp_path / "safety"
    store = SafetyStore(path, compact_at_bytes=4096)
    sizes = []
    for n in range(1, 400):
        store.save(state(n, block=n % 5 * 30))
        sizes.append(path.stat().st_size)
        assert sizes[-1] <= 4096
    assert sum(b < a for a, b in zip(sizes, sizes[1:])) > 5  # it compacted, many times
    assert os.listdir(tmp_path) == ["safety"]
    assert reopened(path) == state(399, block=399 % 5 * 30)
    found = journal.scan(path.read_bytes())
    assert found.sequence == 399  # sequence numbers go on across compactions
    # A record larger than the budget: the budget grows to 4x the largest record.
    store.save(state(400, block=3000))
    store.save(state(401, block=3000))
    assert reopened(path) == state(401, block=3000)
    assert journal.scan(path.read_bytes()).largest > 3000


class Crash(BaseException):
    """The process dies here: nothing after it runs, no cleanup."""


def _crash(*args, **kwargs):
    raise Crash


@pytest.mark.parametrize("step", ["write", "fsync", "rename", "fsync_dir"])
def test_a_crash_at_each_step_of_compaction_leaves_a_whole_state(tmp_path, monkeypatch, step):
    path = tmp_path / "safety"
    store = SafetyStore(path, compact_at_bytes=2048)
    n = 1
    store.save(state(n))
    while path.stat().st_size + 250 < 2048:  # small records: appended, short of the budget
        n += 1
        store.save(state(n))
    old = state(n)
    new = state(n + 1, block=200)  # does not fit: this save compacts
    target = {"write": (os, "pwrite"), "fsync": (os, "fsync"), "rename": (os, "replace"),
              "fsync_dir": (safety_module, "fsync_dir")}[step]
    if step == "write":  # half the temp file is written, then the crash
        real = os.pwrite
        monkeypatch.setattr(os, "pwrite", lambda fd, data, at: (real(fd, bytes(data)[:100], at), _crash())[0])
    else:
        monkeypatch.setattr(*target, _crash)
    size = path.stat().st_size
    with pytest.raises(Crash):
        store.save(new)
    monkeypatch.undo()
    assert size + journal.record_bytes(len(new.encode())) > 2048
    expected = new if step == "fsync_dir" else old  # renamed: the new file is in place
    assert (path.with_name("safety.tmp").exists()) == (step in ("write", "fsync", "rename"))
    restarted = SafetyStore(path, compact_at_bytes=2048)
    assert restarted.load() == expected
    restarted.save(state(n + 2))  # and it goes on from there
    assert reopened(path) == state(n + 2)


def _old_format(path, value: SafetyState) -> None:
    body = value.encode()
    path.write_bytes(hashlib.sha256(body).digest() + body)


def test_the_old_single_record_file_loads_and_migrates_on_the_first_save(tmp_path, monkeypatch):
    path = tmp_path / "consensus-safety.cbor"
    _old_format(path, state(5, block=50))
    store = SafetyStore(path)
    assert store.load() == state(5, block=50)
    # A crash while migrating leaves the old file, whole.
    monkeypatch.setattr(os, "replace", _crash)
    with pytest.raises(Crash):
        store.save(state(6))
    monkeypatch.undo()
    assert reopened(path) == state(5, block=50)
    store = SafetyStore(path)
    assert store.load() == state(5, block=50)
    store.save(state(6))
    assert journal.is_journal(path.read_bytes()) and os.listdir(tmp_path) == [path.name]
    store.save(state(7))
    assert reopened(path) == state(7)
    # An old file that fails its digest is refused, as before.
    _old_format(path, state(8))
    path.write_bytes(path.read_bytes()[:-1] + b"\0")
    with pytest.raises(SafetyStateError, match="checksum mismatch"):
        reopened(path)


_REFUSAL = textwrap.dedent("""
    import os, resource, signal, sys
    from node.consensus.safety import SafetyState, SafetyStore, SafetyWriteError
    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # a write past the limit fails with EFBIG instead
    path, mode = sys.argv[1], sys.argv[2]
    store = SafetyStore(path)
    if mode == "append":
        store.load()
    resource.setrlimit(resource.RLIMIT_FSIZE, (os.path.getsize(path) + 200, resource.RLIM_INFINITY))
    attempts = ((9, 500), (9, 0), (10, 500)) if mode == "append" else ((9, 500),)
    for height, size in attempts:
        try:
            store.save(SafetyState(height=height, step=1, signed_payload=b"x" * size))
            print("saved", height, size, os.path.getsize(path))
        except SafetyWriteError as exc:
            print("refused", height, size, os.path.getsize(path), exc.exit_code, str(exc))
""")


@pytest.mark.parametrize("mode", ["append", "compact"])
def test_a_refused_write_raises_and_leaves_the_previous_state(tmp_path, mode):
    path = tmp_path / "consensus-safety.cbor"
    SafetyStore(path).save(SafetyState(height=8, step=1, signed_payload=b"p"))
    size = path.stat().st_size
    root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    out = subprocess.run([sys.executable, "-c", _REFUSAL, str(path), mode], cwd=root, capture_output=True,
                         text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    lines = out.stdout.splitlines()
    assert lines[0].startswith(f"refused 9 500 {size} ") and "File too large" in lines[0] \
        and "stopped voting" in lines[0], lines
    if mode == "append":  # the half record was taken back: the store goes on
        assert lines[1].startswith("saved 9 0 ") and lines[2].startswith("refused 10 500 "), lines
        assert reopened(path) == SafetyState(height=9, step=1, signed_payload=b"")
    else:  # a failed rewrite leaves the old file and no temp file
        assert reopened(path) == SafetyState(height=8, step=1, signed_payload=b"p")
        assert os.listdir(tmp_path) == [path.name]


def test_a_store_that_cannot_take_back_a_half_record_refuses_every_later_save(tmp_path):
    path = tmp_path / "safety"
    store = SafetyStore(path)
    store.save(state(1))
    store.save(state(2))
    assert store._fd is not None
    read_only = os.open(path, os.O_RDONLY)
    os.dup2(read_only, store._fd)  # the descriptor turns read-only: no write, no take-back
    os.close(read_only)
    with pytest.raises(SafetyWriteError, match="Bad file descriptor"):
        store.save(state(3))
    with pytest.raises(SafetyWriteError, match="stopped voting"):
        store.save(state(4))
    assert reopened(path) == state(2)


@needs_root
def test_a_full_disk_refuses_an_append_that_needs_room(tmp_path):
    with small_tmpfs(tmp_path / "disk", "64k") as disk:
        store = SafetyStore(disk / "consensus-safety.cbor")
        store.save(SafetyState(height=3, round=0, step=1, signed_payload=b"p"))
        fill(disk)
        # An append that fits the file's last page needs no room: it is durable, rightly.
        store.save(SafetyState(height=3, round=0, step=2, signed_payload=b"q" * 100))
        with pytest.raises(SafetyWriteError) as info:  # one that needs a new page does not fit
            store.save(SafetyState(height=3, round=0, step=3, signed_payload=b"r" * 8192))
        message = str(info.value)
        assert str(disk) in message and "No space left on device" in message and "stopped voting" in message
        assert reopened(store.path) == SafetyState(height=3, round=0, step=2, signed_payload=b"q" * 100)
        assert sorted(os.listdir(disk)) == ["consensus-safety.cbor", "filler"]


def test_a_record_is_laid_out_as_docs_data_dir_says():
    body = b"\xa0"
    header = b"mnsafe" + (1).to_bytes(2, "big") + (7).to_bytes(8, "big") + (1).to_bytes(4, "big")
    assert journal.encode_record(7, body) == header + body + hashlib.sha256(header + body).digest()
