"""Building bundles and answering receipt queries: pure functions over a
receipt log, a :class:`~node.receipts.blocks.BlockSource` and the genesis.

The JSON-RPC methods map onto them one to one (results are JSON-able dicts,
bytes as lowercase hex)::

    receipt_get          {"id"}                  -> receipt_get(log, id)
    receipt_proof        {"id", "size"?}         -> receipt_proof(log, blocks, id, size=)
    receipt_consistency  {"size1", "size2"}      -> receipt_consistency(log, size1, size2)
    receipt_bundle       {"id"}                  -> receipt_bundle(log, blocks, genesis, id, validator_history=)

Failures raise :class:`ReceiptQueryError` whose ``code`` is stable
(``bad-param``, ``not-found``, ``not-sealed``, ``inconsistent``) and whose
``data`` says what was wrong, for the RPC layer to pass on.

A bundle carries the chain of validator set transitions up to its sealing
height. Which sets were in force comes from the application
(``ChainApplication.validator_history``), injected as a callable so this
layer does not import ``node.app``; the proof of each change is the stored
block before it. Without a history, the chain is taken never to have
changed its set, and a receipt sealed by another set is refused as
``inconsistent`` rather than bundled into something that cannot verify.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

from node.base import codec
from node.base.merkle import leaf_hash, verify_inclusion
from node.base.verification import ProofError, ReceiptError
from node.consensus.block import Block
from node.consensus.genesis import Genesis
from node.consensus.validators import ValidatorSet
from node.receipts.blocks import BlockSource, BlockSourceError
from node.receipts.bundle import (
    Bundle,
    BundleError,
    ValidatorSetLink,
    ValidatorSetTransition,
    bundle_id,
    canonical_seals,
    genesis_validator_sets,
)
from node.receipts.envelope import decode_receipt
from node.receipts.execution import witness_record_bytes
from node.receipts.log import LogError, ReceiptLog

BAD_PARAM = "bad-param"
NOT_FOUND = "not-found"
# (from_height, sorted keys) of every validator set, oldest first, the first
# (0, genesis keys): what ChainApplication.validator_history() returns.
ValidatorHistory = Callable[[], Sequence[tuple[int, Sequence[bytes]]]]
NOT_SEALED = "not-sealed"
INCONSISTENT = "inconsistent"


class ReceiptQueryError(LookupError):
    """A receipt query could not be answered; ``code`` is one of the stable
    codes above and ``data`` a JSON-able dict naming what was wrong."""

    def __init__(self, code: str, message: str, **data: Any) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.data = data


def jsonable(value: Any) -> Any:
    """A decoded CBOR value with bytes as lowercase hex (for JSON)."""
    if isinstance(value, bytes):
        return value.hex()
    if isinstance(value, list):
        return [jsonable(v) for v in value]
    if isinstance(value, dict):
        return {k: jsonable(v) for k, v in value.items()}
    return value


def parse_receipt_id(value: Any, name: str = "id") -> bytes:
    """A receipt id given as 32 bytes or 64 lowercase hex characters."""
    if isinstance(value, bytes) and len(value) == 32:
        return value
    if isinstance(value, str):
        try:
            return codec.from_hex(value, what=name)
        except codec.CodecError as exc:
            raise ReceiptQueryError(BAD_PARAM, str(exc), param=name) from None
    raise ReceiptQueryError(BAD_PARAM, f"{name} must be a receipt id (64 hex characters)", param=name)


def _size_param(value: Any, name: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise ReceiptQueryError(BAD_PARAM, f"{name} must be a non-negative integer", param=name)
    return value


def _locate(log: ReceiptLog, receipt_id: bytes) -> int:
    index = log.index_of(receipt_id)
    if index is None:
        raise ReceiptQueryError(NOT_FOUND, f"receipt {receipt_id.hex()} is not in the log", id=receipt_id.hex())
    return index


def receipt_get(log: ReceiptLog, receipt_id: bytes | str) -> dict[str, Any]:
    """A stored receipt: its envelope, log index and decoded body."""
    rid = parse_receipt_id(receipt_id)
    envelope = log.envelope(rid)
    if envelope is None:
        raise ReceiptQueryError(NOT_FOUND, f"receipt {rid.hex()} is not stored", id=rid.hex())
    try:
        receipt = decode_receipt(envelope)
    except ReceiptError as exc:
        raise ReceiptQueryError(INCONSISTENT, f"stored receipt {rid.hex()} does not decode: {exc}") from None
    return {
        "id": rid.hex(),
        "index": log.index_of(rid),
        "kind": receipt.kind,
        "issuer": receipt.issuer_node,
        "issuer_key": receipt.issuer_key.hex(),
        "height": receipt.height,
        "subject": receipt.subject.hex(),
        "prev": None if receipt.prev is None else receipt.prev.hex(),
        "fields": jsonable(receipt.fields),
        "envelope": envelope.hex(),
    }


def receipt_proof(
    log: ReceiptLog, blocks: BlockSource, receipt_id: bytes | str, *, size: int | None = None
) -> dict[str, Any]:
    """Inclusion proof of a receipt: to the root sealed in the block that
    first covers it (default), or to the log's root at ``size``."""
    rid = parse_receipt_id(receipt_id)
    index = _locate(log, rid)
    block_info = None
    if size is None:
        block = blocks.first_block_covering(index)
        if block is None:
            raise ReceiptQueryError(NOT_SEALED, f"receipt {rid.hex()} (leaf {index}) is not sealed in a block yet",
                                    id=rid.hex(), index=index)
        size, root = block.header.receipts_size, block.header.receipts_root
        block_info = {"height": block.height, "hash": block.hash.hex()}
    else:
        size = _size_param(size, "size")
        if size <= index:
            raise ReceiptQueryError(BAD_PARAM, f"size {size} does not include leaf {index}", param="size")
        try:
            root = log.root_at(size)
        except LogError as exc:
            raise ReceiptQueryError(BAD_PARAM, str(exc), param="size") from None
    proof = log.inclusion_proof(index, size)
    return {
        "id": rid.hex(), "index": index, "size": size, "root": root.hex(),
        "proof": [p.hex() for p in proof], "block": block_info,
    }


def receipt_consistency(log: ReceiptLog, size1: int, size2: int) -> dict[str, Any]:
    """Consistency proof that the log at ``size1`` is a prefix of it at ``size2``."""
    size1, size2 = _size_param(size1, "size1"), _size_param(size2, "size2")
    try:
        proof = log.consistency_proof(size1, size2)
        root1, root2 = log.root_at(size1), log.root_at(size2)
    except LogError as exc:
        raise ReceiptQueryError(BAD_PARAM, str(exc)) from None
    return {
        "size1": size1, "size2": size2, "root1": root1.hex(), "root2": root2.hex(),
        "proof": [p.hex() for p in proof],
    }


def build_bundle(
    receipt_id: bytes | str,
    log: ReceiptLog,
    blocks: BlockSource,
    genesis: Genesis,
    *,
    witness_file: bytes | None = None,
    validator_history: ValidatorHistory | None = None,
) -> bytes:
    """The encoded bundle of a receipt (see ``node.receipts.bundle``).

    Raises ReceiptQueryError: ``not-found`` (not in the log), ``not-sealed``
    (no committed block covers it yet), ``inconsistent`` (the local log
    does not match the sealed root: a bundle that would not verify is never
    produced), ``bad-param`` (a malformed id or witness file).

    ``witness_file`` is the cage's witness file of a ``job.exec`` run; the
    bundle carries its record (what the receipt's witness digest covers).

    ``validator_history``: the application's ``validator_history`` (see the
    module docstring); None for a chain whose set never changed."""
    witness = None
    if witness_file is not None:
        from node.cage.witness import WitnessError

        try:
            witness = witness_record_bytes(witness_file)
        except WitnessError as exc:
            raise ReceiptQueryError(BAD_PARAM, f"witness: {exc}", param="witness") from None
    return _assemble(parse_receipt_id(receipt_id), log, blocks, genesis, witness, validator_history)[0]


def _history(genesis: Genesis, validator_history: ValidatorHistory | None) -> list[tuple[int, ValidatorSet]]:
    """The validator sets in force, oldest first, starting with the genesis set."""
    if validator_history is None:
        return [(0, genesis.validator_set)]
    entries = [(int(height), ValidatorSet(keys)) for height, keys in validator_history()]
    if not entries or entries[0] != (0, genesis.validator_set):
        raise ReceiptQueryError(INCONSISTENT, "the validator history does not start with the genesis set")
    return entries


def _proof_block(blocks: BlockSource, height: int) -> Block:
    try:
        block = blocks.block_at(height)
    except BlockSourceError as exc:
        raise ReceiptQueryError(INCONSISTENT, str(exc)) from None
    if block is None:
        raise ReceiptQueryError(
            INCONSISTENT, f"block {height}, which proves the validator set change at {height + 1}, is not stored"
        )
    return block


def validator_set_chain(
    blocks: BlockSource, genesis: Genesis, sealing_height: int, validator_history: ValidatorHistory | None = None
) -> tuple[ValidatorSetLink, ...]:
    """The ``validator_sets`` of a bundle sealed at ``sealing_height``: the
    genesis entry, then one transition per change in force by that height,
    each with the stored header of the block before it and its canonical
    seals (the first quorum of the set that sealed it). Deterministic: every
    node holding those seals gives the same chain. Raises ReceiptQueryError
    (``inconsistent``) when the stored blocks do not prove the history."""
    links: list[ValidatorSetLink] = list(genesis_validator_sets(genesis))
    previous = genesis.validator_set
    for from_height, validators in _history(genesis, validator_history)[1:]:
        if from_height > sealing_height:
            break
        if validators == previous:
            continue  # no change (changes that cancel out): nothing to prove
        block = _proof_block(blocks, from_height - 1)
        header = block.header
        if header.validators_hash != previous.hash or header.next_validators_hash != validators.hash:
            raise ReceiptQueryError(
                INCONSISTENT,
                f"stored block {header.height} does not commit to the validator set change at {from_height}",
            )
        links.append(ValidatorSetTransition(
            from_height=from_height,
            validators=validators.keys,
            header=codec.encode(header.to_value()),
            commit_round=block.commit_round,
            seals=canonical_seals(block.seals, previous),
        ))
        previous = validators
    return tuple(links)


def _assemble(
    rid: bytes,
    log: ReceiptLog,
    blocks: BlockSource,
    genesis: Genesis,
    witness: bytes | None,
    validator_history: ValidatorHistory | None,
) -> tuple[bytes, int]:
    """The encoded bundle and the height of its sealing block."""
    index = _locate(log, rid)
    envelope = log.envelope(rid)
    if envelope is None:
        raise ReceiptQueryError(INCONSISTENT, f"receipt {rid.hex()} is in the log but its envelope is not stored")
    block = blocks.first_block_covering(index)
    if block is None:
        raise ReceiptQueryError(NOT_SEALED, f"receipt {rid.hex()} (leaf {index}) is not sealed in a block yet",
                                id=rid.hex(), index=index)
    header = block.header
    proof = log.inclusion_proof(index, header.receipts_size)
    try:
        verify_inclusion(leaf_hash(rid), index, header.receipts_size, proof, header.receipts_root)
    except ProofError as exc:
        raise ReceiptQueryError(
            INCONSISTENT, f"the local receipt log does not match block {header.height}'s root: {exc}"
        ) from None
    chain = validator_set_chain(blocks, genesis, header.height, validator_history)
    sealing_set = ValidatorSet(chain[-1].validators)
    if header.validators_hash != sealing_set.hash:
        raise ReceiptQueryError(
            INCONSISTENT,
            f"block {header.height} was decided by another validator set than the validator history names "
            "(is the history given?)",
        )
    bundle = Bundle(
        receipt=envelope,
        leaf_index=index,
        proof=tuple(proof),
        header=codec.encode(header.to_value()),
        commit_round=block.commit_round,
        seals=canonical_seals(block.seals, sealing_set),
        validator_sets=chain,
        witness=witness,
    )
    try:
        return bundle.encode(), block.height
    except BundleError as exc:
        raise ReceiptQueryError(BAD_PARAM, str(exc)) from None


def receipt_bundle(
    log: ReceiptLog,
    blocks: BlockSource,
    genesis: Genesis,
    receipt_id: bytes | str,
    *,
    validator_history: ValidatorHistory | None = None,
) -> dict[str, Any]:
    """The ``receipt_bundle`` RPC result: the bundle as hex, with its id and
    the height of the block that seals it."""
    rid = parse_receipt_id(receipt_id)
    data, height = _assemble(rid, log, blocks, genesis, None, validator_history)
    return {"id": rid.hex(), "bundle": data.hex(), "bundle_id": bundle_id(data).hex(), "height": height,
            "bytes": len(data)}
