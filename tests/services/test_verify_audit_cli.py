"""The planning document's verification and audit commands against a real node:
`metanode receipt verify --receipt-hash H` / `--job-id ID` fetch bundles and
check them offline against the genesis file; `metanode security export-audit`
reports a cage denial, a rate-limit refusal and an authentication failure
provoked for real, with the receipts that back each; then, the node stopped,
the same report from its data directory.

One single-node testnet (every role) serves the whole module: a dataset, a
verified SQL job through the gateway, and a job whose SQL the cage's gate
refuses, put on chain with tx_submit (past the gateway's own check, as any
signer can)."""

from __future__ import annotations

import csv
import io
import json
import urllib.error
import urllib.request
from types import SimpleNamespace

import pytest
import trio

from node.base.errors import EXIT_NO_RECEIPT, EXIT_USAGE, ErrorCode
from node.base.keys import Identity
from node.consensus.tx import sign_tx
from node.testnet import layout, processes
from node.testnet.layout import CHAIN_ID
from tests.support import free_port, rpc_json, run_cli, upload_and_register, wait_until

pytestmark = pytest.mark.timeout(300)
CSV = "day,product,units\n2026-01-01,apples,3\n2026-01-01,pears,5\n2026-01-02,apples,4\n"
FORBIDDEN_SQL = "SELECT * FROM read_csv('/etc/passwd')"


async def _prepare(address: str, tenant: Identity) -> dict[str, str]:
    from node.p2p.client import connect_to_node
    from node.p2p.rpc import RpcCallError

    async with connect_to_node(address, identity=tenant) as rpc:
        with trio.fail_after(120):
            while True:
                try:
                    if (await rpc.call("analytics_health"))["processing_nodes"] >= 1:
                        break
                except RpcCallError:
                    pass
                await trio.sleep(0.5)
        uploaded = await upload_and_register(rpc, tenant, chain_id=CHAIN_ID, nonce=0, data=CSV.encode())
        inputs = {"sales": bytes.fromhex(uploaded["digest"])}

        def job(nonce: int, query: str) -> str:
            return sign_tx(tenant, chain_id=CHAIN_ID, nonce=nonce, tx_type="job.submit", payload={
                "type": "sql", "inputs": inputs, "params": {"query": query}, "replication": 1, "deadline_blocks": 60}).encoded.hex()

        good = (await rpc.call("analytics_submit", {"tx": job(1, "SELECT product, sum(units) AS units FROM sales GROUP BY ALL")}))
        refused = await rpc.call("tx_submit", {"tx": job(2, FORBIDDEN_SQL), "mode": "commit", "timeout": 30}, timeout=60)
        assert "state_rejected" not in refused, refused
        jobs = {"good": good["job_id"], "refused": refused["hash"]}
        with trio.fail_after(120):
            for job_id in list(jobs.values()):
                while (status := await rpc.call("analytics_status", {"job_id": job_id}))["state"] not in ("verified", "failed", "disputed"):
                    await trio.sleep(0.3)
                jobs[f"{job_id}:exec"] = status["results"][0]["receipt"]
        return jobs


@pytest.fixture(scope="module")
def node(tmp_path_factory: pytest.TempPathFactory):  # type: ignore[no-untyped-def]
    directory = tmp_path_factory.mktemp("net")
    plans = layout.plan_testnet(1, seed="verify-audit-cli")
    layout.write_testnet(directory, plans)
    http_port = free_port()
    config = directory / "node0.toml"
    # An HTTP gateway (to refuse an unsigned request), and a per-peer call rate a burst can exceed.
    config.write_text(config.read_text().replace("[services]\n", f'[services]\nhttp_listen = "127.0.0.1:{http_port}"\n')
                      + "\n[limits]\nrpc_rate_per_peer = 10.0\nrpc_burst_per_peer = 40\n")
    processes.up(directory)
    try:
        wait_until(lambda: rpc_json(plans[0].address, "chain_head")["height"] >= 1, 60, interval=0.5, what="the node sealing blocks")
        tenant = Identity.generate()
        jobs = trio.run(_prepare, plans[0].address, tenant)
        yield SimpleNamespace(directory=directory, address=plans[0].address, peer_id=plans[0].identity.peer_id,
                              genesis=str(directory / "genesis.toml"), http_port=http_port, jobs=jobs)
    finally:
        processes.down(directory)


def _verify(*args: str, timeout: float = 60):  # type: ignore[no-untyped-def]
    return run_cli("receipt", "verify", *args, timeout=timeout)


def test_receipt_verify_by_hash_fetches_and_checks_offline(node, monkeypatch: pytest.MonkeyPatch) -> None:
    receipt = node.jobs[f"{node.jobs['good']}:exec"]
    done = wait_until(lambda: (out := _verify("--receipt-hash", receipt, "--node", node.address, "--genesis", node.genesis))
                      .returncode == 0 and out, 60, interval=1, what="the job.exec receipt sealed")
    assert done.stdout.startswith(f"valid: job.exec receipt {receipt} by {node.peer_id}, leaf ")
    # The planning document's spelling: --node and --genesis from the environment.
    monkeypatch.setenv("METANODE_NODE", node.address)
    monkeypatch.setenv("METANODE_GENESIS", node.genesis)
    as_json = _verify("--receipt-hash", receipt.upper(), "--json")
    assert as_json.returncode == 0, as_json.stderr
    verdict = json.loads(as_json.stdout)
    assert verdict["valid"] and verdict["receipt"] == receipt and verdict["kind"] == "job.exec" and verdict["exit_code"] == 0

    unknown = receipt[:-1] + ("0" if receipt[-1] != "0" else "1")  # one character off: no such receipt
    missing = _verify("--receipt-hash", unknown)
    assert missing.returncode == EXIT_NO_RECEIPT, missing.stdout + missing.stderr
    assert f"has no receipt {unknown}" in missing.stderr and "Traceback" not in missing.stderr
    malformed = _verify("--receipt-hash", "deadbeef")
    assert malformed.returncode == EXIT_USAGE and "--receipt-hash: expected 64 hex characters, got 'deadbeef'" in malformed.stderr

    # The bundle-file form keeps working, the bundle now as an argument too.
    bundle = node.directory / "exec.bundle"
    written = run_cli("receipt", "bundle", receipt, "--out", str(bundle), "--json")
    assert written.returncode == 0 and json.loads(written.stdout)["bytes"] == bundle.stat().st_size
    from_file = _verify(str(bundle))
    assert from_file.returncode == 0 and from_file.stdout == done.stdout
    wrong_chain = node.directory / "other-genesis.toml"
    layout.testnet_genesis(layout.plan_testnet(1, seed="another")).write(wrong_chain)
    assert _verify(str(bundle), "--genesis", str(wrong_chain)).returncode == 14


def test_receipt_verify_every_receipt_of_a_job(node) -> None:
    job_id = node.jobs["good"]

    def all_sealed():  # type: ignore[no-untyped-def]
        # The verdict's attestation is signed after the block that decided it: wait for it too.
        out = _verify("--job-id", job_id, "--node", node.address, "--genesis", node.genesis, "--json")
        if out.returncode != 0:
            return None
        return out if "job.verdict" in {r["kind"] for r in json.loads(out.stdout)["receipts"]} else None

    report = json.loads(wait_until(all_sealed, 60, interval=1, what="every receipt of the job sealed").stdout)
    kinds = [r["kind"] for r in report["receipts"]]
    assert {"api.call", "job.schedule", "job.exec", "job.verdict"} <= set(kinds)
    assert report["valid"] and report["exit_code"] == 0 and all(r["valid"] for r in report["receipts"])
    table = _verify("--job-id", job_id, "--node", node.address, "--genesis", node.genesis)
    lines = table.stdout.splitlines()
    assert table.returncode == 0 and lines[0].split()[:4] == ["result", "kind", "issuer", "receipt"]
    assert len(lines) == len(kinds) + 2 and lines[-1] == f"job {job_id}: all {len(kinds)} receipts valid"
    assert all(line.split()[0] == "valid" for line in lines[1:-1])
    unknown = _verify("--job-id", "ab" * 32, "--node", node.address, "--genesis", node.genesis)
    assert unknown.returncode == EXIT_NO_RECEIPT and "no receipt of job" in unknown.stderr
    flag_as_id = _verify("--job-id", "--json", "--node", node.address, "--genesis", node.genesis)
    assert flag_as_id.returncode == EXIT_USAGE and "--job-id: expected 64 hex characters, got '--json'" in flag_as_id.stderr


async def _provoke_refusals(address: str, http_port: int) -> int:
    """A burst of calls past the per-peer rate limit, and an unsigned HTTP request."""
    from node.p2p.client import connect_to_node

    async with connect_to_node(address) as rpc:
        answers = await rpc.call_batch([("node_status", None)] * 80, timeout=30)
    refused = sum(1 for a in answers if isinstance(a, dict) and a.get("error", {}).get("code") == ErrorCode.RATE_LIMITED)

    def unsigned() -> int:
        try:
            urllib.request.urlopen(f"http://127.0.0.1:{http_port}/v1/jobs", timeout=10)
        except urllib.error.HTTPError as exc:
            return exc.code
        return 200

    assert await trio.to_thread.run_sync(unsigned) == 401
    return refused


def test_export_audit_reports_denials_and_refusals(node) -> None:
    refused_calls = trio.run(_provoke_refusals, node.address, node.http_port)
    assert refused_calls > 0
    denied_job = node.jobs["refused"]
    denied_receipt = node.jobs[f"{denied_job}:exec"]

    def reported():  # type: ignore[no-untyped-def]
        out = run_cli("security", "export-audit", "--format", "json", "--node", node.address)
        return json.loads(out.stdout) if out.returncode == 0 and denied_job in out.stdout else None

    report = wait_until(reported, 60, interval=1, what="the cage denial in the report")
    assert set(report) >= {"range", "nodes", "findings", "receipts"}
    assert set(report["findings"]) == {"auth_failures", "rate_limited", "cage_denials", "limit_kills", "disputed_jobs"}
    denial = next(f for f in report["findings"]["cage_denials"] if f["job_id"] == denied_job)
    assert denial["node"] == node.peer_id and denial["receipts"] == [denied_receipt] and "refused" in denial["detail"]
    assert denied_receipt in {r["id"] for r in report["receipts"]}
    assert not any(f["job_id"] == node.jobs["good"] for fs in report["findings"].values() for f in fs)
    limited = [f for f in report["findings"]["rate_limited"] if f["node"] == node.peer_id]
    assert limited and limited[0]["count"] >= refused_calls and limited[0]["source"] == "counters"
    assert report["findings"]["auth_failures"][0]["count"] >= 1
    (me,) = [n for n in report["nodes"] if n["peer_id"] == node.peer_id]
    assert "processing" in me["policies"]["digests"] and "confinement" in me
    assert me["job_policies_seen"] == [me["policies"]["digests"]["processing"]]  # the policy its job.exec receipts name

    out_file = node.directory / "audit.csv"
    done = run_cli("security", "export-audit", "--format", "csv", "--node", node.address, "--out", str(out_file))
    assert done.returncode == 0, done.stderr
    rows = list(csv.DictReader(io.StringIO(out_file.read_text())))
    assert any(r["finding"] == "cage_denials" and r["job_id"] == denied_job and r["receipts"] == denied_receipt for r in rows)
    assert any(r["finding"] == "rate_limited" and int(r["count"]) >= refused_calls for r in rows)

    head = report["receipts"][-1]["height"]
    later = json.loads(run_cli("security", "export-audit", "--node", node.address, "--since-height", str(head + 1000)).stdout)
    # Counters are since the node started, whatever the range; chain facts are in the range.
    assert [f["source"] for f in later["findings"]["cage_denials"]] == ["counters"]
    assert later["range"]["since_height"] == head + 1000
    future = json.loads(run_cli("security", "export-audit", "--node", node.address, "--since", "2999-01-01T00:00:00Z").stdout)
    assert [f["source"] for f in future["findings"]["cage_denials"]] == ["counters"]
    bad = run_cli("security", "export-audit", "--node", node.address, "--since", "yesterday")
    assert bad.returncode == EXIT_USAGE and "--since 'yesterday': expected an ISO 8601 time" in bad.stderr


def test_export_audit_from_a_stopped_nodes_data_dir(node) -> None:
    processes.down(node.directory)  # DuckDB: one process at a time; the module's last test
    done = run_cli("security", "export-audit", "--format", "json", "--data-dir", str(node.directory / "node0-data"))
    assert done.returncode == 0, done.stderr
    report = json.loads(done.stdout)
    denial = next(f for f in report["findings"]["cage_denials"] if f["job_id"] == node.jobs["refused"])
    assert denial["receipts"] == [node.jobs[f"{node.jobs['refused']}:exec"]]
    assert [n["peer_id"] for n in report["nodes"]] == [node.peer_id] and report["findings"]["rate_limited"] == []
