"""A fake of the console's JSON API for the page tests (test_console_pages.py).

Static files from node/console/static and canned answers shaped as the
issue-17 contract and node/console/api.py say, built from the real code where
that is cheap: blocks are ``block_json`` of a DevChain's sealed blocks, receipt
bundles are ``build_bundle`` over that chain (one with a commit seal changed),
the trend result is node/cage/trend.py's SQL run in DuckDB with its cells made
canonical as the cage does. ``/api/events`` is a real server-sent-event stream
that tests feed with :meth:`FakeConsole.push`.
"""

from __future__ import annotations

import json
import queue
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import duckdb

from node.base import codec
from node.cage.results import canonical_cell
from node.cage.trend import trend_sql
from node.consensus.rpc import block_json
from node.receipts.api import build_bundle
from node.receipts.chain import ReceiptIssuer
from node.receipts.devchain import DevChain, dev_genesis, dev_identities
from node.receipts.verify import BundleVerifier

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "receipts"))
from receipt_samples import VALID_FIELDS  # noqa: E402  (a shared sample module of tests/receipts)

STATIC = Path(__file__).resolve().parents[2] / "node" / "console" / "static"
TREND_JOB = "a1" * 32
RUNNING_JOB = "b2" * 32
FAILED_JOB = "c3" * 32
LATE_PEER = "12D3KooWLateNodeLateNodeLateNodeLateNodeLateNode"
ON_TIME_PEER = "12D3KooWOnTimeNodeOnTimeNodeOnTimeNodeOnTimeNod"
# The real server's policy (node/console/server.py): no inline script or style,
# so a page that needed one fails here as it would there.
CSP = "default-src 'self'; frame-ancestors 'none'; base-uri 'none'; form-action 'self'"
TYPES = {".html": "text/html; charset=utf-8", ".js": "text/javascript; charset=utf-8", ".css": "text/css; charset=utf-8"}

# ------------------------------------------------------------------------------------------ canned data

def trend_result() -> dict[str, Any]:
    """What analytics_result answers for a trend-analysis job grouped by product."""
    conn = duckdb.connect()
    conn.execute("CREATE TABLE sales AS SELECT * FROM (VALUES "
                 + ", ".join(f"(DATE '2025-01-01' + INTERVAL {d} DAY, '{p}', {u})"
                             for d, p, u in [(0, "apple", 3), (1, "apple", 5), (2, "apple", 4), (3, "apple", 7), (4, "apple", 8),
                                             (0, "pear", 9), (2, "pear", 2), (3, "pear", 4), (4, "pear", 1),
                                             (0, "quince", 2), (1, "quince", 2), (2, "quince", 2), (3, "quince", 2), (4, "quince", 2)])
                 + ") t(day, product, units)")
    cursor = conn.execute(trend_sql("sales", "day", "units", "product", "day", 2))
    columns = [[d[0], str(d[1])] for d in cursor.description]
    rows = [[canonical_cell(v) for v in row] for row in cursor.fetchall()]
    params = {"input": "sales", "time_column": "day", "value_column": "units", "window": "2d", "group_by": "product"}
    return {"job_id": TREND_JOB, "state": "verified", "result_digest": "d" * 64, "computed_by": [ON_TIME_PEER, LATE_PEER],
            "receipts": [], "columns": columns, "order": ["group", "period"], "rows": rows, "row_count": len(rows),
            "type": "trend-analysis", "params": params}


def job_row(job_id: str, state: str, submitted: int, finished: int | None, **extra: Any) -> dict[str, Any]:
    return {"id": job_id, "seq": submitted, "tenant": "e" * 64, "type": "trend-analysis",
            "inputs": {"sales": "f" * 64}, "params": trend_result()["params"], "replication": 2, "deadline_blocks": 10,
            "state": state, "reason": extra.pop("reason", None), "attempt": 1, "submitted_height": submitted,
            "scheduled_height": submitted + 1, "schedule_block": "0" * 64, "seed": "1" * 64, "clock": 0,
            "finished_height": finished, **extra}


def job_detail(row: dict[str, Any], late: list[str], results: list[str]) -> dict[str, Any]:
    s = row["submitted_height"]
    assignments = [{"attempt": 1, "node": "9" * 64, "peer_id": p, "assigned_height": s + 1, "deadline": s + 11,
                    "status": "done" if p in results else "pending", "note": None} for p in (ON_TIME_PEER, LATE_PEER)]
    timeline = [{"event": "submitted", "height": s}, {"event": "scheduled", "height": s + 1}]
    timeline += [{"event": "assigned", "height": s + 1, "node": a["peer_id"],
                  "detail": {"attempt": 1, "deadline": a["deadline"], "status": a["status"], "note": None}} for a in assignments]
    timeline += [{"event": "result", "height": s + 3, "node": p, "detail": {"result": "d" * 64, "exit": 0, "error": None, "receipt": "7" * 64}}
                 for p in results]
    if row["finished_height"] is not None:
        timeline.append({"event": row["state"], "height": row["finished_height"], "detail": {"reason": row["reason"]}})
    return {**row, "assignments": assignments, "results": [], "verdict": None, "height": 60, "timeline": timeline, "late": late}


class Canned:
    """Every answer of the fake API, built once per module."""

    def __init__(self) -> None:
        validators = dev_identities(4, "console-pages")
        self.genesis = dev_genesis(validators, chain_id="console-test")
        chain = DevChain(self.genesis, validators, duckdb.connect())
        issuer = ReceiptIssuer(dev_identities(1, "console-processing")[0])
        kinds = ["job.schedule", "job.exec", "job.exec", "job.verdict"]
        for height, kind in enumerate(kinds, start=1):
            subject, fields = VALID_FIELDS[kind]
            chain.add_block([issuer.issue(kind, height=height, subject=subject, fields=fields)])
        self.chain = chain
        bundles = [build_bundle(r.id, chain.log, chain.block_source(), chain.genesis) for r in chain.receipts]
        self.tampered_part = self._tamper_part(bundles[2])
        receipts = []
        for i, (receipt, bundle) in enumerate(zip(chain.receipts, bundles)):
            data = self.tampered if i == 2 else bundle
            receipts.append({"id": receipt.id.hex(), "kind": kinds[i], "issuer": receipt.issuer_node,
                             "height": i + 1, "index": i, "bundle": data.hex(), "missing": None})
        receipts.append({"id": "5" * 64, "kind": "job.exec", "issuer": "ab" * 32, "height": None, "index": None,
                         "bundle": None, "missing": "not sealed yet"})
        self.receipts = {"receipts": receipts}
        # blocks 1..4 as chain_block answers, with timestamps a real chain would have
        self.blocks = []
        for block in chain.blocks:
            answer = block_json(block, include_txs=False)
            answer["timestamp_ms"] = 1_767_225_600_000 + [0, 1000, 2100, 3050, 4900][block.height]
            self.blocks.append(answer)
        self.trend = trend_result()
        self.jobs = [job_row(RUNNING_JOB, "running", 50, None), job_row(TREND_JOB, "verified", 40, 46),
                     job_row(FAILED_JOB, "failed", 30, 41, reason="no node delivered before the deadline")]
        self.details = {TREND_JOB: job_detail(self.jobs[1], [LATE_PEER], [ON_TIME_PEER, LATE_PEER]),
                        RUNNING_JOB: job_detail(self.jobs[0], [LATE_PEER], [ON_TIME_PEER]),
                        FAILED_JOB: job_detail(self.jobs[2], [], [])}
        self.details[TREND_JOB]["late"] = []

    def _tamper_part(self, bundle: bytes) -> str:
        """Change one commit seal's signature; the Python verifier names the failing part."""
        value = codec.decode(bundle)
        validator, signature = value["seals"][0]
        value["seals"][0] = [validator, bytes([signature[0] ^ 0x01]) + signature[1:]]
        self.tampered = codec.encode(value)
        try:
            BundleVerifier(self.genesis).verify(self.tampered)
        except Exception as exc:  # the verifier's BundleError carries the part
            return str(getattr(exc, "part", type(exc).__name__))
        raise AssertionError("the tampered bundle verified in Python")

    def session(self) -> dict[str, Any]:
        return {"node": "/ip4/127.0.0.1/tcp/1/p2p/12D3KooWEntry", "peer_id": "12D3KooWEntry", "tenant": "e" * 64,
                "chain_id": self.genesis.chain_id, "genesis_hash": self.genesis.hash.hex(),
                "genesis_cbor": codec.encode(self.genesis.to_value()).hex(), "genesis_file": "genesis.json"}

    def mesh(self) -> dict[str, Any]:
        def node(name: str, live: bool, entry: bool = False, validator: bool = True, height: int | None = 60) -> dict[str, Any]:
            return {"peer_id": f"12D3KooW{name}", "live": live, "moniker": name, "roles": ["validator", "processing"] if validator else ["storage"],
                    "height": height if live else None, "round": 0 if live else None, "peers": 3 if live else None,
                    "peer_ids": [], "mempool": 2 if live else None, "jobs": 1 if live else None, "under_replicated": 0 if live else None,
                    "validator": validator, "registered": True, "address": None, "entry": entry, "connected_to_entry": live,
                    **({} if live else {"error": "no answer within 3 s"})}
        return {"entry": "12D3KooWnode-0", "nodes": [node("node-0", True, entry=True), node("node-1", True), node("node-2", True),
                                                       node("node-3", False), node("store-0", True, validator=False)],
                "under_replicated": []}


# ------------------------------------------------------------------------------------------ the fake server

class FakeConsole:
    """Static files + canned JSON + a live SSE stream, on a loopback port."""

    def __init__(self, canned: Canned) -> None:
        self.canned = canned
        self.streams: list[queue.Queue[bytes | None]] = []
        self.lock = threading.Lock()
        self.uploads: list[tuple[dict[str, list[str]], bytes]] = []
        fake = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: Any) -> None:  # quiet test output
                pass

            def do_GET(self) -> None:
                fake.get(self)

            def do_POST(self) -> None:
                fake.post(self)

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def close(self) -> None:
        with self.lock:
            for stream in self.streams:
                stream.put(None)
        self.server.shutdown()
        self.server.server_close()

    def push(self, event: str, data: Any) -> None:
        frame = f"event: {event}\ndata: {json.dumps(data)}\n\n".encode()
        with self.lock:
            for stream in self.streams:
                stream.put(frame)

    def clients(self) -> int:
        with self.lock:
            return len(self.streams)

    @staticmethod
    def send(handler: BaseHTTPRequestHandler, status: int, body: bytes, content_type: str = "application/json") -> None:
        handler.send_response(status)
        handler.send_header("Content-Type", content_type)
        handler.send_header("Content-Length", str(len(body)))
        handler.send_header("Cache-Control", "no-store")
        handler.send_header("Content-Security-Policy", CSP)
        handler.end_headers()
        handler.wfile.write(body)

    def json(self, handler: BaseHTTPRequestHandler, value: Any, status: int = 200) -> None:
        self.send(handler, status, json.dumps(value).encode())

    def error(self, handler: BaseHTTPRequestHandler, status: int, message: str) -> None:
        self.json(handler, {"error": {"code": -32602 if status == 400 else None, "message": message}}, status)

    def events(self, handler: BaseHTTPRequestHandler) -> None:
        handler.send_response(200)
        handler.send_header("Content-Type", "text/event-stream")
        handler.send_header("Cache-Control", "no-store")
        handler.end_headers()
        stream: queue.Queue[bytes | None] = queue.Queue()
        with self.lock:
            self.streams.append(stream)
        try:
            handler.wfile.write(b": hello\n\n")
            handler.wfile.flush()
            while (frame := stream.get()) is not None:
                handler.wfile.write(frame)
                handler.wfile.flush()
        except (BrokenPipeError, ConnectionResetError):
            pass
        finally:
            with self.lock:
                self.streams.remove(stream)

    def get(self, handler: BaseHTTPRequestHandler) -> None:
        url = urlsplit(handler.path)
        path, query = url.path, parse_qs(url.query)
        c = self.canned
        parts = path.strip("/").split("/")
        if parts[0] != "api":
            file = (STATIC / (path.lstrip("/") or "index.html")).resolve()
            if STATIC.resolve() not in file.parents or not file.is_file():
                return self.send(handler, 404, b"not found", "text/plain")
            return self.send(handler, 200, file.read_bytes(), TYPES.get(file.suffix, "application/octet-stream"))
        match parts[1:]:
            case ["events"]:
                return self.events(handler)
            case ["session"]:
                return self.json(handler, c.session())
            case ["mesh"]:
                return self.json(handler, c.mesh())
            case ["blocks"]:
                limit = int(query.get("limit", ["20"])[0])
                return self.json(handler, {"height": c.blocks[-1]["height"], "blocks": list(reversed(c.blocks))[:limit]})
            case ["blocks", height]:
                found = [b for b in c.blocks if str(b["height"]) == height]
                if not found:
                    return self.error(handler, 404, f"block not found: {height}")
                return self.json(handler, {**found[0], "transactions": [], "decoded": []})
            case ["jobs"]:
                return self.json(handler, {"height": 60, "jobs": c.jobs})
            case ["jobs", job_id] if job_id in c.details:
                row = next(j for j in c.jobs if j["id"] == job_id)
                return self.json(handler, {**c.details[job_id], "state": row["state"]})
            case ["jobs", job_id, "result"] if job_id in c.details:
                row = next(j for j in c.jobs if j["id"] == job_id)
                if row["state"] != "verified":
                    return self.error(handler, 409, "no verified result for this job")
                return self.json(handler, c.trend)
            case ["jobs", job_id, "receipts"] if job_id in c.details:
                return self.json(handler, c.receipts)
            case ["datasets"]:
                return self.json(handler, {"datasets": [
                    {"name": "sales", "version": 1, "latest": False, "digest": "f" * 64, "format": "csv", "size": 2048,
                     "row_count": 40, "columns": [{"name": "day", "type": "DATE", "nulls": 0}, {"name": "units", "type": "BIGINT", "nulls": 0}]},
                    {"name": "sales", "version": 2, "latest": True, "digest": "0" * 64, "format": "csv", "size": 4096,
                     "row_count": 80, "columns": [{"name": "day", "type": "DATE", "nulls": 0}, {"name": "units", "type": "BIGINT", "nulls": 0}]},
                    {"name": None, "version": None, "latest": False, "digest": "3" * 64, "format": "parquet", "size": 123_456_789,
                     "row_count": None, "columns": None}]})
        return self.error(handler, 404, f"{path}: no such route")

    def post(self, handler: BaseHTTPRequestHandler) -> None:
        url = urlsplit(handler.path)
        query = parse_qs(url.query)
        body = handler.rfile.read(int(handler.headers.get("Content-Length") or 0))
        if url.path == "/api/audit/query":
            sql = json.loads(body)["sql"]
            if not sql.lower().lstrip().startswith("select"):
                return self.error(handler, 400, "only one read-only SELECT is allowed")
            return self.json(handler, {"columns": ["kind", "receipts"], "rows": [["job.exec", 12], ["api.call", 30], ["job.verdict", 3]],
                                       "truncated": False})
        if url.path == "/api/datasets":
            upload = query.get("upload", [""])[0]
            self.uploads.append((query, body))
            for done in (len(body) // 2, len(body)):
                self.push("upload", {"upload": upload, "stage": "receiving", "bytes": done, "total": len(body)})
            self.push("upload", {"upload": "someone-else", "stage": "receiving", "bytes": 1, "total": 1000})
            self.push("upload", {"upload": upload, "stage": "done", "bytes": len(body), "total": len(body)})
            return self.json(handler, {"name": query["name"][0], "version": 3, "digest": "4" * 64, "row_count": 2, "size": len(body)}, 201)
        return self.error(handler, 404, f"{url.path}: no such route")
