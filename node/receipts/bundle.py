"""Receipt bundles: everything needed to check one receipt offline.

A bundle is the deterministic CBOR map (``node.base.codec``)::

    {
      "version": 1,
      "receipt": <bytes>,          # the signed envelope, exactly as logged
      "leaf_index": <uint>,        # its position in the global receipt log
      "proof": [<32 bytes>...],    # RFC 9162 inclusion proof to the header's root
      "header": <bytes>,           # encoded header of the sealing block
      "commit_round": <uint>,      # the round whose commit quorum finalised it
      "seals": [[<key 32>, <sig 64>]...],   # the canonical seal set, sorted by key
      "validator_sets": [          # the validator set chain, oldest first
        {"from_height": 0, "genesis": <32 bytes>, "validators": [<key 32>...]}
      ],
      "witness": <bytes> | null,   # optional cage witness record (job.exec only)
    }

The sealing block of leaf ``i`` is the first block whose header has
``receipts_size > i``: the header carries the log's size and root *after*
the block, so the proof is taken at that size. The header travels as its
encoded bytes (its hash is ``hash_tagged("metanode/block/v1", header)``), so
a verifier hashes what it received and never re-encodes it.

The header commits to the genesis hash (``genesis_hash``), so its seals
bind it to one genesis file: relabelling ``validator_sets`` to another
genesis with the same chain id and keys does not make it verify there.

``seals`` is the canonical seal set (:func:`canonical_seals`): of the seals
the node holds, the first quorum in validator order (the set's sorted keys).
Nodes that hold those seals build byte-identical bundles of a receipt.

``validator_sets`` is the chain of validator sets from genesis to the
header's height. Today the set is fixed by genesis, so it holds one entry:
the genesis set, naming the genesis hash it derives from. When validator set
changes arrive, each later entry will carry its ``from_height`` and the
proof that the previous set approved it; verifiers of this version refuse a
bundle with more than one entry rather than trust an unchecked change.

The witness is the record of the cage run (deterministic CBOR; its hash is
the receipt's ``witness`` digest), not the whole witness file: the file's
resource observations and local paths are outside that digest, and a
bundle carries nothing that is not bound to a signature, root or seal.

A bundle's id is ``hash_tagged("metanode/receipt-bundle/v1", bytes)``. It is
not stored inside the bundle: every part is checked against its own anchor
(signature, proof, seals, genesis), so a flipped byte is reported as a
failure of the part it hit.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from node.base import codec
from node.base.merkle import MAX_PROOF_HASHES
from node.consensus.genesis import Genesis
from node.consensus.validators import ValidatorSet
from node.receipts.envelope import MAX_ENVELOPE_SIZE

BUNDLE_VERSION = 1
BUNDLE_TAG = "metanode/receipt-bundle/v1"
# A bundle without a witness is a few kilobytes; witness files (inputs,
# policy, outputs listing) stay well under this.
MAX_BUNDLE_SIZE = 8 * 1024 * 1024
MAX_HEADER_SIZE = 4 * 1024
MAX_SEALS = 256
MAX_VALIDATOR_SETS = 1024
HASH_SIZE = 32
KEY_SIZE = 32
SIGNATURE_SIZE = 64
_MAX_UINT63 = 2**63 - 1

# What each failure means to a user; the verifier maps them to exit codes.
PART_BUNDLE = "bundle"  # the outer structure
PART_RECEIPT = "receipt"
PART_PROOF = "proof"  # leaf index and inclusion proof
PART_HEADER = "header"  # header bytes, commit round, seals
PART_CHAIN = "chain"  # validator set chain and the header's link to genesis
PART_WITNESS = "witness"
PART_ISSUER = "issuer"
PART_REPLAY = "replay"

_FIELDS = frozenset(
    {"version", "receipt", "leaf_index", "proof", "header", "commit_round", "seals", "validator_sets", "witness"}
)
_SET_FIELDS = frozenset({"from_height", "genesis", "validators"})


class BundleError(ValueError):
    """A bundle failed a check. ``part`` names the part that failed (one of
    the ``PART_*`` values), ``detail`` says what was wrong."""

    def __init__(self, part: str, detail: str) -> None:
        super().__init__(f"{part}: {detail}")
        self.part = part
        self.detail = detail


@dataclass(frozen=True)
class ValidatorSetEntry:
    """One link of the validator set chain: the set in force from a height."""

    from_height: int
    genesis: bytes  # hash of the genesis file the set derives from
    validators: tuple[bytes, ...]  # sorted public keys

    def to_value(self) -> dict[str, Any]:
        return {"from_height": self.from_height, "genesis": self.genesis, "validators": list(self.validators)}


@dataclass(frozen=True)
class Bundle:
    """A structurally valid bundle. Nothing here is verified yet: see
    ``node.receipts.verify``."""

    receipt: bytes
    leaf_index: int
    proof: tuple[bytes, ...]
    header: bytes
    commit_round: int
    seals: tuple[tuple[bytes, bytes], ...]
    validator_sets: tuple[ValidatorSetEntry, ...]
    witness: bytes | None = None

    def to_value(self) -> dict[str, Any]:
        return {
            "version": BUNDLE_VERSION,
            "receipt": self.receipt,
            "leaf_index": self.leaf_index,
            "proof": list(self.proof),
            "header": self.header,
            "commit_round": self.commit_round,
            "seals": [[key, sig] for key, sig in self.seals],
            "validator_sets": [entry.to_value() for entry in self.validator_sets],
            "witness": self.witness,
        }

    def encode(self) -> bytes:
        """The deterministic CBOR bytes; BundleError if they exceed the limit."""
        data = codec.encode(self.to_value())
        if len(data) > MAX_BUNDLE_SIZE:
            raise BundleError(PART_BUNDLE, f"{len(data)} bytes exceed the limit of {MAX_BUNDLE_SIZE}")
        return data


def bundle_id(data: bytes) -> bytes:
    """The id of an encoded bundle (32 bytes)."""
    return codec.hash_tagged(BUNDLE_TAG, data)


def genesis_validator_sets(genesis: Genesis) -> tuple[ValidatorSetEntry, ...]:
    """The validator set chain of a chain whose set never changed."""
    return (ValidatorSetEntry(0, genesis.hash, tuple(genesis.validator_set.keys)),)


def canonical_seals(
    seals: tuple[tuple[bytes, bytes], ...], validators: ValidatorSet
) -> tuple[tuple[bytes, bytes], ...]:
    """The seal set a bundle carries: of ``seals`` (a finalised block's), the
    first quorum in validator order, sorted by key. A seal by a key outside
    the set (never in a verified block) sorts last, so it is kept only when
    there are not a quorum of others, and the verifier then names it."""
    def order(seal: tuple[bytes, bytes]) -> tuple[int, bytes]:
        return (validators.index(seal[0]), b"") if seal[0] in validators else (len(validators), seal[0])

    return tuple(sorted(sorted(seals, key=order)[: validators.quorum]))


# -- strict decoding ------------------------------------------------------------
def _uint(value: Any, part: str, name: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= _MAX_UINT63:
        raise BundleError(part, f"{name} must be an integer in [0, 2**63)")
    return value


def _exact_bytes(value: Any, size: int, part: str, name: str) -> bytes:
    if not isinstance(value, bytes) or len(value) != size:
        raise BundleError(part, f"{name} must be {size} bytes")
    return value


def _byte_string(value: Any, limit: int, part: str, name: str) -> bytes:
    if not isinstance(value, bytes) or not value:
        raise BundleError(part, f"{name} must be a non-empty byte string")
    if len(value) > limit:
        raise BundleError(part, f"{name} of {len(value)} bytes exceeds {limit}")
    return value


def _list(value: Any, limit: int, part: str, name: str) -> list[Any]:
    if not isinstance(value, list):
        raise BundleError(part, f"{name} must be a list")
    if len(value) > limit:
        raise BundleError(part, f"{name} has {len(value)} items, more than {limit}")
    return value


def _seals(value: Any) -> tuple[tuple[bytes, bytes], ...]:
    items = _list(value, MAX_SEALS, PART_HEADER, "seals")
    seals = []
    for i, seal in enumerate(items):
        if not isinstance(seal, list) or len(seal) != 2:
            raise BundleError(PART_HEADER, f"seals[{i}] must be [key, signature]")
        seals.append((
            _exact_bytes(seal[0], KEY_SIZE, PART_HEADER, f"seals[{i}] key"),
            _exact_bytes(seal[1], SIGNATURE_SIZE, PART_HEADER, f"seals[{i}] signature"),
        ))
    keys = [key for key, _ in seals]
    if keys != sorted(set(keys)):
        raise BundleError(PART_HEADER, "seals must be sorted by key, one per validator")
    return tuple(seals)


def _validator_sets(value: Any) -> tuple[ValidatorSetEntry, ...]:
    items = _list(value, MAX_VALIDATOR_SETS, PART_CHAIN, "validator_sets")
    if not items:
        raise BundleError(PART_CHAIN, "validator_sets is empty")
    entries = []
    for i, item in enumerate(items):
        where = f"validator_sets[{i}]"
        if not isinstance(item, dict) or set(item) != _SET_FIELDS:
            raise BundleError(PART_CHAIN, f"{where} must be a map of {', '.join(sorted(_SET_FIELDS))}")
        keys = _list(item["validators"], MAX_SEALS, PART_CHAIN, f"{where}.validators")
        checked = tuple(_exact_bytes(k, KEY_SIZE, PART_CHAIN, f"{where}.validators[{j}]") for j, k in enumerate(keys))
        if not checked or list(checked) != sorted(set(checked)):
            raise BundleError(PART_CHAIN, f"{where}.validators must be non-empty, sorted and distinct")
        entries.append(ValidatorSetEntry(
            _uint(item["from_height"], PART_CHAIN, f"{where}.from_height"),
            _exact_bytes(item["genesis"], HASH_SIZE, PART_CHAIN, f"{where}.genesis"),
            checked,
        ))
    return tuple(entries)


def decode_bundle(data: bytes) -> Bundle:
    """Decode a bundle, checking its structure and every field's type and
    size (not the signatures, proof or seals). Raises BundleError: part
    ``bundle`` when the outer encoding or shape is wrong, else the part whose
    field is malformed."""
    if not isinstance(data, (bytes, bytearray, memoryview)):
        raise BundleError(PART_BUNDLE, f"expected bytes, got {type(data).__name__}")
    try:
        value = codec.decode(bytes(data), max_size=MAX_BUNDLE_SIZE)
    except codec.CodecError as exc:
        raise BundleError(PART_BUNDLE, f"not a canonical CBOR bundle: {exc}") from None
    if not isinstance(value, dict) or set(value) != _FIELDS:
        got = sorted(value) if isinstance(value, dict) else type(value).__name__
        raise BundleError(PART_BUNDLE, f"expected a map of {', '.join(sorted(_FIELDS))}; got {got}")
    version = value["version"]
    if version != BUNDLE_VERSION or isinstance(version, bool):
        raise BundleError(PART_BUNDLE, f"version {version!r} is not supported (expected {BUNDLE_VERSION})")
    witness = value["witness"]
    if witness is not None:
        witness = _byte_string(witness, MAX_BUNDLE_SIZE, PART_WITNESS, "witness")
    proof = _list(value["proof"], MAX_PROOF_HASHES, PART_PROOF, "proof")
    return Bundle(
        receipt=_byte_string(value["receipt"], MAX_ENVELOPE_SIZE, PART_RECEIPT, "receipt"),
        leaf_index=_uint(value["leaf_index"], PART_PROOF, "leaf_index"),
        proof=tuple(_exact_bytes(p, HASH_SIZE, PART_PROOF, f"proof[{i}]") for i, p in enumerate(proof)),
        header=_byte_string(value["header"], MAX_HEADER_SIZE, PART_HEADER, "header"),
        commit_round=_uint(value["commit_round"], PART_HEADER, "commit_round"),
        seals=_seals(value["seals"]),
        validator_sets=_validator_sets(value["validator_sets"]),
        witness=witness,
    )
