"""The product, as a user drives it: a four-node testnet of real daemons, a
tenant key, `metanode analytics submit --follow` to a verified result that two
processing nodes computed identically, and the client library from a script."""

from __future__ import annotations

import csv
import json

import pytest

from node.sdk.client import Client
from node.testnet import layout, processes
from tests.support import run_cli, wait_until

pytestmark = pytest.mark.timeout(600)
CSV = "day,product,units\n2026-01-01,apples,3\n2026-01-01,pears,5\n2026-01-02,apples,4\n2026-01-03,plums,1\n"


def test_submit_follow_verified_with_two_replicas(tmp_path):
    directory = tmp_path / "net"
    plans = layout.plan_testnet(4, seed="analytics-cli")
    layout.write_testnet(directory, plans)
    node = plans[0].address
    data = tmp_path / "sales.csv"
    data.write_text(CSV)
    assert run_cli("keys", "init", "--out", str(tmp_path / "tenant.key")).returncode == 0
    processes.up(directory)
    try:
        def registered() -> bool:
            health = run_cli("analytics", "health", "--node", node, "--key", str(tmp_path / "tenant.key"), "--json")
            return health.returncode == 0 and json.loads(health.stdout)["processing_nodes"] >= 4

        wait_until(registered, 120, interval=1, what="four processing nodes registered on chain")
        done = run_cli("analytics", "submit", "--node", node, "--key", str(tmp_path / "tenant.key"), "--type", "sql",
                       "--data", str(data), "--query", "SELECT product, sum(units) AS units FROM sales GROUP BY product ORDER BY units DESC",
                       "--replication", "2", "--follow", "--json", timeout=300)
        assert done.returncode == 0, done.stdout + done.stderr
        status = json.loads(done.stdout)
        assert status["state"] == "verified"
        assert len(status["results"]) == 2 and len({r["result"] for r in status["results"]}) == 1
        assert len({r["node"] for r in status["results"]}) == 2  # two distinct processing nodes
        listed = run_cli("analytics", "list", "--node", node, "--key", str(tmp_path / "tenant.key"))
        assert status["id"] in listed.stdout and "verified" in listed.stdout

        # The uploaded dataset is in the tenant's catalog, and later jobs name it.
        datasets = run_cli("analytics", "datasets", "--node", node, "--key", str(tmp_path / "tenant.key"), "--json")
        assert datasets.returncode == 0, datasets.stderr
        assert [(d["name"], d["digest"], d["row_count"]) for d in json.loads(datasets.stdout)] == [("sales", status["inputs"]["sales"], 4)]
        by_name = run_cli("analytics", "submit", "--node", node, "--key", str(tmp_path / "tenant.key"), "--dataset", "sales",
                          "--type", "sql", "--query", "SELECT COUNT(*) AS n FROM sales", "--follow", "--json", timeout=300)
        assert by_name.returncode == 0, by_name.stdout + by_name.stderr
        counted_job = json.loads(by_name.stdout)
        assert counted_job["state"] == "verified" and counted_job["inputs"] == {"sales": status["inputs"]["sales"]}
        assert counted_job["result"]["rows"] == [[4]]
        unknown = run_cli("analytics", "submit", "--node", node, "--key", str(tmp_path / "tenant.key"), "--dataset", "users",
                          "--type", "sql", "--query", "SELECT 1 FROM users")
        assert unknown.returncode == 1 and "dataset 'users': no dataset named 'users' is registered by you" in unknown.stderr, unknown.stderr

        # Every operation on the job left a receipt in the log, and each verifies offline.
        def traced():
            out = run_cli("analytics", "trace", "--node", node, "--key", str(tmp_path / "tenant.key"), "--job-id", status["id"],
                          "--genesis", str(directory / "genesis.toml"), "--json", timeout=120)
            receipts = json.loads(out.stdout) if out.returncode == 0 else []
            kinds = [r["kind"] for r in receipts]
            return receipts if {"api.call", "job.schedule", "job.exec", "job.verdict"} <= set(kinds) else None

        receipts = wait_until(traced, 90, interval=1, what="the job's schedule and verdict receipts on chain")
        assert all(r["verified"] for r in receipts)
        kinds = [r["kind"] for r in receipts]
        # Log order: the results (job.exec, sealed with job.result) come before the verdict they decide, whose
        # attestation follows. The job.schedule attestation is signed after its block, so it may land after an exec.
        assert max(i for i, k in enumerate(kinds) if k == "job.exec") < kinds.index("job.verdict")
        assert kinds.count("job.exec") == 2

        # The result, read through a gateway that did not compute it (it fetches
        # it from a node that did and checks it against the chain's digest).
        others = [p for p in plans if p.identity.peer_id not in {r["peer_id"] for r in status["results"]}]
        csv_out = run_cli("analytics", "result", "--node", others[0].address, "--key", str(tmp_path / "tenant.key"),
                          "--job-id", status["id"], "--format", "csv", timeout=120)
        assert csv_out.returncode == 0, csv_out.stderr
        assert csv_out.stdout.splitlines() == ["product,units", "apples,7", "pears,5", "plums,1"]
        table = run_cli("analytics", "result", "--node", node, "--key", str(tmp_path / "tenant.key"), "--job-id", status["id"])
        assert table.returncode == 0 and "apples" in table.stdout and "(3 rows)" in table.stdout, table.stdout

        # Each execution's witness, checked against its job.exec receipt.
        witnessed = run_cli("analytics", "trace", "--node", node, "--key", str(tmp_path / "tenant.key"), "--job-id", status["id"],
                            "--include-witness", "--json", timeout=120)
        assert witnessed.returncode == 0, witnessed.stderr
        execs = [r for r in json.loads(witnessed.stdout) if r["kind"] == "job.exec"]
        assert len(execs) == 2 and all(r["witness"]["available"] and r["witness"]["matches_receipt"] for r in execs), execs
        assert all([i["name"] for i in r["witness"]["record"]["inputs"]] == ["sales"] for r in execs)

        # The audit trail of a running node: every receipt of the job is in the export, anchored.
        exported = run_cli("audit", "export", "--node", node, "--format", "csv", "--out", str(tmp_path / "audit.csv"), timeout=120)
        assert exported.returncode == 0, exported.stderr
        audit_rows = list(csv.DictReader((tmp_path / "audit.csv").open()))
        anchored = {row["id"]: row for row in audit_rows if row["block_height"]}
        assert {r["id"] for r in receipts} <= set(anchored)
        counted = run_cli("audit", "query", "--node", node, "--format", "json",
                          "SELECT kind, count(*) AS n FROM receipts WHERE subject = '" + status["id"] + "' GROUP BY kind ORDER BY kind")
        assert counted.returncode == 0, counted.stderr
        by_kind = {row["kind"]: row["n"] for row in map(json.loads, counted.stdout.splitlines())}
        assert by_kind["job.exec"] == 2 and by_kind["job.verdict"] >= 1 and by_kind["job.schedule"] >= 1

        # The client library, from plain Python: reuse the dataset, verify a receipt offline.
        client = Client(plans[1].address, tmp_path / "tenant.key")
        job_id = client.submit_job(job_type="summary", data_source={"sales": status["inputs"]["sales"]}, parameters={"input": "sales"})
        summary = client.wait_for_completion(job_id, timeout=240)
        assert summary["state"] == "verified", summary
        assert client.verify_receipt(summary["results"][0]["receipt"], directory / "genesis.toml")
        trend_id = client.submit_job(job_type="trend-analysis", data_source={"sales": status["inputs"]["sales"]}, replication=2,
                                     parameters={"input": "sales", "time_column": "day", "value_column": "units",
                                                 "group_by": "product", "window": "2d"})
        trend = client.wait_for_completion(trend_id, timeout=240)
        assert trend["state"] == "verified" and len({r["result"] for r in trend["results"]}) == 1, trend
        assert trend["result"]["result_digest"] == trend["results"][0]["result"]

        # A job wanting more processing nodes than exist waits, says why, and can be cancelled.
        waiting = run_cli("analytics", "submit", "--node", node, "--key", str(tmp_path / "tenant.key"), "--type", "summary",
                          "--dataset", status["inputs"]["sales"], "--name", "sales", "--replication", "8", "--json")
        assert waiting.returncode == 0, waiting.stderr
        waiting_id = json.loads(waiting.stdout)["job_id"]

        def parked():
            out = run_cli("analytics", "status", "--node", node, "--key", str(tmp_path / "tenant.key"), "--job-id", waiting_id, "--json")
            return json.loads(out.stdout) if out.returncode == 0 else None

        parked_status = wait_until(parked, 60, interval=1, what="the over-replicated job on chain")
        assert parked_status["state"] == "submitted" and parked_status["reason"], parked_status
        cancelled = run_cli("analytics", "cancel", "--node", node, "--key", str(tmp_path / "tenant.key"), "--job-id", waiting_id, "--follow", timeout=120)
        assert cancelled.returncode == 0 and "cancelled" in cancelled.stdout, cancelled.stdout + cancelled.stderr
        again = run_cli("analytics", "cancel", "--node", node, "--key", str(tmp_path / "tenant.key"), "--job-id", waiting_id)
        assert again.returncode == 1 and "already cancelled" in again.stderr
        assert {row[0] for row in trend["result"]["rows"]} <= {"apples", "pears", "plums"} and trend["result"]["rows"]
    finally:
        processes.down(directory)


def test_missing_key_is_a_usage_error():
    done = run_cli("analytics", "health", "--node", "/ip4/127.0.0.1/tcp/1/p2p/12D3KooWA27tg6hX4pVmVWiLZWFANmphxoqqzcQSqPMr94iWQqDT")
    assert done.returncode == 2 and "metanode keys init" in done.stderr
