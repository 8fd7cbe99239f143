"""ChainStore.append_block for a 1,000-transaction block on a long chain.

    .venv/bin/python bench/store_append.py                 # chains of 20k and 200k stored txs
    .venv/bin/python bench/store_append.py --stored 2000000
    .venv/bin/python bench/store_append.py --smoke         # tiny sizes, for CI

The chain is filled in bulk with SQL (synthetic rows with random hashes:
what matters to the append is how many transactions the duplicate check and
the primary key must search), then real signed 1,000-transaction blocks are
appended to a DuckDB file (threads=1, as a node runs beside its peers). Two
figures per chain length:

* cold: the store decodes each transaction itself (a block from sync, or a
  node without the decoded-transaction cache);
* warm: the transactions were decoded before (by the mempool or the block
  check, as on a validator), so the append is DuckDB work and the nonce check.

Beside them, the duplicate check's own query and a one-row DuckDB point
query (the floor any query pays from Python), measured in the same run.

And the checkpoint that follows the appends (it runs every ~16 MiB of log):
its CPU, beside the checkpoint after the same transactions go into a copy
of ``chain_txs`` keyed by hash, as schema 4 kept it. DuckDB rewrites an
index of random keys whole at every checkpoint, so that baseline grows with
the chain; the store's (schema 5: hashes indexed in segments of 2^20 keys,
only the newest written) is bounded by one segment. The
store before issue 16 ran a ``list_contains`` query over ``chain_txs`` on
every append; now a good block runs no query for it (the primary key's index
is probed by the insert itself) and the figure is the lookup that names the
repeated transaction when a block is refused (a key lookup).
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from node.base.codec import hash_tagged  # noqa: E402
from node.base.db import checkpoint_node_db, open_node_db  # noqa: E402
from node.base.keys import Identity  # noqa: E402
from node.consensus.store import ChainStore  # noqa: E402
from node.consensus.tx import sign_tx  # noqa: E402
from node.consensus.tx_index import build_from_chain_txs  # noqa: E402

CHAIN = "bench"
SENDERS = 100


def _fill(conn, stored: int, block_txs: int) -> None:  # type: ignore[no-untyped-def]
    """``stored`` synthetic transactions in blocks of ``block_txs``, and a head."""
    blocks = max(1, stored // block_txs)
    conn.execute(
        "INSERT INTO chain_blocks (height, hash, parent_hash, timestamp_ms, proposer, tx_count, block) "
        "SELECT range, unhex(sha256('block' || range::VARCHAR)), unhex(sha256('block' || (range - 1)::VARCHAR)), "
        "range, '\\x00'::BLOB, ?, 'block'::BLOB FROM range(1, ? + 1)", (block_txs, blocks))
    conn.execute(
        "INSERT INTO chain_txs (hash, height, idx, sender, nonce, type, tx_offset, tx_length) "
        "SELECT unhex(sha256('tx' || range::VARCHAR)), range // ? + 1, range % ?, "
        "unhex(sha256('s' || (range % 997)::VARCHAR)), range // 997, 'noop', 0, 5 "
        "FROM range(?)", (block_txs, block_txs, blocks * block_txs))
    build_from_chain_txs(conn)  # the hash index's segments, as appends would have written them
    top = conn.execute("SELECT height, hash FROM chain_blocks ORDER BY height DESC LIMIT 1").fetchone()
    conn.execute("INSERT INTO chain_head VALUES (0, ?, ?)", (top[0], top[1]))
    conn.execute("CHECKPOINT")


def _blocks(count: int, block_txs: int) -> list[list[bytes]]:
    senders = [Identity.from_label(f"store-bench-{i}") for i in range(SENDERS)]
    nonces = [0] * SENDERS
    blocks = []
    for _ in range(count):
        txs = []
        for i in range(block_txs):
            who = i % SENDERS
            txs.append(sign_tx(senders[who], chain_id=CHAIN, nonce=nonces[who], tx_type="noop",
                               payload={"n": nonces[who], "pad": b"\xab" * 100}).encoded)
            nonces[who] += 1
        blocks.append(txs)
    return blocks


def _keyed_checkpoint_ms(conn, txs: list[bytes]) -> float:  # type: ignore[no-untyped-def]
    """CPU of a checkpoint after ``txs`` (the appended blocks' transactions) go into a copy
    of chain_txs keyed by hash, as schema 4 kept it: one index over the whole chain."""
    conn.execute("CREATE TABLE keyed_txs (hash BLOB PRIMARY KEY, height UBIGINT, idx INTEGER, sender BLOB, "
                 "nonce UBIGINT, type VARCHAR, tx BLOB)")
    conn.execute("INSERT INTO keyed_txs SELECT hash, height, idx, sender, nonce, type, repeat('\\xAB'::BLOB, 200) "
                 "FROM chain_txs")
    checkpoint_node_db(conn)
    conn.execute("INSERT INTO keyed_txs SELECT unnest($1), 0, 0, '\\x00'::BLOB, 0, 'noop', unnest($2)",
                 [[hash_tagged("keyed", raw) for raw in txs], txs])
    started = time.process_time()
    checkpoint_node_db(conn)
    return (time.process_time() - started) * 1000


def measure(stored: int, block_txs: int, rounds: int) -> dict[str, float]:
    """Median append times (ms) on a chain of ``stored`` transactions."""
    blocks = _blocks(2 * rounds, block_txs)
    with tempfile.TemporaryDirectory() as data_dir:
        conn = open_node_db(data_dir)
        conn.execute("SET threads = 1")
        ChainStore(conn)  # creates the tables
        _fill(conn, stored, block_txs)
        store = ChainStore(conn)
        cache = getattr(store, "tx_cache", None)
        cold: list[float] = []
        warm: list[float] = []
        for n, txs in enumerate(blocks):
            use_cache = cache is not None and n % 2 == 1
            if use_cache:
                for raw in txs:
                    cache.decode(raw)
            head = store.head()
            assert head is not None
            block = b"bench-block" + (head.height + 1).to_bytes(8, "big") + b"".join(txs)
            started = time.perf_counter()
            store.append_block(height=head.height + 1, block_hash=hash_tagged("bench/block", block),
                               parent_hash=head.hash, timestamp_ms=head.height + 1, proposer=bytes(32),
                               block=block, txs=txs)
            elapsed = (time.perf_counter() - started) * 1000
            (warm if use_cache else cold).append(elapsed)
            if cache is not None:
                cache.evict(hash_tagged("metanode/tx/v1", raw) for raw in txs)
        probe = [hash_tagged("probe", i.to_bytes(4, "big")) for i in range(block_txs)]
        # Only on a refused block: the hash index (schema 5), the primary key (schema 4), else the old scan.
        index = getattr(store, "_index", None)
        duplicate_check = index.first_found if index is not None else getattr(store, "_already_stored", None)
        checks: list[float] = []
        points: list[float] = []
        for _ in range(rounds):
            started = time.perf_counter()
            if duplicate_check is not None:
                duplicate_check(probe)
            else:  # the store before the key lookup: the query it ran
                conn.execute("SELECT hash, height FROM chain_txs WHERE list_contains($1, hash) LIMIT 1",
                             [probe]).fetchone()
            checks.append((time.perf_counter() - started) * 1000)
            started = time.perf_counter()
            conn.execute("SELECT height FROM chain_blocks WHERE height = ?", (1,)).fetchone()
            points.append((time.perf_counter() - started) * 1000)
        total = conn.execute("SELECT count(*) FROM chain_txs").fetchone()[0]
        started = time.process_time()
        checkpoint_node_db(conn)
        checkpoint_ms = (time.process_time() - started) * 1000
        keyed_ms = _keyed_checkpoint_ms(conn, [raw for txs in blocks for raw in txs])
        conn.close()
    result = {"stored_txs": stored, "chain_txs_after": total, "block_txs": block_txs,
              "append_cold_ms": statistics.median(cold),
              "duplicate_check_per_append": duplicate_check is None,
              "duplicate_check_ms": statistics.median(checks), "point_query_ms": statistics.median(points),
              "checkpoint_cpu_ms": checkpoint_ms, "hash_keyed_checkpoint_cpu_ms": keyed_ms}
    if warm:
        result["append_warm_ms"] = statistics.median(warm)
    return result


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--stored", type=int, action="append", help="stored transactions (repeatable)")
    parser.add_argument("--block-txs", type=int, default=1000)
    parser.add_argument("--rounds", type=int, default=7, help="blocks appended per figure (median)")
    parser.add_argument("--smoke", action="store_true", help="tiny sizes, for CI")
    parser.add_argument("--json", action="store_true", help="print only JSON lines")
    args = parser.parse_args(argv)
    if args.smoke:
        args.stored, args.block_txs, args.rounds = [2000], 100, 2
    for stored in args.stored or [20_000, 200_000]:
        result = measure(stored, args.block_txs, args.rounds)
        if not args.json:
            warm = f"{result['append_warm_ms']:8.1f}" if "append_warm_ms" in result else "     n/a"
            print(f"append_block, {args.block_txs:,} txs on {stored:>9,} stored: cold {result['append_cold_ms']:8.1f} ms"
                  f"  warm {warm} ms  duplicate "
                  f"{'check (every append)' if result['duplicate_check_per_append'] else 'lookup (refusals only)'}"
                  f" {result['duplicate_check_ms']:6.2f} ms"
                  f"  (one-row point query {result['point_query_ms']:.2f} ms)")
            print(f"  checkpoint after the appends: CPU {result['checkpoint_cpu_ms']:7.1f} ms; baseline, the same rows "
                  f"keyed by hash (schema 4) {result['hash_keyed_checkpoint_cpu_ms']:7.1f} ms")
        print(json.dumps({"metric": "store_append", **result}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
