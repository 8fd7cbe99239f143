"""Faults in the job lifecycle, on four-node testnets of real daemon processes.

* A processing node that lies (tests/services/lying_node.py: the real daemon whose
  results are altered before it signs them) makes a job it computes ``disputed``:
  both digests are on chain, the verdict receipt and the honest receipts verify
  offline, and no honest daemon stops.
* A processing node killed (SIGKILL) while it holds an assignment never
  acknowledges it (job.ack; the testnet genesis sets ack_blocks = 6): the chain
  gives the job to another node 4 blocks after the assignment, not at the job's
  deadline, and verifies it with two live nodes' results. Restarted, the killed
  node catches up with the chain.
"""

from __future__ import annotations

import base64
import json
import os
import signal
import sys
import time
from pathlib import Path
from typing import Any

import pytest
import trio

from node.consensus.genesis import load_genesis
from node.receipts.bundle import decode_bundle
from node.receipts.envelope import decode_receipt
from node.sdk.client import AsyncClient, Client
from node.testnet import layout, processes
from tests.support import rpc_json, run_cli, wait_until

pytestmark = pytest.mark.timeout(900)

LYING_NODE = Path(__file__).with_name("lying_node.py")
CSV = "day,product,units\n2026-01-01,apples,3\n2026-01-01,pears,5\n2026-01-02,apples,4\n2026-01-03,plums,1\n"
QUERY = "SELECT product, sum(units) AS units FROM sales GROUP BY product"
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


def test_processing_node_killed_before_it_acknowledges_is_replaced(tmp_path):
    directory, plans, key, data = start_testnet(tmp_path, "faults-kill")
    gateway = plans[0].address
    victim = plans[1]
    try:
        wait_registered(gateway, key, 4)
        dataset = Client(gateway, key).upload_dataset(data, name="sales")
        # Killed while registered: the chain keeps assigning it work until it misses an acknowledgement.
        pid = processes.running_pid(directory, victim.name)
        assert pid is not None
        os.kill(pid, signal.SIGKILL)
        wait_until(lambda: processes.running_pid(directory, victim.name) is None, 30, what="the killed node gone")
        genesis = load_genesis(directory / "genesis.toml")
        assert genesis.rules["ack_blocks"] == 6  # the testnet's genesis sets it

        async def submit_until_the_victim_is_assigned() -> tuple[str, dict[str, Any]]:
            """The scheduler's choice depends only on the job id (and the nodes): submit
            jobs that differ in a constant until one goes to the dead node."""
            async with AsyncClient.connect(gateway, key, timeout=30) as client:
                for probe in range(16):  # each is assigned to the victim with probability 1/2
                    job = await client.submit_job(job_type="sql", data_source={"sales": dataset["digest"]},
                                                  parameters={"query": probe_query(probe)}, replication=2,
                                                  deadline_blocks=40)
                    with trio.fail_after(120):
                        while True:
                            status = await client.status(job)
                            if status is not None and status["assignments"]:
                                break
                            await trio.sleep(0.1)
                    if victim.identity.peer_id in [a["peer_id"] for a in status["assignments"]]:
                        return job, status
            raise AssertionError("16 jobs in a row were not assigned to the dead node")

        started = time.monotonic()
        job_id, caught = trio.run(submit_until_the_victim_is_assigned)
        first = [a for a in caught["assignments"] if a["attempt"] == 1]
        assert len(first) == 2 and {a["ack_deadline"] for a in first} == {first[0]["assigned_height"] + 6}
        survivor = next(a["peer_id"] for a in first if a["peer_id"] != victim.identity.peer_id)

        status = Client(gateway, key).wait_for_completion(job_id, timeout=300)
        took = time.monotonic() - started
        assert status["state"] == "verified", status
        (missed,) = [a for a in status["assignments"] if a["peer_id"] == victim.identity.peer_id]
        assert missed["status"] == "missed" and missed["acked_height"] is None, missed
        assert missed["note"] == f"no acknowledgement by height {missed['ack_deadline']}", missed
        replacement = [a for a in status["assignments"] if a["attempt"] == 2]
        assert len(replacement) == 1 and replacement[0]["peer_id"] not in {a["peer_id"] for a in first}
        # Replaced in the block that found the acknowledgement missing, 34 blocks before the job's deadline.
        assert replacement[0]["assigned_height"] == missed["ack_deadline"] == missed["deadline"] - 34
        computed_by = {r["peer_id"] for r in status["results"]}
        assert computed_by == {survivor, replacement[0]["peer_id"]}
        assert len({r["result"] for r in status["results"]}) == 1
        assert [[str(c) for c in row] for row in status["result"]["rows"]] == [
            ["apples", "7", str(job_probe(status))], ["pears", "5", str(job_probe(status))],
            ["plums", "1", str(job_probe(status))]]
        # The live assignees acknowledged on chain (the processing role's job.ack, or their result).
        assert all(a["acked_height"] is not None for a in status["assignments"] if a["status"] == "delivered")
        assert_alive(directory, [p.name for p in plans if p is not victim])
        print(f"dead assignee: job verified {took:.1f} s after its submission began")

        # Restarted, the killed node catches up: same head height and the job verified in its own state.
        target = rpc_json(gateway, "chain_head")["height"]
        processes.start_node(directory, victim.name, f"{victim.name}.toml")
        wait_until(lambda: rpc_json(victim.address, "chain_head")["height"] >= target, 240, interval=1,
                   what="the restarted node at the chain's height")
        again = Client(victim.address, key).status(job_id)
        assert again is not None and again["state"] == "verified" and again["results"] == status["results"]
    finally:
        processes.down(directory)


def probe_query(probe: int) -> str:
    """The sales query with a constant column: a different job id per probe."""
    return f"SELECT product, sum(units) AS units, {probe} AS probe FROM sales GROUP BY product ORDER BY product"


def job_probe(status: dict[str, Any]) -> int:
    return int(status["params"]["query"].split(" AS probe")[0].rsplit(" ", 1)[1])
