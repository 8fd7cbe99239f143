"""The gateway role: the client-facing analytics API over JSON-RPC on p2p.

Tenants are authenticated by the connection: a client connects with its
tenant key as its libp2p identity (Noise proves it holds the key), so the
caller's peer id *is* the tenant. A tenant sees only its own jobs and
datasets. Every accepted call that changes state or releases a tenant's
data (submit, cancel, result, witness; uploads get ``data.store``) yields an
``api.call`` receipt signed by the gateway and published on chain
(node/roles/publisher.py). Status, list and health reads are not
receipted: clients poll them, and a receipt per poll would bury the log.
A refused call gets no receipt: nothing it asked for happened.

A ``job.submit`` is checked before it goes on chain (node/roles/submit_check.py):
its SQL against the cage's gate and, where this node's catalog holds the
inputs' schemas, against those; column parameters likewise. A refusal answers
at once (SQL_REFUSED, JOB_PARAMS_REFUSED) and nothing reaches the mempool.

The ``service_*`` methods (node/roles/services_rpc.py) use this class's tenant
check, submit path, receipts and artifact fetcher.
"""

from __future__ import annotations

import base64
import hashlib
from collections.abc import Awaitable, Callable
from typing import Any

import structlog
import trio

from node.app.chain_app import ChainApplication
from node.app.payloads import JobSubmit
from node.app.txtypes import parse_payload
from node.base.errors import ErrorCode
from node.base.keys import Identity, public_key_from_peer_id
from node.consensus.rpc import TX_HEX
from node.consensus.service import ConsensusService
from node.consensus.tx import Transaction, TxError, decode_tx
from node.p2p.jsonrpc import CallContext, Registry, RpcError
from node.p2p.ratelimit import TokenBuckets
from node.roles.artifacts import ArtifactFetcher, plain, result_json
from node.roles.publisher import ReceiptPublisher
from node.roles.submit_check import SchemaLookup, SubmitChecks

log = structlog.get_logger("metanode.gateway")

CHECKS_REMEMBERED = 1024  # submit checks that passed, remembered so a repeated job skips them


class Gateway:
    def __init__(self, *, identity: Identity, chain: ConsensusService, app: ChainApplication, publisher: ReceiptPublisher,
                 jobs_per_minute: float = 120.0, allowed_tenants: list[bytes] | None = None,
                 artifacts: ArtifactFetcher | None = None, schemas: SchemaLookup | None = None) -> None:
        self.identity = identity
        self.checks = SubmitChecks(schemas)  # schemas: the inputs' column schemas this node holds
        self.checks_lock = trio.Lock()  # one check at a time: they share one DuckDB connection
        self._checks_passed: dict[bytes, None] = {}  # digests of jobs that passed, oldest first
        self.artifacts = artifacts
        self.chain = chain
        self.app = app
        self.publisher = publisher
        self.allowed = set(allowed_tenants) if allowed_tenants else None  # None: open registration
        self.jobs_quota = TokenBuckets(jobs_per_minute / 60.0, max(1.0, jobs_per_minute / 6))

    # -- tenants and receipts -----------------------------------------------------------
    def tenant(self, ctx: CallContext) -> bytes:
        key = public_key_from_peer_id(ctx.peer_id)
        if self.allowed is not None and key not in self.allowed:
            raise RpcError(ErrorCode.TENANT_NOT_ALLOWED, "tenant not allowed on this gateway", {"tenant": key.hex()})
        return key

    def receipt(self, method: str, tenant: bytes, request: bytes, outcome: str, code: int, response: bytes) -> str:
        """Issue an api.call receipt for an accepted call and queue it for the chain."""
        r = self.publisher.issue("api.call", subject=hashlib.sha256(request).digest(),
                                 fields={"method": method, "tenant": tenant, "outcome": outcome, "code": code,
                                         "response": hashlib.sha256(response).digest()})
        return r.id.hex()

    # -- RPC ------------------------------------------------------------------------------
    def register(self, registry: Registry) -> None:
        tx_param = {"properties": {"tx": TX_HEX}, "required": ["tx"]}
        job_param = {"properties": {"job_id": {"type": "string", "pattern": "^[0-9a-f]{64}$"}}, "required": ["job_id"]}
        registry.register("analytics_submit", self._submit, tx_param, "Submit a job.submit transaction signed by the tenant (the caller).")
        registry.register("analytics_cancel", self._cancel, tx_param, "Submit a job.cancel transaction signed by the tenant.")
        registry.register("analytics_status", self._status, job_param, "A job of the caller: state, reason, assignments, results, verdict.")
        registry.register("analytics_list", self._list, {"properties": {
            "state": {"type": "string"}, "limit": {"type": "integer", "minimum": 1, "maximum": 500},
            "before": {"type": "integer"}}}, "The caller's jobs, newest first (page with before = previous next).")
        registry.register("analytics_result", self._result, job_param,
                          "The verified result table of a job of the caller, checked against the digest on chain.")
        registry.register("analytics_witness", self._witness, job_param,
                          "The witness of each execution of a job of the caller (what it read and produced), checked against its receipt.")
        registry.register("analytics_health", self._health, {}, "Cluster health: validators, height, processing nodes, queue depth.")

    async def _submit_signed(self, ctx: CallContext, raw_hex: str, tx_type: str, method: str,
                             check: Callable[[Transaction, bytes], Awaitable[None]] | None = None) -> tuple[bytes, str]:
        tenant = self.tenant(ctx)
        raw = bytes.fromhex(raw_hex)
        try:
            tx = decode_tx(raw)
        except TxError as exc:
            raise RpcError(ErrorCode.WRONG_TX, "not a transaction", {"reason": str(exc)}) from None
        if tx.type != tx_type or tx.sender != tenant:
            raise RpcError(ErrorCode.WRONG_TX, f"expected a {tx_type} transaction signed by the caller",
                           {"type": tx.type, "signed_by_caller": tx.sender == tenant})
        refused = self.app.check_tx_against_state(tx)
        if refused is not None:
            raise RpcError(ErrorCode.STATE_REFUSED, "refused by the chain state", {"reason": refused})
        if check is not None:
            await check(tx, tenant)  # raises RpcError: nothing goes to the mempool
        admission = self.chain.submit(raw)
        if not admission.accepted:
            raise RpcError(ErrorCode.SUBMIT_REJECTED, "transaction rejected", admission.rejection_data())
        receipt_id = self.receipt(method, tenant, raw, "accepted", 0, tx.hash)
        return tx.hash, receipt_id

    async def _submit(self, ctx: CallContext, tx: str) -> dict[str, Any]:
        tenant = self.tenant(ctx)
        wait = self.jobs_quota.take(tenant.hex(), trio.current_time())
        if wait:
            raise RpcError(ErrorCode.JOB_QUOTA_EXCEEDED, "job quota exceeded", {"retry_after_s": round(wait, 3)})
        job_id, receipt_id = await self._submit_signed(ctx, tx, "job.submit", "analytics_submit", self._check_job)
        return {"job_id": job_id.hex(), "receipt_id": receipt_id, "status": "submitted"}

    async def _check_job(self, tx: Transaction, tenant: bytes) -> None:
        """The submit-time checks of a job.submit the chain state accepts (so its
        payload parses). In a worker thread: parsing a query of the largest size
        the chain takes costs a few hundred ms of DuckDB and Python, which the
        event loop should not wait out."""
        payload = parse_payload(tx, self.app.state.rules_at(self.app.state.next_height()))  # as the state checked it
        assert isinstance(payload, JobSubmit)
        schemas = self.checks.known_schemas(payload, tenant)  # the node's database: on this thread
        # The checks are a pure function of these: a tenant submitting the same query on the
        # same inputs again (a dashboard, a batch) is not checked again, nor waits for a thread.
        # A digest of the type-faithful repr: 32 bytes a job however long its query (the memory stays bounded).
        key = hashlib.sha256(repr((payload.job_type, payload.params, sorted(payload.inputs.items()),
                                   sorted(schemas.items()))).encode()).digest()
        if key in self._checks_passed:
            return
        async with self.checks_lock:
            await trio.to_thread.run_sync(self.checks.check, payload, schemas)
        self._checks_passed[key] = None
        if len(self._checks_passed) > CHECKS_REMEMBERED:
            del self._checks_passed[next(iter(self._checks_passed))]  # the oldest

    async def _cancel(self, ctx: CallContext, tx: str) -> dict[str, Any]:
        tx_hash, receipt_id = await self._submit_signed(ctx, tx, "job.cancel", "analytics_cancel")
        return {"tx": tx_hash.hex(), "receipt_id": receipt_id}

    async def _status(self, ctx: CallContext, job_id: str) -> dict[str, Any]:
        tenant = self.tenant(ctx)
        job = self.app.state.job(bytes.fromhex(job_id))
        # Another tenant's job is reported exactly like a missing one.
        if job is None or job.get("tenant") != tenant.hex():
            raise RpcError(ErrorCode.NOT_FOUND, "job not found", {"job_id": job_id})
        return job

    async def _result(self, ctx: CallContext, job_id: str) -> dict[str, Any]:
        job = await self._status(ctx, job_id)
        if job["state"] != "verified":
            raise RpcError(ErrorCode.RESULT_NOT_AVAILABLE, "no verified result for this job", {
                "state": job["state"], "reason": job.get("reason"),
                "result_digests": sorted({r["result"] for r in job["results"]})})
        digest = job["results"][0]["result"]
        data = await self._artifact("result", digest, [r["peer_id"] for r in job["results"]])
        assert data is not None  # required=True: _artifact raises rather than answer None
        # Releasing a tenant's result is an operation on its data: it is receipted.
        receipt_id = self.receipt("analytics_result", self.tenant(ctx), b"analytics_result:" + bytes.fromhex(job_id), "accepted", 0, data)
        return {"job_id": job_id, "receipt_id": receipt_id, "state": job["state"], "result_digest": digest,
                "computed_by": [r["peer_id"] for r in job["results"]],
                "receipts": [r["receipt"] for r in job["results"]], **result_json(data)}

    async def _witness(self, ctx: CallContext, job_id: str) -> dict[str, Any]:
        from node.cage.witness import decode_witness_file

        job = await self._status(ctx, job_id)
        executions = []
        for r in job["results"]:
            data = await self._artifact("witness", r["witness"], [r["peer_id"]], required=False)
            record, _, unhashed = decode_witness_file(data) if data is not None else (None, None, None)
            executions.append({"peer_id": r["peer_id"], "receipt": r["receipt"], "witness_digest": r["witness"],
                               "available": data is not None, "witness": plain(record), "unhashed": plain(unhashed),
                               # the file itself, so a client can check it against the receipt without trusting us
                               "file": base64.b64encode(data).decode() if data is not None else None})
        receipt_id = self.receipt("analytics_witness", self.tenant(ctx), b"analytics_witness:" + bytes.fromhex(job_id), "accepted", 0,
                                  b"".join(bytes.fromhex(e["witness_digest"]) for e in executions))
        return {"job_id": job_id, "receipt_id": receipt_id, "state": job["state"], "executions": executions}

    async def _artifact(self, kind: str, digest_hex: str, holders: list[str], *, required: bool = True) -> bytes | None:
        data = None
        if self.artifacts is not None:
            data = await self.artifacts.fetch(kind, bytes.fromhex(digest_hex), holders)
        if data is None and required:
            raise RpcError(ErrorCode.RESULT_NOT_AVAILABLE, f"no node that computed this {kind} could serve it now; try again",
                           {"digest": digest_hex, "holders": holders})
        return data

    async def _list(self, ctx: CallContext, state: str | None = None, limit: int = 50, before: int | None = None) -> dict[str, Any]:
        tenant = self.tenant(ctx)
        try:
            return self.app.state.jobs_by_tenant(tenant, limit=limit, before=before, state=state)
        except ValueError as exc:
            param = "state" if "state" in str(exc) else "before"
            raise RpcError(ErrorCode.INVALID_PARAMS, "Invalid params", {"param": param, "reason": str(exc)}) from None

    async def _health(self, ctx: CallContext) -> dict[str, Any]:
        nodes = self.app.state.nodes()
        return {
            "height": self.chain.finalized_height,
            "validators": len(self.chain.genesis.validators),
            "processing_nodes": len(nodes),
            "healthy_processing_nodes": sum(1 for n in nodes if n.get("healthy")),
            "queue": self.app.state.queue_depth(),
        }

