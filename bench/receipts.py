"""Receipts benchmark: verification rates beside the raw Ed25519 verify rate.

    .venv/bin/python bench/receipts.py            # full run (~20 s)
    .venv/bin/python bench/receipts.py --smoke    # tiny sizes, for CI

Everything runs on one core (DuckDB with threads=1). The baseline row is
PyNaCl's Ed25519 verify of a receipt-sized message, measured in the same run;
the last column compares each rate with it. Each measurement is a function
registered in MEASUREMENTS.

Bundle rows use a real sealed chain (``node.receipts.devchain``: 4
validators, blocks of 50 job.exec receipts) and bundles built from its
DuckDB store. "headers cached" reuses one BundleVerifier, so each block's
seals are checked once (goal: 2,000 bundles/s on one core); "cold" uses a
fresh verifier per bundle, paying for the seals (a quorum of 3 Ed25519
verifies) every time.
"""

from __future__ import annotations

import argparse
import hashlib
import random
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import duckdb  # noqa: E402
import nacl.signing  # noqa: E402

from bench.rates import Row, render, rows_json, timed  # noqa: E402
from node.base.keys import Identity  # noqa: E402
from node.base.merkle import leaf_hash, verify_inclusion  # noqa: E402
from node.receipts.api import build_bundle  # noqa: E402
from node.receipts.chain import ReceiptIssuer  # noqa: E402
from node.receipts.devchain import DevChain, dev_genesis, dev_identities  # noqa: E402
from node.receipts.envelope import RECEIPT_SIGN_TAG, Receipt, verify_receipt  # noqa: E402
from node.receipts.log import ReceiptLog  # noqa: E402
from node.receipts.verify import BundleVerifier  # noqa: E402


@dataclass(frozen=True)
class Sizes:
    receipts: int  # distinct receipts to verify
    log_size: int  # leaves in the log that proofs come from
    proofs: int  # distinct inclusion proofs
    min_seconds: float  # each rate is measured for at least this long
    bundle_blocks: int = 20  # sealed blocks of the bundle chain
    receipts_per_block: int = 50

    @classmethod
    def full(cls) -> Sizes:
        return cls(receipts=2_000, log_size=100_000, proofs=1_000, min_seconds=2.0)

    @classmethod
    def smoke(cls) -> Sizes:
        return cls(receipts=20, log_size=300, proofs=20, min_seconds=0.05, bundle_blocks=2, receipts_per_block=5)


class Fixture:
    """Inputs shared by measurements, built once (outside the timings)."""

    def __init__(self, sizes: Sizes) -> None:
        self.sizes = sizes
        digest = lambda label: hashlib.sha256(label.encode()).digest()  # noqa: E731
        issuer = ReceiptIssuer(Identity.from_label("bench-processing-node"))
        self.receipts: list[Receipt] = [
            issuer.issue(
                "job.exec",
                height=i,
                subject=digest(f"job {i}"),
                fields={
                    "input_root": digest(f"in {i}"),
                    "code": digest("code"),
                    "policy": digest("policy"),
                    "seed": digest(f"seed {i}"),
                    "result": digest(f"out {i}"),
                    "witness": digest(f"wit {i}"),
                    "exit": 0,
                },
            )
            for i in range(sizes.receipts)
        ]
        self.conn = duckdb.connect()
        self.conn.execute("SET threads = 1")
        self.log = ReceiptLog(self.conn)
        self.log_ids = [digest(f"receipt {i}") for i in range(sizes.log_size)]
        self.append_seconds = timed(lambda: self._fill_log())
        self.head = self.log.head()
        self.bundle_build_seconds, self.bundles, self.genesis = self._bundle_chain()

    def _bundle_chain(self) -> tuple[float, list[bytes], object]:
        """A sealed chain carrying the job.exec receipts, and one bundle each."""
        validators = dev_identities(4, "bench-validator")
        genesis = dev_genesis(validators)
        conn = duckdb.connect()
        conn.execute("SET threads = 1")
        chain = DevChain(genesis, validators, conn)
        per_block = self.sizes.receipts_per_block
        receipts = self.receipts[: self.sizes.bundle_blocks * per_block]
        for start in range(0, len(receipts), per_block):
            chain.add_block(receipts[start : start + per_block])
        source = chain.block_source()
        bundles: list[bytes] = []
        seconds = timed(lambda: bundles.extend(build_bundle(r.id, chain.log, source, genesis) for r in receipts))
        return seconds, bundles, genesis

    def _fill_log(self) -> None:
        batch = 1_000
        for start in range(0, len(self.log_ids), batch):
            self.log.append(self.log_ids[start : start + batch])


def _rate(name: str, unit: str, items: list, check: Callable[[object], object], min_seconds: float) -> Row:
    """Run ``check`` over ``items`` round after round for ``min_seconds``."""
    ops = 0
    start = time.perf_counter()
    while True:
        for item in items:
            check(item)
        ops += len(items)
        elapsed = time.perf_counter() - start
        if elapsed >= min_seconds:
            return Row(name, unit, ops, elapsed)


# -- measurements ------------------------------------------------------------
def ed25519_baseline(fx: Fixture) -> Row:
    """Raw PyNaCl verify of the same tagged bodies the receipts sign."""
    items = [
        (nacl.signing.VerifyKey(r.issuer_key), RECEIPT_SIGN_TAG.encode() + b"\x00" + r.body_bytes, r.signature)
        for r in fx.receipts
    ]
    return _rate(
        "Ed25519 verify (PyNaCl, baseline)",
        "verifies",
        items,
        lambda item: item[0].verify(item[1], item[2]),
        fx.sizes.min_seconds,
    )


def receipt_verify(fx: Fixture) -> Row:
    row = _rate(
        "receipt envelope verify",
        "receipts",
        [r.envelope for r in fx.receipts],
        verify_receipt,
        fx.sizes.min_seconds,
    )
    return Row(row.name, row.unit, row.ops, row.seconds, "decode+re-encode+schema+signature (job.exec)")


def inclusion_verify(fx: Fixture) -> Row:
    rng = random.Random(1)
    size = fx.head.size
    indices = [rng.randrange(size) for _ in range(fx.sizes.proofs)]
    items = [(leaf_hash(fx.log_ids[i]), i, fx.log.inclusion_proof(i, size)) for i in indices]
    row = _rate(
        "inclusion proof verify",
        "proofs",
        items,
        lambda item: verify_inclusion(item[0], item[1], size, item[2], fx.head.root),
        fx.sizes.min_seconds,
    )
    return Row(row.name, row.unit, row.ops, row.seconds, f"log of {size:,} leaves")


def inclusion_generate(fx: Fixture) -> Row:
    rng = random.Random(2)
    size = fx.head.size
    indices = [rng.randrange(size) for _ in range(max(fx.sizes.proofs // 5, 5))]
    row = _rate(
        "inclusion proof from DuckDB",
        "proofs",
        indices,
        lambda i: fx.log.inclusion_proof(i, size),
        fx.sizes.min_seconds,
    )
    return Row(row.name, row.unit, row.ops, row.seconds, "one indexed query per proof")


def bundle_verify_cached(fx: Fixture) -> Row:
    verifier = BundleVerifier(fx.genesis)
    row = _rate("bundle verify (headers cached)", "bundles", fx.bundles, verifier.verify, fx.sizes.min_seconds)
    blocks = fx.sizes.bundle_blocks
    return Row(row.name, row.unit, row.ops, row.seconds,
               f"{len(fx.bundles):,} bundles over {blocks} blocks, ~{len(fx.bundles[0]):,} bytes each")


def bundle_verify_cold(fx: Fixture) -> Row:
    row = _rate(
        "bundle verify (cold)", "bundles", fx.bundles,
        lambda data: BundleVerifier(fx.genesis).verify(data), fx.sizes.min_seconds,
    )
    return Row(row.name, row.unit, row.ops, row.seconds, "fresh verifier each: seals checked every time")


def bundle_build(fx: Fixture) -> Row:
    return Row("bundle build (DuckDB)", "bundles", len(fx.bundles), fx.bundle_build_seconds,
               "lookup + block search + proof + encode")


def log_append(fx: Fixture) -> Row:
    return Row(
        "log append (DuckDB)", "leaves", fx.sizes.log_size, fx.append_seconds, "batches of 1,000 ids"
    )


MEASUREMENTS: list[Callable[[Fixture], Row]] = [
    ed25519_baseline,
    receipt_verify,
    inclusion_verify,
    inclusion_generate,
    log_append,
    bundle_verify_cached,
    bundle_verify_cold,
    bundle_build,
]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--smoke", action="store_true", help="tiny sizes, for CI")
    parser.add_argument("--json", action="store_true", help="print the rows as one JSON object (bench/run_all.py)")
    args = parser.parse_args(argv)
    sizes = Sizes.smoke() if args.smoke else Sizes.full()
    fixture = Fixture(sizes)
    rows = [measure(fixture) for measure in MEASUREMENTS]
    print(rows_json("receipts", rows, smoke=args.smoke) if args.json else render(rows, rows[0]))
    return 0


if __name__ == "__main__":
    sys.exit(main())
