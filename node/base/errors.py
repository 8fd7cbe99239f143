"""Errors that reach a user: the CLI's exit codes and the one table of RPC error codes.

Every error a node answers with has one entry in :class:`ErrorCode`: its
number on the wire (the JSON-RPC ``error.code``), the HTTP status the HTTP
gateway answers it with, the exit code of a CLI command whose call fails
with it, and what it means. The JSON-RPC server, the HTTP gateway, the
client SDK and the CLI all import it; no other module spells a code's
number (tests/architecture/test_error_codes.py checks that).

The numbers are a wire contract: clients match on them, so a code is never
renumbered or reused; a new failure gets a new entry.

This module is imported by every CLI command: it imports nothing heavy.
"""

from __future__ import annotations

from enum import IntEnum, unique

# -- CLI exit codes (DESIGN.md) ---------------------------------------------------------
EXIT_OK = 0
EXIT_RUNTIME = 1
EXIT_USAGE = 2  # usage or config error
EXIT_UNREACHABLE = 3  # could not reach a node
EXIT_REPLAY_MISMATCH = 4  # `metanode cage replay`: the replay ran, but some digest differs
# `metanode daemon start`: the node's data directory failed under it (disk full, unwritable or
# broken, its lock lost); the daemon stopped, before voting on anything it could not record,
# with one error line naming the path and the cause.
EXIT_DATA_DIR = 5

# `metanode receipt verify`: the first failed check decides the code (documented in
# node/receipts/verify.py and the command's --help). 0, 1 (the replay could not run)
# and 2 (usage) are the general codes above.
EXIT_MALFORMED = 10  # malformed bundle: not canonical CBOR, wrong shape or field types
EXIT_RECEIPT = 11  # bad receipt: signature, encoding, schema or issuer id
EXIT_PROOF = 12  # the inclusion proof does not lead to the header's receipts root
EXIT_SEALS = 13  # the header is not sealed by a quorum: forged, altered, bad or too few seals
EXIT_CHAIN = 14  # does not chain to the genesis: validator set, chain id or genesis hash mismatch
EXIT_REPLAY = 15  # --replay: the re-run's result digest differs from the receipt's
EXIT_WITNESS = 16  # the witness does not match the receipt (or is not a valid witness file)
EXIT_ISSUER = 17  # the issuer is not allowed by the issuer policy
EXIT_NO_RECEIPT = 18  # --receipt-hash / --job-id: the node has no such receipt or job, or has not sealed it yet


# -- RPC error codes ----------------------------------------------------------------------
@unique
class ErrorCode(IntEnum):
    """One error a node answers with. ``int(code)`` (or the member itself: it
    is an int) is the number on the wire; ``http_status`` is the HTTP
    gateway's status for it; ``exit_code`` is what a CLI command exits with
    when a call fails with it; ``meaning`` is one line for a reader.

    A call that reached a node and was refused is a runtime failure (exit
    1) whatever the code: the CLI checks what it sends before sending it, so
    even a malformed-call code from a node means a bug or a version skew,
    not a usage error. The column exists so that a code that should be
    reported otherwise changes here, in one place.
    """

    http_status: int
    exit_code: int
    meaning: str

    def __new__(cls, number: int, http_status: int, exit_code: int, meaning: str) -> ErrorCode:
        member = int.__new__(cls, number)
        member._value_ = number
        member.http_status = http_status
        member.exit_code = exit_code
        member.meaning = meaning
        return member

    # JSON-RPC 2.0 (https://www.jsonrpc.org/specification#error_object)
    PARSE_ERROR = -32700, 400, EXIT_RUNTIME, "the message is not valid JSON"
    INVALID_REQUEST = -32600, 400, EXIT_RUNTIME, "the JSON is not a valid request object (or the HTTP request is malformed)"
    METHOD_NOT_FOUND = -32601, 404, EXIT_RUNTIME, "no such method (or, over HTTP, no such route)"
    INVALID_PARAMS = -32602, 400, EXIT_RUNTIME, "a parameter is missing, unknown or invalid; data names it"
    INTERNAL_ERROR = -32603, 500, EXIT_RUNTIME, "the handler failed unexpectedly (a bug on the node)"
    # Implementation-defined server errors (-32000..-32099)
    REQUEST_TIMEOUT = -32001, 504, EXIT_RUNTIME, "the request did not finish within its deadline"
    RATE_LIMITED = -32002, 429, EXIT_RUNTIME, "the caller's (data.scope peer) or the node's (total) call rate is used up; data.retry_after_s"
    UNAUTHORIZED = -32003, 401, EXIT_RUNTIME, "the caller is not authenticated (peer id or HTTP signature)"
    TOO_MANY_STREAMS = -32004, 503, EXIT_RUNTIME, "the caller has as many RPC streams open as allowed (data.scope, data.limit); this one is closed"
    STREAM_IDLE = -32005, 504, EXIT_RUNTIME, "the stream completed no request within data.idle_timeout_s and was closed; open a new one"
    TOO_MANY_SUBSCRIPTIONS = -32006, 429, EXIT_RUNTIME, "the stream has as many subscriptions as allowed (data.limit)"

    # Transactions refused by the mempool (node/consensus/rpc.py; data.reason is the mempool's reason)
    TX_MALFORMED = 1001, 400, EXIT_RUNTIME, "not a well-formed transaction encoding"
    TX_TOO_LARGE = 1002, 413, EXIT_RUNTIME, "the transaction is larger than the chain allows"
    TX_WRONG_CHAIN = 1003, 400, EXIT_RUNTIME, "the transaction names another chain id"
    TX_BAD_SIGNATURE = 1004, 400, EXIT_RUNTIME, "the transaction's signature is not its sender's"
    TX_UNKNOWN_TYPE = 1005, 400, EXIT_RUNTIME, "no such transaction type"
    TX_INVALID_PAYLOAD = 1006, 400, EXIT_RUNTIME, "the payload is not valid for the transaction type"
    TX_BAD_NONCE = 1007, 409, EXIT_RUNTIME, "the nonce is stale, already taken or too far ahead; resend from data.expected_nonce"
    TX_DUPLICATE = 1008, 409, EXIT_RUNTIME, "this exact transaction is already pending"
    TX_SENDER_LIMIT = 1009, 429, EXIT_RUNTIME, "the sender's share of the mempool is used up; later, resend from data.expected_nonce"
    TX_MEMPOOL_FULL = 1010, 503, EXIT_RUNTIME, "the mempool is full; retry later from data.expected_nonce"
    TX_COMMIT_TIMEOUT = 1020, 504, EXIT_RUNTIME, "the transaction was not committed within the timeout"

    # Receipt queries (node/receipts/rpc.py; data.reason is the query's own stable code)
    RECEIPT_QUERY_FAILED = 1100, 400, EXIT_RUNTIME, "a receipt query failed for a reason without its own code"
    RECEIPT_BAD_PARAM = 1101, 400, EXIT_RUNTIME, "a receipt query parameter is out of range"
    RECEIPT_NOT_SEALED = 1102, 409, EXIT_RUNTIME, "the receipt is not in a sealed block yet"
    RECEIPT_INCONSISTENT = 1103, 400, EXIT_RUNTIME, "the sizes asked for do not make a consistency proof"

    # Storage (node/roles/storage/)
    STORAGE_ERROR = 1200, 500, EXIT_RUNTIME, "the storage role failed"
    UPLOAD_NOT_FOUND = 1201, 404, EXIT_RUNTIME, "no such upload in progress (expired or finished)"
    TOO_MANY_UPLOADS = 1202, 429, EXIT_RUNTIME, "the caller has too many uploads in progress"
    STORAGE_QUOTA_EXCEEDED = 1203, 413, EXIT_RUNTIME, "the tenant's byte quota would be exceeded"
    BLOB_TOO_LARGE = 1204, 413, EXIT_RUNTIME, "the blob is larger than this node stores"
    DATASET_UNREADABLE = 1205, 400, EXIT_RUNTIME, "the content cannot be read as the declared format"
    DATASET_NOT_FOUND = 1206, 404, EXIT_RUNTIME, "no such dataset of the caller's in this node's catalog"
    REPLICATION_FAILED = 1207, 503, EXIT_RUNTIME, "fewer nodes than required hold the blob"
    BAD_CHUNK = 1208, 400, EXIT_RUNTIME, "an upload chunk is not valid base64 or too large"
    INVALID_DATASET = 1209, 400, EXIT_RUNTIME, "the dataset's name or format is not valid"
    BLOB_CORRUPT = 1210, 500, EXIT_RUNTIME, "a stored blob no longer matches its digest"
    DIGEST_MISMATCH = 1211, 500, EXIT_RUNTIME, "received bytes do not match the expected digest"
    BLOB_NOT_FOUND = 1212, 404, EXIT_RUNTIME, "no such blob on this node"
    NODE_NOT_READY = 1213, 503, EXIT_RUNTIME, "the node cannot take uploads yet (not registered on chain); retry"
    UPLOAD_OFFSET_MISMATCH = 1214, 409, EXIT_RUNTIME, "the chunk's offset is not the bytes received so far; resend from data.received"
    DATASET_BAD_ROWS = 1215, 400, EXIT_RUNTIME, "the dataset has rows that do not fit its columns; data.bad_rows lists the first (line, reason)"

    # Gateway (node/roles/gateway.py, node/roles/artifacts.py)
    TENANT_NOT_ALLOWED = 1301, 403, EXIT_RUNTIME, "the tenant is not allowed on this gateway"
    JOB_QUOTA_EXCEEDED = 1302, 429, EXIT_RUNTIME, "the tenant's job quota is used up; data.retry_after_s"
    WRONG_TX = 1303, 400, EXIT_RUNTIME, "not a transaction of the expected type signed by the caller"
    STATE_REFUSED = 1304, 409, EXIT_RUNTIME, "the chain state refuses the transaction; data.reason says why"
    SQL_REFUSED = 1305, 400, EXIT_RUNTIME, "the job's SQL does not parse, is refused by the cage's gate or names what its inputs lack; data.reason says why"
    JOB_PARAMS_REFUSED = 1306, 400, EXIT_RUNTIME, "a job parameter names a column its input does not have; data.reason says which"
    SUBMIT_REJECTED = 1310, 409, EXIT_RUNTIME, "the mempool refused the tenant's transaction; data.reason says why"
    NOT_FOUND = 1404, 404, EXIT_RUNTIME, "no such transaction, block, receipt or job (or not the caller's)"
    RESULT_NOT_AVAILABLE = 1405, 409, EXIT_RUNTIME, "no verified result yet, or no node holding it answers now"
    ARTIFACT_NOT_HELD = 1406, 404, EXIT_RUNTIME, "this node does not hold that job result or witness"
    NOT_A_GATEWAY = 1407, 403, EXIT_RUNTIME, "artifacts are served to registered gateway nodes only"

    # HTTP gateway only (node/roles/http_gateway.py)
    BODY_TOO_LARGE = 1501, 413, EXIT_RUNTIME, "the HTTP request body is larger than the gateway accepts"
    SERVER_BUSY = 1502, 503, EXIT_RUNTIME, "the HTTP gateway has too many connections; retry"

    # Node debugging methods (node/roles/daemon.py)
    DEBUG_OS_ERROR = 1900, 500, EXIT_RUNTIME, "a debug method's system call failed; data.errno"


# The mempool's reason for refusing a transaction (node.consensus.tx.TxErrorCode's values)
# -> the code the chain's tx_submit answers with.
TX_REJECTED: dict[str, ErrorCode] = {
    "malformed": ErrorCode.TX_MALFORMED,
    "too_large": ErrorCode.TX_TOO_LARGE,
    "wrong_chain": ErrorCode.TX_WRONG_CHAIN,
    "bad_signature": ErrorCode.TX_BAD_SIGNATURE,
    "unknown_type": ErrorCode.TX_UNKNOWN_TYPE,
    "invalid_payload": ErrorCode.TX_INVALID_PAYLOAD,
    "bad_nonce": ErrorCode.TX_BAD_NONCE,
    "duplicate": ErrorCode.TX_DUPLICATE,
    "sender_limit": ErrorCode.TX_SENDER_LIMIT,
    "mempool_full": ErrorCode.TX_MEMPOOL_FULL,
}

# SUBMIT_REJECTED over HTTP: a refusal about the pool's state (not the transaction
# itself) answers with that reason's chain status; any other reason is 400.
_POOL_STATE_REASONS = ("bad_nonce", "duplicate", "sender_limit", "mempool_full")
SUBMIT_REJECTED_STATUS: dict[str, int] = {reason: TX_REJECTED[reason].http_status for reason in _POOL_STATE_REASONS}
_HTTP_BAD_REQUEST, _HTTP_FORBIDDEN = 400, 403
_BY_NUMBER: dict[int, ErrorCode] = {int(code): code for code in ErrorCode}


def error_code(number: object) -> ErrorCode | None:
    """The table's entry for a number received on the wire, or None for one it does not know."""
    if isinstance(number, bool) or not isinstance(number, int):
        return None
    return _BY_NUMBER.get(number)


def http_status_of(number: object, data: object = None) -> int:
    """The HTTP status the gateway answers an RPC error with: the table's,
    refined by ``data`` where one code covers cases HTTP tells apart (a
    rejected transaction by its reason; a transaction signed by someone else
    is 403). A code the table does not know is an internal error (500)."""
    code = error_code(number)
    if code is None:
        return ErrorCode.INTERNAL_ERROR.http_status
    if code is ErrorCode.SUBMIT_REJECTED and isinstance(data, dict):
        reason = data.get("reason")
        return SUBMIT_REJECTED_STATUS.get(reason, _HTTP_BAD_REQUEST) if isinstance(reason, str) else _HTTP_BAD_REQUEST
    if code is ErrorCode.WRONG_TX and isinstance(data, dict) and data.get("signed_by_caller") is False:
        return _HTTP_FORBIDDEN
    return code.http_status


def exit_code_of(number: object) -> int:
    """The exit code of a CLI command whose call failed with this error (runtime for unknown codes)."""
    code = error_code(number)
    return EXIT_RUNTIME if code is None else code.exit_code


class UserError(Exception):
    """A failure to report as one clear line and an exit code, never a traceback."""

    exit_code = EXIT_RUNTIME
    reported = False  # already logged as one line (the daemon's stops): the CLI only exits with the code

    def __init__(self, message: str, exit_code: int | None = None) -> None:
        super().__init__(message)
        if exit_code is not None:
            self.exit_code = exit_code


class ConfigError(UserError):
    """Bad configuration: names the file, the key and what was expected."""

    exit_code = EXIT_USAGE


class DataDirError(UserError):
    """The data directory failed under a running node (disk full, a write or
    read refused, a file broken, the directory's lock lost). The message names
    the path and the cause; the daemon stops with :data:`EXIT_DATA_DIR`."""

    exit_code = EXIT_DATA_DIR


class UnreachableError(UserError):
    """A node could not be reached (dial failed, timed out, refused)."""

    exit_code = EXIT_UNREACHABLE


def sole_exception(exc: BaseException) -> BaseException:
    """The one leaf of nested exception groups (trio wraps errors raised in
    nursery bodies), or ``exc`` itself when there are several or none."""
    while isinstance(exc, BaseExceptionGroup) and len(exc.exceptions) == 1:
        exc = exc.exceptions[0]
    return exc
