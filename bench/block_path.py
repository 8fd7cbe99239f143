"""One validator's block path in one process: CPU per transaction, with and without decode sharing.

    .venv/bin/python bench/block_path.py            # 6 blocks of 1,000 txs, each way, 3 rounds
    .venv/bin/python bench/block_path.py --smoke    # tiny sizes, for CI

The steps a validator takes for every transaction, on real objects (DuckDB
file, threads=1): mempool admission (the signature verified once), the
proposal check (``check_block_txs``), the receipt commitment twice (propose
or validate, then finalise: ``ChainApplication.receipts_in``), the chain
store append and the mempool's commit. Measured in process CPU time, so
other load on the machine matters less than for wall-clock figures.

Two rows: the node's decoded-transaction cache shared by every step (one
decode per transaction), and a one-entry cache, which decodes at every step
as the node did before issue 16. Beside them, one Ed25519 verify and one
``decode_tx`` from the same run.
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

import nacl.signing  # noqa: E402

from node.app.chain_app import ChainApplication  # noqa: E402
from node.app.policy import Governance  # noqa: E402
from node.base.codec import hash_tagged  # noqa: E402
from node.base.db import open_node_db  # noqa: E402
from node.base.keys import Identity  # noqa: E402
from node.consensus.mempool import Mempool  # noqa: E402
from node.consensus.store import ChainStore  # noqa: E402
from node.consensus.tx import TxTypeRegistry, decode_tx, sign_tx  # noqa: E402
from node.consensus.tx_caches import DecodedTxCache, SignatureCache  # noqa: E402
from node.consensus.tx_checks import check_block_txs  # noqa: E402

CHAIN = "block-path"
SENDERS = 50


def _blocks(count: int, size: int) -> list[list[bytes]]:
    senders = [Identity.from_label(f"block-path-{i}") for i in range(SENDERS)]
    nonces = [0] * SENDERS
    blocks = []
    for _ in range(count):
        txs = []
        for i in range(size):
            who = i % SENDERS
            txs.append(sign_tx(senders[who], chain_id=CHAIN, nonce=nonces[who], tx_type="noop",
                               payload={"n": nonces[who], "pad": b"p" * 60}).encoded)
            nonces[who] += 1
        blocks.append(txs)
    return blocks


def run_path(blocks: list[list[bytes]], cache: DecodedTxCache) -> list[float]:
    """CPU microseconds per transaction of each block's whole path."""
    with tempfile.TemporaryDirectory() as data_dir:
        conn = open_node_db(data_dir)
        conn.execute("SET threads = 1")
        store = ChainStore(conn, tx_cache=cache)
        app = ChainApplication(conn, store, governance=Governance(validators=(Identity.from_label("v").public_key,)))
        registry = TxTypeRegistry.with_builtins()
        app.register_tx_types(registry)
        signatures = SignatureCache()
        pool = Mempool(chain_id=CHAIN, registry=registry, committed_nonce=store.next_nonce,
                       signatures=signatures, tx_cache=cache)
        parent, per_tx = bytes(32), []
        for height, txs in enumerate(blocks, 1):
            started = time.process_time()
            for raw in txs:
                if not pool.add(raw).accepted:
                    raise SystemExit("a bench transaction was refused")
            reaped = pool.reap(10**9, len(txs))
            check_block_txs(reaped, chain_id=CHAIN, registry=registry, committed_nonce=store.next_nonce,
                            signatures=signatures, tx_cache=cache)
            app.receipts_in(reaped, height)  # propose / validate
            app.receipts_in(reaped, height + len(blocks))  # finalise (another key: not the memo's answer)
            block = b"block-path" + height.to_bytes(8, "big") + b"".join(reaped)
            store.append_block(height=height, block_hash=hash_tagged("bench/block", block), parent_hash=parent,
                               timestamp_ms=height, proposer=bytes(32), block=block, txs=reaped)
            parent = hash_tagged("bench/block", block)
            pool.on_commit(height, reaped)
            per_tx.append((time.process_time() - started) / len(txs) * 1e6)
        conn.close()
    return per_tx[1:] if len(per_tx) > 1 else per_tx  # the first block warms DuckDB up


def per_op_us(operation, items: list) -> float:  # type: ignore[no-untyped-def,type-arg]
    started = time.process_time()
    for item in items:
        operation(item)
    return (time.process_time() - started) / len(items) * 1e6


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--blocks", type=int, default=6)
    parser.add_argument("--block-txs", type=int, default=1000)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--smoke", action="store_true", help="tiny sizes, for CI")
    parser.add_argument("--json", action="store_true", help="print only the JSON line")
    args = parser.parse_args(argv)
    if args.smoke:
        args.blocks, args.block_txs, args.rounds = 2, 50, 1
    blocks = _blocks(args.blocks, args.block_txs)
    shared: list[float] = []
    every_step: list[float] = []
    decodes: dict[str, int] = {}
    for _ in range(args.rounds):  # alternated, so both see the same machine
        cache = DecodedTxCache()
        shared += run_path(blocks, cache)
        decodes["shared"] = cache.misses
        one = DecodedTxCache(max_entries=1)
        every_step += run_path(blocks, one)
        decodes["every_step"] = one.misses
    key = nacl.signing.SigningKey(b"\x01" * 32)
    signed = [key.sign(b"m" * 200) for _ in range(2000)]
    verify_us = per_op_us(key.verify_key.verify, signed)
    decode_us = per_op_us(decode_tx, [raw for block in blocks for raw in block])
    total = args.blocks * args.block_txs
    result = {"metric": "block_path", "block_txs": args.block_txs,
              "shared_cache_us_per_tx": statistics.median(shared), "decode_every_step_us_per_tx": statistics.median(every_step),
              "decodes_per_tx_shared": decodes["shared"] / total, "decodes_per_tx_every_step": decodes["every_step"] / total,
              "ed25519_verify_us": verify_us, "decode_tx_us": decode_us}
    if not args.json:
        print(f"block path of one validator, blocks of {args.block_txs:,} txs, CPU per tx (median of "
              f"{len(shared)} blocks each way)")
        print(f"  decoded-transaction cache shared:  {result['shared_cache_us_per_tx']:7.1f} us "
              f"({result['decodes_per_tx_shared']:.2f} decodes per tx) = "
              f"{result['shared_cache_us_per_tx'] / verify_us:.2f} Ed25519 verifies")
        print(f"  decoded at every step (before):    {result['decode_every_step_us_per_tx']:7.1f} us "
              f"({result['decodes_per_tx_every_step']:.2f} decodes per tx) = "
              f"{result['decode_every_step_us_per_tx'] / verify_us:.2f} Ed25519 verifies")
        print(f"  baselines: Ed25519 verify {verify_us:.1f} us, decode_tx {decode_us:.1f} us")
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
