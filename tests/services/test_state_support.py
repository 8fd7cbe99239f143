"""Helpers for the state machine tests: a chain of blocks built from real signed transactions.

(No tests here; the other test_state* files import it.)
"""

from __future__ import annotations

import hashlib
import random
from collections import defaultdict
from typing import Any

import duckdb

from node.app import DEFAULT_RULES, BlockEffects, ChainRules, StateMachine
from node.app.policy import OPEN_GOVERNANCE, Governance
from node.base.codec import hash_tagged
from node.base.keys import Identity
from node.consensus.tx import Transaction, sign_tx
from node.receipts.envelope import build_receipt

CHAIN_ID = "state-test"
GENESIS = hash_tagged("test/genesis", CHAIN_ID.encode())
BLOCK_MS = 2_000
START_MS = 1_700_000_000_000

ALICE = Identity.from_label("tenant-alice")
BOB = Identity.from_label("tenant-bob")
NODES = [Identity.from_label(f"processing-{i}") for i in range(10)]
STORAGE = Identity.from_label("storage-node")  # signs the data.store receipts dataset.register needs


def content_digest(text: str) -> bytes:
    return hashlib.sha256(text.encode()).digest()


def block_hash(height: int, parent: bytes, txs: list[Transaction]) -> bytes:
    return hash_tagged("test/block", height.to_bytes(8, "big") + parent + b"".join(tx.hash for tx in txs))


def block_seed(block_hash: bytes) -> bytes:
    """A stand-in for a header's 64-byte VRF seed in chains built without headers."""
    return hashlib.sha512(b"test/seed" + block_hash).digest()


class Chain:
    """Signs transactions with per-sender nonces and applies them block by block.

    ``blocks`` keeps every applied block (height, hash, time, txs) so a test
    can replay them into another database.
    """

    def __init__(self, conn: duckdb.DuckDBPyConnection | None = None, rules: ChainRules = DEFAULT_RULES,
                 governance: Governance = OPEN_GOVERNANCE, machine: StateMachine | None = None) -> None:
        """A new state machine on ``conn`` (a fresh in-memory database if None),
        or ``machine`` as it is (e.g. a ChainApplication's ``state``, on ``conn``)."""
        self.conn = conn if conn is not None else duckdb.connect(":memory:")
        self.machine = machine if machine is not None else StateMachine(self.conn, rules=rules, governance=governance)
        self.nonces: dict[bytes, int] = defaultdict(int)
        self.blocks: list[tuple[int, bytes, int, list[Transaction]]] = []
        self.parent = GENESIS
        self._storage_registered: set[bytes] = set()

    @property
    def height(self) -> int:
        return len(self.blocks)

    def tx(self, identity: Identity, tx_type: str, payload: Any) -> Transaction:
        nonce = self.nonces[identity.public_key]
        self.nonces[identity.public_key] += 1
        return sign_tx(identity, chain_id=CHAIN_ID, nonce=nonce, tx_type=tx_type, payload=payload)

    def block(self, *txs: Transaction) -> BlockEffects:
        height = self.height + 1
        digest = block_hash(height, self.parent, list(txs))
        timestamp = START_MS + height * BLOCK_MS
        effects = self.machine.apply_block(height, digest, timestamp, list(txs), seed=block_seed(digest))
        self.blocks.append((height, digest, timestamp, list(txs)))
        self.parent = digest
        return effects

    def empty_blocks(self, count: int) -> list[BlockEffects]:
        return [self.block() for _ in range(count)]

    # -- transaction builders ---------------------------------------------------
    def register_node(self, identity: Identity, capacity: int = 1, roles: list[str] | None = None) -> Transaction:
        roles = roles if roles is not None else (["processing"] if capacity else ["storage"])
        return self.tx(identity, "node.register",
                       {"roles": roles, "capacity": capacity, "moniker": f"node-{identity.public_key.hex()[:8]}"})

    def register_dataset(self, tenant: Identity, digest: bytes, name: str = "sales.csv") -> Transaction:
        """The tenant's dataset.register; first commits a block in which a
        registered storage node's data.store receipt records the upload."""
        return self.tx(tenant, "dataset.register", {"digest": digest, "size": 1234, "name": name, "format": "csv",
                                                    "receipt": self.store_upload(tenant, digest, 1234)})

    def store_upload(self, tenant: Identity, digest: bytes, size: int) -> bytes:
        """Commit (in a block of its own) the data.store receipt of an upload; return its id."""
        txs = []
        if STORAGE.public_key not in self._storage_registered:
            txs.append(self.register_node(STORAGE, capacity=0, roles=["storage"]))
            self._storage_registered.add(STORAGE.public_key)
        receipt = build_receipt(STORAGE, "data.store", height=self.height, subject=digest, prev=None,
                                fields={"content": "dataset", "tenant": tenant.public_key, "size": size, "replicas": 1})
        txs.append(self.tx(STORAGE, "receipts.batch", {"receipts": [receipt.envelope]}))
        self.block(*txs)
        return receipt.id

    def submit_job(
        self, tenant: Identity, inputs: dict[str, bytes], *, replication: int = 2, deadline_blocks: int = 5,
        job_type: str = "sql", params: dict[str, Any] | None = None,
    ) -> Transaction:
        if params is None:
            params = {"query": "SELECT count(*) FROM " + sorted(inputs)[0]}
        return self.tx(tenant, "job.submit", {
            "type": job_type, "inputs": inputs, "params": params,
            "replication": replication, "deadline_blocks": deadline_blocks,
        })

    def exec_receipt(
        self, node: Identity, job_id: bytes, *, result: bytes, exit_status: int = 0, seed: bytes | None = None
    ) -> bytes:
        job = self.machine.job(job_id)
        seed = seed if seed is not None else bytes.fromhex(job["seed"])
        receipt = build_receipt(node, "job.exec", height=self.height, subject=job_id, prev=None, fields={
            "input_root": hashlib.sha256(b"inputs").digest(), "code": hashlib.sha256(b"code").digest(),
            "policy": hashlib.sha256(b"policy").digest(), "seed": seed, "result": result,
            "witness": hash_tagged("test/witness", result + node.public_key), "exit": exit_status,
        })
        return receipt.envelope

    def result(self, node: Identity, job_id: bytes, result: bytes, *, error: str | None = None, **kw: Any) -> Transaction:
        payload = {"job": job_id, "receipt": self.exec_receipt(node, job_id, result=result, **kw)}
        if error is not None:
            payload["error"] = error
        return self.tx(node, "job.result", payload)

    def cancel(self, tenant: Identity, job_id: bytes) -> Transaction:
        return self.tx(tenant, "job.cancel", {"job": job_id})

    def assignees(self, job_id: bytes, status: str = "pending") -> list[Identity]:
        """The identities (among NODES) with an assignment of ``status`` for the job."""
        by_key = {n.public_key.hex(): n for n in NODES}
        job = self.machine.job(job_id)
        return [by_key[a["node"]] for a in job["assignments"] if a["status"] == status]


def replay(blocks: list[tuple[int, bytes, int, list[Transaction]]], machine: StateMachine) -> None:
    for height, digest, timestamp, txs in blocks:
        machine.apply_block(height, digest, timestamp, txs, seed=block_seed(digest))


def random_scenario(
    seed: int, blocks: int = 40, rules: ChainRules = DEFAULT_RULES, conn: duckdb.DuckDBPyConnection | None = None
) -> Chain:
    """A seeded random history: nodes join and re-register, tenants register
    datasets and submit jobs, assignees deliver (sometimes differing, sometimes
    late or never), tenants cancel, and some transactions are invalid."""
    rng = random.Random(seed)
    chain = Chain(conn, rules=rules)
    tenants = [ALICE, BOB]
    datasets: dict[bytes, list[bytes]] = {t.public_key: [] for t in tenants}
    jobs: list[bytes] = []
    for _ in range(blocks):
        txs: list[Transaction] = []
        for _ in range(rng.randrange(0, 6)):
            action = rng.random()
            tenant = rng.choice(tenants)
            if action < 0.15:
                txs.append(chain.register_node(rng.choice(NODES), capacity=rng.choice([0, 1, 2, 5])))
            elif action < 0.3:
                digest = content_digest(f"data-{rng.randrange(6)}")
                datasets[tenant.public_key].append(digest)
                txs.append(chain.register_dataset(tenant, digest))  # repeats are rejected
            elif action < 0.5:
                pool = datasets[rng.choice(tenants).public_key]  # sometimes the other tenant's
                if pool:
                    tx = chain.submit_job(tenant, {"data": rng.choice(pool)}, replication=rng.randrange(1, 4),
                                          deadline_blocks=rng.randrange(2, 6))
                    jobs.append(tx.hash)
                    txs.append(tx)
            elif action < 0.85 and jobs:
                job_id = rng.choice(jobs)
                job = chain.machine.job(job_id)
                if job and job["seed"] and chain.assignees(job_id):
                    node = rng.choice(chain.assignees(job_id))
                    digest = b"\x01" * 32 if rng.random() < 0.9 else rng.randbytes(32)
                    txs.append(chain.result(node, job_id, digest, exit_status=rng.choice([0, 0, 0, 1])))
            elif jobs:
                txs.append(chain.cancel(tenant, rng.choice(jobs)))
        chain.block(*txs)
    return chain


def scenario_digest(seed: int, blocks: int = 30, threads: int = 1) -> str:
    """sha256 of the state dump after :func:`random_scenario` on a DuckDB
    using ``threads`` threads (for cross-process checks)."""
    conn = duckdb.connect(":memory:", config={"threads": threads})
    return hashlib.sha256(random_scenario(seed, blocks, conn=conn).machine.dump()).hexdigest()
