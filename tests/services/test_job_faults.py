"""Faults in the job lifecycle, on four-node testnets of real daemon processes.

* A processing node that lies (tests/services/lying_node.py: the real daemon whose
  results are altered before it signs them) makes a job it computes ``disputed``:
  both digests are on chain, the verdict receipt and the honest receipts verify
  offline, and no honest daemon stops.
* A processing node killed (SIGKILL) while it runs a job misses its deadline; the
  chain gives the job to another node and verifies it with two live nodes'
  results. Restarted, the killed node catches up with the chain.
"""

from __future__ import annotations

import base64
import json
import os
import signal
import sys
from pathlib import Path

import pytest
import trio

from node.receipts.bundle import decode_bundle
from node.receipts.envelope import decode_receipt
from node.sdk.client import AsyncClient, Client
from node.testnet import layout, processes
from tests.support import rpc_json, run_cli, wait_until

pytestmark = pytest.mark.timeout(900)

LYING_NODE = Path(__file__).with_name("lying_node.py")
CSV = "day,product,units\n2026-01-01,apples,3\n2026-01-01,pears,5\n2026-01-02,apples,4\n2026-01-03,plums,1\n"
QUERY = "SELECT product, sum(units) AS units FROM sales GROUP BY product"
# A job that takes a few CPU seconds in the cage (well under the processing
# policy's 30 s CPU / 60 s wall limits): N * N rows of a cross join, aggregated.
N = 20_000
SLOW_QUERY = (f"SELECT count(*) AS n, sum((a.range * 7 + b.range) % 13) AS s "
              f"FROM range(0, {N}) a, range(0, {N}) b, sales WHERE sales.units = 3")


def slow_query_sum(n: int) -> int:
    """sum((7a + b) mod 13) over a, b in 0..n-1, computed without the cross join."""
    full, rest = divmod(n, 13)
    per_c = [full * 78 + sum((c + b) % 13 for b in range(rest)) for c in range(13)]
    return sum(per_c[(7 * a) % 13] for a in range(n))


def start_testnet(tmp_path: Path, seed: str, commands: dict[str, list[str]] | None = None):  # type: ignore[no-untyped-def]
    """Four validators with every role; returns (directory, plans, tenant key, data file)."""
    directory = tmp_path / "net"
    plans = layout.plan_testnet(4, seed=seed)
    layout.write_testnet(directory, plans)
    key = tmp_path / "tenant.key"
    assert run_cli("keys", "init", "--out", str(key)).returncode == 0
    data = tmp_path / "sales.csv"
    data.write_text(CSV)
    processes.up(directory, commands)
    return directory, plans, key, data


def wait_registered(node: str, key: Path, count: int) -> None:
    def registered() -> bool:
        return Client(node, key).health()["processing_nodes"] >= count

    wait_until(registered, 240, interval=1, what=f"{count} processing nodes registered on chain")


def assert_alive(directory: Path, names: list[str]) -> None:
    for name in names:
        assert processes.running_pid(directory, name) is not None, f"{name} died:\n" + processes.log_file(directory, name).read_text()[-3000:]
        log = processes.log_file(directory, name).read_text(errors="replace")
        assert "Traceback" not in log, f"{name} logged a traceback:\n{log[-3000:]}"


def bundle_verified(node: str, receipt_id: str, genesis: Path, out: Path) -> dict:  # type: ignore[type-arg]
    """Fetch a receipt's bundle, verify it offline with the real CLI, return its fields."""
    fetched = run_cli("receipt", "bundle", receipt_id, "--node", node, "--out", str(out), timeout=120)
    assert fetched.returncode == 0, fetched.stderr
    verified = run_cli("receipt", "verify", "--bundle", str(out), "--genesis", str(genesis), timeout=120)
    assert verified.returncode == 0 and verified.stdout.startswith("valid:"), verified.stdout + verified.stderr
    return decode_receipt(decode_bundle(out.read_bytes()).receipt).fields


def test_lying_processing_node_makes_the_job_disputed(tmp_path):
    liar_name = "node3"
    directory, plans, key, data = start_testnet(tmp_path, "faults-liar", {liar_name: [sys.executable, str(LYING_NODE)]})
    gateway, liar = plans[0].address, plans[3]
    honest = [p for p in plans if p is not liar]
    try:
        wait_registered(gateway, key, 4)
        client = Client(gateway, key)
        dataset = client.upload_dataset(data, name="sales")
        # r = 4 = every processing node: the liar is certain to be an assignee.
        job_id = client.submit_job(job_type="sql", data_source={"sales": dataset["digest"]},
                                   parameters={"query": QUERY}, replication=4)
        status = client.wait_for_completion(job_id, timeout=400)
        assert status["state"] == "disputed", status
        assert "results differ: 2 distinct result digests" in status["reason"], status["reason"]

        by_node = {r["peer_id"]: r for r in status["results"]}
        assert set(by_node) == {p.identity.peer_id for p in plans}
        honest_digests = {by_node[p.identity.peer_id]["result"] for p in honest}
        assert len(honest_digests) == 1
        lie = by_node[liar.identity.peer_id]["result"]
        assert lie not in honest_digests and all(r["exit"] == 0 for r in status["results"])
        assert status["verdict"] == {"state": "disputed", "result_digests": sorted(honest_digests | {lie})}
        assert "lying about a result" in processes.log_file(directory, liar_name).read_text()

        # No verified result is served for a disputed job.
        refused = run_cli("analytics", "result", "--node", gateway, "--key", str(key), "--job-id", job_id)
        assert refused.returncode == 1 and "no verified result" in refused.stderr, refused.stderr

        # The verdict receipt is on chain and verifies offline; it names both digests.
        def traced() -> list | None:  # type: ignore[type-arg]
            out = run_cli("analytics", "trace", "--node", gateway, "--key", str(key), "--job-id", job_id,
                          "--genesis", str(directory / "genesis.toml"), "--json", timeout=180)
            receipts = json.loads(out.stdout) if out.stdout.strip() else []
            return receipts if "job.verdict" in [r["kind"] for r in receipts] else None

        receipts = wait_until(traced, 120, interval=2, what="the job.verdict receipt in the log")
        assert all(r["verified"] for r in receipts), receipts
        assert [r["kind"] for r in receipts].count("job.exec") == 4
        verdict_id = next(r["id"] for r in receipts if r["kind"] == "job.verdict")
        verdict = bundle_verified(gateway, verdict_id, directory / "genesis.toml", tmp_path / "verdict.bundle")
        assert verdict["verdict"] == "disputed"
        named = {r["node"]: r["result"].hex() for r in verdict["results"]}
        assert named == {peer: r["result"] for peer, r in by_node.items()}

        # Each honest job.exec receipt verifies offline and names the honest digest.
        for p in honest:
            fields = bundle_verified(gateway, by_node[p.identity.peer_id]["receipt"], directory / "genesis.toml",
                                     tmp_path / f"exec-{p.name}.bundle")
            assert fields["result"].hex() in honest_digests and fields["exit"] == 0

        # Replayed offline from its witness and the input, an honest receipt's result comes
        # out again; the liar's does not (receipt verify --replay: exit 15, replay differs).
        executions = {e["peer_id"]: e for e in client.witness(job_id)["executions"]}
        for p, expected in ((honest[1], 0), (liar, 15)):
            witness = tmp_path / f"{p.name}.witness"
            witness.write_bytes(base64.b64decode(executions[p.identity.peer_id]["file"]))
            bundle = tmp_path / f"replay-{p.name}.bundle"
            fetched = run_cli("receipt", "bundle", by_node[p.identity.peer_id]["receipt"], "--node", gateway, "--out", str(bundle), timeout=120)
            assert fetched.returncode == 0, fetched.stderr
            replay = run_cli("receipt", "verify", "--bundle", str(bundle), "--genesis", str(directory / "genesis.toml"),
                             "--replay", "--witness", str(witness), "--input", f"sales={data}", timeout=300)
            assert replay.returncode == expected, replay.stdout + replay.stderr

        # The honest daemons (and the liar, which only lies) are still running and answering.
        assert_alive(directory, [p.name for p in plans])
        for p in honest:
            assert rpc_json(p.address, "node_status")["peer_id"] == p.identity.peer_id
    finally:
        processes.down(directory)


def test_processing_node_killed_mid_job_is_replaced(tmp_path):
    directory, plans, key, data = start_testnet(tmp_path, "faults-kill")
    gateway = plans[0].address
    by_peer = {p.identity.peer_id: p for p in plans}
    try:
        wait_registered(gateway, key, 4)
        dataset = Client(gateway, key).upload_dataset(data, name="sales")

        async def submit_and_catch_running() -> tuple[str, dict]:  # type: ignore[type-arg]
            """Submit, then poll (one connection) until the job has its assignees."""
            async with AsyncClient.connect(gateway, key, timeout=30) as client:
                job = await client.submit_job(job_type="sql", data_source={"sales": dataset["digest"]},
                                              parameters={"query": SLOW_QUERY}, replication=2, deadline_blocks=40)
                with trio.fail_after(300):
                    while True:
                        status = await client.status(job)
                        if status is not None and status["state"] in ("scheduled", "running") and status["assignments"]:
                            return job, status
                        await trio.sleep(0.1)

        job_id, caught = trio.run(submit_and_catch_running)
        assert caught["results"] == [], caught  # nobody has finished: the kill lands mid-job
        first = [a["peer_id"] for a in caught["assignments"] if a["attempt"] == 1]
        assert len(first) == 2
        victim = next(by_peer[peer] for peer in first if peer != plans[0].identity.peer_id)
        survivor = next(peer for peer in first if peer != victim.identity.peer_id)
        pid = processes.running_pid(directory, victim.name)
        assert pid is not None
        os.kill(pid, signal.SIGKILL)
        wait_until(lambda: processes.running_pid(directory, victim.name) is None, 30, what="the killed node gone")

        status = Client(gateway, key).wait_for_completion(job_id, timeout=600)
        assert status["state"] == "verified", status
        missed = [a for a in status["assignments"] if a["peer_id"] == victim.identity.peer_id]
        assert [a["status"] for a in missed] == ["missed"], status["assignments"]
        replacement = [a for a in status["assignments"] if a["attempt"] == 2]
        assert len(replacement) == 1 and replacement[0]["peer_id"] not in first, status["assignments"]
        # Replaced in the block that found the deadline passed.
        assert replacement[0]["assigned_height"] == missed[0]["deadline"], status["assignments"]
        computed_by = {r["peer_id"] for r in status["results"]}
        assert computed_by == {survivor, replacement[0]["peer_id"]}
        assert len({r["result"] for r in status["results"]}) == 1
        assert [[str(c) for c in row] for row in status["result"]["rows"]] == [[str(N * N), str(slow_query_sum(N))]]
        assert "job executed" not in "".join(
            line for line in processes.log_file(directory, victim.name).read_text().splitlines() if job_id in line)
        assert_alive(directory, [p.name for p in plans if p is not victim])

        # Restarted, the killed node catches up: same head height and the job verified in its own state.
        target = rpc_json(gateway, "chain_head")["height"]
        processes.start_node(directory, victim.name, f"{victim.name}.toml")
        wait_until(lambda: rpc_json(victim.address, "chain_head")["height"] >= target, 240, interval=1,
                   what="the restarted node at the chain's height")
        again = Client(victim.address, key).status(job_id)
        assert again is not None and again["state"] == "verified" and again["results"] == status["results"]
    finally:
        processes.down(directory)
