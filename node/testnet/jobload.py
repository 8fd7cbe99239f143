"""Analytics jobs as testnet load, and the checks a run makes on them.

:class:`AnalyticsWorkload` implements :class:`node.testnet.loadgen.JobWorkload`.
A few tenants (keys derived from ``label``) each upload a small deterministic
CSV once and register it on chain, then submit ``sql`` and ``trend-analysis``
jobs (replication 2) at ``job_rate`` per second in all, spread across nodes.

Every job transaction is signed once, with the tenant's next nonce, and its
job id is its transaction hash, known before it is sent. A node that is down,
paused or cut off is skipped for the next, and a job whose fate is unknown
(the node died mid-call) is re-sent as the *same* transaction: it can land
once at most, never twice, and is never lost, since a tenant's later jobs
cannot commit before it. Jobs still not committed some seconds later (taken
down with a killed node's mempool) are re-sent in nonce order.

``check`` re-sends what is still missing, waits (bounded) until every job is
final, finds each job by listing the tenant's jobs, and returns one line per
problem: a job never on chain or not final, disputed, failed without a
reason, a verified job whose results or receipts disagree, a receipt of a job
(``receipt_trace``) that does not verify offline against the testnet's
genesis file (:class:`node.receipts.verify.BundleVerifier`).
"""

from __future__ import annotations

import base64
import math
import time
from collections import Counter
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import trio

from node.base.errors import ErrorCode, sole_exception
from node.base.keys import Identity
from node.base.retry import Backoff, retry
from node.consensus.genesis import load_genesis
from node.consensus.tx import Transaction, sign_tx
from node.p2p.client import connect_to_node
from node.p2p.rpc import RpcCallError, RpcClient
from node.receipts.verify import BundleInvalid, BundleVerifier

CONNECT_TIMEOUT_S = 5.0
CALL_TIMEOUT_S = 10.0
STALL_S = 8.0  # a job not committed this long after it was sent is re-sent
PER_TENANT_RATE = 0.5  # jobs per second one tenant submits; more rate means more tenants
FINAL_STATES = ("verified", "disputed", "failed", "cancelled")
MAX_PROBLEM_LINES = 12

SQL_QUERIES = (
    "SELECT product, sum(units) AS units FROM sales GROUP BY product ORDER BY product",
    "SELECT day, sum(units) AS units FROM sales GROUP BY day ORDER BY day",
    "SELECT count(*) AS n, max(units) AS top, min(day) AS first_day FROM sales",
)
TREND_PARAMS = (
    {"input": "sales", "time_column": "day", "value_column": "units", "group_by": "product", "window": "7d", "granularity": "week"},
    {"input": "sales", "time_column": "day", "value_column": "units", "window": "14d"},
)


def tenant_dataset(index: int, days: int = 42) -> bytes:
    """A small CSV (day, product, units) that depends only on ``index``."""
    lines = ["day,product,units"]
    for d in range(days):
        day = f"2026-{1 + d // 28:02d}-{1 + d % 28:02d}"
        for p, product in enumerate(("apples", "pears", "plums")):
            lines.append(f"{day},{product},{(d * 7 + p * 13 + index * 5) % 17 + 1}")
    return ("\n".join(lines) + "\n").encode()


@dataclass
class TrackedJob:
    job_id: str  # the job.submit transaction's hash
    tenant: int
    nonce: int
    job_type: str
    tx: Transaction
    sent_at: float = 0.0  # wall clock of the first attempt
    acknowledged: bool = False  # a node answered: in its mempool, committed, or on chain
    summary: dict[str, Any] | None = None  # the chain's view (analytics_list), filled by check()
    finished_ms: int | None = None  # timestamp of the block that made it final


@dataclass
class Tenant:
    index: int
    identity: Identity
    data: bytes
    digest: str | None = None
    job_nonce: int | None = None  # the nonce of the tenant's first job (after its dataset.register)
    registered: bool = False
    last_error: str = ""
    committed_next: int | None = None  # the chain's next nonce of this tenant, when last asked
    listed: bool = False  # check() could list the tenant's jobs on chain
    jobs: list[TrackedJob] = field(default_factory=list)


@dataclass
class AnalyticsWorkload:
    """Jobs at ``job_rate`` per second over datasets of a few tenants; see the module doc."""

    genesis: Path  # the testnet's genesis.toml: receipts are verified offline against it
    job_rate: float
    label: str = "jobload"
    replication: int = 2
    final_timeout_s: float = 180.0  # how long check() waits for jobs to become final
    receipt_timeout_s: float = 60.0  # and then for their receipts to be sealed
    tenants: list[Tenant] = field(default_factory=list)
    unreachable_attempts: int = 0
    receipts_verified: int = 0
    receipt_kinds: Counter[str] = field(default_factory=Counter)
    chain_id: str | None = None
    _checked: bool = False

    def __post_init__(self) -> None:
        count = max(2, math.ceil(self.job_rate / PER_TENANT_RATE)) if self.job_rate > 0 else 0
        self.tenants = [Tenant(i, Identity.from_label(f"{self.label}/tenant{i}"), tenant_dataset(i)) for i in range(count)]

    @property
    def jobs(self) -> list[TrackedJob]:
        return [job for t in self.tenants for job in t.jobs]

    # -- talking to nodes ----------------------------------------------------
    async def _with_node(self, address: str, identity: Identity, body: Callable[[RpcClient], Awaitable[Any]], *, timeout: float = CALL_TIMEOUT_S) -> Any:
        """``body`` on one connection to ``address``; errors come out unwrapped."""
        try:
            with trio.fail_after(timeout + CONNECT_TIMEOUT_S + 2):
                async with connect_to_node(address, identity=identity, timeout=CONNECT_TIMEOUT_S) as rpc:
                    return await body(rpc)
        except BaseExceptionGroup as group:
            raise sole_exception(group) from None

    async def _any_node(self, addresses: list[str], identity: Identity, body: Callable[[RpcClient], Awaitable[Any]], *, start: int = 0, timeout: float = CALL_TIMEOUT_S) -> Any:
        """``body`` on the first node from ``start`` that answers; the last error if none does."""
        last: BaseException = RuntimeError("no nodes")
        for k in range(len(addresses)):
            try:
                return await self._with_node(addresses[(start + k) % len(addresses)], identity, body, timeout=timeout)
            except RpcCallError:
                raise
            except (Exception, trio.TooSlowError) as exc:
                self.unreachable_attempts += 1
                last = exc
        raise last

    async def _committed_next(self, addresses: list[str], tenant: Tenant, start: int = 0) -> int | None:
        async def ask(rpc: RpcClient) -> int:
            return int((await rpc.call("chain_nonce", {"sender": tenant.identity.public_key.hex()}))["committed_next"])

        try:
            return await self._any_node(addresses, tenant.identity, ask, start=start)
        except (Exception, trio.TooSlowError):
            return None

    # -- load ----------------------------------------------------------------
    async def run(self, addresses: list[str], stop_at: float) -> None:
        """Register each tenant's dataset, then submit jobs until ``stop_at``."""
        if not self.tenants:
            return
        interval = len(self.tenants) / self.job_rate
        async with trio.open_nursery() as nursery:
            for tenant in self.tenants:
                nursery.start_soon(self._tenant_loop, addresses, tenant, interval, stop_at)

    async def _tenant_loop(self, addresses: list[str], tenant: Tenant, interval: float, stop_at: float) -> None:
        if not await self._register(addresses, tenant, stop_at):
            return
        next_at = trio.current_time() + interval * tenant.index / len(self.tenants)
        while True:
            await trio.sleep_until(next_at)
            if trio.current_time() >= stop_at:
                return
            await self._resend_stalled(addresses, tenant, start=tenant.index + len(tenant.jobs))
            job = self._new_job(tenant)
            await self._send(addresses, tenant, job, start=tenant.index + len(tenant.jobs))
            next_at = max(next_at + interval, trio.current_time())

    async def _register(self, addresses: list[str], tenant: Tenant, stop_at: float) -> bool:
        """Upload the tenant's dataset and register it on chain (waits for the commit).

        The registration names the upload's ``data.store`` receipt, so it is
        signed once that receipt is on chain. A registration whose node died
        is re-sent as the same transaction (it lands once at most); only one
        the chain refused is signed anew, after a fresh upload."""
        register_tx: Transaction | None = None
        errors: dict[str, str] = {}
        attempt = tenant.index
        while trio.current_time() < stop_at:
            address = addresses[attempt % len(addresses)]
            attempt += 1

            async def step(rpc: RpcClient) -> None:
                nonlocal register_tx
                if self.chain_id is None:
                    self.chain_id = str((await rpc.call("chain_head"))["chain_id"])
                if register_tx is None:
                    info = await rpc.call("dataset_upload", {"name": "sales", "format": "csv", "final": True,
                                                             "chunk": base64.b64encode(tenant.data).decode()}, timeout=60)
                    tenant.digest = str(info["digest"])
                    payload = {"digest": bytes.fromhex(tenant.digest), "size": len(tenant.data), "name": "sales", "format": "csv"}
                    receipt_id = (info.get("receipt") or {}).get("id")
                    if receipt_id:  # registering takes the upload's data.store receipt, on chain
                        await self._receipt_on_chain(rpc, receipt_id, stop_at)
                        payload["receipt"] = bytes.fromhex(receipt_id)
                    nonce = int((await rpc.call("chain_nonce", {"sender": tenant.identity.public_key.hex()}))["pending_next"])
                    register_tx = sign_tx(tenant.identity, chain_id=self.chain_id, nonce=nonce, tx_type="dataset.register", payload=payload)
                answer = await rpc.call("tx_submit", {"tx": register_tx.encoded.hex(), "mode": "commit", "timeout": 20}, timeout=25)
                refused = answer.get("state_rejected")
                if refused and "already registered" not in str(refused):
                    register_tx = None  # committed, but the state refused it: upload and sign again
                    raise RuntimeError(f"registration refused by the chain state: {refused}")
                tenant.job_nonce = register_tx.nonce + 1  # every job nonce from here is ours alone

            try:
                await self._with_node(address, tenant.identity, step, timeout=90)
                tenant.registered = True
                return True
            except (Exception, trio.TooSlowError) as exc:
                self.unreachable_attempts += not isinstance(exc, (RpcCallError, RuntimeError))
                errors[address] = f"{type(exc).__name__}: {exc}"
                tenant.last_error = "; ".join(f"{a.rsplit('/', 1)[-1][-8:]}: {e}" for a, e in errors.items())  # the latest per node
                await trio.sleep(0.5)
        return False

    async def _receipt_on_chain(self, rpc: RpcClient, receipt_id: str, stop_at: float) -> None:
        await retry(lambda: rpc.call("receipt_get", {"id": receipt_id}), backoff=Backoff(0.3), retry_on=RpcCallError,
                    when=lambda exc: exc.code == ErrorCode.NOT_FOUND, deadline=stop_at)

    def _new_job(self, tenant: Tenant) -> TrackedJob:
        assert tenant.digest is not None and tenant.job_nonce is not None and self.chain_id is not None
        k = len(tenant.jobs)
        nonce = tenant.job_nonce + k
        if (k + tenant.index) % 2 == 0:
            job_type, params = "sql", {"query": SQL_QUERIES[(k // 2) % len(SQL_QUERIES)]}
        else:
            job_type, params = "trend-analysis", dict(TREND_PARAMS[(k // 2) % len(TREND_PARAMS)])
        tx = sign_tx(tenant.identity, chain_id=self.chain_id, nonce=nonce, tx_type="job.submit", payload={
            "type": job_type, "inputs": {"sales": bytes.fromhex(tenant.digest)}, "params": params,
            "replication": self.replication, "deadline_blocks": 100})
        job = TrackedJob(tx.hash.hex(), tenant.index, nonce, job_type, tx, sent_at=time.time())
        tenant.jobs.append(job)
        return job

    async def _send(self, addresses: list[str], tenant: Tenant, job: TrackedJob, *, start: int) -> bool:
        """Offer the job's transaction to nodes from ``start`` until one takes it
        (or already has it); True then. The same bytes every time: one job id."""
        for k in range(len(addresses)):
            address = addresses[(start + k) % len(addresses)]

            async def submit(rpc: RpcClient) -> Any:
                return await rpc.call("analytics_submit", {"tx": job.tx.encoded.hex()})

            try:
                answer = await self._with_node(address, tenant.identity, submit)
            except RpcCallError as exc:
                if _already_taken(exc):
                    job.acknowledged = True
                    return True
                tenant.last_error = f"{address}: {exc}"  # a lagging node, quota, full mempool: try the next
                continue
            except (Exception, trio.TooSlowError):
                self.unreachable_attempts += 1  # fate unknown: offer the same transaction to the next node
                continue
            if answer.get("job_id") != job.job_id:
                tenant.last_error = f"{address} answered job id {answer.get('job_id')}, expected {job.job_id}"
                continue
            job.acknowledged = True
            return True
        return False

    async def _resend_stalled(self, addresses: list[str], tenant: Tenant, *, start: int, older_than: float = STALL_S) -> int | None:
        """Re-send, in nonce order, the tenant's jobs not committed ``older_than``
        seconds after they were sent; the tenant's committed next nonce (None: no node answered)."""
        committed_next = await self._committed_next(addresses, tenant, start)
        if committed_next is None:
            return None
        tenant.committed_next = committed_next
        now = time.time()
        for job in tenant.jobs:
            if job.nonce >= committed_next and (not job.acknowledged or now - job.sent_at >= older_than):
                if not await self._send(addresses, tenant, job, start=start):
                    break  # keep nonce order: no later job before this one
        return committed_next

    # -- checks --------------------------------------------------------------
    async def check(self, addresses: list[str]) -> list[str]:
        """Every job final (bounded wait), none disputed, failures with a reason,
        verified results agreeing, every receipt verifying offline."""
        self._checked = True
        problems = [f"tenant {t.index} could not register its dataset: {t.last_error}" for t in self.tenants if not t.registered]
        deadline = trio.current_time() + self.final_timeout_s
        await self.settle(addresses, deadline)
        while True:
            await self.refresh(addresses)
            if all(j.summary is not None and j.summary["state"] in FINAL_STATES for j in self.jobs) or trio.current_time() >= deadline:
                break
            await trio.sleep(1.0)
        for job in self.jobs:
            problems += self._job_problems(job)
        problems += await self._check_verified_and_receipts(addresses)
        await self._finish_times(addresses)
        if len(problems) > MAX_PROBLEM_LINES:
            problems = problems[:MAX_PROBLEM_LINES] + [f"... and {len(problems) - MAX_PROBLEM_LINES} more problems"]
        return problems

    async def settle(self, addresses: list[str], deadline: float) -> None:
        """Re-send, in nonce order, every job not committed yet, until all are or ``deadline``."""

        async def one(tenant: Tenant) -> None:
            attempt = 0
            while tenant.jobs and trio.current_time() < deadline:
                committed_next = await self._resend_stalled(addresses, tenant, start=attempt, older_than=2.0)
                if committed_next is not None and committed_next > tenant.jobs[-1].nonce:
                    return
                attempt += 1
                await trio.sleep(1.0)

        async with trio.open_nursery() as nursery:
            for tenant in self.tenants:
                nursery.start_soon(one, tenant)

    async def refresh(self, addresses: list[str]) -> None:
        """Find every tracked job on chain by listing each tenant's jobs."""
        for tenant in self.tenants:
            if not tenant.jobs:
                continue

            async def listing(rpc: RpcClient) -> dict[str, dict[str, Any]]:
                found: dict[str, dict[str, Any]] = {}
                before = None
                while True:
                    page = await rpc.call("analytics_list", {"limit": 500, **({"before": before} if before is not None else {})})
                    found.update((j["id"], j) for j in page["jobs"])
                    if (before := page["next"]) is None:
                        return found

            try:
                found = await self._any_node(addresses, tenant.identity, listing, start=tenant.index, timeout=30)
            except (Exception, trio.TooSlowError) as exc:
                tenant.last_error = f"listing its jobs: {type(exc).__name__}: {exc}"
                continue
            tenant.listed = True
            for job in tenant.jobs:
                job.summary = found.get(job.job_id, job.summary)

    def _job_problems(self, job: TrackedJob) -> list[str]:
        name = f"job {job.job_id[:12]} ({job.job_type}, tenant {job.tenant}, nonce {job.nonce})"
        s = job.summary
        if s is None:
            tenant = self.tenants[job.tenant]
            if not tenant.listed:
                return [f"{name}: could not look it up ({tenant.last_error})"]
            committed = tenant.committed_next is not None and tenant.committed_next > job.nonce
            return [f"{name} is not on chain: " + (
                "its transaction was committed but the chain state refused it" if committed
                else f"its transaction is not committed (the tenant's next committed nonce is {tenant.committed_next})"
                + ("" if job.acknowledged else "; no node ever took it"))]
        if s["state"] not in FINAL_STATES:
            return [f"{name} not final after {self.final_timeout_s:g} s: {s['state']}" + (f" ({s['reason']})" if s.get("reason") else "")]
        if s["state"] == "disputed":
            return [f"{name} disputed: {s.get('reason')}"]
        if s["state"] == "failed" and not (s.get("reason") or "").strip():
            return [f"{name} failed without a reason"]
        return []

    async def _check_verified_and_receipts(self, addresses: list[str]) -> list[str]:
        """Results of verified jobs agree; every receipt of every job on chain verifies offline."""
        verifier = BundleVerifier(load_genesis(self.genesis))
        problems: list[str] = []
        deadline = trio.current_time() + self.receipt_timeout_s
        for tenant in self.tenants:
            for job in [j for j in tenant.jobs if j.summary is not None]:
                outcome: list[str] | None = None

                async def verify(rpc: RpcClient, job: TrackedJob = job) -> list[str] | None:
                    return await self._verify_job(rpc, job, verifier, final=trio.current_time() >= deadline)

                while outcome is None:
                    try:
                        outcome = await self._any_node(addresses, tenant.identity, verify, start=job.nonce, timeout=60)
                    except (Exception, trio.TooSlowError) as exc:
                        if trio.current_time() >= deadline:
                            outcome = [f"job {job.job_id[:12]}: its receipts could not be read: {exc}"]
                    if outcome is None:
                        await trio.sleep(1.0)
                problems += outcome
        return problems

    async def _verify_job(self, rpc: RpcClient, job: TrackedJob, verifier: BundleVerifier, *, final: bool) -> list[str] | None:
        """Problems with one job's receipts; None to try again later (not all sealed yet)."""
        name = f"job {job.job_id[:12]}"
        status = await rpc.call("analytics_status", {"job_id": job.job_id})
        trace = await rpc.call("receipt_trace", {"job_id": job.job_id})
        problems, verified = [], {}
        for r in trace:
            try:
                bundle = bytes.fromhex((await rpc.call("receipt_bundle", {"id": r["id"]}))["bundle"])
            except RpcCallError as exc:
                if exc.code == ErrorCode.RECEIPT_NOT_SEALED and not final:
                    return None
                problems.append(f"{name}: receipt {r['kind']} {r['id'][:12]} has no bundle: {exc}")
                continue
            try:
                proven = verifier.verify(bundle)
            except BundleInvalid as exc:
                problems.append(f"{name}: receipt {r['kind']} {r['id'][:12]} does not verify offline: {exc}")
                continue
            if proven.receipt.id.hex() != r["id"]:
                problems.append(f"{name}: the bundle of receipt {r['id'][:12]} proves receipt {proven.receipt.id.hex()[:12]}")
                continue
            verified[r["id"]] = proven.receipt
        if status["state"] == "verified":
            results = status["results"]
            digests = {r["result"] for r in results}
            exec_ids = {r["receipt"] for r in results}
            verdicts = [rc for rc in verified.values() if rc.kind == "job.verdict"]
            if len(results) != status["replication"] or len(digests) != 1:
                problems.append(f"{name}: verified with {len(results)} results and {len(digests)} distinct digests (replication {status['replication']})")
            elif not exec_ids <= set(verified) or not verdicts:
                if not final:
                    return None  # the execution or verdict receipts are not all logged and sealed yet
                problems.append(f"{name}: verified, but its trace lacks " + ("job.exec receipts" if not exec_ids <= set(verified) else "a job.verdict receipt"))
            else:
                (digest,) = digests
                if any(verified[i].body["result"].hex() != digest for i in exec_ids):
                    problems.append(f"{name}: a job.exec receipt names another result digest than the chain's {digest[:12]}")
                if any({e["result"].hex() for e in v.body["results"]} != {digest} for v in verdicts):
                    problems.append(f"{name}: a job.verdict receipt disagrees with the chain's result digest {digest[:12]}")
        self.receipts_verified += len(verified)
        self.receipt_kinds.update(rc.kind for rc in verified.values())
        return problems

    async def _finish_times(self, addresses: list[str]) -> None:
        """The timestamp of the block that made each job final (for latencies)."""
        heights = sorted({j.summary["finished_height"] for j in self.jobs if j.summary and j.summary.get("finished_height")})
        if not heights or not self.tenants:
            return

        async def blocks(rpc: RpcClient) -> dict[int, int]:
            return {h: int((await rpc.call("chain_block", {"height": h}))["timestamp_ms"]) for h in heights}

        try:
            stamps = await self._any_node(addresses, self.tenants[0].identity, blocks, timeout=60)
        except (Exception, trio.TooSlowError):
            return
        for job in self.jobs:
            if job.summary and job.summary.get("finished_height") in stamps:
                job.finished_ms = stamps[job.summary["finished_height"]]

    # -- figures -------------------------------------------------------------
    def state_counts(self) -> dict[str, int]:
        counts = Counter((j.summary["state"] if j.summary else "not on chain") for j in self.jobs)
        return {s: counts[s] for s in (*FINAL_STATES, "submitted", "scheduled", "running", "not on chain") if counts[s] or s in FINAL_STATES}

    def latencies(self) -> list[float]:
        """Seconds from first sending each final job to the block that made it final."""
        return sorted(j.finished_ms / 1000 - j.sent_at for j in self.jobs if j.finished_ms is not None)

    def summary(self) -> str:
        jobs = self.jobs
        types = Counter(j.job_type for j in jobs)
        line = (f"{len(jobs)} submitted ({', '.join(f'{n} {t}' for t, n in sorted(types.items())) or 'none'}) by {len(self.tenants)} tenants; "
                + ", ".join(f"{n} {s}" for s, n in self.state_counts().items()))
        lat = self.latencies()
        if lat:
            line += f"; submit-to-final p50 {percentile(lat, 50):.1f} s, p95 {percentile(lat, 95):.1f} s"
        if self._checked:
            kinds = ", ".join(f"{n} {k}" for k, n in sorted(self.receipt_kinds.items()))
            line += f"; {self.receipts_verified} receipts verified offline" + (f" ({kinds})" if kinds else "")
        n = self.unreachable_attempts
        return line + f" ({n} attempt{'' if n == 1 else 's'} found their node unreachable)"


def _already_taken(exc: RpcCallError) -> bool:
    """The node refused the transaction because it already has it: pending
    (duplicate), committed (stale nonce; one transaction per nonce), or on chain."""
    data = exc.data if isinstance(exc.data, dict) else {}
    reason, detail = str(data.get("reason", "")), str(data.get("detail", ""))
    return reason == "duplicate" or (reason == "bad_nonce" and "stale" in detail) or "already exists" in reason


def percentile(sorted_values: list[float], pct: float) -> float:
    """Nearest-rank percentile of an ascending list."""
    rank = max(1, math.ceil(pct / 100 * len(sorted_values)))
    return sorted_values[rank - 1]
