"""The metanode client library: a tenant's view of the cluster.

A tenant is an Ed25519 key. The client connects to a gateway node with that
key as its libp2p identity (Noise proves it), signs its own transactions
(dataset registrations, job submissions) and reads back job states and
receipts. Two interfaces::

    # from a plain script (no trio needed)
    client = Client("/ip4/127.0.0.1/tcp/7102/p2p/12D3KooW...", key="tenant.key")
    dataset = client.upload_dataset("sales.csv")
    job_id = client.submit_job(job_type="sql", data_source=dataset["digest"],
                               parameters={"query": "SELECT count(*) AS n FROM sales"})
    status = client.wait_for_completion(job_id)        # state "verified", results, receipts
    table = status["result"]                            # columns, rows, result_digest

    # from trio code
    async with AsyncClient.connect(address, identity) as client:
        ...
"""

from __future__ import annotations

import base64
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import trio

from node.base.errors import EXIT_USAGE, ErrorCode, UserError
from node.base.keys import Identity
from node.base.retry import Backoff, retry
from node.consensus.tx import sign_tx
from node.p2p.client import connect_to_node
from node.p2p.rpc import RpcClient

UPLOAD_CHUNK = 768 * 1024  # under the gateway's 1 MiB per chunk, after base64
FINAL_STATES = ("verified", "disputed", "failed", "cancelled")
DATASET_PAGE = 1000  # dataset_list's largest page


def _identity(key: Identity | str | Path) -> Identity:
    return key if isinstance(key, Identity) else Identity.load(key)


class AsyncClient:
    """The trio API over one RPC stream to one gateway."""

    def __init__(self, rpc: RpcClient, identity: Identity, chain_id: str) -> None:
        self.rpc = rpc
        self.identity = identity
        self.chain_id = chain_id

    @classmethod
    @asynccontextmanager
    async def connect(cls, address: str, key: Identity | str | Path, *, timeout: float = 10.0) -> AsyncIterator["AsyncClient"]:
        identity = _identity(key)
        async with connect_to_node(address, identity=identity, timeout=timeout) as rpc:
            head = await rpc.call("chain_head")
            yield cls(rpc, identity, head["chain_id"])

    async def _signed(self, tx_type: str, payload: Any, *, nonce: int | None = None) -> bytes:
        if nonce is None:
            answer = await self.rpc.call("chain_nonce", {"sender": self.identity.public_key.hex()})
            # The first gap in our nonces: signed past it, a transaction would wait behind it.
            nonce = answer.get("expected_next", answer["pending_next"])
        return sign_tx(self.identity, chain_id=self.chain_id, nonce=nonce, tx_type=tx_type, payload=payload).encoded

    async def _submit(self, method: str, tx_type: str, payload: Any, *, timeout: float | None = None) -> Any:
        """Sign and submit one transaction through ``method``; when the node
        answers that it needs another nonce from us (``expected_nonce``: ours
        was taken by a transaction we sent meanwhile, or a gap opened), sign
        again with that nonce and resend (README: "after each rejection code")."""
        from node.p2p.rpc import RpcCallError

        tx = await self._signed(tx_type, payload)
        wait = {"mode": "commit", "timeout": timeout} if timeout else {}
        for attempt in range(3):
            try:
                return await self.rpc.call(method, {"tx": tx.hex(), **wait}, timeout=(timeout or 0) + 30)
            except RpcCallError as exc:
                data = exc.data if isinstance(exc.data, dict) else {}
                expected = data.get("expected_nonce")
                if data.get("reason") != "bad_nonce" or not isinstance(expected, int) or attempt == 2:
                    raise
                tx = await self._signed(tx_type, payload, nonce=expected)
        raise AssertionError("unreachable")

    async def upload_dataset(self, path: str | Path, *, name: str | None = None, format: str | None = None,
                             progress: Callable[[int, int], None] | None = None) -> dict[str, Any]:
        """Upload a CSV or Parquet file in chunks, then register it on chain (waits for the commit)."""
        path = Path(path)
        data = path.read_bytes()
        name = name or path.stem
        fmt = format or ("parquet" if path.suffix.lower() == ".parquet" else "csv")
        upload: str | None = None
        info: dict[str, Any] = {}
        for start in range(0, max(len(data), 1), UPLOAD_CHUNK):
            chunk = data[start:start + UPLOAD_CHUNK]
            final = start + UPLOAD_CHUNK >= len(data)
            params: dict[str, Any] = {"chunk": base64.b64encode(chunk).decode(), "final": final, "name": name, "format": fmt}
            if upload is not None:
                params["upload"] = upload
            info = await self._upload_call(params)
            upload = info.get("upload", upload)
            if progress is not None:
                progress(min(start + UPLOAD_CHUNK, len(data)), len(data))
        digest = bytes.fromhex(info["digest"])
        receipt_id = await self.wait_for_receipt(info["receipt"]["id"])
        done = await self._submit("tx_submit", "dataset.register", {"digest": digest, "size": len(data), "name": name,
                                                                     "format": fmt, "receipt": bytes.fromhex(receipt_id)}, timeout=120)
        if done.get("state_rejected"):
            raise UserError(f"dataset {name} was uploaded but its registration was refused: {done['state_rejected']}")
        return info

    async def _upload_call(self, params: dict[str, Any], *, wait_ready: float = 60.0) -> dict[str, Any]:
        """One dataset_upload call; a node that is not registered on chain yet
        (a cluster just starting) is retried for up to ``wait_ready`` seconds."""
        from node.p2p.rpc import RpcCallError

        return await retry(lambda: self.rpc.call("dataset_upload", params, timeout=300), backoff=Backoff(0.5),
                           retry_on=RpcCallError, when=lambda exc: exc.code == ErrorCode.NODE_NOT_READY,
                           deadline=trio.current_time() + wait_ready)

    async def wait_for_receipt(self, receipt_id: str, *, timeout: float = 120.0) -> str:
        """Wait until a receipt is in the chain's log (registering an upload needs
        its data.store receipt on chain: the proof that you uploaded those bytes)."""
        from node.p2p.rpc import RpcCallError

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

    async def find_dataset(self, name_or_digest: str) -> dict[str, Any]:
        """One of your datasets by its digest (64 hex) or by the name you uploaded it under."""
        text = name_or_digest.strip()
        if len(text) == 64 and all(c in "0123456789abcdef" for c in text.lower()):
            return await self.rpc.call("dataset_get", {"digest": text.lower()})
        matches = {d["digest"]: d for d in await self.datasets() if d["name"] == text}
        if not matches:
            raise UserError(f"dataset {text!r}: no dataset of yours has that name in this node's catalog "
                            "(upload it with --data FILE, or give its digest)")
        if len(matches) > 1:
            raise UserError(f"dataset {text!r}: {len(matches)} of your datasets have that name "
                            f"({', '.join(sorted(matches))}); give the digest")
        return next(iter(matches.values()))

    async def submit_job(self, *, job_type: str, data_source: str | dict[str, str], parameters: dict[str, Any],
                         replication: int = 1, deadline_blocks: int = 100) -> str:
        """Submit a job over datasets (a digest, or {input name: digest}); returns the job id."""
        sources = data_source if isinstance(data_source, dict) else {parameters.get("input", "data"): data_source}
        inputs = {name: bytes.fromhex(digest) for name, digest in sources.items()}
        answer = await self._submit("analytics_submit", "job.submit", {"type": job_type, "inputs": inputs, "params": parameters,
                                                                       "replication": replication, "deadline_blocks": deadline_blocks})
        return str(answer["job_id"])

    async def cancel_job(self, job_id: str) -> dict[str, Any]:
        """Ask the chain to cancel one of your jobs (it must not be final yet)."""
        answer: dict[str, Any] = await self._submit("analytics_cancel", "job.cancel", {"job": bytes.fromhex(job_id)})
        return answer

    async def status(self, job_id: str) -> dict[str, Any] | None:
        from node.p2p.rpc import RpcCallError

        try:
            return await self.rpc.call("analytics_status", {"job_id": job_id})
        except RpcCallError as exc:
            if exc.code == ErrorCode.NOT_FOUND:
                return None  # not in a committed block yet (or not ours)
            raise

    async def wait_for_completion(self, job_id: str, *, timeout: float = 300.0, include_result: bool = True,
                                  on_change: Callable[[dict[str, Any]], None] | None = None) -> dict[str, Any]:
        """Poll until the job reaches a final state; ``on_change`` sees each new
        state. A verified job's status carries its ``result`` (see :meth:`result`)."""
        last = None
        with trio.fail_after(timeout):
            while True:
                status = await self.status(job_id)
                if status is not None and status["state"] != last:
                    last = status["state"]
                    if on_change is not None:
                        on_change(status)
                if status is not None and status["state"] in FINAL_STATES:
                    if include_result and status["state"] == "verified":
                        status["result"] = await self.result(job_id)
                    return status
                await trio.sleep(0.25)

    async def result(self, job_id: str, *, retry_for: float = 30.0) -> dict[str, Any]:
        """A verified job's result table: ``columns`` ([name, type]), ``rows``,
        ``result_digest`` (checked by the gateway against the chain),
        ``computed_by`` and the ``receipts`` of each execution. Retries while
        the nodes holding it are briefly unreachable."""
        from node.p2p.rpc import RpcCallError

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

    async def verify_receipt(self, receipt_id: str, genesis: str | Path) -> bool:
        """Fetch a receipt's bundle and verify it offline against the genesis file you trust."""
        from node.consensus.genesis import load_genesis
        from node.receipts.verify import BundleInvalid, BundleVerifier

        bundle = bytes.fromhex((await self.rpc.call("receipt_bundle", {"id": receipt_id}))["bundle"])
        try:
            BundleVerifier(load_genesis(genesis)).verify(bundle)
        except BundleInvalid:
            return False
        return True


class Client:
    """The same operations for plain (non-trio) Python: one connection per call."""

    def __init__(self, node: str, key: Identity | str | Path) -> None:
        self.node = node
        self.identity = _identity(key)

    def _run(self, method: str, *args: Any, **kwargs: Any) -> Any:
        async def call() -> Any:
            async with AsyncClient.connect(self.node, self.identity) as client:
                return await getattr(client, method)(*args, **kwargs)

        try:
            return trio.run(call)
        except BaseExceptionGroup as group:
            from node.base.errors import sole_exception

            raise sole_exception(group) from None

    def upload_dataset(self, path: str | Path, **kwargs: Any) -> dict[str, Any]:
        return self._run("upload_dataset", path, **kwargs)

    def datasets(self) -> list[dict[str, Any]]:
        return self._run("datasets")

    def find_dataset(self, name_or_digest: str) -> dict[str, Any]:
        return self._run("find_dataset", name_or_digest)

    def submit_job(self, **kwargs: Any) -> str:
        return self._run("submit_job", **kwargs)

    def status(self, job_id: str) -> dict[str, Any] | None:
        return self._run("status", job_id)

    def cancel_job(self, job_id: str) -> dict[str, Any]:
        return self._run("cancel_job", job_id)

    def wait_for_completion(self, job_id: str, **kwargs: Any) -> dict[str, Any]:
        return self._run("wait_for_completion", job_id, **kwargs)

    def jobs(self, **kwargs: Any) -> list[dict[str, Any]]:
        return self._run("jobs", **kwargs)

    def result(self, job_id: str) -> dict[str, Any]:
        return self._run("result", job_id)

    def witness(self, job_id: str) -> dict[str, Any]:
        return self._run("witness", job_id)

    def health(self) -> dict[str, Any]:
        return self._run("health")

    def verify_receipt(self, receipt_id: str, genesis: str | Path) -> bool:
        return self._run("verify_receipt", receipt_id, genesis)


def require_key(path: str | None) -> Identity:
    """The tenant key for CLI commands, with a helpful error when it is missing."""
    if not path:
        raise UserError("no tenant key: pass --key FILE (create one with `metanode keys init --out tenant.key`)", exit_code=EXIT_USAGE)
    from node.base.keys import KeyFileError

    try:
        return Identity.load(path)
    except KeyFileError as exc:
        raise UserError(f"--key: {exc}", exit_code=EXIT_USAGE) from None
