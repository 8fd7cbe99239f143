"""Block headers, blocks, commit seals and seeds: the types and their encoding.

The rules a block must meet (and building one that does) are in
:mod:`node.consensus.block_rules`.

Encoding (deterministic CBOR via ``node.base.codec``)::


    block  = {"header": header, "txs": [bytes...], "commit_round": int,
              "seals": [[validator_key(32), signature(64)], ...]}
    header = {"chain_id", "genesis_hash", "height", "parent_hash",
              "timestamp_ms", "proposer", "round", "tx_root", "tx_count",
              "receipts_size", "receipts_root", "validators_hash",
              "next_validators_hash", "seed_proof"}

* ``header_hash = hash_value("metanode/block/v1", header)`` names a block.
* ``genesis_hash`` is the hash of the chain's genesis file in every header,
  so a header's seals bind it to one genesis: a bundle cannot be relabelled
  to another genesis with the same chain id and validator keys.
* A transaction is opaque bytes here; its id is :func:`tx_hash`
  (``hash_tagged("metanode/tx/v1", tx_bytes)``) and ``tx_root`` is the
  RFC 9162 Merkle root whose leaves are those 32-byte tx hashes.
* ``round`` is the round in which the block was *created* (and ``proposer``
  the proposer of that round); a block re-proposed in a later round keeps its
  header, so its hash, unchanged. ``commit_round`` is the round whose commit
  quorum finalised it: a commit seal is the validator's signature, tag
  ``metanode/seal/v1``, over ``encode({"block": header_hash, "round":
  commit_round})``, so seals from different rounds never mix (QBFT's
  ``hashBlockForCommitSeal`` binds the round the same way).
* A proposal carries the block unsealed (``commit_round`` 0, no seals).
* ``validators_hash`` names the set that decides this height and
  ``next_validators_hash`` the set of the next one: a change executed in block
  H decides from H + ``ACTIVATION_DELAY`` (2), so when block h is proposed
  the state after h - 1 already fixes the set of h + 1 and the header can
  commit to it. A child's ``validators_hash`` must equal its parent's
  ``next_validators_hash``, so a verifier holding only sealed headers can
  follow the set from the genesis on.
* ``seed_proof`` is the proposer's RFC 9381 ECVRF proof over
  :func:`seed_alpha` (genesis hash, height, parent seed) and
  :attr:`BlockHeader.seed` its 64-byte output. The input names no content
  of the block, so a proposer gets one seed per height whatever it puts in
  the block: it cannot grind the seed by trying candidate blocks.
  Verifying the proof is the costliest block rule (see
  :mod:`node.consensus.block_rules`).
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from node.base import vrf
from node.base.codec import CodecError, decode, encode, hash_tagged, hash_value
from node.base.keys import Identity
from node.base.merkle import merkle_root
from node.consensus.genesis import Genesis

BLOCK_TAG = "metanode/block/v1"
TX_TAG = "metanode/tx/v1"
SEAL_TAG = "metanode/seal/v1"
HASH_SIZE = 32
KEY_SIZE = 32
SIGNATURE_SIZE = 64
SEED_PROOF_SIZE = 80  # an ECVRF-EDWARDS25519-SHA512-TAI proof (RFC 9381)
SEED_SIZE = 64  # its output (beta)
SEED_TAG = "metanode/seed/v1"
GENESIS_SEED_TAG = b"metanode/genesis-seed/v1"
MAX_ROUND = 2**32 - 1
MAX_UINT63 = 2**63 - 1
ZERO_HASH = bytes(32)
EMPTY_ROOT = merkle_root([])  # RFC 9162 root of the empty tree: sha256(b"")
# Encoded header + CBOR framing + up to 256 seals; added to the payload limit.
_ENCODING_OVERHEAD = 64 * 1024


class BlockError(ValueError):
    """A block or header is malformed or fails verification; says which field."""


def tx_hash(tx: bytes) -> bytes:
    """The id of a transaction: ``hash_tagged("metanode/tx/v1", tx_bytes)``.

    The consensus core treats transactions as opaque bytes; the mempool, the
    chain store and receipts must all name a transaction by this hash.
    """
    return hash_tagged(TX_TAG, tx)


def transactions_root(txs: Sequence[bytes]) -> bytes:
    """RFC 9162 Merkle root over the transactions' hashes (leaf data = tx hash)."""
    return merkle_root([tx_hash(tx) for tx in txs])


def seed_alpha(genesis_hash: bytes, height: int, parent_seed: bytes) -> bytes:
    """The VRF input of the seed of block ``height``:
    ``encode(["metanode/seed/v1", genesis_hash, height, parent_seed])``.

    Nothing the proposer chooses (transactions, timestamp, round) is in it,
    so all the blocks one proposer could make at a height share one seed."""
    return encode([SEED_TAG, genesis_hash, height, parent_seed])


def genesis_seed(genesis_hash: bytes) -> bytes:
    """The seed of the genesis header: ``SHA-512("metanode/genesis-seed/v1" || genesis_hash)``."""
    return hashlib.sha512(GENESIS_SEED_TAG + genesis_hash).digest()


def make_seed_proof(identity: Identity, genesis_hash: bytes, parent: BlockHeader) -> bytes:
    """``identity``'s VRF proof for the seed of the child of ``parent``: the
    ``seed_proof`` a block it proposes on ``parent`` must carry."""
    return vrf.prove(identity.seed, seed_alpha(genesis_hash, parent.height + 1, parent.seed))


def seal_message(header_hash: bytes, commit_round: int) -> bytes:
    """The bytes a commit seal signs (under tag ``metanode/seal/v1``)."""
    return encode({"block": header_hash, "round": commit_round})


def max_encoded_block_size(genesis: Genesis) -> int:
    """Upper bound on an encoded block under this genesis' limits."""
    limits = genesis.limits
    return limits.max_block_bytes + 9 * limits.max_txs_per_block + _ENCODING_OVERHEAD


_HEADER_FIELDS: dict[str, tuple[type, int, int]] = {
    # name -> (type, min, max) for ints, (bytes, exact size, _) for bytes
    "chain_id": (str, 1, 64),
    "genesis_hash": (bytes, HASH_SIZE, 0),
    "height": (int, 0, MAX_UINT63),
    "parent_hash": (bytes, HASH_SIZE, 0),
    "timestamp_ms": (int, 0, MAX_UINT63),
    "proposer": (bytes, KEY_SIZE, 0),
    "round": (int, 0, MAX_ROUND),
    "tx_root": (bytes, HASH_SIZE, 0),
    "tx_count": (int, 0, MAX_UINT63),
    "receipts_size": (int, 0, MAX_UINT63),
    "receipts_root": (bytes, HASH_SIZE, 0),
    "validators_hash": (bytes, HASH_SIZE, 0),
    "next_validators_hash": (bytes, HASH_SIZE, 0),
    "seed_proof": (bytes, SEED_PROOF_SIZE, 0),
}


def _check_field(where: str, name: str, value: Any, spec: tuple[type, int, int]) -> None:
    kind, low, high = spec
    if kind is int:
        if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
            raise BlockError(f"{where}.{name}: expected an integer in [{low}, {high}], got {value!r}")
    elif kind is bytes:
        if not isinstance(value, bytes) or len(value) != low:
            raise BlockError(f"{where}.{name}: expected {low} bytes")
    elif not isinstance(value, str) or not low <= len(value) <= high:
        raise BlockError(f"{where}.{name}: expected a string of {low}-{high} characters")


@dataclass(frozen=True)
class BlockHeader:
    """A block header; ``hash`` is the block's id."""

    chain_id: str
    genesis_hash: bytes
    height: int
    parent_hash: bytes
    timestamp_ms: int
    proposer: bytes
    round: int
    tx_root: bytes
    tx_count: int
    receipts_size: int
    receipts_root: bytes
    validators_hash: bytes
    next_validators_hash: bytes
    seed_proof: bytes

    def __post_init__(self) -> None:
        for name, spec in _HEADER_FIELDS.items():
            _check_field("header", name, getattr(self, name), spec)

    def to_value(self) -> dict[str, Any]:
        return {name: getattr(self, name) for name in _HEADER_FIELDS}

    @classmethod
    def from_value(cls, value: Any) -> "BlockHeader":
        """Build from a decoded map, naming the first bad or missing field."""
        if not isinstance(value, dict):
            raise BlockError("header: expected a map")
        if set(value) != set(_HEADER_FIELDS):
            missing = sorted(set(_HEADER_FIELDS) - set(value))
            extra = sorted(set(value) - set(_HEADER_FIELDS))
            raise BlockError(f"header: missing fields {missing}, unknown fields {extra}")
        return cls(**value)

    @property
    def hash(self) -> bytes:
        cached = self.__dict__.get("_hash")
        if cached is None:
            cached = hash_value(BLOCK_TAG, self.to_value())
            object.__setattr__(self, "_hash", cached)
        return cached

    @property
    def seed(self) -> bytes:
        """The block's 64-byte random seed: the VRF output of ``seed_proof``
        (``vrf.proof_to_hash``; not a verification: check_block_contents
        verifies the proof), or for the genesis header
        :func:`genesis_seed` of its genesis hash. Raises BlockError if the
        proof does not even decode (a header that passed its checks always does)."""
        cached = self.__dict__.get("_seed")
        if cached is None:
            if self.height == 0:
                cached = genesis_seed(self.genesis_hash)
            else:
                try:
                    cached = vrf.proof_to_hash(self.seed_proof)
                except ValueError as exc:
                    raise BlockError(f"header.seed_proof: {exc}") from None
            object.__setattr__(self, "_seed", cached)
        return cached


@dataclass(frozen=True)
class Block:
    """A header, its transactions (opaque bytes) and its commit seals."""

    header: BlockHeader
    transactions: tuple[bytes, ...]
    commit_round: int = 0
    seals: tuple[tuple[bytes, bytes], ...] = field(default=())

    @property
    def hash(self) -> bytes:
        return self.header.hash

    @property
    def height(self) -> int:
        return self.header.height

    @property
    def tx_hashes(self) -> tuple[bytes, ...]:
        """:func:`tx_hash` of each transaction, in order; computed once per block
        (the block check, the commit, the mempool and the RPC all need them)."""
        cached = self.__dict__.get("_tx_hashes")
        if cached is None:
            cached = tuple(tx_hash(tx) for tx in self.transactions)
            object.__setattr__(self, "_tx_hashes", cached)
        return cached

    def _with_hashes_of(self, other: "Block") -> "Block":
        cached = other.__dict__.get("_tx_hashes")
        if cached is not None:  # same transactions: the same hashes
            object.__setattr__(self, "_tx_hashes", cached)
        return self

    def with_seals(self, commit_round: int, seals: Sequence[tuple[bytes, bytes]]) -> "Block":
        """This block finalised in ``commit_round`` with ``seals`` (sorted by key)."""
        return Block(self.header, self.transactions, commit_round, tuple(sorted(seals)))._with_hashes_of(self)

    def unsealed(self) -> "Block":
        return Block(self.header, self.transactions)._with_hashes_of(self)

    def to_value(self) -> dict[str, Any]:
        return {
            "header": self.header.to_value(),
            "txs": list(self.transactions),
            "commit_round": self.commit_round,
            "seals": [[key, sig] for key, sig in self.seals],
        }

    def encode(self) -> bytes:
        cached = self.__dict__.get("_encoded")
        if cached is None:
            cached = encode(self.to_value())
            object.__setattr__(self, "_encoded", cached)
        return cached

    @classmethod
    def decode(cls, data: bytes, *, max_size: int | None = None) -> "Block":
        """Decode and check every field's type and size (not the seals' validity:
        that needs the parent and validator set, see
        :func:`node.consensus.block_rules.verify_block`)."""
        try:
            value = decode(data, max_size=max_size)
        except CodecError as exc:
            raise BlockError(f"block: {exc}") from None
        if not isinstance(value, dict) or set(value) != {"header", "txs", "commit_round", "seals"}:
            raise BlockError("block: expected a map with header, txs, commit_round, seals")
        header = BlockHeader.from_value(value["header"])
        txs = value["txs"]
        if not isinstance(txs, list) or not all(isinstance(tx, bytes) and tx for tx in txs):
            raise BlockError("block.txs: expected a list of non-empty byte strings")
        _check_field("block", "commit_round", value["commit_round"], (int, 0, MAX_ROUND))
        seals = value["seals"]
        if not isinstance(seals, list):
            raise BlockError("block.seals: expected a list")
        parsed: list[tuple[bytes, bytes]] = []
        for i, seal in enumerate(seals):
            if (
                not isinstance(seal, list)
                or len(seal) != 2
                or not isinstance(seal[0], bytes)
                or len(seal[0]) != KEY_SIZE
                or not isinstance(seal[1], bytes)
                or len(seal[1]) != SIGNATURE_SIZE
            ):
                raise BlockError(f"block.seals[{i}]: expected [32-byte key, 64-byte signature]")
            parsed.append((seal[0], seal[1]))
        if parsed != sorted(parsed) or len({key for key, _ in parsed}) != len(parsed):
            raise BlockError("block.seals: must be sorted by validator key, one per validator")
        block = cls(header, tuple(txs), value["commit_round"], tuple(parsed))
        object.__setattr__(block, "_encoded", bytes(data))
        return block


def genesis_header(genesis: Genesis) -> BlockHeader:
    """The height-0 header every chain starts from. It has no proposer (all
    zeros) and no seals: it is trusted because it is derived from the genesis
    file, whose hash is its ``parent_hash``. Its next set is the genesis set
    (no change can take effect before height ACTIVATION_DELAY + 1), its
    ``seed_proof`` is 80 zero bytes and its seed :func:`genesis_seed`."""
    return BlockHeader(
        chain_id=genesis.chain_id,
        genesis_hash=genesis.hash,
        height=0,
        parent_hash=genesis.hash,
        timestamp_ms=genesis.genesis_time_ms,
        proposer=bytes(KEY_SIZE),
        round=0,
        tx_root=EMPTY_ROOT,
        tx_count=0,
        receipts_size=0,
        receipts_root=EMPTY_ROOT,
        validators_hash=genesis.validator_set.hash,
        next_validators_hash=genesis.validator_set.hash,
        seed_proof=bytes(SEED_PROOF_SIZE),
    )
