"""Payload schemas of the state machine's transaction types, and their hooks.

Every payload is a CBOR map with exactly the fields below (all required).
``parse_payload`` checks one against its schema without looking at chain
state and returns a typed value; it raises PayloadError naming the field
(``inputs.sales``, ``receipts[2]``...). The same function is the mempool's
validation hook (:func:`register_tx_types`) and the first step of applying a
transaction, so a block can never carry a payload the state machine reads
differently from the mempool.

=================== =========================================================
type                payload
=================== =========================================================
``node.register``   ``roles`` [role, ...] (1-5 distinct of validator,
                    scheduler, gateway, processing, storage); ``capacity``
                    int (1..max_capacity with ``processing``, else 0);
                    ``moniker`` text (1-64 of ``A-Za-z0-9._-``)
``dataset.register`` ``digest`` 32 bytes (SHA-256 of the content); ``size``
                    uint; ``name`` text (1-128, no control characters);
                    ``format`` ``csv`` | ``parquet``; ``receipt`` 32 bytes:
                    the id of the on-chain ``data.store`` receipt a storage
                    or gateway node signed for this tenant's upload of
                    ``digest`` (so a tenant registers only data it uploaded)
``job.submit``      ``type`` ``sql`` | ``trend-analysis`` | ``summary``;
                    ``inputs`` {input name: dataset digest} (1..max_inputs);
                    ``params`` map (per type, below); ``replication`` int
                    1..max_replication; ``deadline_blocks`` int in
                    min..max_deadline_blocks
``job.result``      ``job`` 32 bytes; ``receipt`` bytes: the sender's signed
                    ``job.exec`` receipt envelope with subject = job;
                    optional ``error`` text (1..300 printable) when exit != 0
``job.cancel``      ``job`` 32 bytes
``receipts.batch``  ``receipts`` [envelope, ...] (1..max_batch_receipts,
                    distinct), each signed by the sender, of kind
                    ``api.call``, ``data.store``, ``job.schedule`` or
                    ``job.verdict`` (``job.exec`` travels in job.result)
=================== =========================================================

Job parameters: ``sql`` {``query`` text}; ``summary`` {``input`` name of
one of the inputs}; ``trend-analysis`` {``input``, ``time_column``,
``value_column`` column names, ``window`` ``<n>d`` | ``<n>w`` | ``<n>m``;
optional ``group_by`` column name, ``granularity`` ``day`` (default) |
``week`` | ``month``}.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

from node.cage.job import INPUT_NAME
from node.base.config import ROLES
from node.consensus.tx import PayloadError, Transaction, TxTypeRegistry
from node.receipts.envelope import MAX_ENVELOPE_SIZE, Receipt, verify_receipt
from node.base.verification import ReceiptError
from node.app.rules import DEFAULT_RULES, ChainRules

NODE_REGISTER = "node.register"
DATASET_REGISTER = "dataset.register"
JOB_SUBMIT = "job.submit"
MAX_ERROR_TEXT = 300
JOB_RESULT = "job.result"
JOB_CANCEL = "job.cancel"
RECEIPTS_BATCH = "receipts.batch"
TX_TYPES = (NODE_REGISTER, DATASET_REGISTER, JOB_SUBMIT, JOB_RESULT, JOB_CANCEL, RECEIPTS_BATCH)

JOB_TYPES = ("sql", "trend-analysis", "summary")
DATASET_FORMATS = ("csv", "parquet")
BATCH_RECEIPT_KINDS = ("api.call", "data.store", "job.schedule", "job.verdict")
DIGEST_SIZE = 32
MAX_UINT = 2**63 - 1

_MONIKER = re.compile(r"[A-Za-z0-9._-]{1,64}")
_COLUMN = re.compile(r"[A-Za-z_][A-Za-z0-9_]{0,62}")
_WINDOW = re.compile(r"[1-9][0-9]{0,3}[dwm]")
GRANULARITIES = ("day", "week", "month")
_TREND_OPTIONAL = ("group_by", "granularity")  # granularity defaults to day
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")
_MAX_NAME = 128


@dataclass(frozen=True)
class NodeRegister:
    roles: tuple[str, ...]  # sorted
    capacity: int
    moniker: str


@dataclass(frozen=True)
class DatasetRegister:
    digest: bytes
    size: int
    name: str
    format: str
    receipt: bytes  # id of the data.store receipt (on chain) of this tenant's upload of digest


@dataclass(frozen=True)
class JobSubmit:
    job_type: str
    inputs: dict[str, bytes]  # input name -> dataset digest
    params: dict[str, Any]
    replication: int
    deadline_blocks: int


@dataclass(frozen=True)
class JobResult:
    job: bytes
    receipt: Receipt  # verified job.exec receipt issued by the sender
    error: str | None = None  # why the job failed, as the node saw it (only with exit != 0)


@dataclass(frozen=True)
class JobCancel:
    job: bytes


@dataclass(frozen=True)
class ReceiptsBatch:
    receipts: tuple[Receipt, ...]  # verified, issued by the sender, in payload order


Payload = NodeRegister | DatasetRegister | JobSubmit | JobResult | JobCancel | ReceiptsBatch


# -- field checks -------------------------------------------------------------

def _type_name(value: Any) -> str:
    return "null" if value is None else type(value).__name__


def _record(value: Any, path: str, names: tuple[str, ...]) -> dict[str, Any]:
    """A map with exactly the fields ``names``."""
    if not isinstance(value, dict):
        raise PayloadError(f"{path or 'payload'}: must be a map, got {_type_name(value)}")
    for name in names:
        if name not in value:
            raise PayloadError(f"{_join(path, name)}: is missing")
    for name in sorted(value):
        if name not in names:
            raise PayloadError(f"{_join(path, name)}: is not a field of this payload")
    return value


def _join(path: str, name: str) -> str:
    return f"{path}.{name}" if path else name


def _int(value: Any, path: str, low: int, high: int) -> int:
    if type(value) is not int:
        raise PayloadError(f"{path}: must be an integer, got {_type_name(value)}")
    if not low <= value <= high:
        raise PayloadError(f"{path}: must be in {low}..{high}, got {value}")
    return value


def _digest(value: Any, path: str) -> bytes:
    if not isinstance(value, bytes) or len(value) != DIGEST_SIZE:
        got = f"{len(value)} bytes" if isinstance(value, bytes) else _type_name(value)
        raise PayloadError(f"{path}: must be a {DIGEST_SIZE}-byte digest, got {got}")
    return value


def _text(value: Any, path: str, regex: re.Pattern[str], what: str) -> str:
    if not isinstance(value, str):
        raise PayloadError(f"{path}: must be text, got {_type_name(value)}")
    if not regex.fullmatch(value):
        raise PayloadError(f"{path}: must be {what}, got {value[:80]!r}")
    return value


def _choice(value: Any, path: str, options: tuple[str, ...]) -> str:
    if not isinstance(value, str) or value not in options:
        raise PayloadError(f"{path}: must be one of {', '.join(options)}, got {value!r:.80}")
    return value


# -- per-type parsers -----------------------------------------------------------

def _parse_node_register(tx: Transaction, rules: ChainRules) -> NodeRegister:
    p = _record(tx.payload, "", ("roles", "capacity", "moniker"))
    roles = p["roles"]
    if not isinstance(roles, list) or not 1 <= len(roles) <= len(ROLES):
        raise PayloadError(f"roles: must be a list of 1 to {len(ROLES)} roles")
    for i, role in enumerate(roles):
        _choice(role, f"roles[{i}]", ROLES)
    if len(set(roles)) != len(roles):
        raise PayloadError("roles: repeats a role")
    if "processing" in roles:
        capacity = _int(p["capacity"], "capacity", 1, rules.max_capacity)
    elif p["capacity"] != 0 or type(p["capacity"]) is not int:
        raise PayloadError("capacity: must be 0 for a node without the processing role")
    else:
        capacity = 0
    moniker = _text(p["moniker"], "moniker", _MONIKER, "1-64 of A-Za-z0-9._-")
    return NodeRegister(tuple(sorted(roles)), capacity, moniker)


def _parse_dataset_register(tx: Transaction, rules: ChainRules) -> DatasetRegister:
    p = _record(tx.payload, "", ("digest", "size", "name", "format", "receipt"))
    name = p["name"]
    if not isinstance(name, str) or not 1 <= len(name) <= _MAX_NAME or _CONTROL.search(name):
        raise PayloadError(f"name: must be 1-{_MAX_NAME} characters without control characters")
    return DatasetRegister(
        _digest(p["digest"], "digest"),
        _int(p["size"], "size", 0, MAX_UINT),
        name,
        _choice(p["format"], "format", DATASET_FORMATS),
        _digest(p["receipt"], "receipt"),
    )


def _parse_job_submit(tx: Transaction, rules: ChainRules) -> JobSubmit:
    p = _record(tx.payload, "", ("type", "inputs", "params", "replication", "deadline_blocks"))
    job_type = _choice(p["type"], "type", JOB_TYPES)
    inputs = p["inputs"]
    if not isinstance(inputs, dict) or not 1 <= len(inputs) <= rules.max_inputs:
        raise PayloadError(f"inputs: must be a map of 1 to {rules.max_inputs} input names to digests")
    for name in sorted(inputs):
        if not isinstance(name, str) or not INPUT_NAME.fullmatch(name):
            raise PayloadError(f"inputs: {name!r:.80} is not an input name (a-z, 0-9, _; 1-63)")
        _digest(inputs[name], f"inputs.{name}")
    params = _PARAMS[job_type](p["params"], inputs, rules)
    return JobSubmit(
        job_type,
        dict(sorted(inputs.items())),
        params,
        _int(p["replication"], "replication", 1, rules.max_replication),
        _int(p["deadline_blocks"], "deadline_blocks", rules.min_deadline_blocks, rules.max_deadline_blocks),
    )


def _sql_params(value: Any, inputs: dict[str, bytes], rules: ChainRules) -> dict[str, Any]:
    p = _record(value, "params", ("query",))
    query = p["query"]
    if not isinstance(query, str) or not query.strip():
        raise PayloadError("params.query: must be non-empty SQL text")
    if len(query.encode()) > rules.max_query_bytes:
        raise PayloadError(f"params.query: is longer than {rules.max_query_bytes} bytes")
    return p


def _input_param(p: dict[str, Any], inputs: dict[str, bytes]) -> None:
    name = p["input"]
    if not isinstance(name, str) or name not in inputs:
        raise PayloadError(f"params.input: must name one of the inputs, got {name!r:.80}")


def _summary_params(value: Any, inputs: dict[str, bytes], rules: ChainRules) -> dict[str, Any]:
    p = _record(value, "params", ("input",))
    _input_param(p, inputs)
    return p


def _trend_params(value: Any, inputs: dict[str, bytes], rules: ChainRules) -> dict[str, Any]:
    required = ("input", "time_column", "value_column", "window")
    present_optional = tuple(name for name in _TREND_OPTIONAL if isinstance(value, dict) and name in value)
    p = _record(value, "params", required + present_optional)
    _input_param(p, inputs)
    _text(p["time_column"], "params.time_column", _COLUMN, "a column name")
    _text(p["value_column"], "params.value_column", _COLUMN, "a column name")
    _text(p["window"], "params.window", _WINDOW, "<n>d, <n>w or <n>m with n in 1..9999")
    if "group_by" in p:
        _text(p["group_by"], "params.group_by", _COLUMN, "a column name")
    if "granularity" in p:
        _choice(p["granularity"], "params.granularity", GRANULARITIES)
    return p


_PARAMS = {"sql": _sql_params, "summary": _summary_params, "trend-analysis": _trend_params}


def _receipt(value: Any, path: str, tx: Transaction, kinds: tuple[str, ...]) -> Receipt:
    if not isinstance(value, bytes) or not 1 <= len(value) <= MAX_ENVELOPE_SIZE:
        raise PayloadError(f"{path}: must be a receipt envelope of 1 to {MAX_ENVELOPE_SIZE} bytes")
    try:
        receipt = verify_receipt(value, issuer_key=tx.sender)
    except ReceiptError as exc:
        raise PayloadError(f"{path}: {exc}") from None
    if receipt.kind not in kinds:
        raise PayloadError(f"{path}: kind {receipt.kind} is not one of {', '.join(kinds)}")
    return receipt


def _parse_job_result(tx: Transaction, rules: ChainRules) -> JobResult:
    optional = ("error",) if isinstance(tx.payload, dict) and "error" in tx.payload else ()
    p = _record(tx.payload, "", ("job", "receipt") + optional)
    job = _digest(p["job"], "job")
    receipt = _receipt(p["receipt"], "receipt", tx, ("job.exec",))
    if receipt.subject != job:
        raise PayloadError("receipt: its subject is not the job this result is for")
    error = p.get("error")
    if error is not None:
        if not isinstance(error, str) or not 1 <= len(error) <= MAX_ERROR_TEXT or not error.isprintable():
            raise PayloadError(f"error: must be printable text of 1 to {MAX_ERROR_TEXT} characters")
        if receipt.fields["exit"] == 0:
            raise PayloadError("error: only a failed execution (exit != 0) reports an error")
    return JobResult(job, receipt, error)


def _parse_job_cancel(tx: Transaction, rules: ChainRules) -> JobCancel:
    p = _record(tx.payload, "", ("job",))
    return JobCancel(_digest(p["job"], "job"))


def _parse_receipts_batch(tx: Transaction, rules: ChainRules) -> ReceiptsBatch:
    p = _record(tx.payload, "", ("receipts",))
    envelopes = p["receipts"]
    if not isinstance(envelopes, list) or not 1 <= len(envelopes) <= rules.max_batch_receipts:
        raise PayloadError(f"receipts: must be a list of 1 to {rules.max_batch_receipts} envelopes")
    receipts = tuple(
        _receipt(envelope, f"receipts[{i}]", tx, BATCH_RECEIPT_KINDS) for i, envelope in enumerate(envelopes)
    )
    seen: set[bytes] = set()
    for i, receipt in enumerate(receipts):
        if receipt.id in seen:
            raise PayloadError(f"receipts[{i}]: repeats an earlier receipt")
        seen.add(receipt.id)
    return ReceiptsBatch(receipts)


_PARSERS = {
    NODE_REGISTER: _parse_node_register,
    DATASET_REGISTER: _parse_dataset_register,
    JOB_SUBMIT: _parse_job_submit,
    JOB_RESULT: _parse_job_result,
    JOB_CANCEL: _parse_job_cancel,
    RECEIPTS_BATCH: _parse_receipts_batch,
}


def parse_payload(tx: Transaction, rules: ChainRules = DEFAULT_RULES) -> Payload:
    """Check ``tx``'s payload against its type's schema; return it typed.

    Pure (no state, clock or I/O). Raises PayloadError naming the field, or
    ValueError if ``tx.type`` is not one of :data:`TX_TYPES`.
    """
    parser = _PARSERS.get(tx.type)
    if parser is None:
        raise ValueError(f"{tx.type!r} is not a state machine transaction type")
    return parser(tx, rules)


def register_tx_types(registry: TxTypeRegistry, rules: ChainRules = DEFAULT_RULES) -> None:
    """Register the six state transaction types with their payload hooks."""
    for name in TX_TYPES:
        registry.register(name, _hook(name, rules))


def _hook(name: str, rules: ChainRules):  # type: ignore[no-untyped-def]
    parser = _PARSERS[name]

    def validate(tx: Transaction) -> None:
        parser(tx, rules)

    validate.__name__ = f"validate_{name.replace('.', '_')}"
    return validate
