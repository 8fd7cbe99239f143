"""Crash recovery: SIGKILL a process appending blocks, reopen, check consistency.

The child (this file run as a script) appends blocks forever, printing each
height once ``append_block`` has returned. The parent kills it at random
moments (a seeded schedule, so a failure names its round), several times
over the same data directory, and after each kill checks that the store
reopens at the last complete block: every block up to the head with all its
transactions and nonce updates, nothing of any later block.
"""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

if __name__ == "__main__":  # the child runs from a bare interpreter
    sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from node.base.codec import hash_tagged
from node.base.db import open_node_db
from node.base.keys import Identity
from node.consensus.store import ChainStore
from node.consensus.tx import sign_tx

CHAIN = "crash-test"
GENESIS = hash_tagged("test/genesis", CHAIN.encode())
SENDERS = [Identity.from_label(f"crash-{i}") for i in range(12)]


def plan(height: int) -> list[int]:
    """Which senders (by index, in order) have a transaction in block ``height``."""
    rng = random.Random(height)
    return [rng.randrange(len(SENDERS)) for _ in range(rng.randrange(0, 120))]


def block_bytes(height: int, parent: bytes, txs: list[bytes]) -> bytes:
    """A block holds its transactions' bytes (the store keeps them only there)."""
    return b"crash-block" + height.to_bytes(8, "big") + parent + b"".join(txs)


def child(data_dir: str) -> None:
    conn = open_node_db(data_dir)
    # Checkpoint often, so kills also land inside checkpoints, not only WAL appends.
    store = ChainStore(conn, checkpoint_wal_bytes=256 * 1024)
    store.bind_chain(CHAIN, GENESIS)
    print("ready", flush=True)
    # Read once: DuckDB point queries are slow, and the kills should mostly
    # land inside append_block rather than in this loop's own bookkeeping.
    nonces = [store.next_nonce(identity.public_key) for identity in SENDERS]
    while True:
        head = store.head()
        height = 1 if head is None else head.height + 1
        parent = GENESIS if head is None else head.hash
        txs = []
        for who in plan(height):
            nonce = nonces[who]
            nonces[who] = nonce + 1
            txs.append(sign_tx(SENDERS[who], chain_id=CHAIN, nonce=nonce, tx_type="noop",
                               payload={"h": height, "pad": b"\xab" * 300}).encoded)
        block = block_bytes(height, parent, txs)
        store.append_block(height=height, block_hash=hash_tagged("test/block", block),
                           parent_hash=parent, timestamp_ms=height, proposer=b"crash", block=block, txs=txs)
        print(height, flush=True)


def check_consistent(data_dir: Path) -> int:
    """Reopen the store, check every invariant, return the head height."""
    conn = open_node_db(data_dir)
    try:
        store = ChainStore(conn)  # also checks the head row against the blocks
        assert store.chain_identity() in (None, (CHAIN, GENESIS))
        head = store.head()
        height = 0 if head is None else head.height
        parent = GENESIS
        expected_nonce = [0] * len(SENDERS)
        total_txs = 0
        for h in range(1, height + 1):
            stored = store.block_by_height(h)
            assert stored is not None, f"block {h} missing below head {height}"
            assert stored.parent_hash == parent
            assert stored.hash == hash_tagged("test/block", stored.block)
            txs = store.block_txs(h)
            senders = plan(h)
            assert stored.tx_count == len(txs) == len(senders), f"block {h} lost transactions"
            assert stored.block == block_bytes(h, parent, txs)
            for who in senders:
                expected_nonce[who] += 1
            total_txs += len(txs)
            parent = stored.hash
        assert head is None or head.hash == parent
        for who, identity in enumerate(SENDERS):
            assert store.next_nonce(identity.public_key) == expected_nonce[who]
        # Nothing of a later block: no stray transactions, blocks or nonces.
        assert conn.execute("SELECT count(*), coalesce(max(height), 0) <= ? FROM chain_txs",
                            (height,)).fetchone() == (total_txs, True)
        assert conn.execute("SELECT count(*), coalesce(max(height), 0) FROM chain_blocks"
                            ).fetchone() == (height, height)
        return height
    finally:
        conn.close()


def _run_and_kill(data_dir: Path, delay: float) -> int | None:
    """Start the child, SIGKILL it ``delay`` s after it is ready; the last height it reported."""
    proc = subprocess.Popen([sys.executable, __file__, str(data_dir)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    assert proc.stdout is not None and proc.stderr is not None
    try:
        ready = proc.stdout.readline().strip()
        assert ready == "ready", f"child failed to start: {ready!r} {proc.stderr.read()}"
        time.sleep(delay)
    finally:
        os.kill(proc.pid, signal.SIGKILL)
        out, err = proc.communicate(timeout=60)
    assert proc.returncode == -signal.SIGKILL, f"child died on its own: {err}"
    heights = [int(line) for line in out.split()]
    return heights[-1] if heights else None


def test_sigkill_while_appending_never_leaves_a_partial_block(tmp_path):
    rng = random.Random(20240611)
    last_head = 0
    appended_total = 0
    for round_ in range(6):
        delay = rng.uniform(0.05, 1.0)
        reported = _run_and_kill(tmp_path, delay)
        try:
            head = check_consistent(tmp_path)
        except BaseException as exc:
            # Keep the damaged files for inspection (the data directory is tmp_path).
            raise AssertionError(f"round {round_} (killed {delay:.3f} s after ready, last reported "
                                 f"height {reported}): store in {tmp_path} does not reopen: {exc}") from exc
        floor = reported if reported is not None else last_head
        # Everything whose append returned survives; at most the block in flight also landed.
        assert floor <= head <= floor + 1, f"round {round_}: reported {reported}, reopened at {head}"
        appended_total += head - last_head
        last_head = head
    assert appended_total > 0


if __name__ == "__main__":
    child(sys.argv[1])
