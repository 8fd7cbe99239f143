"""The client library without a cluster: configuration from the environment,
JobResult as object and mapping, the helpers that name inputs and formats,
and that importing it stays light."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from node.base.errors import UserError
from node.base.keys import Identity
from node.sdk.client import Client
from node.sdk.datasets import PreparedJob, input_name_for
from node.sdk.results import JobResult
from node.sdk.uploads import upload_format

ADDRESS = f"/ip4/127.0.0.1/tcp/9/p2p/{Identity.from_label('sdk-units-node').peer_id}"  # port 9: nothing listens


@pytest.fixture
def clean_env(monkeypatch):
    for name in ("METANODE_NODE", "METANODE_KEY", "METANODE_GENESIS"):
        monkeypatch.delenv(name, raising=False)
    return monkeypatch


def test_client_reads_the_environment_and_names_what_is_missing(clean_env, tmp_path):
    with pytest.raises(UserError) as missing_node:
        Client()
    assert "METANODE_NODE" in str(missing_node.value) and "node=" in str(missing_node.value)

    clean_env.setenv("METANODE_NODE", ADDRESS)
    with pytest.raises(UserError) as missing_key:
        Client()
    assert "METANODE_KEY" in str(missing_key.value) and "key=" in str(missing_key.value)

    clean_env.setenv("METANODE_KEY", str(tmp_path / "absent.key"))
    with pytest.raises(UserError) as unreadable:
        Client()
    assert "METANODE_KEY" in str(unreadable.value) and "absent.key" in str(unreadable.value)

    key = tmp_path / "tenant.key"
    Identity.from_label("sdk-units-tenant").write(key)
    clean_env.setenv("METANODE_KEY", str(key))
    client = Client()
    assert client.node == ADDRESS and client.identity.public_key == Identity.from_label("sdk-units-tenant").public_key
    assert client.genesis is None
    # Arguments win over the environment.
    assert Client("/ip4/127.0.0.1/tcp/1/p2p/x", key=Identity.from_label("other")).node == "/ip4/127.0.0.1/tcp/1/p2p/x"

    # verify_receipt without a trusted genesis: a clear error before any dial (nothing listens there).
    with pytest.raises(UserError) as no_genesis:
        client.verify_receipt("ab" * 32)
    assert "METANODE_GENESIS" in str(no_genesis.value) and "genesis=" in str(no_genesis.value)
    clean_env.setenv("METANODE_GENESIS", str(tmp_path / "genesis.toml"))
    assert Client().genesis == str(tmp_path / "genesis.toml")


def test_job_result_is_an_object_and_the_old_mapping():
    status = {"id": "ab" * 32, "state": "verified", "reason": None,
              "results": [{"receipt": "11" * 32, "result": "22" * 32}, {"receipt": "33" * 32, "result": "22" * 32}],
              "result": {"columns": [["product", "VARCHAR"], ["units", "BIGINT"]], "rows": [["apples", 7], ["pears", 5]],
                         "result_digest": "22" * 32}}
    result = JobResult("ab" * 32, status)
    assert result.job_id == "ab" * 32 and result.state == "verified" and result.verified
    assert result.columns == ["product", "units"] and result.column_types == ["VARCHAR", "BIGINT"]
    assert result.rows == [["apples", 7], ["pears", 5]]
    assert result.table == [{"product": "apples", "units": 7}, {"product": "pears", "units": 5}]
    assert result.result_digest == "22" * 32
    assert result.receipt_hash == "11" * 32 and result.receipts == ["11" * 32, "33" * 32]
    # The mapping of earlier releases, and JSON as before.
    assert result["state"] == "verified" and result["result"]["rows"][0] == ["apples", 7]
    assert result["results"][0]["receipt"] == result.receipt_hash
    assert json.loads(json.dumps(result)) == status and result.status == status

    failed = JobResult("cd" * 32, {"state": "failed", "reason": "deadline passed", "results": []})
    assert failed.rows == [] and failed.table == [] and failed.receipt_hash is None and failed.result_digest is None
    assert "deadline passed" in repr(failed)


def test_input_names_formats_and_prepared_jobs(tmp_path):
    assert input_name_for("sales_data") == "sales_data"
    assert input_name_for("Sales-2024.v1") == "sales_2024_v1"
    assert input_name_for("2024 sales") == "_2024_sales"
    assert input_name_for("***") == "data" and len(input_name_for("x" * 200)) == 63

    assert upload_format(Path("a.csv"), None) == "csv"
    assert upload_format(Path("a.PARQUET"), None) == "parquet"
    assert upload_format(Path("a.jsonl"), None) == "jsonl" and upload_format(Path("a.ndjson"), None) == "jsonl"
    assert upload_format(Path("a.txt"), None) == "csv" and upload_format(Path("a.json"), "jsonl") == "jsonl"
    with pytest.raises(UserError, match="format='jsonl'"):
        upload_format(Path("a.json"), None)
    with pytest.raises(UserError, match="csv, parquet or jsonl"):
        upload_format(Path("a.csv"), "xlsx")

    prepared = PreparedJob({"type": "sql", "inputs": {"sales": bytes(32)}, "params": {"query": "SELECT 1"},
                            "replication": 1, "deadline_blocks": 100}, ["a note"])
    payload, notes = prepared
    assert payload["type"] == "sql" and notes == ["a note"] and prepared.inputs == {"sales": "00" * 32}


def test_importing_the_client_loads_no_transport_and_no_duckdb():
    code = ("import sys, node.sdk.client, node.sdk.http_client; "
            "print(sorted({m.split('.')[0] for m in sys.modules} & {'libp2p', 'duckdb', 'multiaddr'}))")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "[]"
