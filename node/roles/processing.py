"""The processing role: run the jobs the chain assigned to this node, in the cage.

On every finalised block it looks up this node's pending assignments (the
state machine, a pure function of the chain, decided them), resolves each
input digest to a local file, runs the job in a DockLock cage under the
``processing`` policy with the seed and logical clock the scheduling block
fixed, keeps the canonical result and the witness (node/roles/artifacts.py)
for gateways to fetch, and submits ``job.result``
carrying its signed ``job.exec`` receipt. A job that fails in the cage still
gets a receipt (with its exit status): the chain, not this node, decides.
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any, Protocol

import structlog
import trio

from node.app.chain_app import ChainApplication
from node.app.jobtypes import job_type
from node.base.keys import Identity
from node.cage.job import CageError, JobOutcome, JobSpec
from node.consensus.service import ConsensusService
from node.receipts.execution import exec_fields_from_outcome
from node.roles.artifacts import ArtifactStore
from node.roles.issuer import NodeIssuer
from node.roles.metrics import NodeMetrics
from node.roles.node_txs import NodeTransactions
from node.roles.storage import StorageService

log = structlog.get_logger("metanode.processing")

InputResolver = Callable[[str], Awaitable[Path | None]]


class JobRunner(Protocol):
    """What runs a job in the cage (node.cage.pool.CagePool)."""

    async def run_async(self, job: JobSpec) -> JobOutcome: ...


def storage_resolver(storage: StorageService, peers: Callable[[], list[str]]) -> InputResolver:
    """Inputs from this node's store, fetched from a storage peer when missing
    (verified against the digest on arrival and on every read)."""

    async def resolve(digest_hex: str) -> Path | None:
        digest = bytes.fromhex(digest_hex)
        try:
            await storage.ensure_local(digest, peers())
        except Exception as exc:
            log.info("input not fetched", digest=digest_hex, reason=str(exc)[:200])
            return None
        return storage.store.path(digest)

    return resolve


def error_text(status: str, detail: str) -> str:
    """The one-line reason a failed run reports on chain (printable, bounded)."""
    text = " ".join(f"{status}: {detail}".split())
    text = "".join(ch if ch.isprintable() else "?" for ch in text)
    return text[:300]


def job_spec(job: dict[str, Any], inputs: dict[str, str]) -> JobSpec:
    """The cage job of an assigned job: its type's registry entry (node/app/jobtypes.py) says
    what the cage runs; KeyError for a type this build does not know."""
    common = {"policy": "processing", "inputs": inputs, "seed": bytes.fromhex(job["seed"]), "clock": job["clock"]}
    return JobSpec(**job_type(job["type"]).cage_job(job["params"]), **common)


class ProcessingService:
    def __init__(self, *, identity: Identity, chain: ConsensusService, app: ChainApplication, pool: JobRunner, issuer: NodeIssuer,
                 node_txs: NodeTransactions, resolve_input: InputResolver, artifacts: ArtifactStore,
                 metrics: NodeMetrics | None = None) -> None:
        self.key = identity.public_key
        self.chain = chain
        self.app = app
        self.pool = pool
        self.issuer = issuer
        self.node_txs = node_txs
        self.resolve_input = resolve_input
        self.artifacts = artifacts
        self.metrics = metrics  # metanode_cage_runs / metanode_cage_run_seconds
        self._running: set[str] = set()
        self._done: set[tuple[str, int]] = set()  # (job id, attempt) already answered
        self.completed = 0

    def pending_assignments(self) -> list[dict[str, Any]]:
        """Jobs assigned to this node and not answered yet: those already running
        here or answered for that attempt are left out before being loaded (this
        runs on every block)."""
        fresh = [job_id for job_id, attempt in self.app.state.pending_assignments_of(self.key)
                 if job_id.hex() not in self._running and (job_id.hex(), attempt) not in self._done]
        jobs = [self.app.state.job(job_id) for job_id in fresh]
        return [j for j in jobs if j is not None and j["state"] in ("scheduled", "running")]

    async def run(self, *, task_status: Any = trio.TASK_STATUS_IGNORED) -> None:
        blocks = self.chain.subscribe()
        async with trio.open_nursery() as nursery:
            task_status.started()
            async for _ in blocks:
                for job in self.pending_assignments():
                    key = (job["id"], job["attempt"])
                    if job["id"] not in self._running and key not in self._done:
                        self._running.add(job["id"])
                        nursery.start_soon(self._execute, job)

    async def _execute(self, job: dict[str, Any]) -> None:
        try:
            inputs: dict[str, str] = {}
            for name, digest in job["inputs"].items():
                path = await self.resolve_input(digest)
                if path is None:
                    log.info("input not available yet", job=job["id"], input=name, digest=digest)
                    return  # tried again on the next block
                inputs[name] = str(path)
            try:
                spec = job_spec(job, inputs)
                started = time.monotonic()
                outcome = await self.pool.run_async(spec)
                if self.metrics is not None:
                    self.metrics.on_cage_run(time.monotonic() - started, outcome.status)
            except (CageError, KeyError) as exc:
                # Refused before it could run (no witness to sign): the deadline
                # passes and the chain reassigns or fails the job with a reason.
                log.warning("job cannot run here", job=job["id"], reason=str(exc))
                self._done.add((job["id"], job["attempt"]))
                return
            # Kept before the receipt that names them goes out: a gateway may ask at once.
            if outcome.result_digest is not None and outcome.result is not None:
                self.artifacts.put("result", outcome.result, expected=outcome.result_digest)
            self.artifacts.put("witness", outcome.witness_file, expected=outcome.witness_digest)
            receipt = self.issuer.issue("job.exec", height=self.chain.finalized_height, subject=bytes.fromhex(job["id"]),
                                        fields=exec_fields_from_outcome(outcome))
            payload: dict[str, Any] = {"job": bytes.fromhex(job["id"]), "receipt": receipt.envelope}
            if outcome.status != "ok":
                payload["error"] = error_text(outcome.status, outcome.detail)
            if self.node_txs.submit("job.result", payload).accepted:
                self._done.add((job["id"], job["attempt"]))
                self.completed += 1
                log.info("job executed", job=job["id"], status=outcome.status, result=outcome.result_digest.hex() if outcome.result_digest else None)
        finally:
            self._running.discard(job["id"])
