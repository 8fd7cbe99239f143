"""Receipt bundles: everything needed to check one receipt offline.

A bundle (version 2) is the deterministic CBOR map (``node.base.codec``)::

    {
      "version": 2,
      "receipt": <bytes>,          # the signed envelope, exactly as logged
      "leaf_index": <uint>,        # its position in the global receipt log
      "proof": [<32 bytes>...],    # RFC 9162 inclusion proof to the header's root
      "header": <bytes>,           # encoded header of the sealing block
      "commit_round": <uint>,      # the round whose commit quorum finalised it
      "seals": [[<key 32>, <sig 64>]...],   # the canonical seal set, sorted by key
      "validator_sets": [          # the validator set chain, oldest first
        {"from_height": 0, "genesis": <32 bytes>, "validators": [<key 32>...]},
        {"from_height": E, "validators": [<key 32>...],        # a transition:
         "header": <bytes>, "commit_round": <uint>,            # block E-1's header,
         "seals": [[<key 32>, <sig 64>]...]},                  # sealed by the set before
        ...
      ],
      "witness": <bytes> | null,   # optional cage witness record (job.exec only)
    }

The sealing block of leaf ``i`` is the first block whose header has
``receipts_size > i``: the header carries the log's size and root *after*
the block, so the proof is taken at that size. Headers travel as their
encoded bytes (a header's hash is ``hash_tagged("metanode/block/v1",
header)``), so a verifier hashes what it received and never re-encodes it.

``validator_sets`` is the chain of validator sets from the genesis to the
sealing height. The first entry is the genesis set, naming the genesis hash.
Each later entry is a *transition*: the set in force from ``from_height``,
proven by the sealed header of block ``from_height - 1``, the first header
committing to it (its ``next_validators_hash``). That header's seals are by
a quorum of the *previous* set (its ``validators_hash``), so each link is
signed by the set it replaces, back to the genesis file. Only transitions at
or below the sealing height are carried, and the last set is the one that
sealed the receipt's header: leaving one out breaks the chain.

Every header commits to the genesis hash, so its seals bind it to one
genesis file: relabelling ``validator_sets`` to another genesis with the
same chain id and keys does not make it verify there.

``seals`` (and each transition's) is the canonical seal set
(:func:`canonical_seals`): of the seals the node holds, the first quorum in
the sealing set's key order. Nodes holding those seals build byte-identical
bundles of a receipt.

The witness is the record of the cage run (deterministic CBOR; its hash is
the receipt's ``witness`` digest), not the whole witness file: the file's
resource observations and local paths are outside that digest, and a
bundle carries nothing that is not bound to a signature, root or seal.

A bundle's id is ``hash_tagged("metanode/receipt-bundle/v1", bytes)``. It is
not stored inside the bundle: every part is checked against its own anchor
(signature, proof, seals, genesis), so a flipped byte is reported as a
failure of the part it hit. docs/bundles.md specifies all of it byte by byte.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Union

from node.base import codec
from node.base.merkle import MAX_PROOF_HASHES
from node.consensus.genesis import Genesis
from node.consensus.validators import ValidatorSet
from node.receipts.envelope import MAX_ENVELOPE_SIZE

BUNDLE_VERSION = 2
BUNDLE_TAG = "metanode/receipt-bundle/v1"  # names the id scheme (a hash of the bytes), not the format version
# A bundle without a witness is a few kilobytes (plus about one more for each
# validator set change); witness files stay well under this.
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
_GENESIS_FIELDS = frozenset({"from_height", "genesis", "validators"})
_TRANSITION_FIELDS = frozenset({"from_height", "validators", "header", "commit_round", "seals"})


class BundleError(ValueError):
    """A bundle failed a check. ``part`` names the part that failed (one of
    the ``PART_*`` values), ``detail`` says what was wrong."""

    def __init__(self, part: str, detail: str) -> None:
        super().__init__(f"{part}: {detail}")
        self.part = part
        self.detail = detail


@dataclass(frozen=True)
class ValidatorSetEntry:
    """The first link of the validator set chain: the genesis set, naming
    the genesis file it derives from (trusted because it equals that file's)."""

    from_height: int  # always 0 in a valid bundle
    genesis: bytes  # hash of the genesis file the set derives from
    validators: tuple[bytes, ...]  # sorted public keys

    def to_value(self) -> dict[str, Any]:
        return {"from_height": self.from_height, "genesis": self.genesis, "validators": list(self.validators)}


@dataclass(frozen=True)
class ValidatorSetTransition:
    """A later link: the set in force from ``from_height``, proven by the
    sealed header of block ``from_height - 1`` (whose ``next_validators_hash``
    is this set's hash), sealed by a quorum of the previous link's set."""

    from_height: int
    validators: tuple[bytes, ...]  # sorted public keys of the new set
    header: bytes  # encoded header of block from_height - 1
    commit_round: int
    seals: tuple[tuple[bytes, bytes], ...]  # canonical seals by the previous set

    def to_value(self) -> dict[str, Any]:
        return {
            "from_height": self.from_height,
            "validators": list(self.validators),
            "header": self.header,
            "commit_round": self.commit_round,
            "seals": [[key, sig] for key, sig in self.seals],
        }


ValidatorSetLink = Union[ValidatorSetEntry, ValidatorSetTransition]


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
    validator_sets: tuple[ValidatorSetLink, ...]
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
    """The validator set chain of a chain whose set never changed (the
    first entry of every chain)."""
    return (ValidatorSetEntry(0, genesis.hash, tuple(genesis.validator_set.keys)),)


def canonical_seals(
    seals: tuple[tuple[bytes, bytes], ...], validators: ValidatorSet
) -> tuple[tuple[bytes, bytes], ...]:
    """The seal set a bundle carries: of ``seals`` (a finalised block's), the
    first quorum in the order of ``validators`` (the set that sealed the
    block), sorted by key. A seal by a key outside the set (never in a
    verified block) sorts last, so it is kept only when there are not a
    quorum of others, and the verifier then names it."""
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


def _seals(value: Any, part: str = PART_HEADER, name: str = "seals") -> tuple[tuple[bytes, bytes], ...]:
    items = _list(value, MAX_SEALS, part, name)
    seals = []
    for i, seal in enumerate(items):
        if not isinstance(seal, list) or len(seal) != 2:
            raise BundleError(part, f"{name}[{i}] must be [key, signature]")
        seals.append((
            _exact_bytes(seal[0], KEY_SIZE, part, f"{name}[{i}] key"),
            _exact_bytes(seal[1], SIGNATURE_SIZE, part, f"{name}[{i}] signature"),
        ))
    keys = [key for key, _ in seals]
    if keys != sorted(set(keys)):
        raise BundleError(part, f"{name} must be sorted by key, one per validator")
    return tuple(seals)


def _keys(value: Any, where: str) -> tuple[bytes, ...]:
    keys = _list(value, MAX_SEALS, PART_CHAIN, f"{where}.validators")
    checked = tuple(_exact_bytes(k, KEY_SIZE, PART_CHAIN, f"{where}.validators[{j}]") for j, k in enumerate(keys))
    if not checked or list(checked) != sorted(set(checked)):
        raise BundleError(PART_CHAIN, f"{where}.validators must be non-empty, sorted and distinct")
    return checked


def _validator_sets(value: Any) -> tuple[ValidatorSetLink, ...]:
    """The chain's shape: a genesis entry first, transitions after it. Any
    malformed link is a failure of the chain (exit 14), like a broken one."""
    items = _list(value, MAX_VALIDATOR_SETS, PART_CHAIN, "validator_sets")
    if not items:
        raise BundleError(PART_CHAIN, "validator_sets is empty")
    entries: list[ValidatorSetLink] = []
    for i, item in enumerate(items):
        where = f"validator_sets[{i}]"
        fields = _GENESIS_FIELDS if i == 0 else _TRANSITION_FIELDS
        if not isinstance(item, dict) or set(item) != fields:
            what = "the genesis set" if i == 0 else "a transition"
            raise BundleError(PART_CHAIN, f"{where} must be {what}: a map of {', '.join(sorted(fields))}")
        from_height = _uint(item["from_height"], PART_CHAIN, f"{where}.from_height")
        keys = _keys(item["validators"], where)
        if i == 0:
            entries.append(ValidatorSetEntry(
                from_height, _exact_bytes(item["genesis"], HASH_SIZE, PART_CHAIN, f"{where}.genesis"), keys))
        else:
            entries.append(ValidatorSetTransition(
                from_height,
                keys,
                _byte_string(item["header"], MAX_HEADER_SIZE, PART_CHAIN, f"{where}.header"),
                _uint(item["commit_round"], PART_CHAIN, f"{where}.commit_round"),
                _seals(item["seals"], PART_CHAIN, f"{where}.seals"),
            ))
    return tuple(entries)


def decode_bundle(data: bytes) -> Bundle:
    """Decode a bundle, checking its structure and every field's type and
    size (not the signatures, proof or seals). Raises BundleError: part
    ``bundle`` when the outer encoding or shape is wrong (or the version is
    not 2), else the part whose field is malformed."""
    if not isinstance(data, (bytes, bytearray, memoryview)):
        raise BundleError(PART_BUNDLE, f"expected bytes, got {type(data).__name__}")
    try:
        value = codec.decode(bytes(data), max_size=MAX_BUNDLE_SIZE)
    except codec.CodecError as exc:
        raise BundleError(PART_BUNDLE, f"not a canonical CBOR bundle: {exc}") from None
    if not isinstance(value, dict) or "version" not in value:
        got = sorted(value) if isinstance(value, dict) else type(value).__name__
        raise BundleError(PART_BUNDLE, f"expected a map of {', '.join(sorted(_FIELDS))}; got {got}")
    version = value["version"]
    if version == 1 and not isinstance(version, bool):
        raise BundleError(
            PART_BUNDLE,
            f"version 1 bundles are no longer supported (expected {BUNDLE_VERSION}): they carry headers of the "
            "format before validator set changes; fetch the bundle again from an upgraded node",
        )
    if version != BUNDLE_VERSION or isinstance(version, bool):
        raise BundleError(PART_BUNDLE, f"version {version!r} is not supported (expected {BUNDLE_VERSION})")
    if set(value) != _FIELDS:
        raise BundleError(PART_BUNDLE, f"expected a map of {', '.join(sorted(_FIELDS))}; got {sorted(value)}")
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
