"""``metanode service`` / ``metanode container`` (issue 18): bad arguments refused in one line
naming the option (CLI in a subprocess, before any node is dialled), the words printed for
real-shaped gateway answers, and the whole life of a service against one real all-roles node:
deploy, a run per new dataset version, status with the placed peer, the result table and
``--follow``, the run's receipts in ``analytics trace`` and ``audit``, scale, stop, and
``container start`` with its defaults."""

from __future__ import annotations

import json
import signal
import subprocess
import time
from pathlib import Path

import pytest
import trio

from node.base.keys import Identity
from node.cli.analytics_trace import with_service_placements
from node.cli.services_present import describe_status, list_rows, result_header, trigger_text
from node.consensus.genesis import Genesis
from node.sdk.client import AsyncClient
from tests.support import METANODE, DaemonProcess, free_port, run_cli, wait_until, write_node_config

NODE = "/ip4/127.0.0.1/tcp/1/p2p/12D3KooWA27tg6hX4pVmVWiLZWFANmphxoqqzcQSqPMr94iWQqDT"  # never dialled
PEER_A = "12D3KooWDpJ7As7BWAwRMfu1VU2WCqNjvq387JEYKDBj4kx6nXTN"
PEER_B = "12D3KooWEyoppNCUx8Yx66oV9fJnriXwCcXwDDUA2kj6vnc6iDEp"
TENANT = Identity.from_label("svc-cli-tenant")
DEPLOY = ("service", "deploy", "--node", NODE, "--key", "k.key", "--type", "sql", "--query", "SELECT 1 AS one FROM sales")


@pytest.mark.parametrize(("args", "message"), [
    ((*DEPLOY, "--name", "Sales_Trend", "--dataset", "sales", "--replicas", "2", "--policy", "processing", "--on-new-version"),
     "--name: a service name is 1-64 characters of a-z, 0-9, '.', '_' and '-', starting with a letter or digit; got 'Sales_Trend'"),
    ((*DEPLOY, "--name", "s", "--dataset", "sales@2", "--replicas", "2", "--policy", "processing", "--on-new-version"),
     "--dataset: a service follows a dataset by its name (each run reads the latest version), not a digest or NAME@VERSION; got 'sales@2'"),
    ((*DEPLOY, "--name", "s", "--dataset", "ab" * 32, "--replicas", "2", "--policy", "processing", "--on-new-version"),
     "--dataset: a service follows a dataset by its name"),
    ((*DEPLOY, "--name", "s", "--dataset", "sales", "--replicas", "2", "--policy", "no policy", "--on-new-version"),
     "--policy: a policy name is 1-64 characters"),
    ((*DEPLOY, "--name", "s", "--dataset", "sales", "--replicas", "9", "--policy", "processing", "--on-new-version"),
     "'--replicas': 9 is not in the range 1<=x<=8"),
    ((*DEPLOY, "--name", "s", "--dataset", "sales", "--replicas", "--policy", "processing", "--on-new-version"),
     "--replicas: missing value: the next word '--policy' is an option"),
    ((*DEPLOY, "--name", "s", "--dataset", "sales", "--replicas", "2", "--policy", "processing"),
     "error: give --on-new-version (rerun on each new version of an input) or --every-blocks N"),
    ((*DEPLOY, "--name", "s", "--dataset", "sales", "--replicas", "2", "--policy", "processing", "--on-new-version",
      "--every-blocks", "10"), "error: give one of --on-new-version or --every-blocks N, not both"),
    (("service", "deploy", "--node", NODE, "--key", "k.key", "--type", "summary", "--query", "SELECT 1", "--name", "s",
      "--dataset", "sales", "--replicas", "1", "--policy", "processing", "--every-blocks", "5"),
     "error: --query is for --type sql; --type summary takes --param NAME=VALUE"),
    ((*DEPLOY, "--name", "s", "--dataset", "a=sales", "--dataset", "a=users", "--replicas", "1", "--policy", "processing",
      "--on-new-version"), "error: --dataset: two inputs named 'a': name them with --dataset INPUT=NAME"),
    (("container", "start", "--node", NODE, "--key", "k.key", "--name", "metaanalytics", "--policy", "strict-determinism"),
     "error: missing --type TYPE and --dataset NAME: a service runs a job type over your registered datasets"),
    (("service", "status", "Not-A-Name", "--node", NODE, "--key", "k.key"), "NAME: a service name is 1-64 characters"),
    (("service", "scale", "s", "--node", NODE, "--key", "k.key"), "Missing option '--replicas'"),
    (("service", "result", "s", "--node", NODE), "no tenant key"),
])
def test_bad_arguments_are_one_line_naming_the_option_with_exit_2(args, message):
    done = run_cli(*args)
    assert done.returncode == 2, done.stdout + done.stderr
    assert message in done.stderr and "Traceback" not in done.stderr
    assert done.stdout == ""


def test_the_words_of_a_service_status_answer():
    view = {"service_id": "cd" * 32, "name": "sales-trend", "tenant": "ef" * 32, "type": "trend-analysis",
            "inputs": {"sales": "sales", "ref": "reference data"}, "params": {"input": "sales"}, "replicas": 3,
            "policy": "strict-determinism", "trigger": {"every_blocks": 10}, "deadline_blocks": 20, "state": "active",
            "deployed_height": 41, "updated_height": 50, "runs": 3,
            "placements": [{"peer_id": PEER_A, "node_key": "01" * 32, "slot": 0, "since_height": 41},
                           {"peer_id": PEER_B, "node_key": "02" * 32, "slot": 1, "since_height": 50}],
            "recent_runs": [{"run": 3, "job_id": "33" * 32, "state": "running", "reason": None, "submitted_height": 61,
                             "inputs": {"sales": "aa" * 32}, "results": 1},
                            {"run": 2, "job_id": "22" * 32, "state": "verified", "reason": None, "submitted_height": 51,
                             "inputs": {"sales": "aa" * 32}, "results": 2}],
            "last_verified": {"run": 2, "job_id": "22" * 32, "height": 54, "result_digest": "dd" * 32},
            "late": [{"peer_id": PEER_B, "job_id": "33" * 32, "run": 3, "deadline": 81}],
            "waiting": "3 replicas wanted, 2 processing nodes can hold them"}
    lines = describe_status(view, height=75)
    assert lines[0] == f"service sales-trend: active  (id {'cd' * 32})"
    assert lines[1] == "  job        trend-analysis over ref=reference data, sales"
    assert "every 10 blocks" in lines[3] and "3 runs" in lines[3]
    assert lines[4] == "  placement  2 of 3 replicas placed"
    assert lines[5] == f"    slot 0  {PEER_A}  since height 41" and lines[6] == f"    slot 1  {PEER_B}  since height 50"
    assert lines[7] == "  waiting    3 replicas wanted, 2 processing nodes can hold them"
    assert lines[8] == f"  verified   run 2 at height 54: job {'22' * 32}"
    assert f"{PEER_B} has not delivered run 3: replaced at height 81 (in 6 blocks) unless it delivers" in lines[10]
    assert lines[12].split()[:4] == ["run", "3", "running", "height"]
    fresh = {**view, "placements": [], "last_verified": None, "late": [], "recent_runs": [], "waiting": None,
             "trigger": {"on_new_version": True}, "runs": 1, "replicas": 1}
    assert "  verified   no run verified yet" in describe_status(fresh)
    assert "on new version" in describe_status(fresh)[3] and "1 run" in describe_status(fresh)[3]


def test_the_words_of_a_list_and_a_result():
    assert trigger_text({"on_new_version": True}) == "on new version" and trigger_text({"every_blocks": 1}) == "every 1 block"
    rows = list_rows([{"name": "a", "state": "active", "type": "sql", "replicas": 2, "placements": 1,
                       "trigger": {"every_blocks": 5}, "runs": 4, "verified_run": None, "verified_job": None}])
    assert rows == [["a", "active", "sql", "1/2", "every 5 blocks", "4", "-"]]
    header = result_header({"name": "a", "run": 4, "job_id": "44" * 32, "result_digest": "dd" * 32, "state": "verified",
                            "computed_by": [PEER_A, PEER_B], "served_by": PEER_B})
    assert header == (f"service a: run 4 verified (job {'44' * 32}, result digest {'dd' * 32}; "
                      "computed by 12D3…nXTN, 12D3…iDEp, served by 12D3…iDEp)")


# -- against a real node ----------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def node(tmp_path_factory):
    """(node address, tenant key path, node peer id, directory): one confined all-roles node."""
    directory = tmp_path_factory.mktemp("svc-cli-node")
    identity = Identity.from_label("svc-cli-node")
    genesis = directory / "genesis.toml"
    Genesis(chain_id="svc-cli", genesis_time_ms=time.time_ns() // 1_000_000 - 1000, validators=(identity.public_key,),
            block_period_ms=200, round_timeout_base_ms=1000, round_timeout_cap_ms=4000).write(genesis)
    port = free_port()
    config = write_node_config(directory, "node", port=port, identity=identity, genesis=genesis, service_policy=None,
                               roles=["validator", "scheduler", "gateway", "processing", "storage"],
                               extra="\n[services]\nstorage_replicas = 1\n")
    key = directory / "tenant.key"
    TENANT.write(key)
    address = f"/ip4/127.0.0.1/tcp/{port}/p2p/{identity.peer_id}"
    with DaemonProcess(config) as proc:
        def processing_ready() -> bool:
            assert proc.proc.poll() is None, proc.log()[-4000:]
            done = run_cli("analytics", "health", "--node", address, "--key", str(key), "--json")
            return done.returncode == 0 and json.loads(done.stdout)["processing_nodes"] >= 1

        wait_until(processing_ready, 180, interval=1, what="the node registered for processing")
        yield address, key, identity.peer_id, directory


def _upload(node, directory: Path, rows: int) -> None:
    address, key, _, _ = node
    data = directory / f"sales-{rows}.csv"
    data.write_text("day,product,units\n" + "".join(f"2026-01-{i + 1:02d},apples,{i + 1}\n" for i in range(rows)))
    done = run_cli("analytics", "submit", "--node", address, "--key", str(key), "--type", "summary",
                   "--data", f"sales={data}", "--json", timeout=120)  # uploads (registers sales@N) and submits
    assert done.returncode == 0, done.stderr


def _result(node, name: str, rows: list[list[int]]):
    address, key, _, _ = node

    def ready():
        done = run_cli("service", "result", name, "--node", address, "--key", str(key), "--json", timeout=60)
        answer = json.loads(done.stdout) if done.returncode == 0 else None
        return answer if answer and answer["rows"] == rows else None

    return wait_until(ready, 180, interval=1, what=f"service {name}'s result {rows}")


@pytest.mark.timeout(900)
def test_a_service_from_deploy_to_stop_against_a_node(node):
    address, key, peer_id, directory = node

    def cli(*args: str, timeout: float = 60):
        return run_cli(*args, "--node", address, "--key", str(key), timeout=timeout)

    _upload(node, directory, 3)
    unknown = cli("service", "deploy", "--name", "users-count", "--type", "sql", "--dataset", "users",
                  "--query", "SELECT count(*) AS n FROM users", "--replicas", "1", "--policy", "processing", "--on-new-version")
    assert unknown.returncode == 1 and "users" in unknown.stderr and "Traceback" not in unknown.stderr, unknown.stderr

    deployed = cli("service", "deploy", "--name", "sales-count", "--type", "sql", "--dataset", "sales",
                   "--query", "SELECT count(*) AS n FROM sales", "--replicas", "1", "--policy", "strict-determinism",
                   "--on-new-version", "--json", timeout=120)
    assert deployed.returncode == 0, deployed.stderr
    service_id = json.loads(deployed.stdout)["service_id"]
    assert json.loads(deployed.stdout)["placements"] == [peer_id]  # the command returns once its block is in
    first = _result(node, "sales-count", [[3]])
    assert first["run"] == 1 and len(first["job_id"]) == 64 and len(first["result_digest"]) == 64
    assert first["columns"][0][0] == "n"
    table = cli("service", "result", "sales-count")
    assert table.returncode == 0 and table.stdout.startswith("service sales-count: run 1 verified (job ") and "(1 row)" in table.stdout

    status = json.loads(cli("service", "status", "sales-count", "--json").stdout)
    assert status["service_id"] == service_id and status["state"] == "active"
    assert [p["peer_id"] for p in status["placements"]] == [peer_id]
    human = cli("service", "status", "sales-count")
    assert human.returncode == 0 and f"slot 0  {peer_id}" in human.stdout and "on new version" in human.stdout, human.stdout
    listed = cli("service", "list")
    assert listed.returncode == 0 and listed.stdout.splitlines()[1].split()[:4] == ["sales-count", "active", "sql", "1/1"]

    # --follow prints the latest verified result, then each new one (a new version of sales), until Ctrl-C.
    follow = subprocess.Popen([*METANODE, "service", "result", "sales-count", "--follow", "--json", "--node", address,
                               "--key", str(key)], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        assert follow.stdout is not None
        def next_result() -> dict:
            assert follow.stdout is not None
            line = follow.stdout.readline()
            if not line:  # the follower ended: say why
                follow.wait(30)
                raise AssertionError(f"--follow ended with {follow.returncode}: {follow.stderr.read() if follow.stderr else ''}")
            return json.loads(line)

        assert next_result()["run"] == 1
        _upload(node, directory, 5)
        second = next_result()
        assert second["run"] == 2 and second["rows"] == [[5]]
    finally:
        follow.send_signal(signal.SIGINT)
        _, err = follow.communicate(timeout=30)
    assert follow.returncode == 130 and "Traceback" not in err, err

    # The run is a job: its receipts trace, and the placement receipt is in the audit log.
    def trace_complete():  # schedule and verdict receipts are published in batches: a block or two later
        done = cli("analytics", "trace", "--job-id", second["job_id"], "--json", timeout=120)
        kinds = {r["kind"] for r in json.loads(done.stdout)} if done.returncode == 0 else set()
        return done if {"job.schedule", "job.exec", "job.verdict"} <= kinds else None

    traced = wait_until(trace_complete, 90, interval=1, what="the run's schedule, exec and verdict receipts")
    # analytics_trace's helper puts the placement the run was scheduled onto in front of its receipts.
    async def trace_with_placements():
        async with AsyncClient.connect(address, key) as client:
            job = await client.status(second["job_id"])
            return await with_service_placements(client, job, await client.rpc.call("receipt_trace", {"job_id": second["job_id"]}))

    full = trio.run(trace_with_placements)
    assert full[0]["kind"] == "service.placement" and full[0]["height"] <= full[1]["height"]
    assert [r["kind"] for r in full if r["kind"] != "service.placement"] == [
        r["kind"] for r in json.loads(traced.stdout) if r["kind"] != "service.placement"]
    verified = run_cli("receipt", "verify", "--job-id", second["job_id"], "--node", address,
                       "--genesis", str(directory / "genesis.toml"), timeout=120)
    assert verified.returncode == 0, verified.stdout + verified.stderr
    placements = run_cli("audit", "query", "--node", address, "--format", "json",
                         f"SELECT kind, fields FROM receipts WHERE subject = '{service_id}'", timeout=120)
    assert placements.returncode == 0, placements.stderr
    kinds = [json.loads(line)["kind"] for line in placements.stdout.splitlines()]
    assert "service.placement" in kinds and peer_id in placements.stdout

    # Scale beyond the one node: the placement stays, the status says why it waits.
    scaled = cli("service", "scale", "sales-count", "--replicas", "2", "--json")
    assert scaled.returncode == 0 and json.loads(scaled.stdout)["service_id"] == service_id, scaled.stderr
    assert json.loads(scaled.stdout)["placements"] == [peer_id] and json.loads(scaled.stdout)["waiting"]
    waiting = json.loads(cli("service", "status", "sales-count", "--json").stdout)
    assert waiting["replicas"] == 2 and len(waiting["placements"]) == 1 and waiting["waiting"]
    assert "waiting" in cli("service", "status", "sales-count").stdout

    stopped = cli("service", "stop", "sales-count")
    assert stopped.returncode == 0 and stopped.stdout.startswith("service sales-count: stopped at height "), stopped.stderr
    assert json.loads(cli("service", "status", "sales-count", "--json").stdout)["state"] == "stopped"
    assert cli("service", "stop", "sales-count").returncode == 1  # no active service of that name
    missing = cli("service", "status", "nope")
    assert missing.returncode == 1 and "no service named 'nope' of yours" in missing.stderr, missing.stderr

    # The planning document's command (with what it runs): 2 replicas by default, rerun on new versions.
    started = cli("container", "start", "--name", "metaanalytics", "--policy", "strict-determinism", "--type", "summary",
                  "--dataset", "sales", timeout=120)
    assert started.returncode == 0 and len(started.stdout.strip()) == 64, started.stderr
    assert "service metaanalytics deployed at height" in started.stderr and "waiting:" in started.stderr  # 2 wanted, 1 node
    view = json.loads(cli("service", "status", "metaanalytics", "--json").stdout)
    assert view["replicas"] == 2 and view["trigger"] == {"on_new_version": True} and view["policy"] == "strict-determinism"
    none_yet = cli("service", "result", "metaanalytics")  # its run wants 2 nodes; there is 1
    assert none_yet.returncode == 1 and "service metaanalytics has no verified result yet (run 1 is " in none_yet.stderr, none_yet.stderr
    too_often = cli("service", "deploy", "--name", "hourly", "--type", "summary", "--dataset", "sales", "--replicas", "1",
                    "--policy", "processing", "--every-blocks", "2")  # under min_service_interval (5)
    assert too_often.returncode == 1 and "every_blocks" in too_often.stderr and "Traceback" not in too_often.stderr, too_often.stderr
    containers = cli("container", "list", "--json")
    assert {s["name"]: s["state"] for s in json.loads(containers.stdout)} == {"metaanalytics": "active", "sales-count": "stopped"}
    assert cli("container", "stop", "metaanalytics").returncode == 0
