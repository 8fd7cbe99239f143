"""The console's server and JSON API against a real single-validator daemon with every role.

The browser is played by http.client (in threads: the console runs in this
trio loop); the event stream is read off a raw HTTP response line by line.
"""

from __future__ import annotations

import http.client
import json
import queue
import socket
import threading
import time
from pathlib import Path
from typing import Any

import pytest
import trio

from node.base.codec import hash_tagged
from node.base.keys import Identity
from node.consensus.genesis import GENESIS_TAG, Genesis, load_genesis
from node.console.events import CLIENT_QUEUE, EventHub
from node.console.server import open_console, static_file
from node.receipts.verify import BundleVerifier
from node.sdk.client import AsyncClient
from tests.support import running_daemon, write_node_config

CHAIN = "console-e2e"
CSV = b"day,product,units\n2024-01-01,apples,3\n2024-01-02,pears,5\n2024-01-03,apples,4\n2024-01-04,plums,1\n"
QUERY = "SELECT product, sum(units) AS units FROM sales GROUP BY product ORDER BY units DESC"


class Browser:
    """A cookie jar and one HTTP/1.1 connection per request, as seen from outside."""

    def __init__(self, port: int, host_header: str | None = None) -> None:
        self.port = port
        self.host_header = host_header or f"127.0.0.1:{port}"
        self.cookie: str | None = None

    def request(self, method: str, path: str, body: bytes | None = None, headers: dict[str, str] | None = None,
                ) -> tuple[int, dict[str, str], bytes]:
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=120)
        try:
            sent = {"Host": self.host_header, **({"Cookie": self.cookie} if self.cookie else {}), **(headers or {})}
            conn.request(method, path, body=body, headers=sent)
            response = conn.getresponse()
            return response.status, {k.lower(): v for k, v in response.getheaders()}, response.read()
        finally:
            conn.close()

    async def get(self, path: str, **kwargs: Any) -> tuple[int, dict[str, str], bytes]:
        return await trio.to_thread.run_sync(lambda: self.request("GET", path, **kwargs))

    async def post(self, path: str, body: bytes, **kwargs: Any) -> tuple[int, dict[str, str], bytes]:
        return await trio.to_thread.run_sync(lambda: self.request("POST", path, body, **kwargs))

    async def json(self, path: str) -> Any:
        status, headers, body = await self.get(path)
        assert status == 200, (path, status, body[:500])
        assert headers["content-type"] == "application/json" and headers["cache-control"] == "no-store"
        return json.loads(body)


class EventStream:
    """``GET /api/events`` read on a thread: (event, data) pairs land in a queue."""

    def __init__(self, browser: Browser) -> None:
        self.events: queue.Queue[tuple[str, Any]] = queue.Queue()
        self.conn = http.client.HTTPConnection("127.0.0.1", browser.port, timeout=120)
        self.conn.request("GET", "/api/events", headers={"Host": browser.host_header, "Cookie": browser.cookie or ""})
        self.response = self.conn.getresponse()
        self.thread = threading.Thread(target=self._read, daemon=True)
        self.thread.start()

    def _read(self) -> None:
        name = None
        try:
            while line := self.response.fp.readline():
                text = line.decode().rstrip("\n")
                if text.startswith("event: "):
                    name = text[7:]
                elif text.startswith("data: ") and name:
                    self.events.put((name, json.loads(text[6:])))
                    name = None
        except (OSError, ValueError):
            pass

    async def wait_for(self, predicate: Any, seconds: float = 120) -> tuple[str, Any]:
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            try:
                event = self.events.get_nowait()
            except queue.Empty:
                await trio.sleep(0.05)
                continue
            if predicate(*event):
                return event
        raise AssertionError("no such event arrived")

    def close(self) -> None:
        if self.conn.sock is not None:  # wakes the reader thread (a close alone would wait for its read)
            self.conn.sock.shutdown(socket.SHUT_RDWR)
        self.thread.join(10)
        self.conn.close()


@pytest.fixture
def chain(node_dir: Path) -> tuple[Path, Path]:
    identity = Identity.from_label("test-node-console")
    genesis = node_dir / "genesis.toml"
    Genesis(chain_id=CHAIN, genesis_time_ms=time.time_ns() // 1_000_000 - 1000, validators=(identity.public_key,),
            block_period_ms=200, round_timeout_base_ms=1000, round_timeout_cap_ms=4000).write(genesis)
    cfg = write_node_config(node_dir, "console", roles=["validator", "scheduler", "gateway", "processing", "storage"],
                            genesis=genesis)
    cfg.write_text(cfg.read_text() + "\n[services]\nstorage_replicas = 1\n")
    return cfg, genesis


def static_pages(node_dir: Path) -> Path:
    root = node_dir / "static"
    (root / "verify").mkdir(parents=True)
    (root / "index.html").write_text("<!doctype html><script type=module src=/app.js></script>")
    (root / "app.js").write_text("export const page = 1;\n")
    (root / "verify" / "bundle.js").write_text("export async function verifyBundle() {}\n")
    (root / ".secret").write_text("hidden")
    (node_dir / "outside.txt").write_text("not served")
    return root


async def test_console_serves_the_api_as_the_tenant(node_dir: Path, chain: tuple[Path, Path]) -> None:
    cfg, genesis_path = chain
    tenant = Identity.from_label("console-tenant")
    async with running_daemon(cfg) as daemon:
        address = daemon.listen_addrs()[0]
        async with open_console(address, tenant, genesis_path=str(genesis_path), root=static_pages(node_dir)) as server:
            port = server.gate.port
            browser = Browser(port)

            # -- the doors ---------------------------------------------------------------------
            status, headers, body = await browser.get("/api/session")
            assert status == 401 and json.loads(body)["error"]["message"].startswith("not logged in")
            status, headers, body = await browser.get("/")
            assert status == 401 and headers["content-type"].startswith("text/html") and b"?token=" in body
            assert (await browser.get("/?token=wrong"))[0] == 401
            status, headers, _ = await browser.get(f"/jobs?x=1&token={server.gate.token}")
            assert status == 303 and headers["location"] == "/jobs?x=1"
            cookie = headers["set-cookie"]
            assert "HttpOnly" in cookie and "SameSite=Strict" in cookie and "Path=/" in cookie
            browser.cookie = cookie.split(";")[0]
            status, headers, body = await browser.get("/")
            assert status == 200 and body.startswith(b"<!doctype html>")
            assert headers["content-security-policy"].startswith("default-src 'self'")
            assert headers["x-content-type-options"] == "nosniff" and headers["referrer-policy"] == "no-referrer"
            status, headers, _ = await browser.get("/verify/bundle.js")
            assert status == 200 and headers["content-type"].startswith("text/javascript")
            for path in ("/../outside.txt", "/%2e%2e/outside.txt", "/.secret", "/verify/..%2f..%2foutside.txt"):
                assert (await browser.get(path))[0] == 404, path
            rebinding = Browser(port, host_header=f"evil.example:{port}")
            rebinding.cookie = browser.cookie
            assert (await rebinding.get("/api/session"))[0] == 403
            status, _, body = await browser.post("/api/audit/query", b'{"sql": "SELECT 1"}',
                                                 headers={"Origin": "http://evil.example", "Content-Type": "application/json"})
            assert status == 403, body

            # -- the session and the chain ---------------------------------------------------------
            session = await browser.json("/api/session")
            trusted = load_genesis(genesis_path)
            assert session["genesis_hash"] == trusted.hash.hex() == hash_tagged(GENESIS_TAG, bytes.fromhex(session["genesis_cbor"])).hex()
            assert session["tenant"] == tenant.public_key.hex() and session["peer_id"] == daemon.identity.peer_id
            assert session["chain_id"] == CHAIN and session["node"] == address
            events = await trio.to_thread.run_sync(EventStream, browser)
            try:
                _, block = await events.wait_for(lambda name, data: name == "block")
                assert {"height", "hash", "proposer", "tx_count", "timestamp_ms"} <= set(block)
                mesh = await browser.json("/api/mesh")
                [me] = [n for n in mesh["nodes"] if n["entry"]]
                assert me["live"] and me["validator"] and me["peer_id"] == daemon.identity.peer_id

                # -- an upload through the console, a job through the SDK ------------------------------
                status, _, body = await browser.post("/api/datasets?name=sales&format=csv&upload=u1", CSV,
                                                     headers={"Origin": f"http://127.0.0.1:{port}"})
                assert status == 201, body
                uploaded = json.loads(body)
                assert uploaded["row_count"] == 4 and uploaded["registered"]["name"] == "sales"
                await events.wait_for(lambda name, data: name == "upload" and data["upload"] == "u1" and data["stage"] == "done")
                [dataset] = (await browser.json("/api/datasets"))["datasets"]
                assert dataset["name"] == "sales" and dataset["version"] == 1 and dataset["row_count"] == 4
                async with AsyncClient.connect(address, tenant) as client:
                    job_id = await client.submit_job(job_type="sql", data_source={"sales": "sales"}, parameters={"query": QUERY})
                await events.wait_for(lambda name, data: name == "job" and data == {**data, "id": job_id, "state": "verified"})

                # -- the job, its result and receipts ----------------------------------------------
                jobs = (await browser.json("/api/jobs"))["jobs"]
                assert [j["id"] for j in jobs] == [job_id] and jobs[0]["state"] == "verified"
                job = await browser.json(f"/api/jobs/{job_id}")
                assert job["state"] == "verified" and job["late"] == []
                steps = [e["event"] for e in job["timeline"]]
                assert steps == ["submitted", "scheduled", "assigned", "result", "verified"], job["timeline"]
                assert job["timeline"][2]["node"] == daemon.identity.peer_id
                result = await browser.json(f"/api/jobs/{job_id}/result")
                assert result["rows"] == [["apples", 7], ["pears", 5], ["plums", 1]] and result["type"] == "sql"
                assert result["params"] == {"query": QUERY}
                status, headers, body = await browser.get(f"/api/jobs/{job_id}/result.csv")
                assert status == 200 and body == b"product,units\napples,7\npears,5\nplums,1\n"
                assert headers["content-disposition"].startswith("attachment;")
                status, _, body = await browser.get(f"/api/jobs/{job_id}/result.json")
                assert json.loads(body)["rows"] == result["rows"]
                status, headers, body = await browser.get(f"/api/jobs/{job_id}/result.parquet")
                assert status == 200 and body[:4] == b"PAR1" and body[-4:] == b"PAR1"
                receipts = (await browser.json(f"/api/jobs/{job_id}/receipts"))["receipts"]
                kinds = [r["kind"] for r in receipts]
                assert "job.exec" in kinds
                verifier = BundleVerifier(trusted)
                for receipt in receipts:
                    if receipt["bundle"] is not None:
                        assert verifier.verify(bytes.fromhex(receipt["bundle"])).receipt.id.hex() == receipt["id"]
                assert any(r["bundle"] and r["kind"] == "job.exec" for r in receipts)
                assert (await browser.get("/api/jobs/" + "0" * 64))[0] == 404
                assert (await browser.get("/api/jobs/nothex"))[0] == 400

                # -- blocks, a block's detail, the audit log ----------------------------------------
                blocks = (await browser.json("/api/blocks?limit=3"))["blocks"]
                assert len(blocks) == 3 and blocks[0]["height"] > blocks[1]["height"] > blocks[2]["height"]
                assert all(isinstance(b["interval_ms"], int) for b in blocks) and blocks[0]["seals"]
                assert (await browser.get("/api/blocks?limit=101"))[0] == 400
                detail = await browser.json(f"/api/blocks/{job['submitted_height']}")
                assert any(tx["type"] == "job.submit" and tx["sender"] == tenant.public_key.hex() for tx in detail["decoded"])
                status, _, body = await browser.post("/api/audit/query", json.dumps(
                    {"sql": "SELECT kind, count(*) AS n FROM receipts GROUP BY kind ORDER BY kind"}).encode())
                assert status == 200, body
                answer = json.loads(body)
                assert answer["columns"] == ["kind", "n"] and "job.exec" in [row[0] for row in answer["rows"]]
                status, _, body = await browser.post("/api/audit/query", b'{"sql": "DELETE FROM receipts"}')
                assert status == 400 and "only SELECT" in json.loads(body)["error"]["message"]
            finally:
                events.close()
    assert server.refused >= 5


def test_a_static_path_never_leaves_the_root(tmp_path: Path) -> None:
    root = static_pages(tmp_path)
    assert static_file(root, "/") == root / "index.html"
    assert static_file(root, "/jobs/abc") == root / "index.html"  # a page's route
    assert static_file(root, "/app.js") == root / "app.js"
    for path in ("/../outside.txt", "/.secret", "/verify/../../outside.txt", "/a\\..\\b.js", "/x\x00.js", "/c:.js"):
        assert static_file(root, path) is None, path


async def test_a_client_that_does_not_read_its_events_is_dropped() -> None:
    hub = EventHub(node=None)  # type: ignore[arg-type]  # publishing needs no node
    slow, fast = hub.join(), hub.join()
    assert slow is not None and fast is not None
    for height in range(CLIENT_QUEUE + 1):
        hub.publish("block", {"height": height})
        if height % 100 == 0:
            while True:
                try:
                    fast.receive.receive_nowait()
                except trio.WouldBlock:
                    break
    assert slow.dropped and slow not in hub.clients and hub.dropped_clients == 1
    assert fast in hub.clients and not fast.dropped


async def test_keep_alive_and_bounded_heads(node_dir: Path, chain: tuple[Path, Path]) -> None:
    """Several requests on one connection; an oversized head and a slow client lose only their connection."""
    cfg, genesis_path = chain
    async with running_daemon(cfg) as daemon:
        async with open_console(daemon.listen_addrs()[0], Identity.from_label("console-tenant"), root=static_pages(node_dir)) as server:
            port = server.gate.port

            def two_requests_one_connection() -> list[int]:
                conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
                statuses = []
                for _ in range(2):
                    conn.request("GET", "/api/session", headers={"Host": f"127.0.0.1:{port}"})
                    response = conn.getresponse()
                    response.read()
                    assert response.getheader("connection") != "close"
                    statuses.append(response.status)
                sock = conn.sock
                conn.close()
                assert sock is not None or statuses
                return statuses

            assert await trio.to_thread.run_sync(two_requests_one_connection) == [401, 401]

            def huge_head() -> bytes:
                with socket.create_connection(("127.0.0.1", port), timeout=30) as sock:
                    sock.sendall(b"GET / HTTP/1.1\r\nHost: 127.0.0.1:%d\r\nX-Big: %s\r\n\r\n" % (port, b"a" * 20_000))
                    return sock.recv(65536)

            assert (await trio.to_thread.run_sync(huge_head)).startswith(b"HTTP/1.1 431")
            session = await Browser(port).get("/api/session")
            assert session[0] == 401  # the server goes on
