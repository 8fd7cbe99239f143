"""``metanode receipt`` (bundle, verify) and ``metanode audit`` (export, query)."""

from __future__ import annotations

import csv
import io
import json
import os
import sys
from pathlib import Path
from typing import Any

import click

from node.base.errors import EXIT_USAGE, UnreachableError, UserError

_VERIFY_HELP = """Check a receipt bundle offline against a genesis file.

\b
Checks the receipt's signature and canonical encoding, its inclusion proof
against the sealing header's receipts root, the header's commit seals (a
quorum of that height's validators), and the validator set chain back to
GENESIS. With --replay, also re-runs a job.exec receipt's job in a local
cage (inputs given with --input) and compares the result digest.

\b
Exit codes (each failure prints one line "invalid: <reason>"):
   0  valid
   1  the replay could not run (cage error)
   2  usage: bad options, unreadable bundle or genesis file
  10  malformed bundle
  11  bad receipt: signature, encoding, schema or issuer id
  12  inclusion proof does not lead to the header's receipts root
  13  header not sealed by a quorum (forged, altered, too few seals)
  14  does not chain to the genesis: validator set or chain id mismatch
  15  replay result digest differs from the receipt's
  16  witness does not match the receipt
  17  issuer not allowed (--issuers validators)
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


def _write_atomically(path: str, data: bytes) -> None:
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
    """Receipts: bundle one for offline checking, verify a bundle."""


def _bundle_from_node(node_addr: str, receipt_hex: str, timeout: float) -> bytes:
    import trio

    from node.base.logging import configure_client_logging
    from node.p2p.client import call_node
    from node.p2p.rpc import RpcCallError

    configure_client_logging()
    try:
        result = trio.run(lambda: call_node(node_addr, "receipt_bundle", {"id": receipt_hex}, timeout=timeout))
    except RpcCallError as exc:
        raise UserError(f"{node_addr}: receipt_bundle failed: {exc}") from None
    except (ConnectionError, trio.TooSlowError) as exc:
        raise UnreachableError(f"lost {node_addr}: {exc or 'timed out'}") from None
    try:
        return bytes.fromhex(result["bundle"])
    except (TypeError, KeyError, ValueError):
        raise UserError(f"{node_addr}: receipt_bundle returned no bundle") from None


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
        try:
            return build_bundle(receipt_hex, ReceiptLog(conn), blocks, genesis)
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
def bundle_command(receipt_id: str, node_addr: str | None, data_dir: str | None, genesis_path: str | None,
                   witness_path: str | None, out_path: str, timeout: float) -> None:
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
        data = _bundle_from_node(node_addr, receipt_id, timeout)
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
    _write_atomically(out_path, data)
    click.echo(f"wrote the bundle of receipt {receipt_id} ({len(data)} bytes, leaf {decoded.leaf_index}) to {out_path}")


def _witness_record(path: str) -> bytes:
    """The record of a cage witness file, as bundles carry it."""
    from node.cage.witness import MAX_WITNESS_FILE, WitnessError
    from node.receipts.execution import witness_record_bytes

    try:
        return witness_record_bytes(_read(path, "witness", MAX_WITNESS_FILE))
    except WitnessError as exc:
        raise UserError(f"witness {path}: {exc}", exit_code=EXIT_USAGE) from None


def _invalid(reason: str, code: int) -> None:
    click.echo(f"invalid: {reason}")
    sys.exit(code)


@receipt.command("verify", help=_VERIFY_HELP)
@click.option("--bundle", "bundle_path", required=True, type=click.Path(dir_okay=False), help="The bundle file.")
@click.option("--genesis", "genesis_path", required=True, type=click.Path(dir_okay=False),
              help="The genesis file to trust.")
@click.option("--issuers", type=click.Choice(["any", "validators"]), default="any", show_default=True,
              help="Which issuers to accept: any node whose receipt is sealed, or genesis validators only.")
@click.option("--replay", is_flag=True, help="Re-run a job.exec receipt's job in a local cage.")
@click.option("--witness", "witness_path", type=click.Path(dir_okay=False), default=None,
              help="The job's witness file, if the bundle does not carry it.")
@click.option("--input", "inputs", multiple=True, metavar="NAME=PATH", help="An input file of the job (--replay).")
def verify_command(bundle_path: str, genesis_path: str, issuers: str, replay: bool, witness_path: str | None,
                   inputs: tuple[str, ...]) -> None:
    from node.consensus.genesis import load_genesis
    from node.receipts.bundle import MAX_BUNDLE_SIZE, PART_REPLAY
    from node.receipts.verify import BundleInvalid, BundleVerifier, any_issuer, check_witness, issuers_in

    genesis = load_genesis(genesis_path)
    data = _read(bundle_path, "bundle", MAX_BUNDLE_SIZE)
    input_paths = _pairs(inputs, "--input")
    if input_paths and not replay:
        raise UserError("--input is only used with --replay", exit_code=EXIT_USAGE)
    policy = issuers_in(genesis.validator_set.keys) if issuers == "validators" else any_issuer
    try:
        verified = BundleVerifier(genesis, issuer_allowed=policy).verify(data)
        record = verified.witness_record
        if witness_path is not None:
            record = check_witness(verified.receipt, _witness_record(witness_path))
        if replay:
            if verified.receipt.kind != "job.exec":
                raise UserError(f"--replay needs a job.exec receipt, this one is {verified.receipt.kind}",
                                exit_code=EXIT_USAGE)
            if record is None:
                raise UserError("--replay needs the job's witness: the bundle has none, pass --witness FILE",
                                exit_code=EXIT_USAGE)
            outcome = _replay(verified.receipt, record, input_paths)
            if not outcome.matches:
                raise BundleInvalid(PART_REPLAY, outcome.reason)
    except BundleInvalid as exc:
        _invalid(str(exc), exc.exit_code)
    receipt_ = verified.receipt
    header = verified.header
    click.echo(
        f"valid: {receipt_.kind} receipt {receipt_.id.hex()} by {receipt_.issuer_node}, leaf {verified.leaf_index} "
        f"of {header.receipts_size}, sealed at height {header.height} (block {header.hash.hex()})"
        + (", replay matches" if replay else "")
    )


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


# -- audit ---------------------------------------------------------------------
_DATA_DIR = click.option(
    "--data-dir", default=None, envvar="METANODE_DATA_DIR", type=click.Path(file_okay=False),
    help="A stopped node's data directory (DuckDB allows one process), or use --node.",
)
_AUDIT_NODE = click.option("--node", "node_addr", default=None, help="A running node's multiaddr: its log is fetched over JSON-RPC.")


def _audit_source(data_dir: str | None, node_addr: str | None) -> Any:
    if (data_dir is None) == (node_addr is None):
        raise UserError("give exactly one of --data-dir DIR (a stopped node) or --node ADDR (a running node)", exit_code=EXIT_USAGE)
    if node_addr is not None:
        from node.receipts.audit_remote import fetch_log_from

        return fetch_log_from(node_addr)
    return data_dir


@click.group()
def audit() -> None:
    """The audit trail: export the receipt log, query it with SQL (read-only)."""


@audit.command("export")
@_DATA_DIR
@_AUDIT_NODE
@click.option("--format", "fmt", type=click.Choice(["json", "csv", "parquet"]), required=True,
              help="json: one object per line; csv with a header row; parquet.")
@click.option("--since", type=click.IntRange(min=0), default=None, help="Lowest sealing block height.")
@click.option("--until", type=click.IntRange(min=0), default=None, help="Highest sealing block height.")
@click.option("--kind", default=None, help="Only receipts of this kind (api.call, job.exec...).")
@click.option("--tenant", default=None, help="Only api.call receipts of this tenant (hex public key).")
@click.option("--out", "out_path", required=True, type=click.Path(dir_okay=False), help="Output file.")
def export_command(data_dir: str | None, node_addr: str | None, fmt: str, since: int | None, until: int | None, kind: str | None,
                   tenant: str | None, out_path: str) -> None:
    """Export the receipt log, each leaf with its anchor (sealing block,
    log size and root), in log order."""
    from node.receipts.audit import ExportFilter, export_receipts

    count = export_receipts(_audit_source(data_dir, node_addr), out_path, fmt, ExportFilter(since, until, kind, tenant))
    click.echo(f"exported {count} receipts to {out_path}")


@audit.command("query")
@_DATA_DIR
@_AUDIT_NODE
@click.argument("sql")
@click.option("--format", "fmt", type=click.Choice(["table", "csv", "json"]), default="table", show_default=True)
@click.option("--max-rows", type=click.IntRange(min=1), default=None, help="Print at most this many rows.")
def query_command(data_dir: str | None, node_addr: str | None, sql: str, fmt: str, max_rows: int | None) -> None:
    """Run one read-only SELECT over a node's store. Besides the node's
    tables it can read `receipts`: the decoded log with anchors. With
    --node, the log is fetched and the SQL runs locally over `receipts`."""
    from node.receipts.audit import run_query

    result = run_query(_audit_source(data_dir, node_addr), sql, max_rows=max_rows)
    if fmt == "json":
        for row in result.rows:
            click.echo(json.dumps(dict(zip(result.columns, row)), default=str, sort_keys=False))
        return
    buffer = io.StringIO()
    writer = csv.writer(buffer, delimiter="\t" if fmt == "table" else ",", lineterminator="\n")
    writer.writerow(result.columns)
    writer.writerows(["" if v is None else v for v in row] for row in result.rows)
    click.echo(buffer.getvalue(), nl=False)
