"""``job.exec`` receipts and cage witnesses: how one maps onto the other,
and re-running a receipt's job to compare its result digest.

A processing node builds its ``job.exec`` receipt fields from the witness
of its run with :func:`exec_fields` (or :func:`exec_fields_from_outcome`),
so that a verifier holding the witness can check the two agree field by
field (:func:`witness_mismatches`):

===============  ==========================================================
receipt field    from the witness record
===============  ==========================================================
``input_root``   ``inputs_root``
``code``         ``code.job`` (digest of kind, SQL or function, params)
``policy``       ``code.policy`` (digest of the policy the job ran under)
``seed``         ``seed``, the effective seed the job saw (32 zero bytes
                 when the policy gives the job no seed)
``result``       ``result_digest`` (32 zero bytes when the job produced none)
``witness``      the witness digest itself
``exit``         0 when ``exit.status`` is ``ok``; ``-signal`` when killed by
                 a signal; 1 for any other failure
===============  ==========================================================
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from node.base import codec
from node.receipts.envelope import Receipt

if TYPE_CHECKING:
    from node.cage.job import JobOutcome
    from node.cage.pool import CagePool

NO_DIGEST = bytes(32)
WITNESS_DIGEST_TAG = "metanode/cage/witness/v1"  # as node.cage.witness (kept import-free here)
EXEC_KIND = "job.exec"


def _digest_or_none(value: Any) -> bytes:
    return value if isinstance(value, bytes) and len(value) == 32 else NO_DIGEST


def exit_code_of(record: dict[str, Any]) -> int:
    """The receipt's ``exit`` value for a witness record's exit status."""
    status, sig = record["exit"]["status"], record["exit"].get("signal")
    if status == "ok":
        return 0
    if isinstance(sig, int) and not isinstance(sig, bool) and 0 < sig <= 255:
        return -sig
    return 1


def exec_fields(record: dict[str, Any], witness_digest: bytes) -> dict[str, Any]:
    """The kind-specific fields of a ``job.exec`` receipt for a witness."""
    return {
        "input_root": record["inputs_root"],
        "code": record["code"]["job"],
        "policy": record["code"]["policy"],
        # The job's seed as the chain fixed it (what a verifier can check
        # against the scheduling block); the witness records how the cage
        # derived its effective RNG seed from it.
        "seed": _digest_or_none(record.get("job_seed", record["seed"])),
        "result": _digest_or_none(record["result_digest"]),
        "witness": witness_digest,
        "exit": exit_code_of(record),
    }


def exec_fields_from_outcome(outcome: "JobOutcome") -> dict[str, Any]:
    """:func:`exec_fields` of a cage run's outcome."""
    return exec_fields(outcome.witness, outcome.witness_digest)


def record_digest(record_bytes: bytes) -> bytes:
    """The witness digest of an encoded witness record."""
    return codec.hash_tagged(WITNESS_DIGEST_TAG, record_bytes)


def witness_record_bytes(witness_file: bytes) -> bytes:
    """The part of a cage witness file a bundle carries: the record's
    deterministic CBOR, whose hash is the witness digest. (The file's
    observations and local paths sit outside the digest, so they stay out
    of the bundle.) Raises WitnessError for a bad file."""
    from node.cage.witness import decode_witness_file

    record, _digest, _unhashed = decode_witness_file(witness_file)
    return codec.encode(record)


def witness_mismatches(receipt: Receipt, record: dict[str, Any], digest: bytes) -> list[str]:
    """The receipt fields that disagree with the witness (empty: they agree).
    Raises KeyError/TypeError on a record without the expected fields."""
    expected = exec_fields(record, digest)
    return [name for name, value in expected.items() if receipt.body.get(name) != value]


@dataclass
class ReplayResult:
    """What a replay found: ``matches`` when the re-run's result digest is
    the receipt's; ``reason`` says what differed otherwise."""

    matches: bool
    reason: str
    recorded: bytes
    replayed: bytes
    checks: list[tuple[str, bool, str, str]] = field(default_factory=list)  # (what, equal, receipt, replay)


class ReplayInputError(ValueError):
    """The inputs given for a replay do not fit the witness (missing, unreadable)."""


def replay_exec(
    pool: "CagePool", receipt: Receipt, record: dict[str, Any], inputs: dict[str, str]
) -> ReplayResult:
    """Re-run the job a ``job.exec`` receipt's witness record (already
    checked against the receipt) describes, in ``pool``,
    reading each input from ``inputs`` (name -> local path; never the
    processing node's recorded paths), under the recorded policy. Compares
    the inputs' digests first (a wrong file is named), then the result.

    Raises ReplayInputError for a missing or unreadable input, CageError
    when the cage cannot run the job."""
    from node.cage.replay import rerun
    from node.cage.witness import describe_inputs

    names = [item["name"] for item in record["inputs"]]
    missing = [name for name in names if name not in inputs]
    if missing:
        raise ReplayInputError(f"no file for input {missing[0]!r}: pass --input {missing[0]}=PATH")
    extra = sorted(set(inputs) - set(names))
    if extra:
        raise ReplayInputError(f"input {extra[0]!r} is not an input of this job (inputs: {', '.join(names) or 'none'})")
    try:
        given = {item["name"]: item for item in describe_inputs({n: inputs[n] for n in names})}
    except (OSError, ValueError) as exc:
        raise ReplayInputError(f"cannot read an input: {exc}") from None
    recorded_result = receipt.body["result"]
    checks: list[tuple[str, bool, str, str]] = []
    for item in record["inputs"]:
        mine = given[item["name"]]["sha256"]
        checks.append((f"input {item['name']}", mine == item["sha256"], item["sha256"].hex(), mine.hex()))
    bad_inputs = [what for what, equal, _, _ in checks if not equal]
    if bad_inputs:
        return ReplayResult(False, f"{bad_inputs[0]}: file digest differs from the witness",
                            recorded_result, NO_DIGEST, checks)
    outcome = rerun(pool, record, inputs, prefix="metanode-verify-replay-")
    replayed = _digest_or_none(outcome.result_digest)
    checks.append(("result", replayed == recorded_result, recorded_result.hex(), replayed.hex()))
    fresh = exec_fields_from_outcome(outcome)
    for name in ("input_root", "code", "policy", "seed", "witness"):
        checks.append((name, fresh[name] == receipt.body[name], receipt.body[name].hex(), fresh[name].hex()))
    if replayed != recorded_result:
        detail = f" (job status {outcome.status})" if not outcome.ok else ""
        return ReplayResult(False, f"result digest {replayed.hex()} differs from the receipt's "
                            f"{recorded_result.hex()}{detail}", recorded_result, replayed, checks)
    return ReplayResult(True, "result digest matches the receipt", recorded_result, replayed, checks)
