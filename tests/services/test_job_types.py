"""The job-type registry (node/app/jobtypes.py) is the one list of job types: the
job.submit schema (mempool hook, state machine, and so the gateway's state check),
the processing role's cage dispatch and the CLI's ``--type`` choices and help all
read it. A toy job type registered here, with a real cage function, appears in all
of them and runs from submission to a verified result through a real cage."""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

from node.app import parse_payload, register_tx_types
from node.app.fields import record
from node.app.jobtypes import JOB_TYPES, JobType, input_named, job_type, job_type_names, register_job_type
from node.app.rules import ChainRules
from node.base.errors import UserError
from node.base.keys import Identity
from node.cage.job import JobSpec
from node.cage.pool import CagePool
from node.cli.analytics import JobTypeChoice
from node.cli.main import cli
from node.consensus.tx import PayloadError, TxError, TxTypeRegistry, sign_tx
from node.receipts.envelope import build_receipt
from node.receipts.execution import exec_fields_from_outcome
from node.roles.artifacts import result_json
from node.roles.processing import job_spec
from tests.services.test_state_support import ALICE, NODES, Chain

HERE = Path(__file__).resolve().parent
CSV = b"product,units\napples,3\npears,5\nplums,1\n"
TENANT = Identity.from_label("job-types-tenant")


def toy_params(value: Any, inputs: Any, rules: ChainRules) -> dict[str, Any]:
    p = record(value, "params", ("input",))
    input_named(p, inputs)
    return p


TOY = JobType("toy-rows", summary="how many rows one input has (a test job type)", params=toy_params,
              function="test.toy_row_count", input_param="input", max_inputs=1)


@pytest.fixture
def toy_type():
    """TOY registered for one test (the registry is process-wide: removed afterwards)."""
    register_job_type(TOY)
    try:
        yield TOY
    finally:
        del JOB_TYPES[TOY.name]


@pytest.fixture(scope="module")
def pool():
    """The shipped cage functions plus the toy one (tests/services/toy_job_function.py)."""
    with CagePool(python_path=[str(HERE)], function_modules=["toy_job_function"]) as cage_pool:
        yield cage_pool


def submit_tx(job_type: str, params: dict[str, Any], inputs: dict[str, bytes] | None = None):
    return sign_tx(TENANT, chain_id="job-types", nonce=0, tx_type="job.submit", payload={
        "type": job_type, "inputs": inputs or {"sales": bytes(32)}, "params": params,
        "replication": 1, "deadline_blocks": 10})


# -- the shipped job types --------------------------------------------------------------

def test_the_shipped_job_types_in_their_chain_order():
    # The order is on chain: a refused type's reason lists them in it.
    assert job_type_names() == ("sql", "trend-analysis", "summary")
    with pytest.raises(PayloadError, match="type: must be one of sql, trend-analysis, summary, got 'toy-rows'"):
        parse_payload(submit_tx("toy-rows", {"input": "sales"}))


def test_every_job_type_names_a_cage_function_of_this_build(pool):
    for entry in JOB_TYPES.values():
        if entry.function is not None:
            assert entry.function in pool.functions, f"{entry.name}: no cage function {entry.function!r}"
        else:
            assert entry.cage_job({entry.sql_param: "SELECT 1"})["kind"] == "sql"


def test_processing_builds_the_same_cage_jobs_as_before():
    common = {"seed": "ab" * 32, "clock": 1_700_000_000}
    base = {"policy": "processing", "inputs": {"sales": "/data/sales.csv"}, "seed": bytes.fromhex("ab" * 32),
            "clock": 1_700_000_000}
    trend = {"input": "sales", "time_column": "day", "value_column": "units", "window": "7d"}
    assert job_spec({"type": "sql", "params": {"query": "SELECT 1"}, **common}, base["inputs"]) == \
        JobSpec(kind="sql", sql="SELECT 1", **base)
    assert job_spec({"type": "summary", "params": {"input": "sales"}, **common}, base["inputs"]) == \
        JobSpec(kind="python-fn", function="table_summary", params={"input": "sales"}, **base)
    assert job_spec({"type": "trend-analysis", "params": trend, **common}, base["inputs"]) == \
        JobSpec(kind="python-fn", function="trend_analysis", params=trend, **base)
    with pytest.raises(KeyError, match="no job type 'toy-rows'"):  # processing logs it and leaves the job
        job_spec({"type": "toy-rows", "params": {}, **common}, base["inputs"])


def test_cli_type_choices_are_the_registry():
    assert JobTypeChoice().choices == tuple(sorted(job_type_names())) == ("sql", "summary", "trend-analysis")
    refused = CliRunner().invoke(cli, ["analytics", "submit", "--node", "x", "--type", "toy-rows"])
    assert refused.exit_code == 2 and "Invalid value for '--type'" in refused.output


def test_the_registry_refuses_a_taken_name_and_a_bad_entry():
    with pytest.raises(ValueError, match="already registered"):
        register_job_type(JobType("sql", summary="again", params=toy_params, function="table_summary"))
    with pytest.raises(ValueError, match="exactly one of function and sql_param"):
        JobType("both", summary="", params=toy_params, function="f", sql_param="query")
    with pytest.raises(ValueError, match="job type name"):
        JobType("Not A Name", summary="", params=toy_params, function="f")


# -- a job type added by one entry ----------------------------------------------------

def test_a_registered_job_type_is_in_the_schema_and_the_cli(toy_type):
    parsed = parse_payload(submit_tx("toy-rows", {"input": "sales"}))
    assert parsed.job_type == "toy-rows" and parsed.params == {"input": "sales"}
    with pytest.raises(PayloadError, match="params.input: must name one of the inputs"):
        parse_payload(submit_tx("toy-rows", {"input": "other"}))
    # Its inputs rule: one dataset.
    with pytest.raises(PayloadError, match="inputs: must be a map of 1 to 1 input names"):
        parse_payload(submit_tx("toy-rows", {"input": "a"}, {"a": bytes(32), "b": bytes(32)}))
    # The mempool's hook (registered before the type was) reads the registry too.
    mempool = TxTypeRegistry()
    register_tx_types(mempool)
    mempool.check(submit_tx("toy-rows", {"input": "sales"}))
    with pytest.raises(TxError, match="must be one of sql, trend-analysis, summary, toy-rows"):
        mempool.check(submit_tx("nosuch", {}))

    assert "toy-rows" in JobTypeChoice().choices
    shown = CliRunner().invoke(cli, ["analytics", "submit", "--help"], terminal_width=400)
    assert shown.exit_code == 0 and "[sql|summary|toy-rows|trend-analysis]" in shown.output
    assert "toy-rows: how many rows one input has (a test job type)" in shown.output
    # Accepted as --type: the command goes on to its next check.
    accepted = CliRunner().invoke(cli, ["analytics", "submit", "--node", "x", "--type", "toy-rows"])
    assert isinstance(accepted.exception, UserError) and "give exactly one of --data" in str(accepted.exception)


def test_a_registered_job_type_goes_from_submission_to_verified(toy_type, pool, tmp_path):
    chain = Chain()
    node = NODES[0]
    chain.block(chain.register_node(node, capacity=1))
    digest = hashlib.sha256(CSV).digest()
    chain.block(chain.register_dataset(ALICE, digest))
    submit = chain.submit_job(ALICE, {"sales": digest}, replication=1, deadline_blocks=10,
                              job_type="toy-rows", params={"input": "sales"})
    # What the gateway asks the chain state before admitting a job.submit.
    assert chain.machine.check_tx_against_state(submit) is None
    chain.block(submit)
    job = chain.machine.job(submit.hash)
    assert job["type"] == "toy-rows" and job["state"] == "scheduled"
    assert [a["node"] for a in job["assignments"]] == [node.public_key.hex()]

    # The processing role's dispatch, run in a real cage.
    data = tmp_path / "sales.csv"
    data.write_bytes(CSV)
    spec = job_spec(job, {"sales": str(data)})
    assert (spec.kind, spec.function, spec.params) == ("python-fn", "test.toy_row_count", {"input": "sales"})
    outcome = pool.run(spec)
    assert outcome.ok, outcome.detail
    assert result_json(outcome.result)["rows"] == [[3]]

    receipt = build_receipt(node, "job.exec", height=chain.height, subject=submit.hash, prev=None,
                            fields=exec_fields_from_outcome(outcome))
    chain.block(chain.tx(node, "job.result", {"job": submit.hash, "receipt": receipt.envelope}))
    assert chain.machine.job(submit.hash)["state"] == "verified"


def test_without_its_entry_the_gateway_refuses_the_type():
    chain = Chain()
    submit = chain.submit_job(ALICE, {"sales": bytes(32)}, job_type="toy-rows", params={"input": "sales"})
    assert chain.machine.check_tx_against_state(submit) == (
        "invalid payload: type: must be one of sql, trend-analysis, summary, got 'toy-rows'")
    assert job_type("sql").sql_param == "query"
