"""``metanode analytics`` as a new user meets it, before any node is involved:
option values refused in words with the usage exit code, job type spellings,
and the follow line's wording from real-shaped analytics_status answers."""

from __future__ import annotations

from pathlib import Path

import pytest
from click.testing import CliRunner

from node.cli.analytics_datasets import bad_rows_message, column_summary, dataset_table, upload_lines
from node.cli.analytics_follow import awaited, progress_line, short_peer
from node.cli.main import cli
from tests.support import run_cli

NODE = "/ip4/127.0.0.1/tcp/1/p2p/12D3KooWA27tg6hX4pVmVWiLZWFANmphxoqqzcQSqPMr94iWQqDT"
JOB = "ab" * 32
PEER_A = "12D3KooWDpJ7As7BWAwRMfu1VU2WCqNjvq387JEYKDBj4kx6nXTN"
PEER_B = "12D3KooWEyoppNCUx8Yx66oV9fJnriXwCcXwDDUA2kj6vnc6iDEp"


def invoke(*args: str):
    return CliRunner().invoke(cli, ["analytics", *args], terminal_width=200)


@pytest.mark.parametrize("command", ["status", "result", "cancel", "trace"])
def test_a_job_id_that_is_not_64_hex_is_refused_in_words(command):
    done = invoke(command, "--node", NODE, "--key", "k", "--job-id", "deadbeef")
    assert done.exit_code == 2
    assert "--job-id: expected 64 hex characters, got 'deadbeef'" in done.output


def test_the_cli_process_exits_2_with_the_message_and_no_traceback():
    done = run_cli("analytics", "status", "--node", NODE, "--job-id", "deadbeef")
    assert done.returncode == 2, done.stderr
    assert "--job-id: expected 64 hex characters, got 'deadbeef'" in done.stderr and "Traceback" not in done.stderr
    assert done.stdout == ""


@pytest.mark.parametrize("args", [
    ("status", "--node", NODE, "--job-id", "--follow"),
    ("result", "--node", NODE, "--job-id", "--format", "csv"),
    ("submit", "--node", NODE, "--type", "sql", "--dataset", "--follow"),
    ("submit", "--node", "--key", "k", "--type", "sql", "--dataset", "sales"),
    ("submit", "--node", NODE, "--type", "--follow", "--dataset", "sales"),
])
def test_an_option_is_never_taken_as_the_value_of_the_one_before(args):
    done = invoke(*args)
    assert done.exit_code == 2, done.output
    assert "missing value: the next word '--" in done.output


def test_an_uppercase_job_id_is_accepted_and_a_long_one_counted():
    # Accepted: the command goes on to its next check (the key).
    accepted = invoke("status", "--node", NODE, "--job-id", JOB.upper())
    assert "--job-id" not in accepted.output and "no tenant key" in str(accepted.exception)
    long = invoke("status", "--node", NODE, "--key", "k", "--job-id", JOB + "00")
    assert long.exit_code == 2 and "(66 characters)" in long.output


def test_dataset_references_input_names_and_files_are_checked(tmp_path):
    cases = {
        ("--dataset", "sales@x"): "--dataset: the version after '@' is a number from 1, got 'sales@x'",
        ("--dataset", "sales@0"): "--dataset: the version after '@' is a number from 1",
        ("--dataset", "a\tb"): "--dataset: a dataset name is 1-128 characters without control characters",
        ("--dataset", "sales", "--name", "Sales-2"): "--name: expected an input name (a-z, 0-9 and _",
        ("--data", str(tmp_path / "missing.csv")): "--data: no such file:",
        ("--data", str(tmp_path)): "--data: not a regular file:",
        ("--data", f"9bad={tmp_path / 'x.csv'}"): "--data: expected an input name",
        ("--param", "window"): "--param: expected NAME=VALUE, got 'window'",
    }
    (tmp_path / "x.csv").write_text("a\n1\n")
    for args, message in cases.items():
        extra = () if "--data" in args or "--dataset" in args else ("--dataset", "sales")
        done = invoke("submit", "--node", NODE, "--key", "k", "--type", "summary", *args, *extra)
        assert done.exit_code == 2 and message in done.output, (args, done.output, done.exception)


def test_job_type_spellings_and_several_inputs():
    for spelled in ("trend_analysis", "Trend-Analysis", "trend-analysis"):
        done = invoke("submit", "--node", NODE, "--type", spelled)  # accepted: next comes the inputs check
        assert "give exactly one of --data" in str(done.exception), (spelled, done.output)
    unknown = invoke("submit", "--node", NODE, "--type", "trends", "--dataset", "sales")
    assert unknown.exit_code == 2 and "no job type 'trends'; the job types are sql, trend-analysis, summary" in unknown.output
    two_names = invoke("submit", "--node", NODE, "--type", "sql", "--query", "SELECT 1", "--dataset", "a", "--dataset", "b",
                       "--name", "x")
    assert "--name names the one input" in str(two_names.exception)


# -- the follow line, from analytics_status answers (node/app/queries.py job) ---------------------

def _status(state: str, **fields) -> dict:
    base = {"id": JOB, "state": state, "reason": None, "replication": 2, "attempt": 1, "assignments": [], "results": []}
    return {**base, **fields}


def _assignment(peer: str, node: str, status: str, *, attempt: int = 1, deadline: int = 130) -> dict:
    return {"attempt": attempt, "node": node, "peer_id": peer, "assigned_height": 30, "deadline": deadline,
            "status": status, "note": None}


def _result(peer: str, node: str) -> dict:
    return {"node": node, "peer_id": peer, "height": 40, "tx": "11" * 32, "receipt": "22" * 32, "result": "33" * 32,
            "witness": "44" * 32, "exit": 0, "error": None}


def test_the_follow_line_says_what_is_awaited():
    running = _status("running", assignments=[_assignment(PEER_A, "aa", "delivered"), _assignment(PEER_B, "bb", "pending")],
                      results=[_result(PEER_A, "aa")])
    what = awaited(running, height=120, seconds_per_block=2.0)
    assert what == "2/2 nodes assigned, 1 result in, waiting for 12D3…iDEp (reassigned in ~20 s, at height 130)"
    assert progress_line(running, 12.43, what).startswith("running 12.4 s · 2/2 nodes assigned")
    # Without a block time yet, blocks; on the last attempt, the job fails instead.
    last = {**running, "attempt": 3, "max_attempts": 3}
    assert awaited(last, height=125, seconds_per_block=None) == (
        "attempt 3/3, 2/2 nodes assigned, 1 result in, waiting for 12D3…iDEp (the job fails in 5 blocks, at height 130)")
    # A node that missed its deadline no longer counts as assigned.
    missed = _status("scheduled", assignments=[_assignment(PEER_A, "aa", "missed"), _assignment(PEER_B, "bb", "pending")])
    assert awaited(missed, height=100, seconds_per_block=1.0).startswith("1/2 nodes assigned, 0 results in")
    waiting = _status("submitted", reason="needs 2 eligible processing nodes, 1 registered")
    assert awaited(waiting, height=5, seconds_per_block=1.0) == (
        "waiting to be scheduled: needs 2 eligible processing nodes, 1 registered")
    assert awaited(None, height=5, seconds_per_block=1.0) == "waiting for the job to be committed to a block"
    verified = _status("verified", results=[_result(PEER_A, "aa"), _result(PEER_B, "bb")])
    assert awaited(verified, height=5, seconds_per_block=1.0) == "2/2 results agree"
    assert short_peer(PEER_A) == "12D3…nXTN"
    # The chain's own max_attempts (a voted rule) decides "of N" and whether the job fails next.
    voted = {**running, "attempt": 3, "max_attempts": 5}
    assert awaited(voted, height=125, seconds_per_block=None).startswith("attempt 3/5, 2/2 nodes assigned")
    assert "(reassigned in 5 blocks" in awaited(voted, height=125, seconds_per_block=None)


# -- what an upload shows ------------------------------------------------------------------------

SCHEMA = [{"name": "day", "type": "DATE", "nulls": 0}, {"name": "product", "type": "VARCHAR", "nulls": 0},
          {"name": "units", "type": "BIGINT", "nulls": 2}]


def test_upload_lines_schema_and_deduplication():
    info = {"digest": "cd" * 32, "name": "sales", "size": 3456, "row_count": 120, "schema": SCHEMA,
            "deduplicated": False, "registered": {"name": "sales", "version": 2}}
    assert upload_lines(Path("data/sales.csv"), info) == [
        "sales.csv -> sales@2: 120 rows, 3 columns, 3,456 bytes, digest cdcdcdcdcdcdcdcd…",
        "  day DATE · product VARCHAR · units BIGINT (2 nulls)"]
    again = upload_lines(Path("sales.csv"), {**info, "deduplicated": True})
    assert again[0].startswith("sales.csv: already stored as sales@2: 120 rows")
    assert column_summary([]) == "(no columns)"


def test_bad_rows_are_listed_by_line_number():
    data = {"bad_rows": [{"line": 3, "reason": "units: 'lots' is not a BIGINT"}, {"line": 5, "reason": "2 fields, expected 3"}],
            "count": 14}
    assert bad_rows_message(Path("bad.csv"), data).splitlines() == [
        "bad.csv: 14 bad rows; nothing was stored (--on-bad-rows skip stores the good rows only)",
        "  line 3: units: 'lots' is not a BIGINT", "  line 5: 2 fields, expected 3", "  ... and 12 more"]


def test_the_datasets_table():
    rows = [{"name": "sales", "version": 2, "latest": True, "digest": "cd" * 32, "size": 3456, "row_count": 120,
             "columns": SCHEMA},
            {"name": "raw", "version": None, "latest": False, "digest": "ef" * 32, "size": None, "row_count": None,
             "columns": None}]
    columns, cells = dataset_table(rows)
    assert [c.name for c in columns] == ["NAME", "VERSION", "ROWS", "COLUMNS", "BYTES", "DIGEST"]
    assert cells == [["sales", "2 (latest)", "120", "3", "3,456", "cd" * 32], ["raw", "unregistered", "?", "?", "?", "ef" * 32]]
