"""The processing role: run the jobs the chain assigned to this node, in the cage.

On every finalised block it looks up this node's pending assignments (the
state machine, a pure function of the chain, decided them), obtains a
verified copy of each input (the local one re-hashed, else fetched from a
peer and checked against its digest), runs the job in a DockLock cage under
the ``processing`` policy with the seed and logical clock the scheduling block
fixed, keeps the canonical result and the witness (node/roles/artifacts.py)
for gateways to fetch, and submits ``job.result`` carrying its signed
``job.exec`` receipt.

First, on every block, it acknowledges its assignments: ONE ``job.ack``
listing every pending assignment of its own that waits for an
acknowledgement on chain (rule ``ack_blocks`` > 0 when it was made) and that
it has not acknowledged in a transaction still on its way. Under that rule a
node that does not acknowledge in time is replaced (a dead node costs
``ack_blocks`` blocks, not the job's deadline); an ack that has not reached
the chain after ``ack_blocks / 2`` blocks (lost, or refused with another job
of the same ack) is sent again. A job's result acknowledges it as well, so
under ``ack_blocks`` >= :data:`MIN_ACK_BLOCKS_TO_WAIT` an assignment is
acknowledged only if its job still runs :data:`ACK_AFTER_BLOCKS` block later
(or its answer has not landed after ``ack_blocks / 2``): most jobs finish first
and need no ``job.ack``, and their results do not wait behind a block of acks.

Only what the job itself decides is signed. A run can end three ways:

* **the job's own outcome**, signed in ``job.result``: its result, or a failure
  that any honest node replays identically from the same verified inputs,
  seed and policy. The chain compares these across assignees, so a signed
  failure must be a property of the job, never of this machine.
* **could not run here**: a reason that is a property of this node or of the
  inputs' copies, not of the job. It is never signed as a result (it would
  make an honest job ``disputed``): the node tries again after
  :data:`RETRY_DELAY_S`, up to :data:`MAX_LOCAL_TRIES` times, and then submits
  ``job.decline`` so the
  chain gives the slot to another node at once (or fails the job with the
  reason once its attempts are used up). Two kinds:

  - ``input_unavailable``: no peer gave a copy of an input that matches its
    digest (every copy corrupt, or no holder reachable);
  - ``policy_unavailable``: the job names a DockLock policy (a service's
    ``policy``; ``processing`` for plain jobs) that this node's policy file
    does not define. Declined at once, without retries: the file does not
    change while the daemon runs, and the node is not at fault (the chain
    does not exclude it for this).
  - ``local_fault``: this node failed: its disk or I/O (out of space, a
    blob path that cannot be written or opened), the cage's machinery (fork
    server died, policy layers unavailable, worker lost or killed by something
    other than the job), a run whose witness shows inputs other than the
    digests the job names (an input changed or vanished between fetching and
    the cage opening it), a job type this build does not know, or a result it
    cannot store.

How a cage outcome (node/cage/job.py JobOutcome) is classified, by status:

============== ================== ==============================================
status         classified as      why
============== ================== ==============================================
``ok``         the job's own      the result; the witness must name the inputs
``refused``    the job's own      the SQL gate refused the text: a function of
                                  the SQL and the policy only
``output_limit`` the job's own    the output's size, fixed by the result
``killed``     the job's own only for seccomp's SIGSYS (a forbidden system
                                  call the job made); any other signal (the
                                  host's OOM killer, an operator) is local
``error``      by exception class the worker reports ``Class: message``; only
                                  :data:`JOB_ERRORS` (DuckDB's parser, binder,
                                  catalog, conversion, invalid input, range,
                                  type errors; a job function's ValueError,
                                  KeyError, arithmetic errors) are the job's;
                                  IOException, PermissionException,
                                  InternalException, OSError and anything
                                  unknown are local
``cpu_limit``  local              CPU seconds depend on the host's speed
``timeout``    local              wall-clock time depends on the host's load
``memory_limit`` local            address space under RLIMIT_AS and the
                                  allocator depend on the host
``crashed``    local              the worker died without a report
============== ================== ==============================================

When unsure the classification says "could not run": a retry on another node
is cheap, a false verdict is not. A job that cannot run anywhere still ends,
``failed`` with the nodes' reasons, once the chain's ``max_attempts`` are used.
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable, Collection
from pathlib import Path
from typing import Any, Protocol

import structlog
import trio

from node.app.chain_app import ChainApplication
from node.app.jobtypes import job_type
from node.app.model import INPUT_UNAVAILABLE, LOCAL_FAULT, POLICY_UNAVAILABLE, RUNNING, SCHEDULED
from node.app.txtypes import JOB_ACK, MAX_ACK_JOBS
from node.base.keys import Identity
from node.cage.job import JobOutcome, JobSpec
from node.consensus.service import ConsensusService
from node.receipts.execution import exec_fields_from_outcome
from node.roles.artifacts import ArtifactStore
from node.roles.issuer import NodeIssuer
from node.roles.metrics import NodeMetrics
from node.roles.node_txs import NodeTransactions
from node.roles.storage import StorageService
from node.roles.storage.errors import BlobTransferError, StorageError

log = structlog.get_logger("metanode.processing")

MAX_LOCAL_TRIES = 3  # runs (or input fetch rounds) of one assignment before this node declines it
RETRY_DELAY_S = 2.0  # between them: a peer that was briefly unreachable, a blob being repaired
MAX_DETAIL = 300  # the chain's bound on job.decline's detail and job.result's error
# A job.result (or job.decline) acknowledges its assignment too: a job that is still running
# this many blocks after it was assigned is acknowledged; one answered already only if its
# answer has not landed by the ack resend delay. Most jobs end sooner and need no job.ack:
# two transactions less per job, and no block carrying only acks ahead of the results.
ACK_AFTER_BLOCKS = 1
MIN_ACK_BLOCKS_TO_WAIT = 4  # under a shorter ack_blocks rule every assignment is acknowledged at once
DEFAULT_POLICY = "processing"  # the policy of a plain job (a job dict without "policy")
RUN_STATES = (SCHEDULED, RUNNING)  # the job states in which an assignee runs its assignment

# Outcome statuses that are a property of the job (see the module docstring).
JOB_STATUSES = frozenset({"ok", "refused", "output_limit"})
SECCOMP_KILL = "killed by seccomp (SIGSYS)"
# Exception classes (the worker's "Class: message" detail) whose failure replays
# identically from the same SQL, parameters, verified input bytes and policy.
JOB_ERRORS = frozenset({
    # DuckDB: the SQL text, the input's bytes or the data's values
    "ParserException", "SyntaxException", "BinderException", "CatalogException", "ConversionException",
    "InvalidInputException", "OutOfRangeException", "TypeMismatchException", "InvalidTypeException",
    "NotImplementedException", "ConstraintException", "SequenceException", "DependencyException",
    # a registered job function refusing its parameters or data, or a result it cannot encode
    "ValueError", "KeyError", "TypeError", "IndexError", "ZeroDivisionError", "OverflowError",
    "ArithmeticError", "InvalidOperation", "DivisionByZero", "ResultError",
})


class CouldNotRun(Exception):
    """This node could not run a job, for a reason that is not the job's own:
    ``reason`` is one of the chain's decline reasons, ``detail`` what was seen."""

    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(f"{reason}: {detail}")
        self.reason = reason
        self.detail = detail


InputResolver = Callable[[str], Awaitable[Path]]  # digest hex -> a verified local copy; raises CouldNotRun


class JobRunner(Protocol):
    """What runs a job in the cage (node.cage.pool.CagePool)."""

    async def run_async(self, job: JobSpec) -> JobOutcome: ...


def one_line(text: str, limit: int = MAX_DETAIL) -> str:
    """Printable single-line text of at most ``limit`` characters (what the chain takes)."""
    text = " ".join(str(text).split())
    text = "".join(ch if ch.isprintable() else "?" for ch in text)
    return text[:limit] or "?"


def storage_resolver(storage: StorageService, peers: Callable[[], list[str]]) -> InputResolver:
    """Inputs from this node's store, re-hashed before use (a corrupt copy is
    quarantined), fetched from a storage peer when missing or corrupt (verified
    against the digest on arrival). Raises CouldNotRun: ``input_unavailable``
    when no peer gave a verified copy, ``local_fault`` when this node's own
    disk or store failed."""

    async def resolve(digest_hex: str) -> Path:
        digest = bytes.fromhex(digest_hex)
        try:
            await storage.ensure_verified(digest, peers())
        except BlobTransferError as exc:
            raise CouldNotRun(INPUT_UNAVAILABLE, f"input {digest_hex}: {exc}") from None
        except (StorageError, OSError) as exc:
            raise CouldNotRun(LOCAL_FAULT, f"input {digest_hex}: {type(exc).__name__}: {exc}") from None
        return storage.store.path(digest)

    return resolve


def error_text(status: str, detail: str) -> str:
    """The one-line reason a failed run reports on chain (printable, bounded)."""
    return one_line(f"{status}: {detail}")


def error_class(detail: str) -> str:
    """The exception class a worker's ``error`` detail names (``Class: message``)."""
    head = detail.split(":", 1)[0].strip()
    return head if head.isidentifier() else ""


def local_failure(outcome: JobOutcome, inputs: dict[str, str]) -> str | None:
    """Why ``outcome`` is this node's failure rather than the job's own (None:
    it is the job's own and may be signed). ``inputs``: input name -> digest hex,
    as the job names them. See the table in the module docstring."""
    described = {item.get("name"): item.get("sha256") for item in outcome.witness.get("inputs", [])}
    expected = {name: bytes.fromhex(digest) for name, digest in inputs.items()}
    if described != expected:
        changed = sorted(n for n in set(described) | set(expected) if described.get(n) != expected.get(n))
        return f"the cage read inputs other than the job's digests ({', '.join(map(str, changed))}): changed on disk"
    status, detail = outcome.status, outcome.detail
    if status in JOB_STATUSES:
        return None
    if status == "killed" and detail == SECCOMP_KILL:
        return None
    if status == "error" and error_class(detail) in JOB_ERRORS:
        return None
    return f"{status}: {detail}"


def job_spec(job: dict[str, Any], inputs: dict[str, str]) -> JobSpec:
    """The cage job of an assigned job: its type's registry entry (node/app/jobtypes.py) says
    what the cage runs; KeyError for a type this build does not know."""
    common = {"policy": job.get("policy") or DEFAULT_POLICY, "inputs": inputs, "seed": bytes.fromhex(job["seed"]), "clock": job["clock"]}
    return JobSpec(**job_type(job["type"]).cage_job(job["params"]), **common)


class ProcessingService:
    def __init__(self, *, identity: Identity, chain: ConsensusService, app: ChainApplication, pool: JobRunner, issuer: NodeIssuer,
                 node_txs: NodeTransactions, resolve_input: InputResolver, artifacts: ArtifactStore,
                 metrics: NodeMetrics | None = None, policies: Collection[str] | None = None) -> None:
        self.key = identity.public_key
        # The policies this node's cage can run a job under (its policy file's names).
        self.policies = frozenset(policies if policies is not None else getattr(pool, "policies", (DEFAULT_POLICY,)))
        self.chain = chain
        self.app = app
        self.pool = pool
        self.issuer = issuer
        self.node_txs = node_txs
        self.resolve_input = resolve_input
        self.artifacts = artifacts
        self.metrics = metrics  # metanode_cage_runs / metanode_cage_run_seconds
        self._running: set[str] = set()
        self._done: set[tuple[str, int]] = set()  # (job id, attempt) answered: result or decline submitted
        self._tries: dict[tuple[str, int], int] = {}  # (job id, attempt) -> runs that could not run here
        self._acks_sent: dict[bytes, int] = {}  # job id -> finalized height when its job.ack was submitted
        self._first_seen: dict[bytes, int] = {}  # job id -> finalized height when it first waited for our ack
        # job id -> what running it takes (StateQueries.jobs_to_run), for the pending assignments of
        # jobs in a state it runs: read once per job, not on every block (see assigned_to_me).
        self._run_fields: dict[bytes, dict[str, Any]] = {}
        self.completed = 0
        self.declined = 0

    def pending_assignments(self, assigned: list[dict[str, Any]] | None = None) -> list[dict[str, Any]]:
        """Jobs assigned to this node and not answered yet, leaving out those
        already running here or answered for that attempt. ``assigned``: this
        block's :meth:`StateQueries.assignments_to_run` (asked for when not
        given). What is remembered of assignments no longer pending on chain is
        dropped, so it stays bounded by the pending ones."""
        if assigned is None:
            assigned = self.app.state.assignments_to_run(self.key)
        pending = {(job["id"], job["attempt"]) for job in assigned}
        self._done &= pending
        self._tries = {key: count for key, count in self._tries.items() if key in pending}
        return [job for job in assigned
                if job["state"] in RUN_STATES and job["id"] not in self._running
                and (job["id"], job["attempt"]) not in self._done]

    def assigned_to_me(self) -> list[dict[str, Any]]:
        """This node's pending assignments as :meth:`StateQueries.assignments_to_run`
        lists them, from the assignments alone (``pending_runs_of``) and the
        jobs' columns read only for jobs not held yet (``jobs_to_run``): one
        cheaper statement on most blocks instead of a join.

        What running a job takes (type, inputs, params, policy; seed and clock
        fixed by the block that first scheduled it) never changes, and a job
        with a pending assignment stays ``scheduled`` or ``running`` until it
        ends (ending withdraws its pending assignments in the same block), so
        only jobs found in those states are kept, and their ``state`` is the one
        first read: it passes :meth:`pending_assignments` alike. A job in any
        other state is read again on every block it stays pending."""
        state = self.app.state
        pending = state.pending_runs_of(self.key)
        held = {job_id for job_id, _, _ in pending}
        self._run_fields = {job_id: run for job_id, run in self._run_fields.items() if job_id in held}
        fields = dict(self._run_fields)
        missing = held - fields.keys()
        if missing:
            loaded = state.jobs_to_run(missing)
            fields.update(loaded)
            self._run_fields.update({job_id: run for job_id, run in loaded.items() if run["state"] in RUN_STATES})
        return [{"id": job_id.hex(), "attempt": attempt, "wants_ack": wants_ack, **fields[job_id]}
                for job_id, attempt, wants_ack in pending if job_id in fields]

    async def run(self, *, task_status: Any = trio.TASK_STATUS_IGNORED) -> None:
        blocks = self.chain.subscribe()
        async with trio.open_nursery() as nursery:
            task_status.started()
            async for _ in blocks:
                # One read per block for both: a block adds work for a few jobs at most
                # (none when the state holds no pending assignment at all).
                state = self.app.state
                if state.may_have_assignments():
                    assigned = self.assigned_to_me()
                else:
                    assigned = []
                    self._run_fields.clear()
                self.acknowledge(assigned)
                for job in self.pending_assignments(assigned):
                    if job["id"] not in self._running:  # a node holds a job once; stay safe if it did not
                        self._running.add(job["id"])
                        nursery.start_soon(self._execute, job)

    def acknowledge(self, assigned: list[dict[str, Any]] | None = None) -> int:
        """Submit job.ack for the assignments that wait for this node's
        acknowledgement and have none on its way (a node holds a job at most
        once, so the job id names the assignment); how many it listed. One
        transaction, or one per :data:`MAX_ACK_JOBS` ids. ``assigned`` as for
        :meth:`pending_assignments`."""
        if assigned is None:
            assigned = self.app.state.assignments_to_run(self.key)
        waiting = [bytes.fromhex(job["id"]) for job in assigned if job["wants_ack"]]
        # Forget what is acknowledged on chain (or no longer pending): it stays bounded.
        still = set(waiting)
        self._acks_sent = {job_id: sent for job_id, sent in self._acks_sent.items() if job_id in still}
        height = self.chain.finalized_height
        self._first_seen = {job_id: self._first_seen.get(job_id, height) for job_id in waiting}
        if not waiting:
            return 0
        ack_blocks = self.app.state.rules_at(height + 1).ack_blocks
        resend_after = max(1, ack_blocks // 2)
        # With a short ack window there is no time to wait for the answer: acknowledge at once.
        running_grace, answered_grace = (ACK_AFTER_BLOCKS, resend_after) if ack_blocks >= MIN_ACK_BLOCKS_TO_WAIT else (0, 0)
        answered = {bytes.fromhex(job["id"]) for job in assigned if (job["id"], job["attempt"]) in self._done}
        due = [job_id for job_id in waiting
               if height - self._first_seen[job_id] >= (answered_grace if job_id in answered else running_grace)
               and (job_id not in self._acks_sent or height - self._acks_sent[job_id] >= resend_after)]
        listed = 0
        for start in range(0, len(due), MAX_ACK_JOBS):
            part = due[start:start + MAX_ACK_JOBS]
            if not self.node_txs.submit(JOB_ACK, {"jobs": part}).accepted:
                break  # logged by node_txs; the next block tries again
            self._acks_sent.update(dict.fromkeys(part, height))
            listed += len(part)
        if listed:
            log.info("assignments acknowledged", jobs=[job_id.hex() for job_id in due[:listed]], height=height)
        return listed

    async def _execute(self, job: dict[str, Any]) -> None:
        started, timing = time.monotonic(), dict[str, float]()
        try:
            try:
                outcome = await self._run(job, timing)
            except CouldNotRun as exc:
                if not self._could_not_run(job, exc):
                    await trio.sleep(RETRY_DELAY_S)  # still marked running: no new try before this passes
                return
            timing["total"] = time.monotonic() - started
            self._submit_result(job, outcome, timing)
        finally:
            self._running.discard(job["id"])

    async def _run(self, job: dict[str, Any], timing: dict[str, float] | None = None) -> JobOutcome:
        """The job's own outcome on verified inputs, kept for gateways; CouldNotRun otherwise.
        ``timing`` gets the seconds spent verifying the inputs and in the cage."""
        timing = {} if timing is None else timing
        policy = job.get("policy") or DEFAULT_POLICY
        if policy not in self.policies:  # before fetching inputs it could not use
            raise CouldNotRun(POLICY_UNAVAILABLE, f"this node has no job policy {policy!r} (its job policies: "
                                                  f"{', '.join(sorted(self.policies)) or 'none'})")
        fetching = time.monotonic()
        inputs = {name: str(await self.resolve_input(digest)) for name, digest in sorted(job["inputs"].items())}
        timing["inputs"] = time.monotonic() - fetching
        try:
            spec = job_spec(job, inputs)
        except KeyError as exc:
            raise CouldNotRun(LOCAL_FAULT, f"this build cannot run job type {job['type']!r}: {exc}") from None
        started = time.monotonic()
        try:
            outcome = await self.pool.run_async(spec)
        except Exception as exc:  # CageError (refused before running, fork server lost), OSError, codec
            raise CouldNotRun(LOCAL_FAULT, f"the cage could not run it: {type(exc).__name__}: {exc}") from None
        timing["cage"] = time.monotonic() - started
        if self.metrics is not None:
            self.metrics.on_cage_run(timing["cage"], outcome.status)
        problem = local_failure(outcome, job["inputs"])
        if problem is not None:
            raise CouldNotRun(LOCAL_FAULT, problem)
        try:
            # Kept before the receipt that names them goes out: a gateway may ask at once.
            if outcome.result_digest is not None and outcome.result is not None:
                self.artifacts.put("result", outcome.result, expected=outcome.result_digest)
            self.artifacts.put("witness", outcome.witness_file, expected=outcome.witness_digest)
        except Exception as exc:  # a result this node cannot keep (disk full), it cannot serve: not signed
            raise CouldNotRun(LOCAL_FAULT, f"cannot keep the result: {type(exc).__name__}: {exc}") from None
        return outcome

    def _submit_result(self, job: dict[str, Any], outcome: JobOutcome, timing: dict[str, float] | None = None) -> None:
        receipt = self.issuer.issue("job.exec", height=self.chain.finalized_height, subject=bytes.fromhex(job["id"]),
                                    fields=exec_fields_from_outcome(outcome))
        payload: dict[str, Any] = {"job": bytes.fromhex(job["id"]), "receipt": receipt.envelope}
        if outcome.status != "ok":
            payload["error"] = error_text(outcome.status, outcome.detail)
        if self.node_txs.submit("job.result", payload).accepted:
            self._done.add((job["id"], job["attempt"]))
            self.completed += 1
            # Where the time went, ms: inputs verified, the cage run, in all (up to the result's signing).
            log.info("job executed", job=job["id"], status=outcome.status,
                     result=outcome.result_digest.hex() if outcome.result_digest else None,
                     ms={key: round(seconds * 1000, 1) for key, seconds in (timing or {}).items()})

    def _could_not_run(self, job: dict[str, Any], exc: CouldNotRun) -> bool:
        """Count a try that could not run; after MAX_LOCAL_TRIES, decline the
        assignment on chain. True once the decline is submitted."""
        key = (job["id"], job["attempt"])
        tries = self._tries[key] = self._tries.get(key, 0) + 1
        if exc.reason == POLICY_UNAVAILABLE:
            tries = self._tries[key] = MAX_LOCAL_TRIES  # a policy file does not change between tries
        log.warning("job could not run here", job=job["id"], attempt=job["attempt"], reason=exc.reason,
                    detail=one_line(exc.detail), tries=tries, of=MAX_LOCAL_TRIES)
        if tries < MAX_LOCAL_TRIES:
            return False
        payload = {"job": bytes.fromhex(job["id"]), "reason": exc.reason, "detail": one_line(exc.detail)}
        if not self.node_txs.submit("job.decline", payload).accepted:
            return False
        self._done.add(key)
        self.declined += 1
        log.warning("job declined: could not run here", job=job["id"], reason=exc.reason)
        return True
