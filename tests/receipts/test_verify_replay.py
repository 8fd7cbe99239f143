"""--replay: a job.exec receipt built from a real cage run, bundled with its
witness record, verified offline by re-running the job in a local cage."""

from __future__ import annotations

import hashlib
from pathlib import Path

import duckdb
import pytest

from node.base.errors import EXIT_REPLAY, EXIT_USAGE, EXIT_WITNESS
from node.cage.job import JobSpec
from node.cage.pool import CagePool
from node.cage.witness import encode_witness_file, witness_digest
from node.cli.main import main
from node.receipts.api import build_bundle
from node.receipts.chain import ReceiptIssuer
from node.receipts.devchain import DevChain, dev_genesis, dev_identities
from node.receipts.execution import NO_DIGEST, exec_fields, exec_fields_from_outcome, replay_exec
from node.receipts.verify import BundleVerifier

VALIDATORS = dev_identities(4)
GENESIS = dev_genesis(VALIDATORS)
PROCESSING = dev_identities(1, "replay-test-processing")[0]
SQL = "SELECT region, sum(amount) AS total FROM sales GROUP BY region"


@pytest.fixture(scope="module")
def pool():
    with CagePool() as cage_pool:
        yield cage_pool


@pytest.fixture
def sales(tmp_path: Path) -> Path:
    path = tmp_path / "sales.csv"
    path.write_text("region,amount\nnorth,3\nsouth,4\nnorth,5\n", encoding="utf-8")
    return path


@pytest.fixture
def setup(pool: CagePool, sales: Path, tmp_path: Path):
    """A sealed chain holding an honest receipt (leaf 0) and one whose issuer
    claims another result, with a witness record doctored to agree (leaf 1)."""
    outcome = pool.run(JobSpec(kind="sql", policy="processing", inputs={"sales": str(sales)}, sql=SQL,
                               seed=b"block seed", clock=1_767_225_600))
    assert outcome.ok, outcome.detail
    job_id = hashlib.sha256(b"job 1").digest()
    issuer = ReceiptIssuer(PROCESSING)
    honest = issuer.issue("job.exec", height=1, subject=job_id, fields=exec_fields_from_outcome(outcome))
    lie = dict(outcome.witness, result_digest=hashlib.sha256(b"a made-up result").digest())
    liar = issuer.issue("job.exec", height=1, subject=job_id, fields=exec_fields(lie, witness_digest(lie)))
    chain = DevChain(GENESIS, VALIDATORS, duckdb.connect())
    chain.add_block([honest, liar])
    paths = {}
    for name, receipt, witness_file in (("honest", honest, outcome.witness_file),
                                        ("liar", liar, encode_witness_file(lie, {}))):
        paths[name] = tmp_path / f"{name}.bundle"
        paths[name].write_bytes(build_bundle(receipt.id, chain.log, chain.block_source(), GENESIS,
                                             witness_file=witness_file))
    paths["bare"] = tmp_path / "bare.bundle"  # the honest receipt, without its witness
    paths["bare"].write_bytes(build_bundle(honest.id, chain.log, chain.block_source(), GENESIS))
    paths["witness"] = tmp_path / "witness.cbor"
    outcome.save_witness(paths["witness"])
    paths["genesis"] = tmp_path / "genesis.toml"
    GENESIS.write(paths["genesis"])
    return paths


def _run(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str]:
    try:
        main(["receipt", "verify", *args])
        code = 0
    except SystemExit as exit_:
        code = int(exit_.code or 0)
    captured = capsys.readouterr()
    return code, (captured.out + captured.err).strip()


def test_replay_of_an_honest_receipt_matches(pool: CagePool, setup, sales: Path) -> None:
    verified = BundleVerifier(GENESIS).verify(setup["honest"].read_bytes())
    assert verified.witness_record is not None
    result = replay_exec(pool, verified.receipt, verified.witness_record, {"sales": str(sales)})
    assert result.matches and result.replayed == verified.receipt.body["result"] != NO_DIGEST
    assert all(equal for _, equal, _, _ in result.checks), result.checks


def test_replay_catches_a_result_the_job_does_not_give(pool: CagePool, setup, sales: Path) -> None:
    verified = BundleVerifier(GENESIS).verify(setup["liar"].read_bytes())  # everything else checks out
    result = replay_exec(pool, verified.receipt, verified.witness_record, {"sales": str(sales)})
    assert not result.matches and "result digest" in result.reason
    assert result.replayed != result.recorded


def test_replay_names_an_input_file_that_is_not_the_recorded_one(pool: CagePool, setup, tmp_path: Path) -> None:
    other = tmp_path / "other.csv"
    other.write_text("region,amount\nnorth,1\n", encoding="utf-8")
    verified = BundleVerifier(GENESIS).verify(setup["honest"].read_bytes())
    result = replay_exec(pool, verified.receipt, verified.witness_record, {"sales": str(other)})
    assert not result.matches and result.reason.startswith("input sales")


def test_cli_replay_exit_codes(setup, sales: Path, capsys: pytest.CaptureFixture[str]) -> None:
    common = ["--genesis", str(setup["genesis"]), "--replay", "--input", f"sales={sales}"]
    code, out = _run(capsys, "--bundle", str(setup["honest"]), *common)
    assert code == 0 and out.startswith("valid: job.exec receipt") and out.endswith("replay matches")
    code, out = _run(capsys, "--bundle", str(setup["liar"]), *common)
    assert code == EXIT_REPLAY and out.startswith("invalid: replay: result digest")
    # Without a witness in the bundle, --witness gives it (and is checked against the receipt).
    code, out = _run(capsys, "--bundle", str(setup["bare"]), "--witness", str(setup["witness"]), *common)
    assert code == 0, out
    code, out = _run(capsys, "--bundle", str(setup["liar"]), "--witness", str(setup["witness"]),
                     "--genesis", str(setup["genesis"]))
    assert code == EXIT_WITNESS and out == "invalid: witness: witness disagrees with the receipt on result, witness"
    code, out = _run(capsys, "--bundle", str(setup["bare"]), *common)
    assert code == EXIT_USAGE and "needs the job's witness" in out
    code, out = _run(capsys, "--bundle", str(setup["honest"]), "--genesis", str(setup["genesis"]), "--replay")
    assert code == EXIT_USAGE and "--input sales=PATH" in out
