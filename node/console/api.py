"""The console's JSON API: each route one or a few calls on the node, as the user.

Shapes (every answer JSON unless said; errors ``{"error": {"code": int|null,
"message": str, "data"?: any}}`` with a 4xx/5xx status; the node's own
error codes pass through with their HTTP status from node/base/errors.py):

- ``GET /api/session``: the node, the tenant and the chain the console trusts.
- ``GET /api/mesh``: ``metanode mesh status --json``'s report.
- ``GET /api/blocks?limit=N``: ``{"height", "blocks": [chain_block + interval_ms]}``, newest first.
- ``GET /api/blocks/HEIGHT``: ``chain_block`` with its transactions, each also decoded.
- ``GET /api/jobs[?state=S&limit=N]``: ``{"height", "jobs": [analytics_list rows]}``.
- ``GET /api/jobs/ID``: ``analytics_status`` + ``height``, ``timeline`` and ``late``.
- ``GET /api/jobs/ID/result``: ``analytics_result`` + ``type`` and ``params``;
  ``.csv``, ``.json``, ``.parquet``: the same table as a download.
- ``GET /api/jobs/ID/receipts``: ``{"receipts": [{id, kind, issuer, height, index, bundle, missing}]}``.
- ``GET /api/datasets``: ``{"datasets": [...]}`` as ``metanode analytics datasets --json``.
- ``POST /api/datasets?name=N[&format=F&on_bad_rows=fail|skip&upload=ID]`` (raw file body):
  the upload's catalog row (201, or 200 when those bytes were the name's latest already).
- ``POST /api/audit/query`` ``{"sql", "max_rows"?}``: ``{"columns", "rows", "truncated"}``.

``/api/events`` is the server's (node/console/server.py, fed by node/console/events.py).
"""

from __future__ import annotations

import csv
import datetime
import decimal
import io
import json
import re
import tempfile
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import trio

from node.base.codec import encode
from node.base.errors import ErrorCode, UserError, http_status_of
from node.console.events import EventHub
from node.console.node import NodeSession
from node.p2p.jsonrpc import dump_json, parse_json

MAX_BLOCKS = 100
DEFAULT_BLOCKS = 20
MAX_JOBS = 500
MAX_AUDIT_ROWS = 10_000
DEFAULT_AUDIT_ROWS = 1_000
MAX_JSON_BODY = 256 * 1024
SPOOL_CHUNK = 1024 * 1024
_JOB_ID = re.compile(r"[0-9a-f]{64}")
_UPLOAD_ID = re.compile(r"[A-Za-z0-9_.-]{1,64}")
_DOWNLOADS = {"csv": "text/csv; charset=utf-8", "json": "application/json",
              "parquet": "application/vnd.apache.parquet"}
JOB_STATES = ("submitted", "scheduled", "running", "verified", "disputed", "failed", "cancelled")
FINAL_STATES = ("verified", "disputed", "failed", "cancelled")


class ApiError(Exception):
    """An error answer: ``{"error": {"code", "message"[, "data"]}}`` with ``status``."""

    def __init__(self, status: int, message: str, *, code: int | None = None, data: Any = None) -> None:
        super().__init__(message)
        self.status, self.code, self.message, self.data = status, code, message, data

    def body(self) -> bytes:
        error: dict[str, Any] = {"code": self.code, "message": self.message}
        if self.data is not None:
            error["data"] = self.data
        return dump_json({"error": error})


def bad_param(name: str, reason: str) -> ApiError:
    return ApiError(400, f"{name}: {reason}", code=ErrorCode.INVALID_PARAMS, data={"param": name, "reason": reason})


@dataclass
class Reply:
    status: int
    body: bytes
    content_type: str = "application/json"
    headers: list[tuple[bytes, bytes]] = field(default_factory=list)


def json_reply(value: Any, status: int = 200) -> Reply:
    return Reply(status, dump_json(value))


@dataclass
class ApiRequest:
    """What a route sees of a request; ``chunks`` yields the body (the server
    enforces its size limit and read timeouts)."""

    method: str
    path: str
    query: dict[str, str]
    content_length: int | None
    chunks: Callable[[], AsyncIterator[bytes]]


def _int_param(query: dict[str, str], name: str, default: int, low: int, high: int) -> int:
    text = query.get(name)
    if text is None:
        return default
    if not re.fullmatch(r"[0-9]{1,9}", text) or not low <= int(text) <= high:
        raise bad_param(name, f"an integer in {low}..{high}")
    return int(text)


def _only(query: dict[str, str], allowed: tuple[str, ...]) -> None:
    extra = sorted(set(query) - set(allowed))
    if extra:
        raise bad_param(extra[0], f"unknown query parameter; expected {list(allowed) or 'none'}")


def _jsonable(value: Any) -> Any:
    """A DuckDB value (an audit query's cell) as JSON: exact decimals and times as text."""
    if value is None or isinstance(value, (bool, int, str)):
        return value
    if isinstance(value, float):
        return value if value == value and value not in (float("inf"), float("-inf")) else str(value)
    if isinstance(value, (decimal.Decimal, datetime.date, datetime.time, datetime.timedelta)):
        return str(value) if not isinstance(value, (datetime.date, datetime.time)) else value.isoformat()
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    return str(value)


class Api:
    """The routes of the JSON API over one :class:`NodeSession`."""

    def __init__(self, node: NodeSession, hub: EventHub, *, spool_dir: Path | None = None,
                 max_upload_bytes: int = 256 * 1024**2) -> None:
        self.node = node
        self.hub = hub
        self.spool_dir = spool_dir
        self.max_upload_bytes = max_upload_bytes

    async def handle(self, request: ApiRequest) -> Reply:
        """Route ``request``; RpcCallError and UserError become error answers."""
        from node.p2p.rpc_client import RpcCallError

        try:
            return await self._route(request)
        except RpcCallError as exc:
            raise ApiError(http_status_of(exc.code, exc.data), exc.message or "the node refused the call",
                           code=exc.code if isinstance(exc.code, int) else None, data=exc.data) from None
        except UserError as exc:
            from node.base.errors import EXIT_UNREACHABLE, EXIT_USAGE

            status = 502 if exc.exit_code == EXIT_UNREACHABLE else 400 if exc.exit_code == EXIT_USAGE else 422
            raise ApiError(status, str(exc)) from None

    async def _route(self, r: ApiRequest) -> Reply:
        parts = r.path.split("/")[2:]  # "/api/jobs/ID" -> ["jobs", "ID"]
        get = r.method in ("GET", "HEAD")
        match parts:
            case ["session"] if get:
                _only(r.query, ())
                return json_reply(self.session())
            case ["mesh"] if get:
                _only(r.query, ())
                return json_reply(await self.node.mesh())
            case ["blocks"] if get:
                _only(r.query, ("limit",))
                return json_reply(await self.blocks(_int_param(r.query, "limit", DEFAULT_BLOCKS, 1, MAX_BLOCKS)))
            case ["blocks", height] if get:
                _only(r.query, ())
                if not re.fullmatch(r"[0-9]{1,18}", height):
                    raise bad_param("height", "a block height (an integer >= 0)")
                return json_reply(await self.block(int(height)))
            case ["jobs"] if get:
                _only(r.query, ("state", "limit"))
                return json_reply(await self.jobs(r.query.get("state"), _int_param(r.query, "limit", 50, 1, MAX_JOBS)))
            case ["jobs", job_id] if get:
                _only(r.query, ())
                return json_reply(await self.job(_job_id(job_id)))
            case ["jobs", job_id, "receipts"] if get:
                _only(r.query, ())
                return json_reply(await self.receipts(_job_id(job_id)))
            case ["jobs", job_id, "result"] if get:
                _only(r.query, ())
                return json_reply(await self.result(_job_id(job_id)))
            case ["jobs", job_id, download] if get and download.startswith("result."):
                _only(r.query, ())
                return await self.download(_job_id(job_id), download.removeprefix("result."))
            case ["datasets"] if get:
                _only(r.query, ())
                return json_reply({"datasets": await self.datasets()})
            case ["datasets"] if r.method == "POST":
                return await self.upload(r)
            case ["audit", "query"] if r.method == "POST":
                _only(r.query, ())
                return json_reply(await self.audit_query(await _json_body(r)))
        known = ("session", "mesh", "blocks", "jobs", "datasets", "audit", "events")
        if parts and parts[0] in known:
            raise ApiError(405 if parts[0] in ("datasets", "audit", "session") else 404,
                           f"{r.method} {r.path}: no such route", code=ErrorCode.METHOD_NOT_FOUND)
        raise ApiError(404, f"{r.path}: no such route", code=ErrorCode.METHOD_NOT_FOUND)

    # -- the chain -----------------------------------------------------------------------------
    def session(self) -> dict[str, Any]:
        """The node and chain; ``genesis_cbor`` is the trusted genesis file's canonical
        CBOR (``encode(genesis.to_value())``), None when the console was started without one."""
        facts, genesis = self.node.facts, self.node.genesis
        return {"node": facts.address, "peer_id": facts.peer_id, "tenant": self.node.tenant, "chain_id": facts.chain_id,
                "genesis_hash": facts.genesis_hash, "genesis_cbor": encode(genesis.to_value()).hex() if genesis else None,
                "genesis_file": self.node.genesis_path}

    async def blocks(self, limit: int) -> dict[str, Any]:
        head = await self.node.call("chain_head")
        top = int(head["height"])
        heights = list(range(top, max(0, top - limit - 1), -1))  # one more than shown: the oldest one's interval
        answers = [await self.node.call("chain_block", {"height": h}) if h > 0 else None for h in heights]
        blocks = []
        for i, block in enumerate(answers[:limit]):
            if block is None:
                continue
            older = answers[i + 1] if i + 1 < len(answers) else None
            block["interval_ms"] = block["timestamp_ms"] - older["timestamp_ms"] if older else None
            blocks.append(block)
        return {"height": top, "blocks": blocks}

    async def block(self, height: int) -> dict[str, Any]:
        from node.consensus.tx import TxError, decode_tx, tx_hash

        block = await self.node.call("chain_block", {"height": height, "include_txs": True})
        decoded = []
        for raw_hex in block.get("transactions", []):
            raw = bytes.fromhex(raw_hex)
            try:
                tx = decode_tx(raw)
                decoded.append({"hash": tx_hash(raw).hex(), "type": tx.type, "sender": tx.sender.hex(),
                                "nonce": tx.nonce, "size": len(raw)})
            except (TxError, ValueError) as exc:
                decoded.append({"hash": tx_hash(raw).hex(), "type": None, "error": str(exc)[:200], "size": len(raw)})
        block["decoded"] = decoded
        return block

    # -- jobs ----------------------------------------------------------------------------------
    async def jobs(self, state: str | None, limit: int) -> dict[str, Any]:
        if state is not None and state not in JOB_STATES:
            raise bad_param("state", f"one of {', '.join(JOB_STATES)}")
        params: dict[str, Any] = {"limit": limit, **({"state": state} if state else {})}
        head = await self.node.call("chain_head")
        return {"height": head["height"], "jobs": (await self.node.call("analytics_list", params))["jobs"]}

    async def job(self, job_id: str) -> dict[str, Any]:
        status = await self.node.call("analytics_status", {"job_id": job_id})
        height = int((await self.node.call("chain_head"))["height"])
        return {**status, "height": height, "timeline": job_timeline(status), "late": late_nodes(status, height)}

    async def result(self, job_id: str) -> dict[str, Any]:
        status = await self.node.call("analytics_status", {"job_id": job_id})
        answer = await self.node.call("analytics_result", {"job_id": job_id}, timeout=90)
        return {**answer, "type": status.get("type"), "params": status.get("params")}

    async def download(self, job_id: str, fmt: str) -> Reply:
        if fmt not in _DOWNLOADS:
            raise ApiError(404, f"result.{fmt[:20]}: expected result.csv, result.json or result.parquet",
                           code=ErrorCode.METHOD_NOT_FOUND)
        table = await self.result(job_id)
        if fmt == "csv":
            body = result_csv(table["columns"], table["rows"]).encode()
        elif fmt == "json":
            body = json.dumps(table, indent=2).encode()
        else:
            body = await trio.to_thread.run_sync(result_parquet, table["columns"], table["rows"])
        name = f"job-{job_id[:16]}.{fmt}"
        return Reply(200, body, _DOWNLOADS[fmt], [(b"content-disposition", f'attachment; filename="{name}"'.encode())])

    async def receipts(self, job_id: str) -> dict[str, Any]:
        """The job's receipts in lifecycle order, each with its bundle (hex), or
        ``missing`` saying why the node gave none (not sealed yet, say)."""
        from node.p2p.rpc_client import RpcCallError

        await self.node.call("analytics_status", {"job_id": job_id})  # not the tenant's: 404, as a missing job
        trace = await self.node.call("receipt_trace", {"job_id": job_id})
        out = []
        for entry in trace if isinstance(trace, list) else []:
            row = {k: entry.get(k) for k in ("id", "kind", "issuer", "height", "index")}
            try:
                row["bundle"], row["missing"] = (await self.node.call("receipt_bundle", {"id": entry["id"]}))["bundle"], None
            except RpcCallError as exc:
                row["bundle"], row["missing"] = None, exc.message or str(exc)
            out.append(row)
        return {"receipts": out}

    # -- datasets ------------------------------------------------------------------------------
    async def datasets(self) -> list[dict[str, Any]]:
        """The chain's registrations joined with this node's catalog rows (rows,
        columns), then catalog rows registered under no name (``version`` None)."""
        registrations = await self.node.client.registrations()
        catalog = await self.node.client.datasets()
        by_digest = {row["digest"]: row for row in catalog}
        out = []
        for reg in registrations:
            out.append(_dataset_row(reg, by_digest.get(reg["digest"], {})))
        registered = {reg["digest"] for reg in registrations}
        out += [_dataset_row(None, row) for row in catalog if row["digest"] not in registered]
        return out

    async def upload(self, r: ApiRequest) -> Reply:
        """Spool the body to a temporary file (``upload`` events as it arrives),
        then the SDK's upload (``upload`` events as the node acknowledges)."""
        _only(r.query, ("name", "format", "on_bad_rows", "upload"))
        name = r.query.get("name", "").strip()
        if not name:
            raise bad_param("name", "the dataset name is required (?name=sales)")
        fmt = r.query.get("format", "csv")
        if fmt not in ("csv", "parquet", "jsonl"):
            raise bad_param("format", "one of csv, parquet, jsonl")
        on_bad_rows = r.query.get("on_bad_rows", "fail")
        if on_bad_rows not in ("fail", "skip"):
            raise bad_param("on_bad_rows", "fail or skip")
        upload_id = r.query.get("upload", name)
        if not _UPLOAD_ID.fullmatch(upload_id):
            raise bad_param("upload", "1-64 of A-Z a-z 0-9 _ . -")
        total = r.content_length
        if total is not None and total > self.max_upload_bytes:
            raise ApiError(413, f"the file is larger than {self.max_upload_bytes} bytes", code=ErrorCode.BODY_TOO_LARGE)

        def event(stage: str, done: int, size: int | None) -> None:
            self.hub.publish("upload", {"upload": upload_id, "stage": stage, "bytes": done, "total": size})

        with tempfile.TemporaryDirectory(prefix="metanode-console-", dir=self.spool_dir) as folder:
            path = Path(folder) / f"upload.{fmt}"
            size = 0
            with path.open("wb") as spool:
                async for chunk in r.chunks():
                    size += len(chunk)
                    if size > self.max_upload_bytes:
                        raise ApiError(413, f"the file is larger than {self.max_upload_bytes} bytes", code=ErrorCode.BODY_TOO_LARGE)
                    await trio.to_thread.run_sync(spool.write, chunk)
                    event("receiving", size, total)
            if size == 0:
                raise bad_param("body", "the request body (the file) is empty")
            row = await self.node.upload(path, name=name, fmt=fmt, on_bad_rows=on_bad_rows,
                                         progress=lambda done, whole: event("storing", done, whole))
        event("done", size, size)
        return json_reply(row, 200 if row.get("deduplicated") else 201)

    # -- audit ---------------------------------------------------------------------------------
    async def audit_query(self, body: dict[str, Any]) -> dict[str, Any]:
        """One read-only SELECT over the node's receipt log (``metanode audit query --node``'s rules)."""
        from node.receipts.audit import AuditError, run_query

        extra = sorted(set(body) - {"sql", "max_rows"})
        if extra:
            raise bad_param(extra[0], "unknown member; expected sql, max_rows")
        sql = body.get("sql")
        if not isinstance(sql, str):
            raise bad_param("sql", "a string (one SELECT)")
        max_rows = body.get("max_rows", DEFAULT_AUDIT_ROWS)
        if type(max_rows) is not int or not 1 <= max_rows <= MAX_AUDIT_ROWS:
            raise bad_param("max_rows", f"an integer in 1..{MAX_AUDIT_ROWS}")
        log = await self.node.audit_log(int((self.hub.last_block or {}).get("height") or 0))
        try:
            result = await trio.to_thread.run_sync(lambda: run_query(log, sql, max_rows=max_rows + 1))
        except AuditError as exc:
            raise ApiError(400, str(exc), code=ErrorCode.INVALID_PARAMS, data={"param": "sql", "reason": str(exc)}) from None
        rows = [[_jsonable(v) for v in row] for row in result.rows[:max_rows]]
        return {"columns": result.columns, "rows": rows, "truncated": len(result.rows) > max_rows}


def _job_id(text: str) -> str:
    if not _JOB_ID.fullmatch(text):
        raise bad_param("job_id", "64 lower-case hex characters")
    return text


async def _json_body(r: ApiRequest) -> dict[str, Any]:
    data = bytearray()
    async for chunk in r.chunks():
        data += chunk
        if len(data) > MAX_JSON_BODY:
            raise ApiError(413, f"the JSON body is larger than {MAX_JSON_BODY} bytes", code=ErrorCode.BODY_TOO_LARGE)
    try:
        doc = parse_json(bytes(data))
    except ValueError as exc:
        raise ApiError(400, f"the body is not valid JSON: {exc}", code=ErrorCode.PARSE_ERROR) from None
    if not isinstance(doc, dict):
        raise ApiError(400, "the body must be a JSON object", code=ErrorCode.INVALID_REQUEST)
    return doc


def _dataset_row(reg: dict[str, Any] | None, row: dict[str, Any]) -> dict[str, Any]:
    """One dataset as ``metanode analytics datasets --json`` prints it."""
    reg = reg or {}
    return {"name": reg.get("name", row.get("name")), "version": reg.get("version"), "latest": reg.get("latest", False),
            "digest": reg.get("digest", row.get("digest")), "format": reg.get("format") or row.get("format"),
            "size": reg.get("size", row.get("size")), "row_count": row.get("row_count"), "columns": row.get("schema"),
            "skipped_rows": row.get("skipped_rows"), "height": reg.get("height"), "tx": reg.get("tx"), "in_catalog": bool(row)}


def job_timeline(status: dict[str, Any]) -> list[dict[str, Any]]:
    """A job's history from its status: submitted, scheduled, each assignment, each
    result, the verdict; in height order (the chain's order within a height)."""
    events: list[dict[str, Any]] = [{"event": "submitted", "height": status.get("submitted_height")}]
    if status.get("scheduled_height") is not None:
        events.append({"event": "scheduled", "height": status["scheduled_height"]})
    for a in status.get("assignments") or []:
        events.append({"event": "assigned", "height": a.get("assigned_height"), "node": a.get("peer_id"),
                       "detail": {k: a.get(k) for k in ("attempt", "deadline", "status", "note")}})
    for r in status.get("results") or []:
        events.append({"event": "result", "height": r.get("height"), "node": r.get("peer_id"),
                       "detail": {k: r.get(k) for k in ("result", "exit", "error", "receipt")}})
    if status.get("state") in FINAL_STATES:
        events.append({"event": status["state"], "height": status.get("finished_height"),
                       "detail": {"reason": status.get("reason")}})
    order = {"submitted": 0, "scheduled": 1, "assigned": 2, "result": 3}
    return sorted(events, key=lambda e: (e["height"] if e["height"] is not None else 1 << 62, order.get(e["event"], 4)))


def late_nodes(status: dict[str, Any], height: int) -> list[str]:
    """Peer ids holding up the job: an assignment it missed (its deadline passed
    with no result), or, in a job still running, a pending assignment past its
    deadline or one whose attempt already has a result from another node."""
    active = status.get("state") not in FINAL_STATES
    delivered = {r.get("peer_id") for r in status.get("results") or []}
    attempts_with_results = {a.get("attempt") for a in status.get("assignments") or [] if a.get("peer_id") in delivered}
    late = []
    for a in status.get("assignments") or []:
        peer = a.get("peer_id")
        pending = a.get("status") == "pending" and peer not in delivered
        overdue = isinstance(a.get("deadline"), int) and height > a["deadline"]
        if a.get("status") == "missed" or (active and pending and (overdue or a.get("attempt") in attempts_with_results)):
            late.append(peer)
    return sorted(set(late))


def result_csv(columns: list[list[str]], rows: list[list[Any]]) -> str:
    """A result table as CSV (as ``metanode analytics result --format csv``): a header, NULL as empty."""
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow([c[0] for c in columns])
    writer.writerows(["" if v is None else v for v in row] for row in rows)
    return buffer.getvalue()


def result_parquet(columns: list[list[str]], rows: list[list[Any]]) -> bytes:
    """A result table as Parquet, each column with the type the job's result
    declares (DuckDB casts the JSON cells back); a column whose cells do not
    cast is written as text rather than failing the download."""
    import duckdb

    conn = duckdb.connect(":memory:")
    try:
        conn.execute("SET threads = 1")
        names = [f'"{str(c[0]).replace(chr(34), chr(34) * 2)}"' for c in columns]
        for typed in (True, False):
            kinds = [str(c[1]) if typed else "VARCHAR" for c in columns]
            try:
                conn.execute("DROP TABLE IF EXISTS result")
                conn.execute(f"CREATE TABLE result ({', '.join(f'{n} {k}' for n, k in zip(names, kinds))})")
                if rows:
                    marks = ", ".join("?" for _ in columns)
                    cells = [[v if typed or v is None else (v if isinstance(v, str) else json.dumps(v)) for v in row] for row in rows]
                    conn.executemany(f"INSERT INTO result VALUES ({marks})", cells)
                break
            except duckdb.Error:
                if not typed:
                    raise
        with tempfile.TemporaryDirectory(prefix="metanode-console-") as folder:
            out = Path(folder) / "result.parquet"
            conn.execute(f"COPY result TO '{out}' (FORMAT parquet)")
            return out.read_bytes()
    finally:
        conn.close()
