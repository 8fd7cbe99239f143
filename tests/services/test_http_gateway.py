"""The HTTP gateway: request signing and its checks, config, and a real
(confined) daemon driven over HTTP from upload to a verified result, with
tenant isolation over HTTP and over JSON-RPC, and malformed requests that get
clear 4xx answers while the daemon keeps serving."""

from __future__ import annotations

import hashlib
import http.client
import json
import socket
import subprocess
import time
from pathlib import Path

import pytest
import trio

from node.base.config import parse_config
from node.base.errors import ConfigError
from node.base.http_auth import AuthError, ReplayGuard, RequestVerifier, sign_request
from node.base.keys import Identity
from node.consensus.genesis import Genesis
from node.consensus.tx import sign_tx
from node.p2p.client import connect_to_node
from node.p2p.rpc import RpcCallError
from node.receipts.envelope import verify_receipt
from node.sdk.http_client import HttpClient, HttpError
from tests.support import DaemonProcess, free_port, rpc_json, run_cli, wait_until, write_node_config

CHAIN = "http-gateway-test"
CSV = b"product,units\napples,3\npears,5\napples,4\nplums,1\n"
QUERY = "SELECT product, sum(units) AS units FROM sales GROUP BY product ORDER BY units DESC"
ALICE, BOB = Identity.from_label("tenant-http-alice"), Identity.from_label("tenant-http-bob")
CAROL, MALLORY = Identity.from_label("tenant-http-carol"), Identity.from_label("tenant-http-mallory")


# -- signing and verification -----------------------------------------------------------
class Clock:
    def __init__(self, now: int) -> None:
        self.now = now

    def __call__(self) -> int:
        return self.now


def rejected(verifier: RequestVerifier, header: str, method: str = "GET", target: str = "/v1/jobs", body: bytes = b"") -> str:
    with pytest.raises(AuthError) as info:
        creds = verifier.preflight(header)
        verifier.verify(creds, method, target, hashlib.sha256(body).hexdigest())
    return str(info.value)


def test_signed_request_verifies_once_and_tampering_is_refused():
    clock = Clock(1_700_000_000_000)
    verifier = RequestVerifier(clock=clock)
    body = b'{"tx": "00"}'
    header = sign_request(ALICE, "POST", "/v1/jobs?x=1", body, now_ms=clock.now)
    assert header.startswith(f"Metanode-Ed25519 key={ALICE.public_key.hex()},ts={clock.now},sig=")
    creds = verifier.preflight(header)
    verifier.verify(creds, "POST", "/v1/jobs?x=1", hashlib.sha256(body).hexdigest())
    assert creds.key == ALICE.public_key

    assert "replayed" in rejected(verifier, header, "POST", "/v1/jobs?x=1", body)
    fresh = lambda **kw: sign_request(ALICE, "POST", "/v1/jobs?x=1", body, now_ms=clock.now + 1, **kw)  # noqa: E731
    assert "bad signature" in rejected(verifier, fresh(), "POST", "/v1/jobs?x=1", b'{"tx": "01"}')  # body tampered
    assert "bad signature" in rejected(verifier, fresh(), "POST", "/v1/jobs?x=2", body)  # query tampered
    assert "bad signature" in rejected(verifier, fresh(), "POST", "/v1/datasets?x=1", body)  # path tampered
    assert "bad signature" in rejected(verifier, fresh(), "GET", "/v1/jobs?x=1", body)  # method tampered
    # Alice's signature presented under Bob's key.
    wrong_key = fresh().replace(ALICE.public_key.hex(), BOB.public_key.hex())
    assert "bad signature" in rejected(verifier, wrong_key, "POST", "/v1/jobs?x=1", body)
    sig = fresh().rsplit("sig=", 1)[1]
    flipped = fresh().replace(sig, ("0" if sig[0] != "0" else "1") + sig[1:])
    assert "bad signature" in rejected(verifier, flipped, "POST", "/v1/jobs?x=1", body)
    # A failed attempt does not burn the signature: the genuine request still passes once.
    verifier.verify(verifier.preflight(fresh()), "POST", "/v1/jobs?x=1", hashlib.sha256(body).hexdigest())

    old = sign_request(ALICE, "GET", "/v1/jobs", now_ms=clock.now - 301_000)
    assert "behind" in rejected(verifier, old)
    future = sign_request(ALICE, "GET", "/v1/jobs", now_ms=clock.now + 301_000)
    assert "ahead of" in rejected(verifier, future)
    within = sign_request(ALICE, "GET", "/v1/jobs", now_ms=clock.now - 299_000)
    verifier.verify(verifier.preflight(within), "GET", "/v1/jobs", hashlib.sha256(b"").hexdigest())


@pytest.mark.parametrize("header, reason", [
    (None, "missing Authorization"),
    ("Bearer abc", "scheme must be Metanode-Ed25519"),
    ("Metanode-Ed25519 key=" + "ab" * 32 + ",ts=1", "exactly key, ts and sig"),
    ("Metanode-Ed25519 key=" + "ab" * 32 + ",key=" + "ab" * 32 + ",ts=1,sig=" + "00" * 64, "once each"),
    ("Metanode-Ed25519 key=abc,ts=1,sig=" + "00" * 64, "64 hex"),
    ("Metanode-Ed25519 key=" + "zz" * 32 + ",ts=1,sig=" + "00" * 64, "bad Authorization parameter"),
])
def test_malformed_authorization_headers_are_named(header, reason):
    verifier = RequestVerifier(clock=Clock(1_700_000_000_000))
    assert reason in rejected(verifier, header)


def test_replay_cache_is_bounded_and_never_lets_an_evicted_signature_through():
    guard = ReplayGuard(window_ms=1000, max_entries=3)
    for ts in (10, 11, 12):
        assert guard.admit(b"sig%d" % ts, ts, now_ms=12) is None
    assert guard.admit(b"sig10", 10, now_ms=12) is not None  # replay
    assert guard.admit(b"sig13", 13, now_ms=13) is None  # full: the oldest (ts 10) is dropped...
    assert len(guard) == 3
    assert "older than" in guard.admit(b"sig10", 10, now_ms=13)  # ...and cannot come back
    assert "older than" in guard.admit(b"other", 9, now_ms=13)
    assert guard.admit(b"sig14", 14, now_ms=2000) is None  # expired entries leave the cache
    assert len(guard) == 1


def test_keys_http_auth_prints_a_header_the_gateway_accepts(tmp_path):
    key = tmp_path / "tenant.key"
    ALICE.write(key)
    body = tmp_path / "sales.csv"
    body.write_bytes(CSV)
    done = run_cli("keys", "http-auth", "--key", str(key), "post", "/v1/datasets?name=sales&format=csv", "--body", str(body))
    assert done.returncode == 0, done.stderr
    verifier = RequestVerifier()
    creds = verifier.preflight(done.stdout.strip())
    verifier.verify(creds, "POST", "/v1/datasets?name=sales&format=csv", hashlib.sha256(CSV).hexdigest())
    bad = run_cli("keys", "http-auth", "--key", str(key), "GET", "v1/jobs")
    assert bad.returncode == 2 and "must start with /" in bad.stderr and "Traceback" not in bad.stderr


# -- config ------------------------------------------------------------------------------
def _config(tmp_path, services: str):
    import tomllib

    doc = tomllib.loads(f'[node]\nidentity_key = "k"\ndata_dir = "d"\nroles = ["gateway"]\n[services]\n{services}\n')
    return parse_config(doc, tmp_path / "node.toml")


def test_http_listen_config(tmp_path):
    assert _config(tmp_path, "").services["http_listen"] == ""
    assert _config(tmp_path, 'http_listen = "127.0.0.1:0"').services["http_listen"] == "127.0.0.1:0"
    assert _config(tmp_path, 'http_listen = "localhost:8080"').services["http_listen"] == "localhost:8080"
    for value, problem in (("8080", "HOST:PORT"), ("127.0.0.1:99999", "HOST:PORT"), ("0.0.0.0:8080", "not a loopback"),
                           ("10.1.2.3:8080", "not a loopback"), ("example.org:80", "not a loopback")):
        with pytest.raises(ConfigError) as info:
            _config(tmp_path, f'http_listen = "{value}"')
        assert "[services] http_listen" in str(info.value) and problem in str(info.value)
    remote = _config(tmp_path, 'http_listen = "0.0.0.0:8080"\nhttp_allow_remote = true')
    assert remote.services["http_listen"] == "0.0.0.0:8080"


# -- a real daemon over HTTP ----------------------------------------------------------------
def start_node(tmp_path: Path, max_body: int = 65536) -> tuple[DaemonProcess, str, str]:
    identity = Identity.from_label("test-node-http")
    genesis = tmp_path / "genesis.toml"
    Genesis(chain_id=CHAIN, genesis_time_ms=time.time_ns() // 1_000_000 - 1000, validators=(identity.public_key,),
            block_period_ms=200, round_timeout_base_ms=1000, round_timeout_cap_ms=4000).write(genesis)
    port = free_port()
    cfg = write_node_config(tmp_path, "http", port=port, roles=["validator", "scheduler", "gateway", "processing", "storage"],
                            genesis=genesis, service_policy=None,  # confined, as in production
                            extra='\n[services]\nstorage_replicas = 1\nhttp_listen = "127.0.0.1:0"\n'
                                  f'http_max_body_bytes = {max_body}\n')
    proc = DaemonProcess(cfg)
    node = f"/ip4/127.0.0.1/tcp/{port}/p2p/{identity.peer_id}"

    def http_listen():
        assert proc.proc.poll() is None, proc.log()
        return rpc_json(node, "node_status")["services"]["http"]["listen"]

    try:
        listen = wait_until(http_listen, 180, interval=0.5, what="node_status to show the HTTP gateway's address")
    except BaseException:
        proc.stop()
        print(proc.log()[-4000:])  # shown with the failure
        raise
    return proc, node, listen


@pytest.fixture(scope="module")
def daemon(tmp_path_factory):
    """One confined all-roles node for the daemon tests (each uses its own tenants)."""
    proc, node, listen = start_node(tmp_path_factory.mktemp("http-node"))
    with proc:
        client = HttpClient(f"http://{listen}", CAROL)
        wait_until(lambda: client.health()["processing_nodes"] >= 1, 180, what="the node registered for processing")
        yield proc, node, listen


def raw(listen: str, payload: bytes) -> tuple[int, dict[str, str], dict]:
    """Send raw bytes; return status, headers and JSON body of the answer."""
    host, port = listen.rsplit(":", 1)
    with socket.create_connection((host, int(port)), timeout=30) as sock:
        sock.sendall(payload)
        data = b""
        while chunk := sock.recv(65536):
            data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    lines = head.decode().split("\r\n")
    headers = {k.lower(): v.strip() for k, v in (line.split(":", 1) for line in lines[1:])}
    return int(lines[0].split()[1]), headers, json.loads(body)


def call(listen: str, method: str, target: str, body: bytes = b"", *, identity: Identity = ALICE,
         headers: dict[str, str] | None = None, sign: bool = True):
    conn = http.client.HTTPConnection(*listen.rsplit(":", 1), timeout=60)
    all_headers = {"Authorization": sign_request(identity, method, target, body)} if sign else {}
    conn.request(method, target, body=body, headers={**all_headers, **(headers or {})})
    response = conn.getresponse()
    answer = (response.status, response.headers, json.loads(response.read()))
    conn.close()
    return answer


def expect_error(status: int, fn, *args, **kwargs) -> HttpError:
    with pytest.raises(HttpError) as info:
        fn(*args, **kwargs)
    assert info.value.status == status, info.value
    return info.value


@pytest.mark.timeout(600)
def test_http_gateway_end_to_end_with_tenant_isolation(daemon):
    proc, node, listen = daemon
    alice, bob = HttpClient(f"http://{listen}", ALICE), HttpClient(f"http://{listen}", BOB)

    # Upload over HTTP, register with a pre-signed transaction over HTTP.
    uploaded = alice.upload_dataset(CSV, name="sales", format="csv", register=False)
    digest = uploaded["digest"]
    assert uploaded["row_count"] == 4 and uploaded["tenant"] == ALICE.public_key.hex()
    assert digest == hashlib.sha256(CSV).hexdigest()
    registered = alice.register_dataset(uploaded)
    assert registered["status"] == "committed"
    assert alice.dataset(digest)["name"] == "sales"
    assert [d["digest"] for d in alice.datasets()["datasets"]] == [digest]

    # Submit a SQL job over HTTP and follow it to verified.
    tx = alice.signed_tx("job.submit", {"type": "sql", "inputs": {"sales": bytes.fromhex(digest)},
                                        "params": {"query": QUERY}, "replication": 1, "deadline_blocks": 100})
    submitted = alice.request("POST", "/v1/jobs", json_body={"tx": tx})
    job_id = submitted["job_id"]
    status = alice.wait_for_completion(job_id, timeout=240)
    assert status["state"] == "verified", status
    assert status["result"]["rows"] == [["apples", 7], ["pears", 5], ["plums", 1]]
    assert [j["id"] for j in alice.jobs()["jobs"]] == [job_id]
    [result] = status["results"]
    receipt = alice.receipt(result["receipt"])
    executed = verify_receipt(bytes.fromhex(receipt["envelope"]))
    assert executed.kind == "job.exec" and executed.subject.hex() == job_id
    assert alice.receipt_bundle(result["receipt"])["height"] >= 1
    # The HTTP submission left an api.call receipt for Alice, as over JSON-RPC.
    api_call = wait_until(lambda: alice.receipt(submitted["receipt_id"]), 60, what="the api.call receipt in the log")
    verified = verify_receipt(bytes.fromhex(api_call["envelope"]))
    assert verified.kind == "api.call" and verified.fields["tenant"] == ALICE.public_key
    assert verified.fields["method"] == "analytics_submit"

    # Bob, over HTTP: Alice's job, result, witness and dataset are "not found"; his lists are empty.
    for path in (f"/v1/jobs/{job_id}", f"/v1/jobs/{job_id}/result", f"/v1/jobs/{job_id}/witness", f"/v1/datasets/{digest}"):
        error = expect_error(404, bob.get, path)
        assert error.code in (1404, 1206)
    assert bob.jobs()["jobs"] == [] and bob.datasets()["datasets"] == []
    # He cannot run a job over Alice's dataset (refused by the chain state) ...
    error = expect_error(409, bob.submit_job, job_type="sql", data_source={"sales": digest},
                         parameters={"query": "SELECT * FROM sales"})
    assert error.code == 1304 and "not registered by this tenant" in error.data["reason"]
    # ... nor send Alice's own signed transactions as his, nor cancel her job.
    error = expect_error(403, bob.request, "POST", "/v1/jobs", json_body={"tx": tx})
    assert error.code == 1303
    error = expect_error(409, bob.cancel_job, job_id)
    assert error.code == 1304
    error = expect_error(400, bob.request, "POST", "/v1/txs", json_body={"tx": bob.signed_tx(
        "job.submit", {"type": "sql", "inputs": {"sales": bytes.fromhex(digest)}, "params": {"query": "SELECT 1"},
                       "replication": 1, "deadline_blocks": 100})})
    assert "POST /v1/jobs" in error.message

    # The same over JSON-RPC on p2p.
    trio.run(_bob_over_json_rpc, node, job_id, digest)

    _malformed_requests_get_clear_answers(listen, alice, job_id)
    assert proc.proc.poll() is None, proc.log()
    assert alice.health()["processing_nodes"] >= 1  # still serving
    assert "Traceback" not in proc.log()


async def _bob_over_json_rpc(node: str, job_id: str, digest: str) -> None:
    async with connect_to_node(node, identity=BOB, timeout=30) as rpc:
        for method, params in (("analytics_status", {"job_id": job_id}), ("analytics_result", {"job_id": job_id}),
                               ("analytics_witness", {"job_id": job_id}), ("dataset_get", {"digest": digest})):
            with pytest.raises(RpcCallError) as info:
                await rpc.call(method, params)
            assert info.value.code in (1404, 1206), (method, info.value)
        assert (await rpc.call("analytics_list"))["jobs"] == []
        assert (await rpc.call("dataset_list"))["datasets"] == []
        nonce = (await rpc.call("chain_nonce", {"sender": BOB.public_key.hex()}))["pending_next"]
        theft = sign_tx(BOB, chain_id=CHAIN, nonce=nonce, tx_type="job.submit", payload={
            "type": "sql", "inputs": {"sales": bytes.fromhex(digest)}, "params": {"query": "SELECT * FROM sales"},
            "replication": 1, "deadline_blocks": 50})
        with pytest.raises(RpcCallError) as info:
            await rpc.call("analytics_submit", {"tx": theft.encoded.hex()})
        assert info.value.code == 1304


def _malformed_requests_get_clear_answers(listen: str, alice: HttpClient, job_id: str) -> None:
    status, headers, body = call(listen, "GET", "/v1/jobs", sign=False)
    assert status == 401 and headers["WWW-Authenticate"] == "Metanode-Ed25519"
    assert "missing Authorization" in body["error"]["data"]["reason"]
    status, _, body = call(listen, "POST", "/v1/jobs", b'{"tx": ')
    assert status == 400 and body["error"]["code"] == -32700
    status, _, body = call(listen, "POST", "/v1/jobs", b'["tx"]')
    assert status == 400 and "JSON object" in body["error"]["message"]
    status, _, body = call(listen, "POST", "/v1/jobs", b'{"tx": "00", "extra": 1}')
    assert status == 400 and body["error"]["data"]["param"] == "extra"
    status, _, body = call(listen, "POST", "/v1/jobs", b'{"tx": "zz"}')
    assert status == 400 and body["error"]["data"]["param"] == "tx"
    status, _, body = call(listen, "GET", "/v1/nope")
    assert status == 404 and body["error"]["data"]["path"] == "/v1/nope"
    status, headers, body = call(listen, "DELETE", f"/v1/jobs/{job_id}")
    assert status == 405 and headers["Allow"] == "GET"
    status, _, body = call(listen, "GET", "/v1/jobs/not-a-job-id")
    assert status == 400 and body["error"]["data"]["param"] == "job_id"
    status, _, body = call(listen, "GET", "/v1/jobs?limit=ten")
    assert status == 400 and body["error"]["data"] == {"param": "limit", "reason": "an integer"}
    status, _, body = call(listen, "GET", "/v1/jobs?colour=red")
    assert status == 400 and body["error"]["data"]["param"] == "colour"
    status, _, body = call(listen, "GET", f"/v1/jobs/{'0' * 64}")
    assert status == 404 and body["error"]["code"] == 1404
    status, _, body = call(listen, "POST", "/v1/datasets?name=x&format=json", b"a,b\n1,2\n")
    assert status == 400 and body["error"]["data"]["param"] == "format"
    status, _, body = call(listen, "POST", "/v1/datasets?name=bin", bytes(range(256)) * 4)
    assert status == 400 and body["error"]["code"] == 1205
    # Bad rows: refused with their lines, or skipped on request; the same bytes again answer the stored row.
    bad = b"product,units\napples,3\npears,many\nplums,1\n"
    status, _, body = call(listen, "POST", "/v1/datasets?name=bad&format=csv", bad)
    assert status == 400 and body["error"]["code"] == 1215
    assert body["error"]["data"]["bad_rows"] == [{"line": 3, "reason": "bad value in column 'units': \"many\" is not a BIGINT"}]
    status, _, body = call(listen, "POST", "/v1/datasets?name=bad&on_bad_rows=skip", bad)
    assert status == 201 and body["skipped_rows"] == 1 and body["format"] == "parquet" and body["row_count"] == 2
    status, _, again = call(listen, "POST", "/v1/datasets?name=bad&on_bad_rows=skip", bad)
    assert status == 200 and again["deduplicated"] is True and again["digest"] == body["digest"]
    status, _, body = call(listen, "POST", "/v1/datasets?name=events&format=jsonl", b'{"a": 1}\n{"a": 2}\n')
    assert status == 201 and body["format"] == "jsonl" and body["row_count"] == 2
    # Over the configured body limit: refused from Content-Length, before reading or storing anything.
    status, headers, body = call(listen, "POST", "/v1/datasets?name=big", b"1\n" * 40_000)
    assert status == 413 and body["error"]["data"]["limit"] == 65536 and headers["Connection"] == "close"
    status, _, body = call(listen, "POST", "/v1/jobs", b" " * (1024 * 1024 + 1))
    assert status == 413
    # The same request twice: the second is a replay.
    header = sign_request(ALICE, "GET", "/v1/jobs")
    assert call(listen, "GET", "/v1/jobs", headers={"Authorization": header}, sign=False)[0] == 200
    status, _, body = call(listen, "GET", "/v1/jobs", headers={"Authorization": header}, sign=False)
    assert status == 401 and "replayed" in body["error"]["data"]["reason"]
    stale = sign_request(ALICE, "GET", "/v1/jobs", now_ms=time.time_ns() // 1_000_000 - 400_000)
    status, _, body = call(listen, "GET", "/v1/jobs", headers={"Authorization": stale}, sign=False)
    assert status == 401 and "behind" in body["error"]["data"]["reason"]
    # Not HTTP at all, and a header too large.
    status, _, body = raw(listen, b"HELLO\r\n\r\n")
    assert status == 400 and body["error"]["message"] == "malformed HTTP request"
    status, _, _ = raw(listen, b"GET /v1/jobs HTTP/1.1\r\nHost: x\r\nX-Big: " + b"a" * 100_000 + b"\r\n\r\n")
    assert status == 431
    # Keep-alive: several signed requests on one connection.
    conn = http.client.HTTPConnection(*listen.rsplit(":", 1), timeout=30)
    for _ in range(3):
        conn.request("GET", "/v1/health", headers={"Authorization": sign_request(ALICE, "GET", "/v1/health")})
        response = conn.getresponse()
        assert response.status == 200 and json.loads(response.read())["validators"] == 1
        time.sleep(0.002)  # a fresh timestamp, so a fresh signature
    conn.close()


def test_curl_with_metanode_keys_http_auth(daemon, tmp_path):
    """The README's example: curl with a header from `metanode keys http-auth`."""
    import shutil

    if shutil.which("curl") is None:
        pytest.skip("curl is not installed")
    _, _, listen = daemon
    key = tmp_path / "tenant.key"
    CAROL.write(key)
    data = tmp_path / "sales.csv"
    data.write_bytes(CSV)
    target = "/v1/datasets?name=sales&format=csv"
    header = run_cli("keys", "http-auth", "--key", str(key), "POST", target, "--body", str(data)).stdout.strip()
    done = subprocess.run(["curl", "-sS", "-H", f"Authorization: {header}", "--data-binary", f"@{data}",
                           f"http://{listen}{target}"], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["digest"] == hashlib.sha256(CSV).hexdigest()
    header = run_cli("keys", "http-auth", "--key", str(key), "GET", "/v1/datasets").stdout.strip()
    done = subprocess.run(["curl", "-sS", "-H", f"Authorization: {header}", f"http://{listen}/v1/datasets"],
                          capture_output=True, text=True, timeout=60)
    assert "sales" in [d["name"] for d in json.loads(done.stdout)["datasets"]]


@pytest.mark.timeout(600)
def test_tenant_cannot_compute_over_another_tenants_data_by_registering_its_digest(daemon):
    """Digests are public on chain; registering one takes the tenant's own
    data.store receipt, so Mallory can neither claim Carol's upload nor run over it."""
    _, _, listen = daemon
    carol, mallory = HttpClient(f"http://{listen}", CAROL), HttpClient(f"http://{listen}", MALLORY)
    secret = b"patient,diagnosis\nann,flu\nbob,cold\n"
    uploaded = carol.upload_dataset(secret, name="secret", format="csv")  # registered on chain: digest public
    with pytest.raises(HttpError) as claimed:  # Carol's receipt, cited by Mallory
        mallory.register_dataset({**uploaded, "name": "mine"})
    assert claimed.value.status == 409 and "another tenant's upload" in str(claimed.value.data)
    with pytest.raises(HttpError) as ran:
        mallory.submit_job(job_type="sql", data_source={"t": uploaded["digest"]}, parameters={"query": "SELECT * FROM t"})
    assert ran.value.status == 409 and "not registered by this tenant" in str(ran.value.data)


# -- the server alone, on a registry of its own -----------------------------------------------
async def _exchange(port: int, request: bytes) -> tuple[int, dict[str, str], dict]:
    stream = await trio.open_tcp_stream("127.0.0.1", port)
    async with stream:
        await stream.send_all(request)
        data = b""
        while chunk := await stream.receive_some(65536):
            data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    lines = head.decode().split("\r\n")
    return int(lines[0].split()[1]), {k.lower(): v.strip() for k, v in (x.split(":", 1) for x in lines[1:])}, json.loads(body)


def _get(target: str, identity: Identity) -> bytes:
    return (f"GET {target} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n"
            f"Authorization: {sign_request(identity, 'GET', target)}\r\n\r\n").encode()


async def test_rate_limit_allow_list_and_connection_limit(tmp_path):
    """The p2p rate-limit bucket applies per tenant (429 + Retry-After), a closed
    gateway refuses unlisted tenants (403), and connections are bounded (503)."""
    from node.p2p.jsonrpc import Dispatcher, Registry
    from node.p2p.rpc import RpcServer
    from node.roles.http_gateway import HttpGateway

    registry = Registry()

    async def health(ctx):
        return {"caller": ctx.peer_id}

    registry.register("analytics_health", health, {}, "test")
    server = RpcServer(Dispatcher(registry), rate=0.5, burst=1)
    gateway = HttpGateway(lambda: server, host="127.0.0.1", port=0, spool_dir=tmp_path / "spool",
                          allowed_tenants=[ALICE.public_key, BOB.public_key], max_connections=1)
    async with trio.open_nursery() as nursery:
        port = await nursery.start(gateway.run)
        status, _, body = await _exchange(port, _get("/v1/health", ALICE))
        assert status == 200 and body == {"caller": ALICE.peer_id}
        status, headers, body = await _exchange(port, _get("/v1/health", ALICE))
        assert status == 429 and body["error"]["code"] == -32002 and headers["retry-after"] == "2"
        assert (await _exchange(port, _get("/v1/health", BOB)))[0] == 200  # Bob has his own bucket
        status, _, body = await _exchange(port, _get("/v1/health", MALLORY))
        assert status == 403 and body["error"]["code"] == 1301
        # One connection held open (head not finished): the next is turned away at once.
        held = await trio.open_tcp_stream("127.0.0.1", port)
        await held.send_all(b"GET /v1/health HTTP/1.1\r\n")
        await trio.sleep(0.2)
        status, _, body = await _exchange(port, _get("/v1/health", BOB))
        assert status == 503 and body["error"]["code"] == 1502
        await held.aclose()
        with trio.fail_after(10):
            while (await _exchange(port, _get("/v1/health", CAROL)))[0] == 503:
                await trio.sleep(0.05)
        assert gateway.status()["listen"] == f"127.0.0.1:{port}"
        # A failure inside the server (here the spool directory vanished under a large
        # upload) costs that request a 500, and the server goes on serving.
        (tmp_path / "spool").rmdir()
        body = b"x" * (1024 * 1024 + 10)
        target = "/v1/datasets?name=big"
        request = (f"POST {target} HTTP/1.1\r\nHost: x\r\nContent-Length: {len(body)}\r\n"
                   f"Authorization: {sign_request(BOB, 'POST', target, body)}\r\n\r\n").encode() + body
        status, _, answer = await _exchange(port, request)
        assert status == 500 and answer["error"] == {"code": -32603, "message": "Internal error", "data": {"reason": "FileNotFoundError"}}
        assert (await _exchange(port, _get("/v1/health", MALLORY)))[0] == 403
        nursery.cancel_scope.cancel()
