"""The metanode client library: a tenant's view of the cluster.

A tenant is an Ed25519 key. The client connects to a gateway node with that
key as its identity (the handshake proves it), signs its own transactions
(dataset registrations, job submissions) and reads back job states and
receipts. The planning document's example runs as written, with the node, the
key and the genesis file you trust in the environment (``METANODE_NODE``,
``METANODE_KEY``, ``METANODE_GENESIS``)::

    client = Client()
    job_id = client.submit_job(job_type="trend_analysis", data_source="sales_data.csv",
                               parameters={"window": "30d"})   # uploads the file; infers the columns
    result = client.wait_for_completion(job_id)                 # JobResult: state, table, receipt_hash
    assert client.verify_receipt(result.receipt_hash)           # offline, against the trusted genesis

or with everything explicit::

    client = Client("/ip4/127.0.0.1/tcp/7102/p2p/12D3KooW...", key="tenant.key", genesis="genesis.toml")
    dataset = client.upload_dataset("sales.csv")        # stored and registered on chain: sales@1
    job_id = client.submit_job(job_type="sql", data_source={"sales": "sales"},
                               parameters={"query": "SELECT count(*) AS n FROM sales"})

Uploading the same bytes again returns the same dataset (no error, no new
version); new bytes under a name make its next version (``sales@2``; ``sales``
means the latest). From trio code use :class:`AsyncClient` (``async with
AsyncClient.connect(address, key) as client``): the same methods, awaited.
"""

from __future__ import annotations

import os
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from contextlib import aclosing, asynccontextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any

import trio

from node.base.errors import EXIT_USAGE, ErrorCode, UserError
from node.base.keys import Identity
from node.base.retry import Backoff, retry
from node.consensus.tx import sign_tx
from node.sdk.datasets import DatasetResolver, PreparedJob, is_digest
from node.sdk.link import Link
from node.sdk.results import FINAL_STATES, JobResult
from node.sdk.services import PreparedService, ServiceMethods, SyncServiceMethods
from node.sdk.uploads import Progress

if TYPE_CHECKING:
    from node.p2p.rpc_client import RpcClient

__all__ = ["FINAL_STATES", "AsyncClient", "Client", "JobResult", "PreparedJob", "PreparedService", "require_key"]

ENV_NODE, ENV_KEY, ENV_GENESIS = "METANODE_NODE", "METANODE_KEY", "METANODE_GENESIS"
DATASET_PAGE = 1000  # dataset_list's largest page
BUNDLE_WAIT_S = 60.0  # a receipt is bundled once a block seals it: a just-verified job's may need a block or two


def _from_env(value: Any, variable: str) -> Any:
    if value is None or (isinstance(value, str) and not value.strip()):
        return os.environ.get(variable, "").strip() or None
    return value


def node_address(node: str | None) -> str:
    """The gateway's address: the one given, else ``METANODE_NODE``."""
    address = _from_env(node, ENV_NODE)
    if not address:
        raise UserError(f"no node address: pass Client(node=\"/ip4/HOST/tcp/PORT/p2p/PEER_ID\") or set {ENV_NODE}",
                        exit_code=EXIT_USAGE)
    return str(address)


def tenant_identity(key: Identity | str | Path | None) -> Identity:
    """The tenant key: the Identity or key file given, else the file ``METANODE_KEY`` names."""
    if isinstance(key, Identity):
        return key
    path = _from_env(key, ENV_KEY)
    if not path:
        raise UserError(f"no tenant key: pass Client(key=\"tenant.key\") or set {ENV_KEY} "
                        "(create one with `metanode keys init --out tenant.key`)", exit_code=EXIT_USAGE)
    from node.base.keys import KeyFileError

    try:
        return Identity.load(path)
    except KeyFileError as exc:
        where = "key" if key else ENV_KEY
        raise UserError(f"{where}: {exc}", exit_code=EXIT_USAGE) from None


def trusted_genesis(*candidates: str | Path | None) -> str | Path:
    """The first genesis file given, else ``METANODE_GENESIS``."""
    for candidate in candidates:
        if candidate:
            return candidate
    found = _from_env(None, ENV_GENESIS)
    if not found:
        raise UserError(f"verify_receipt needs the genesis file you trust: pass verify_receipt(hash, genesis=PATH) "
                        f"or Client(genesis=PATH), or set {ENV_GENESIS}", exit_code=EXIT_USAGE)
    return str(found)


class AsyncClient(ServiceMethods):
    """The trio API over one gateway connection (replaced when it drops mid-upload);
    the service methods are node/sdk/services.py's."""

    def __init__(self, link: Link, identity: Identity, chain_id: str, *, genesis: str | Path | None = None) -> None:
        self.link = link
        self.identity = identity
        self.chain_id = chain_id
        self.genesis = genesis
        self._datasets = DatasetResolver(self)
        self._next_nonce: tuple[tuple[int, int], int] | None = None  # (connection, nonce) after an accepted submit

    @property
    def rpc(self) -> RpcClient:
        """The current connection's RPC client (for methods this class does not wrap)."""
        return self.link.rpc

    @classmethod
    @asynccontextmanager
    async def connect(cls, address: str | None = None, key: Identity | str | Path | None = None, *, timeout: float = 10.0,
                      genesis: str | Path | None = None) -> AsyncIterator[AsyncClient]:
        """Connect to ``address`` (else ``METANODE_NODE``) as ``key`` (else ``METANODE_KEY``)."""
        link = Link(node_address(address), tenant_identity(key), timeout)
        async with trio.open_nursery() as nursery:
            await nursery.start(link.run)
            try:
                head = await link.rpc.call("chain_head")
                yield cls(link, link.identity, head["chain_id"], genesis=_from_env(genesis, ENV_GENESIS))
            finally:
                nursery.cancel_scope.cancel()

    # -- transactions ---------------------------------------------------------------------
    def _connection(self) -> tuple[int, int]:
        """Which connection to the node this is: what is learnt on one (the next
        nonce, a subscription) is not assumed on the next."""
        return self.link.generation, id(self.rpc)

    async def _signed(self, tx_type: str, payload: Any, *, nonce: int | None = None) -> bytes:
        if nonce is None and self._next_nonce is not None and self._next_nonce[0] == self._connection():
            nonce = self._next_nonce[1]
        if nonce is None:
            answer = await self.rpc.call("chain_nonce", {"sender": self.identity.public_key.hex()})
            # The first gap in our nonces: signed past it, a transaction would wait behind it.
            nonce = answer.get("expected_next", answer["pending_next"])
        self._next_nonce = (self._connection(), nonce + 1)  # taken: a submit running beside this one signs the next
        return sign_tx(self.identity, chain_id=self.chain_id, nonce=nonce, tx_type=tx_type, payload=payload).encoded

    async def _submit(self, method: str, tx_type: str, payload: Any, *, timeout: float | None = None) -> Any:
        """Sign and submit one transaction through ``method`` (:func:`submit_signed`).

        After an accepted transaction the next is signed with the following nonce
        without asking the node (a round trip less per job): the node keeps an
        accepted transaction until a block takes its nonce, so no gap opens. Any
        failure, and a new connection (the node may have restarted and lost its
        pool), makes the next one ask again."""

        async def signed(nonce: int | None) -> bytes:
            return await self._signed(tx_type, payload, nonce=nonce)

        try:
            return await submit_signed(self.rpc, method, signed, timeout=timeout)
        except BaseException:
            self._next_nonce = None
            raise

    # -- datasets ---------------------------------------------------------------------------
    async def upload_dataset(self, path: str | Path, *, name: str | None = None, format: str | None = None,
                             on_bad_rows: str = "fail", progress: Progress | None = None) -> dict[str, Any]:
        """Upload a CSV, Parquet or JSON Lines file (streamed from disk, resumed
        after a dropped connection) and make sure it is registered on chain
        under ``name`` (default: the file's stem). Returns the catalog row
        (digest, schema, row_count, ...) with ``version`` and ``registered``
        (the chain's registration row). Bytes already registered as that name's
        latest version are returned as they are: no transaction, no error."""
        return await self._datasets.upload(Path(path), name=name, format=format, on_bad_rows=on_bad_rows, progress=progress)

    async def wait_for_receipt(self, receipt_id: str, *, timeout: float = 120.0) -> str:
        """Wait until a receipt is in the chain's log (registering an upload needs
        its data.store receipt on chain: the proof that you uploaded those bytes)."""
        from node.p2p.rpc_client import RpcCallError

        with trio.fail_after(timeout):
            await retry(lambda: self.rpc.call("receipt_get", {"id": receipt_id}), backoff=Backoff(0.2),
                        retry_on=RpcCallError, when=lambda exc: exc.code == ErrorCode.NOT_FOUND)
        return receipt_id

    async def datasets(self) -> list[dict[str, Any]]:
        """Every dataset of yours in this node's catalog (name, digest, format, size, schema, rows)."""
        found: list[dict[str, Any]] = []
        while True:
            page = (await self.rpc.call("dataset_list", {"limit": DATASET_PAGE, "offset": len(found)}))["datasets"]
            found += page
            if len(page) < DATASET_PAGE:
                return found

    async def registrations(self, name: str | None = None) -> list[dict[str, Any]]:
        """Your datasets as registered on chain: name, version, digest, size, format, latest."""
        found: list[dict[str, Any]] = []
        while True:
            params: dict[str, Any] = {"limit": DATASET_PAGE, "offset": len(found), **({"name": name} if name else {})}
            page = (await self.rpc.call("analytics_datasets", params))["datasets"]
            found += page
            if len(page) < DATASET_PAGE:
                return found

    async def find_dataset(self, ref: str) -> dict[str, Any]:
        """One of your datasets by name (its latest version), ``name@version`` or
        digest, as :meth:`upload_dataset` returns it. A dataset stored but not
        registered yet (uploaded over HTTP without registering) is registered."""
        return await self._datasets.find(ref)

    # -- jobs ---------------------------------------------------------------------------------
    async def prepare_job(self, *, job_type: str, data_source: str | Path | Mapping[str, str | Path],
                          parameters: Mapping[str, Any] | None = None, replication: int = 1, deadline_blocks: int = 100,
                          progress: Progress | None = None) -> PreparedJob:
        """Everything :meth:`submit_job` does short of submitting: uploads the
        files among the sources, resolves the others, maps the job type's
        spelling, fills trend-analysis parameters from the input's schema.
        Returns the ``job.submit`` payload, the ``notes`` saying what was
        inferred (and the ``--param`` that changes it) and the ``datasets`` by input."""
        return await self._datasets.prepare(job_type=job_type, data_source=data_source, parameters=parameters,
                                            replication=replication, deadline_blocks=deadline_blocks, progress=progress)

    async def submit_job(self, *, job_type: str, data_source: str | Path | Mapping[str, str | Path],
                         parameters: Mapping[str, Any] | None = None, replication: int = 1, deadline_blocks: int = 100,
                         progress: Progress | None = None) -> str:
        """Submit a job and return its id. ``data_source`` is a file (uploaded:
        a second run finds it already registered), a digest, a dataset name
        (``sales``, ``sales@2``), or {input name: any of these}."""
        prepared = await self.prepare_job(job_type=job_type, data_source=data_source, parameters=parameters,
                                          replication=replication, deadline_blocks=deadline_blocks, progress=progress)
        return await self.submit_prepared(prepared)

    async def submit_prepared(self, prepared: PreparedJob) -> str:
        """Sign and submit a job :meth:`prepare_job` prepared; returns its id."""
        answer = await self._submit("analytics_submit", "job.submit", prepared.payload)
        return str(answer["job_id"])

    async def cancel_job(self, job_id: str) -> dict[str, Any]:
        """Ask the chain to cancel one of your jobs (it must not be final yet)."""
        answer: dict[str, Any] = await self._submit("analytics_cancel", "job.cancel", {"job": _job_id_bytes(job_id)})
        return answer

    async def status(self, job_id: str) -> dict[str, Any] | None:
        from node.p2p.rpc_client import RpcCallError

        _job_id_bytes(job_id)
        try:
            return await self.rpc.call("analytics_status", {"job_id": job_id})
        except RpcCallError as exc:
            if exc.code == ErrorCode.NOT_FOUND:
                return None  # not in a committed block yet (or not ours)
            raise

    async def wait_for_completion(self, job_id: str, *, timeout: float = 300.0, include_result: bool = True,
                                  on_change: Callable[[dict[str, Any]], None] | None = None) -> JobResult:
        """Wait until the job reaches a final state, looking once per new block
        (a job changes only when a block is applied, and the node notifies after
        applying it); ``on_change`` sees each new state. A verified job's status
        carries its ``result`` (see :meth:`result`)."""
        last = None
        try:
            with trio.fail_after(timeout):
                async with aclosing(self._blocks()) as blocks:
                    async for _ in blocks:
                        status = await self.status(job_id)
                        if status is not None and status["state"] != last:
                            last = status["state"]
                            if on_change is not None:
                                on_change(status)
                        if status is not None and status["state"] in FINAL_STATES:
                            if include_result and status["state"] == "verified":
                                status["result"] = await self.result(job_id)
                            return JobResult(job_id, status)
        except trio.TooSlowError:
            raise trio.TooSlowError(f"job {job_id} is not final after {timeout:g} s (state {last or 'not on chain yet'}); "
                                    "it keeps going: wait again, or cancel it") from None
        raise AssertionError("unreachable: the block stream does not end")

    async def result(self, job_id: str, *, retry_for: float = 30.0) -> dict[str, Any]:
        """A verified job's result table: ``columns`` ([name, type]), ``rows``,
        ``result_digest`` (checked by the gateway against the chain),
        ``computed_by`` and the ``receipts`` of each execution. Retries while
        the nodes holding it are briefly unreachable."""
        from node.p2p.rpc_client import RpcCallError

        def unavailable_now(exc: RpcCallError) -> bool:
            return exc.code == ErrorCode.RESULT_NOT_AVAILABLE and isinstance(exc.data, dict) and "holders" in exc.data

        return await retry(lambda: self.rpc.call("analytics_result", {"job_id": job_id}, timeout=60), backoff=Backoff(0.5),
                           retry_on=RpcCallError, when=unavailable_now, deadline=trio.current_time() + retry_for)

    async def witness(self, job_id: str) -> dict[str, Any]:
        """The witness of each execution of the job (what it read, ran and produced)."""
        return await self.rpc.call("analytics_witness", {"job_id": job_id}, timeout=60)

    async def jobs(self, *, state: str | None = None, limit: int = 50) -> list[dict[str, Any]]:
        params: dict[str, Any] = {"limit": limit}
        if state:
            params["state"] = state
        return (await self.rpc.call("analytics_list", params))["jobs"]

    async def health(self) -> dict[str, Any]:
        return await self.rpc.call("analytics_health")

    # -- receipts -----------------------------------------------------------------------------
    async def receipt_bundle(self, receipt_hash: str, *, wait: float = BUNDLE_WAIT_S) -> bytes:
        """A receipt's bundle (envelope, inclusion proof, sealed headers), waiting
        up to ``wait`` seconds for a block to seal a receipt the node just logged."""
        from node.p2p.rpc_client import RpcCallError

        _receipt_id(receipt_hash)
        not_yet = (ErrorCode.NOT_FOUND, ErrorCode.RECEIPT_NOT_SEALED)
        answer = await retry(lambda: self.rpc.call("receipt_bundle", {"id": receipt_hash.lower()}), backoff=Backoff(0.25, 1.5, 2.0),
                             retry_on=RpcCallError, when=lambda exc: exc.code in not_yet, deadline=trio.current_time() + wait)
        return bytes.fromhex(answer["bundle"])

    async def verify_receipt(self, receipt_hash: str, genesis: str | Path | None = None) -> bool:
        """Fetch a receipt's bundle from the node and verify it offline against
        the genesis file you trust (``genesis``, else the client's, else
        ``METANODE_GENESIS``): True when every signature and proof holds."""
        from node.consensus.genesis import load_genesis
        from node.receipts.verify import BundleInvalid, BundleVerifier

        trusted = load_genesis(trusted_genesis(genesis, self.genesis))
        bundle = await self.receipt_bundle(receipt_hash)
        try:
            BundleVerifier(trusted).verify(bundle)
        except BundleInvalid:
            return False
        return True


def _job_id_bytes(job_id: str) -> bytes:
    if not is_digest(job_id):
        raise UserError(f"job id {job_id!r:.80}: expected 64 hex characters", exit_code=EXIT_USAGE)
    return bytes.fromhex(job_id)


def _receipt_id(receipt_hash: str) -> None:
    if not isinstance(receipt_hash, str) or not is_digest(receipt_hash):
        raise UserError(f"receipt hash {receipt_hash!r:.80}: expected 64 hex characters (a receipt id, "
                        "e.g. result.receipt_hash)", exit_code=EXIT_USAGE)


class Client(SyncServiceMethods):
    """The same operations for plain (non-trio) Python: one connection per call.

    ``Client()`` reads ``METANODE_NODE``, ``METANODE_KEY`` and ``METANODE_GENESIS``
    for what is not given."""

    def __init__(self, node: str | None = None, key: Identity | str | Path | None = None, *,
                 genesis: str | Path | None = None, timeout: float = 10.0) -> None:
        self.node = node_address(node)
        self.identity = tenant_identity(key)
        self.genesis: str | Path | None = _from_env(genesis, ENV_GENESIS)
        self.timeout = timeout

    def _async_client(self) -> Any:
        return AsyncClient.connect(self.node, self.identity, timeout=self.timeout, genesis=self.genesis)

    def _run(self, method: str, *args: Any, **kwargs: Any) -> Any:
        async def call() -> Any:
            async with self._async_client() as client:
                return await getattr(client, method)(*args, **kwargs)

        try:
            return trio.run(call)
        except BaseExceptionGroup as group:
            from node.base.errors import sole_exception

            raise sole_exception(group) from None

    def upload_dataset(self, path: str | Path, *, name: str | None = None, format: str | None = None,
                       on_bad_rows: str = "fail", progress: Progress | None = None) -> dict[str, Any]:
        return self._run("upload_dataset", path, name=name, format=format, on_bad_rows=on_bad_rows, progress=progress)

    def datasets(self) -> list[dict[str, Any]]:
        return self._run("datasets")

    def registrations(self, name: str | None = None) -> list[dict[str, Any]]:
        return self._run("registrations", name)

    def find_dataset(self, ref: str) -> dict[str, Any]:
        return self._run("find_dataset", ref)

    def prepare_job(self, *, job_type: str, data_source: str | Path | Mapping[str, str | Path],
                    parameters: Mapping[str, Any] | None = None, replication: int = 1, deadline_blocks: int = 100,
                    progress: Progress | None = None) -> PreparedJob:
        return self._run("prepare_job", job_type=job_type, data_source=data_source, parameters=parameters,
                         replication=replication, deadline_blocks=deadline_blocks, progress=progress)

    def submit_job(self, *, job_type: str, data_source: str | Path | Mapping[str, str | Path],
                   parameters: Mapping[str, Any] | None = None, replication: int = 1, deadline_blocks: int = 100,
                   progress: Progress | None = None) -> str:
        return self._run("submit_job", job_type=job_type, data_source=data_source, parameters=parameters,
                         replication=replication, deadline_blocks=deadline_blocks, progress=progress)

    def submit_prepared(self, prepared: PreparedJob) -> str:
        return self._run("submit_prepared", prepared)

    def status(self, job_id: str) -> dict[str, Any] | None:
        return self._run("status", job_id)

    def cancel_job(self, job_id: str) -> dict[str, Any]:
        return self._run("cancel_job", job_id)

    def wait_for_completion(self, job_id: str, *, timeout: float = 300.0, include_result: bool = True,
                            on_change: Callable[[dict[str, Any]], None] | None = None) -> JobResult:
        return self._run("wait_for_completion", job_id, timeout=timeout, include_result=include_result, on_change=on_change)

    def jobs(self, *, state: str | None = None, limit: int = 50) -> list[dict[str, Any]]:
        return self._run("jobs", state=state, limit=limit)

    def result(self, job_id: str) -> dict[str, Any]:
        return self._run("result", job_id)

    def witness(self, job_id: str) -> dict[str, Any]:
        return self._run("witness", job_id)

    def health(self) -> dict[str, Any]:
        return self._run("health")

    def verify_receipt(self, receipt_hash: str, genesis: str | Path | None = None) -> bool:
        trusted = trusted_genesis(genesis, self.genesis)  # before dialing: a missing genesis is the caller's to fix
        return self._run("verify_receipt", receipt_hash, trusted)


def require_key(path: str | None) -> Identity:
    """The tenant key for CLI commands, with a helpful error when it is missing."""
    if not path:
        raise UserError("no tenant key: pass --key FILE (create one with `metanode keys init --out tenant.key`)", exit_code=EXIT_USAGE)
    from node.base.keys import KeyFileError

    try:
        return Identity.load(path)
    except KeyFileError as exc:
        raise UserError(f"--key: {exc}", exit_code=EXIT_USAGE) from None


async def submit_signed(rpc: Any, method: str, signed: Callable[[int | None], Awaitable[bytes]], *,
                        timeout: float | None = None) -> Any:
    """Submit the transaction ``signed(None)`` makes (signed with the nonce the node
    expects) through ``method``; when the node answers that it needs another nonce
    (``expected_nonce``: ours was taken by a transaction we sent meanwhile, through
    this node or another one it has just heard of, or a gap opened), sign again with
    that nonce and resend, at most twice (README: "after each rejection code")."""
    from node.p2p.rpc_client import RpcCallError

    tx = await signed(None)
    wait = {"mode": "commit", "timeout": timeout} if timeout else {}
    for attempt in range(3):
        try:
            return await rpc.call(method, {"tx": tx.hex(), **wait}, timeout=(timeout or 0) + 30)
        except RpcCallError as exc:
            data = exc.data if isinstance(exc.data, dict) else {}
            expected = data.get("expected_nonce")
            if data.get("reason") != "bad_nonce" or not isinstance(expected, int) or attempt == 2:
                raise
            tx = await signed(expected)
    raise AssertionError("unreachable")
