"""``metanode receipt``: bundle one receipt for offline checking, verify bundles.

``receipt verify`` checks a bundle file, or fetches bundles from a node
(``--receipt-hash H``, or every receipt of ``--job-id ID``; node/cli/receipt_fetch.py)
and checks them the same way, offline, against the genesis file the user trusts.
(``metanode audit`` lives in node/cli/audit.py.)
"""

from __future__ import annotations

import json
import os
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import click

from node.base.errors import EXIT_NO_RECEIPT, EXIT_USAGE, UserError
from node.cli.present import Column, echo_table
from node.cli.receipt_fetch import fetch_bundle, fetch_job_bundles, hex_id

_VERIFY_HELP = """Check receipts offline against a genesis file.

\b
  metanode receipt verify BUNDLE --genesis G        a bundle file
  metanode receipt verify --receipt-hash H          fetch H's bundle from --node
  metanode receipt verify --job-id ID               every receipt of job ID
--node and --genesis default to $METANODE_NODE and $METANODE_GENESIS.

\b
Checks the receipt's signature and canonical encoding, its inclusion proof
against the sealing header's receipts root, the header's commit seals (a
quorum of that height's validators), and the validator set chain back to
GENESIS: each validator set change proven by a header the set before it
sealed, so receipts sealed after any number of changes verify against the
original genesis file. Nothing the node says is trusted: it only hands bundles over. With
--replay, also re-runs a job.exec receipt's job in a local cage (inputs
given with --input) and compares the result digest. --job-id prints one
line per receipt (the api.call that accepted the job, its job.schedule,
each replica's job.exec, the job.verdict) and a summary.

\b
Exit codes (each failure prints one line "invalid: <reason>"):
   0  valid (--job-id: every receipt valid)
   1  the replay could not run (cage error), or the node refused the call
   2  usage: bad options or id, unreadable bundle or genesis file
   3  the node could not be reached
  10  malformed bundle
  11  bad receipt: signature, encoding, schema or issuer id (or the node
      answered another receipt's bundle)
  12  inclusion proof does not lead to the header's receipts root
  13  header not sealed by a quorum (forged, altered, too few seals)
  14  does not chain to the genesis: validator set chain (a change missing,
      reordered, forged or badly sealed), chain id or genesis hash mismatch
  15  replay result digest differs from the receipt's
  16  witness does not match the receipt
  17  issuer not allowed (--issuers validators: a validator of the sealing height)
  18  the node has no such receipt or job, or has not sealed it yet
--job-id exits with the first invalid receipt's code, else 18 if the node
gave no bundle for some receipt, else 0.
"""


def _pairs(values: tuple[str, ...], option: str) -> dict[str, str]:
    pairs: dict[str, str] = {}
    for value in values:
        name, sep, rest = value.partition("=")
        if not sep or not name or not rest:
            raise UserError(f"{option} {value!r}: expected NAME=PATH", exit_code=EXIT_USAGE)
        if name in pairs:
            raise UserError(f"{option} {name!r} given twice", exit_code=EXIT_USAGE)
        pairs[name] = rest
    return pairs


def _read(path: str, what: str, limit: int) -> bytes:
    try:
        with open(path, "rb") as handle:
            data = handle.read(limit + 1)
    except OSError as exc:
        raise UserError(f"cannot read {what} {path}: {exc.strerror}", exit_code=EXIT_USAGE) from None
    if len(data) > limit:
        raise UserError(f"{what} {path} is larger than {limit} bytes", exit_code=EXIT_USAGE)
    return data


def write_atomically(path: str, data: bytes) -> None:
    """Write ``path`` whole or not at all (a temporary file renamed over it)."""
    target = Path(path)
    temporary = target.with_name(f".{target.name}.{os.getpid()}.tmp")
    try:
        temporary.write_bytes(data)
        os.replace(temporary, target)
    except OSError as exc:
        temporary.unlink(missing_ok=True)
        raise UserError(f"cannot write {path}: {exc.strerror}", exit_code=EXIT_USAGE) from None


@click.group()
def receipt() -> None:
    """Receipts: bundle one for offline checking; verify bundles, from a file or fetched from a node."""


def _stored_validator_history(conn: Any, genesis: Any) -> Any:
    """The validator set changes a stopped node's state recorded (none in a
    data directory whose state never ran one)."""
    import duckdb

    from node.app.validator_sets import ValidatorHistory

    history = ValidatorHistory(genesis.validator_set.keys)
    try:
        history.load(conn)
    except duckdb.CatalogException:
        pass  # no state_validator_sets table: the set never changed
    return history


def _bundle_from_data_dir(data_dir: str, genesis_path: str, receipt_hex: str) -> bytes:
    from node.base.db import open_node_db
    from node.consensus.block import genesis_header, max_encoded_block_size
    from node.consensus.genesis import load_genesis
    from node.consensus.store import ChainStore
    from node.receipts.api import ReceiptQueryError, build_bundle
    from node.receipts.audit import open_audit_db
    from node.receipts.blocks import ChainStoreBlocks
    from node.receipts.log import ReceiptLog

    genesis = load_genesis(genesis_path)
    # Probe read-only first, so a data directory without a chain is never
    # written to; the stores below create their tables when missing.
    open_audit_db(data_dir).close()
    conn = open_node_db(data_dir)
    try:
        store = ChainStore(conn, first_height=1, first_parent=genesis_header(genesis).hash)
        identity = store.chain_identity()
        if identity is not None and identity != (genesis.chain_id, genesis.hash):
            raise UserError(f"{data_dir} holds chain {identity[0]}, not the chain of {genesis_path}", exit_code=2)
        blocks = ChainStoreBlocks(store, max_block_size=max_encoded_block_size(genesis))
        history = _stored_validator_history(conn, genesis)
        try:
            return build_bundle(receipt_hex, ReceiptLog(conn), blocks, genesis, validator_history=history.entries)
        except ReceiptQueryError as exc:
            raise UserError(f"cannot bundle receipt {receipt_hex}: {exc.message}") from None
    finally:
        conn.close()


@receipt.command("bundle")
@click.argument("receipt_id")
@click.option("--node", "node_addr", envvar="METANODE_NODE", default=None,
              help="Node multiaddr to ask (/ip4/HOST/tcp/PORT/p2p/PEER_ID, or $METANODE_NODE).")
@click.option("--data-dir", type=click.Path(file_okay=False), default=None,
              help="Build from a stopped node's data directory instead of asking a node.")
@click.option("--genesis", "genesis_path", type=click.Path(dir_okay=False), default=None,
              help="Genesis file (with --data-dir).")
@click.option("--witness", "witness_path", type=click.Path(dir_okay=False), default=None,
              help="Include the record of this cage witness file (job.exec receipts), for --replay.")
@click.option("--out", "out_path", required=True, type=click.Path(dir_okay=False), help="Where to write the bundle.")
@click.option("--timeout", default=30.0, show_default=True, help="Deadline of the call, seconds.")
@click.option("--json", "as_json", is_flag=True, help="Print {receipt, out, bytes, leaf} as JSON.")
def bundle_command(receipt_id: str, node_addr: str | None, data_dir: str | None, genesis_path: str | None,
                   witness_path: str | None, out_path: str, timeout: float, as_json: bool) -> None:
    """Write RECEIPT_ID's bundle: envelope, leaf index, inclusion proof, the
    sealing header with its commit seals, and the validator set chain."""
    from dataclasses import replace

    from node.base.codec import CodecError, from_hex
    from node.receipts.bundle import BundleError, decode_bundle
    from node.receipts.envelope import receipt_id as id_of

    try:
        wanted = from_hex(receipt_id, what="RECEIPT_ID")
    except CodecError as exc:
        raise UserError(str(exc), exit_code=EXIT_USAGE) from None
    if (node_addr is None) == (data_dir is None):
        raise UserError("give exactly one of --node or --data-dir", exit_code=EXIT_USAGE)
    if data_dir is not None and genesis_path is None:
        raise UserError("--data-dir needs --genesis", exit_code=EXIT_USAGE)
    if node_addr is not None:
        data = fetch_bundle(node_addr, wanted.hex(), timeout=timeout)
    else:
        data = _bundle_from_data_dir(data_dir, genesis_path, receipt_id)  # type: ignore[arg-type]
    try:
        decoded = decode_bundle(data)
        if witness_path is not None:
            record = _witness_record(witness_path)
            decoded = replace(decoded, witness=record)
            data = decoded.encode()
    except BundleError as exc:
        raise UserError(f"the bundle is not valid: {exc}") from None
    if id_of(decoded.receipt) != wanted:
        raise UserError(f"the bundle returned is for another receipt than {receipt_id}")
    write_atomically(out_path, data)
    if as_json:
        click.echo(json.dumps({"receipt": wanted.hex(), "out": out_path, "bytes": len(data), "leaf": decoded.leaf_index}))
        return
    click.echo(f"wrote the bundle of receipt {receipt_id} ({len(data)} bytes, leaf {decoded.leaf_index}) to {out_path}")


def _witness_record(path: str) -> bytes:
    """The record of a cage witness file, as bundles carry it."""
    from node.cage.witness import MAX_WITNESS_FILE, WitnessError
    from node.receipts.execution import witness_record_bytes

    try:
        return witness_record_bytes(_read(path, "witness", MAX_WITNESS_FILE))
    except WitnessError as exc:
        raise UserError(f"witness {path}: {exc}", exit_code=EXIT_USAGE) from None


@dataclass(frozen=True)
class Verdict:
    """What checking one bundle found: valid, or the failed check's reason and exit code."""

    receipt_id: str
    valid: bool
    exit_code: int
    reason: str = ""  # "<part>: <what failed>" when invalid, the node's refusal when missing
    kind: str | None = None
    issuer: str | None = None
    leaf: int | None = None
    log_size: int | None = None
    height: int | None = None
    block: str | None = None
    replayed: bool = False
    missing: bool = False  # the node gave no bundle: not checked

    def to_json(self) -> dict[str, Any]:
        return {"receipt": self.receipt_id, "kind": self.kind, "issuer": self.issuer,
                "result": "valid" if self.valid else "missing" if self.missing else "invalid",
                "valid": self.valid, "exit_code": self.exit_code, "reason": self.reason or None,
                "leaf": self.leaf, "log_size": self.log_size, "height": self.height, "block": self.block,
                "replayed": self.replayed}

    def line(self) -> str:
        """The one line the bundle-file form has always printed."""
        if not self.valid:
            return f"invalid: {self.reason}"
        return (f"valid: {self.kind} receipt {self.receipt_id} by {self.issuer}, leaf {self.leaf} of {self.log_size}, "
                f"sealed at height {self.height} (block {self.block})" + (", replay matches" if self.replayed else ""))


def check_bundle(data: bytes, verifier: Any, *, expected_id: str | None = None, witness_path: str | None = None,
                 replay: bool = False, inputs: dict[str, str] | None = None) -> Verdict:
    """Verify one bundle offline (BundleVerifier), then, when asked, its
    witness and a replay. ``expected_id``: the receipt the bundle must be of
    (a node answering another receipt's bundle is a bad receipt, exit 11)."""
    from node.receipts.bundle import PART_RECEIPT, PART_REPLAY
    from node.receipts.verify import BundleInvalid, check_witness

    asked = expected_id or ""
    try:
        verified = verifier.verify(data)
        receipt_ = verified.receipt
        if expected_id is not None and receipt_.id.hex() != expected_id:
            raise BundleInvalid(PART_RECEIPT, f"the node answered the bundle of receipt {receipt_.id.hex()}, not {expected_id}")
        record = verified.witness_record
        if witness_path is not None:
            record = check_witness(receipt_, _witness_record(witness_path))
        if replay:
            if receipt_.kind != "job.exec":
                raise UserError(f"--replay needs a job.exec receipt, this one is {receipt_.kind}", exit_code=EXIT_USAGE)
            if record is None:
                raise UserError("--replay needs the job's witness: the bundle has none, pass --witness FILE", exit_code=EXIT_USAGE)
            outcome = _replay(receipt_, record, inputs or {})
            if not outcome.matches:
                raise BundleInvalid(PART_REPLAY, outcome.reason)
    except BundleInvalid as exc:
        return Verdict(asked, False, exc.exit_code, str(exc))
    header = verified.header
    return Verdict(receipt_.id.hex(), True, 0, kind=receipt_.kind, issuer=receipt_.issuer_node, leaf=verified.leaf_index,
                   log_size=header.receipts_size, height=header.height, block=header.hash.hex(), replayed=replay)


@receipt.command("verify", help=_VERIFY_HELP)
@click.argument("bundle_arg", metavar="[BUNDLE]", required=False, type=click.Path(dir_okay=False))
@click.option("--bundle", "bundle_path", type=click.Path(dir_okay=False), default=None, help="The bundle file (or give it as BUNDLE).")
@click.option("--receipt-hash", "receipt_hash", default=None, metavar="H",
              help="Fetch the bundle of receipt H (its id, 64 hex) from --node and verify it offline.")
@click.option("--job-id", "job_id", default=None, metavar="ID",
              help="Fetch every receipt of job ID from --node and verify each offline.")
@click.option("--node", "node_addr", envvar="METANODE_NODE", default=None,
              help="Node to fetch from, with --receipt-hash / --job-id (or $METANODE_NODE).")
@click.option("--genesis", "genesis_path", envvar="METANODE_GENESIS", default=None, type=click.Path(dir_okay=False),
              help="The genesis file to trust (or $METANODE_GENESIS).")
@click.option("--issuers", type=click.Choice(["any", "validators"]), default="any", show_default=True,
              help="Which issuers to accept: any node whose receipt is sealed, or only validators of the sealing height.")
@click.option("--replay", is_flag=True, help="Re-run a job.exec receipt's job in a local cage.")
@click.option("--witness", "witness_path", type=click.Path(dir_okay=False), default=None,
              help="The job's witness file, if the bundle does not carry it.")
@click.option("--input", "inputs", multiple=True, metavar="NAME=PATH", help="An input file of the job (--replay).")
@click.option("--timeout", default=30.0, show_default=True, type=click.FloatRange(0.1, 3600), help="Deadline of each call to --node, seconds.")
@click.option("--json", "as_json", is_flag=True, help="Print the verdicts as JSON (the exit code is the same).")
def verify_command(bundle_arg: str | None, bundle_path: str | None, receipt_hash: str | None, job_id: str | None,
                   node_addr: str | None, genesis_path: str | None, issuers: str, replay: bool, witness_path: str | None,
                   inputs: tuple[str, ...], timeout: float, as_json: bool) -> None:
    from node.consensus.genesis import load_genesis
    from node.receipts.bundle import MAX_BUNDLE_SIZE
    from node.receipts.verify import BundleVerifier, any_issuer, sealing_validators

    if bundle_arg is not None and bundle_path is not None:
        raise UserError("give the bundle once: as BUNDLE or with --bundle", exit_code=EXIT_USAGE)
    bundle_file = bundle_arg or bundle_path
    given = [name for name, value in (("BUNDLE", bundle_file), ("--receipt-hash", receipt_hash), ("--job-id", job_id))
             if value is not None]
    if len(given) != 1:
        raise UserError("give exactly one of BUNDLE (a bundle file), --receipt-hash H or --job-id ID"
                        + (f" (got {' and '.join(given)})" if given else ""), exit_code=EXIT_USAGE)
    if genesis_path is None:
        raise UserError("give --genesis FILE (or set METANODE_GENESIS): the genesis file you trust", exit_code=EXIT_USAGE)
    if bundle_file is None and node_addr is None:
        raise UserError(f"{given[0]} needs --node ADDR (or METANODE_NODE): the node to fetch from", exit_code=EXIT_USAGE)
    input_paths = _pairs(inputs, "--input")
    if input_paths and not replay:
        raise UserError("--input is only used with --replay", exit_code=EXIT_USAGE)
    if job_id is not None and (replay or witness_path):
        raise UserError("--replay and --witness check one job.exec receipt: use --receipt-hash", exit_code=EXIT_USAGE)
    genesis = load_genesis(genesis_path)
    policy = sealing_validators if issuers == "validators" else any_issuer
    verifier = BundleVerifier(genesis, issuer_allowed=policy)
    if job_id is not None:
        _verify_job(verifier, node_addr, hex_id(job_id, "--job-id"), timeout, as_json)  # type: ignore[arg-type]
        return
    expected = None
    if receipt_hash is not None:
        expected = hex_id(receipt_hash, "--receipt-hash")
        data = fetch_bundle(node_addr, expected, timeout=timeout)  # type: ignore[arg-type]
    else:
        data = _read(bundle_file, "bundle", MAX_BUNDLE_SIZE)  # type: ignore[arg-type]
    verdict = check_bundle(data, verifier, expected_id=expected, witness_path=witness_path, replay=replay, inputs=input_paths)
    click.echo(json.dumps(verdict.to_json(), indent=2) if as_json else verdict.line())
    sys.exit(verdict.exit_code)


VERDICT_COLUMNS = [Column("result"), Column("kind"), Column("issuer"), Column("receipt"), Column("detail")]


def _verify_job(verifier: Any, node_addr: str, job_id: str, timeout: float, as_json: bool) -> None:
    """One verdict per receipt of the job; exit 0 only when every one is valid."""
    verdicts = []
    for fetched in fetch_job_bundles(node_addr, job_id, timeout=timeout):
        if fetched.bundle is None:
            verdicts.append(Verdict(fetched.receipt_id, False, EXIT_NO_RECEIPT, fetched.missing, kind=fetched.kind, missing=True))
        else:
            verdicts.append(check_bundle(fetched.bundle, verifier, expected_id=fetched.receipt_id))
    code = job_exit_code(verdicts)
    valid = sum(1 for v in verdicts if v.valid)
    summary = (f"job {job_id}: all {len(verdicts)} receipts valid" if code == 0 else
               f"job {job_id}: {valid} of {len(verdicts)} receipts valid")
    if as_json:
        click.echo(json.dumps({"job_id": job_id, "node": node_addr, "valid": code == 0, "exit_code": code,
                               "receipts": [v.to_json() for v in verdicts]}, indent=2))
    else:
        rows = [["valid" if v.valid else "missing" if v.missing else "invalid", v.kind or "?", v.issuer or "?", v.receipt_id,
                 f"sealed at height {v.height}, leaf {v.leaf}" if v.valid else v.reason] for v in verdicts]
        echo_table(VERDICT_COLUMNS, rows, marks={"valid": "green", "invalid": "bold red", "missing": "yellow"})
        click.echo(summary)
    sys.exit(code)


def job_exit_code(verdicts: list[Verdict]) -> int:
    """0 when every receipt is valid; else the first invalid one's code; else
    EXIT_NO_RECEIPT (some receipt the node did not hand over)."""
    for verdict in verdicts:
        if not verdict.valid and not verdict.missing:
            return verdict.exit_code
    return EXIT_NO_RECEIPT if any(v.missing for v in verdicts) else 0


def _replay(receipt_: Any, record: dict[str, Any], inputs: dict[str, str]) -> Any:
    from node.cage.pool import CagePool
    from node.receipts.execution import ReplayInputError, replay_exec

    try:
        with CagePool({}) as pool:
            return replay_exec(pool, receipt_, record, inputs)
    except ReplayInputError as exc:
        raise UserError(str(exc), exit_code=EXIT_USAGE) from None
    except UserError as exc:  # CageError: the replay could not run
        raise UserError(f"the replay could not run: {exc}") from None
