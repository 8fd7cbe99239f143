"""A client of the HTTP gateway using only the standard library (urllib).

It is the reference for clients in other languages: every request carries
``Authorization: Metanode-Ed25519 key=..,ts=..,sig=..`` made by
:func:`node.roles.http_gateway.sign_request`, and chain writes are
transactions the tenant signs itself (the gateway only forwards them)::

    client = HttpClient("http://127.0.0.1:8080", key="tenant.key")
    dataset = client.upload_dataset("sales.csv")            # stored and registered on chain (sales@1; again: the same)
    job_id = client.submit_job(job_type="sql", data_source={"sales": dataset["digest"]},
                               parameters={"query": "SELECT count(*) AS n FROM sales"})
    status = client.wait_for_completion(job_id)              # "verified", with status["result"]
"""

from __future__ import annotations

import hashlib
import io
import json
import re
import time
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path
from typing import Any, BinaryIO

from node.base.errors import ErrorCode
from node.base.http_auth import sign_request
from node.base.keys import Identity

FINAL_STATES = ("verified", "disputed", "failed", "cancelled")


class HttpError(Exception):
    """An error answer of the gateway: HTTP ``status`` and its JSON ``code``, ``message``, ``data``."""

    def __init__(self, status: int, code: int | None, message: str, data: Any = None, retry_after: float | None = None) -> None:
        detail = f" {data}" if data is not None else ""
        super().__init__(f"HTTP {status}: {message} (code {code}){detail}")
        self.status, self.code, self.message, self.data, self.retry_after = status, code, message, data, retry_after


class HttpClient:
    """A tenant's view of the cluster through one gateway's HTTP API."""

    def __init__(self, base_url: str, key: Identity | str | Path, *, timeout: float = 60.0) -> None:
        parts = urllib.parse.urlsplit(base_url)
        if parts.scheme not in ("http", "https") or not parts.netloc or parts.path not in ("", "/"):
            raise ValueError(f"base_url must be like http://127.0.0.1:8080, got {base_url!r}")
        self.base_url = f"{parts.scheme}://{parts.netloc}"
        self.identity = key if isinstance(key, Identity) else Identity.load(key)
        self.timeout = timeout
        self._last_ts = 0
        self._chain_id: str | None = None

    # -- requests --------------------------------------------------------------------------
    def _ts(self) -> int:
        # Strictly increasing: two identical requests in one millisecond would share a signature (a replay).
        self._last_ts = max(time.time_ns() // 1_000_000, self._last_ts + 1)
        return self._last_ts

    def request(self, method: str, target: str, *, body: bytes | BinaryIO = b"", body_sha256: str | None = None,
                size: int | None = None, json_body: Any = None) -> Any:
        """Send one signed request (``target``: path and query) and return the parsed JSON answer."""
        if json_body is not None:
            body = json.dumps(json_body).encode()
        if isinstance(body, bytes):
            body_sha256, size = hashlib.sha256(body).hexdigest(), len(body)
        headers = {"Authorization": sign_request(self.identity, method, target, now_ms=self._ts(), body_sha256=body_sha256),
                   "Accept": "application/json"}
        if size:
            headers["Content-Length"] = str(size)
            headers["Content-Type"] = "application/json" if json_body is not None else "application/octet-stream"
        req = urllib.request.Request(self.base_url + target, data=body if size else None, method=method, headers=headers)
        try:
            with urllib.request.urlopen(req, timeout=self.timeout) as response:
                return json.loads(response.read())
        except urllib.error.HTTPError as exc:
            raw = exc.read()
            try:
                error = json.loads(raw)["error"]
            except (ValueError, KeyError, TypeError):
                error = {"message": raw[:200].decode(errors="replace")}
            retry = exc.headers.get("Retry-After")
            raise HttpError(exc.code, error.get("code"), error.get("message", ""), error.get("data"),
                            float(retry) if retry and retry.isdigit() else None) from None
        except (urllib.error.URLError, ConnectionError) as exc:
            hint = " (closed while the body was sent: over the gateway's http_max_body_bytes?)" if size else ""
            raise ConnectionError(f"{self.base_url}: {getattr(exc, 'reason', exc)}{hint}") from None

    def get(self, path: str, **query: Any) -> Any:
        pairs = {k: v for k, v in query.items() if v is not None}
        return self.request("GET", path + (f"?{urllib.parse.urlencode(pairs)}" if pairs else ""))

    # -- chain -------------------------------------------------------------------------------
    def chain_id(self) -> str:
        if self._chain_id is None:
            self._chain_id = self.get("/v1/chain")["chain_id"]
        return self._chain_id

    def signed_tx(self, tx_type: str, payload: Any) -> str:
        """A transaction of ``tx_type`` signed with the tenant key at its next nonce (hex)."""
        from node.consensus.tx import sign_tx

        nonce = self.get("/v1/nonce")["pending_next"]
        return sign_tx(self.identity, chain_id=self.chain_id(), nonce=nonce, tx_type=tx_type, payload=payload).encoded.hex()

    def health(self) -> dict[str, Any]:
        return self.get("/v1/health")

    # -- datasets ----------------------------------------------------------------------------
    def upload_dataset(self, data: str | Path | bytes, *, name: str | None = None, format: str | None = None,
                       register: bool = True) -> dict[str, Any]:
        """Upload a CSV, Parquet or JSON Lines file (or bytes; streamed from disk)
        and, unless ``register`` is false, make sure it is registered on chain as
        ``name`` (default: the file's stem). As over p2p (``Client.upload_dataset``),
        bytes that are already the name's latest version are not registered again:
        the answer is the catalog row with ``version`` and ``registered``."""
        from node.sdk.uploads import upload_format

        if isinstance(data, bytes):
            stream: BinaryIO = io.BytesIO(data)
            name, size, fmt = name or "data", len(data), format or "csv"
        else:
            path = Path(data)
            stream, size = path.open("rb"), path.stat().st_size
            name, fmt = name or path.stem, upload_format(path, format)
        with stream:
            digest = hashlib.sha256()
            while block := stream.read(1 << 20):
                digest.update(block)
            stream.seek(0)
            target = "/v1/datasets?" + urllib.parse.urlencode({"name": name, "format": fmt})
            info = self.request("POST", target, body=stream, body_sha256=digest.hexdigest(), size=size)
        if not register:
            return info
        return self.ensure_registered(info, name)

    def registration(self, ref: str) -> dict[str, Any] | None:
        """The chain's registration a reference names (``sales``: the latest version,
        ``sales@2``, a digest), None when there is none."""
        try:
            return self.get("/v1/registry/" + urllib.parse.quote(ref, safe=""))
        except HttpError as exc:
            if exc.status == 404 and exc.code == ErrorCode.NOT_FOUND:
                return None
            raise

    def ensure_registered(self, info: dict[str, Any], name: str | None = None) -> dict[str, Any]:
        """An uploaded dataset (its upload answer or catalog row) as ``name``'s latest
        version (default: the row's name): registered unless it already is."""
        name = name or info["name"]
        latest = self._latest(name)
        if latest is None or latest["digest"] != info["digest"]:
            self.register_dataset({**info, "name": name})
            latest = self._latest(name)
            if latest is None or latest["digest"] != info["digest"]:
                raise HttpError(409, None, "the registration is not on chain after its commit", {"name": name})
        return {**info, "name": name, "version": latest["version"], "registered": latest}

    def _latest(self, name: str) -> dict[str, Any] | None:
        if re.fullmatch(r"[0-9a-fA-F]{64}|.+@[0-9]+", name):  # as a ref it would mean a digest or a version
            rows = [r for r in self.get("/v1/registry", name=name, limit=1000)["datasets"] if r.get("latest")]
            return rows[-1] if rows else None
        return self.registration(name)

    def register_dataset(self, info: dict[str, Any], *, mode: str = "commit", timeout: float = 120.0) -> dict[str, Any]:
        """Sign and send dataset.register for an uploaded dataset (its upload answer,
        or a catalog row with ``receipt_id``), once the upload's data.store receipt
        is on chain (the chain wants that proof)."""
        receipt_id = (info.get("receipt") or {}).get("id") or info.get("receipt_id")
        if not receipt_id:
            raise ValueError("the dataset row has no data.store receipt id (receipt.id or receipt_id)")
        deadline = time.monotonic() + timeout
        while True:
            try:
                self.get(f"/v1/receipts/{receipt_id}")
                break
            except HttpError as exc:
                if exc.status != 404 or time.monotonic() > deadline:
                    raise
            time.sleep(0.2)
        tx = self.signed_tx("dataset.register", {"digest": bytes.fromhex(info["digest"]), "size": info["size"],
                                                 "name": info["name"], "format": info["format"],
                                                 "receipt": bytes.fromhex(receipt_id)})
        done = self.request("POST", "/v1/txs", json_body={"tx": tx, "mode": mode, "timeout": 120})
        if done.get("state_rejected"):
            raise HttpError(409, None, "registration refused by the chain state", {"reason": done["state_rejected"]})
        return done

    def datasets(self, *, limit: int | None = None, offset: int | None = None) -> dict[str, Any]:
        return self.get("/v1/datasets", limit=limit, offset=offset)

    def dataset(self, digest: str) -> dict[str, Any]:
        return self.get(f"/v1/datasets/{digest}")

    # -- jobs --------------------------------------------------------------------------------
    def submit_job(self, *, job_type: str, data_source: str | dict[str, str], parameters: dict[str, Any],
                   replication: int = 1, deadline_blocks: int = 100) -> str:
        """Submit a job over datasets (a digest, or {input name: digest}); returns the job id."""
        sources = data_source if isinstance(data_source, dict) else {parameters.get("input", "data"): data_source}
        tx = self.signed_tx("job.submit", {"type": job_type, "inputs": {n: bytes.fromhex(d) for n, d in sources.items()},
                                           "params": parameters, "replication": replication, "deadline_blocks": deadline_blocks})
        return self.request("POST", "/v1/jobs", json_body={"tx": tx})["job_id"]

    def cancel_job(self, job_id: str, *, mode: str = "sync") -> dict[str, Any]:
        tx = self.signed_tx("job.cancel", {"job": bytes.fromhex(job_id)})
        return self.request("POST", "/v1/txs", json_body={"tx": tx, "mode": mode})

    def status(self, job_id: str) -> dict[str, Any] | None:
        """The job's state, or None while it is not in a committed block (or not yours)."""
        try:
            return self.get(f"/v1/jobs/{job_id}")
        except HttpError as exc:
            if exc.status == 404:
                return None
            raise

    def jobs(self, *, state: str | None = None, limit: int | None = None, before: int | None = None) -> dict[str, Any]:
        return self.get("/v1/jobs", state=state, limit=limit, before=before)

    def result(self, job_id: str, *, retry_for: float = 30.0) -> dict[str, Any]:
        """A verified job's result table (checked by the gateway against the digest on chain);
        retries while the nodes holding it are briefly unreachable."""
        deadline = time.monotonic() + retry_for
        while True:
            try:
                return self.get(f"/v1/jobs/{job_id}/result")
            except HttpError as exc:
                unavailable_now = exc.code == ErrorCode.RESULT_NOT_AVAILABLE and isinstance(exc.data, dict) and "holders" in exc.data
                if not unavailable_now or time.monotonic() >= deadline:
                    raise
            time.sleep(0.5)

    def witness(self, job_id: str) -> dict[str, Any]:
        return self.get(f"/v1/jobs/{job_id}/witness")

    def wait_for_completion(self, job_id: str, *, timeout: float = 300.0, include_result: bool = True,
                            interval: float = 0.25) -> dict[str, Any]:
        """Poll until the job is final; a verified job's status carries its ``result``."""
        deadline = time.monotonic() + timeout
        while True:
            status = self.status(job_id)
            if status is not None and status["state"] in FINAL_STATES:
                if include_result and status["state"] == "verified":
                    status["result"] = self.result(job_id)
                return status
            if time.monotonic() > deadline:
                raise TimeoutError(f"job {job_id} not final after {timeout} s (state {status and status['state']})")
            time.sleep(interval)

    # -- receipts ----------------------------------------------------------------------------
    def receipt(self, receipt_id: str) -> dict[str, Any]:
        return self.get(f"/v1/receipts/{receipt_id}")

    def receipt_bundle(self, receipt_id: str) -> dict[str, Any]:
        return self.get(f"/v1/receipts/{receipt_id}/bundle")
