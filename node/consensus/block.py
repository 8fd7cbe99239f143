"""Block headers, blocks, commit seals, and verifying a finalised block.

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
  Verifying a proof costs about 0.6 ms (node.base.vrf over libsodium's
  point arithmetic; about 10 ms with its pure-Python reference group) against
  0.05 ms for an Ed25519 signature, so it is injectable (:data:`VrfVerifier`,
  as the signature ``verifier`` is), checked last, and cached by callers that
  see one header many times (the core per block digest, vrf.verify itself
  per (key, proof, input)).
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from node.base import vrf
from node.base.codec import CodecError, decode, encode, hash_tagged, hash_value
from node.base.keys import Identity, verify
from node.base.merkle import merkle_root
from node.consensus.genesis import Genesis
from node.consensus.validators import ValidatorSet

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

Verifier = Callable[[bytes, str, bytes, bytes], bool]
# (public key, VRF proof, alpha) -> whether the proof is valid. Pure; expensive
# in pure Python (see the module doc), so callers may pass a memoised one.
VrfVerifier = Callable[[bytes, bytes, bytes], bool]


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


def vrf_valid(public_key: bytes, proof: bytes, alpha: bytes) -> bool:
    """The default :data:`VrfVerifier`: RFC 9381 verification (node.base.vrf)."""
    try:
        vrf.verify(public_key, proof, alpha)
    except vrf.VrfError:
        return False
    return True


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
        that needs the parent and validator set, see :func:`verify_block`)."""
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


def build_block(
    genesis: Genesis,
    parent: BlockHeader,
    proposer: bytes,
    round_number: int,
    transactions: Sequence[bytes],
    timestamp_ms: int,
    *,
    receipts_size: int = 0,
    receipts_root: bytes = EMPTY_ROOT,
    validators: ValidatorSet | None = None,
    next_validators: ValidatorSet | None = None,
    seed_proof: bytes,
    vrf_verifier: VrfVerifier = vrf_valid,
) -> Block:
    """An unsealed child of ``parent``; the timestamp is raised to the earliest
    allowed if it is below it. ``validators`` decide its height (default: the
    genesis set), ``next_validators`` the next one (default: ``validators``);
    ``seed_proof`` is the proposer's :func:`make_seed_proof`. Raises
    BlockError if the result breaks a rule."""
    validators = genesis.validator_set if validators is None else validators
    next_validators = validators if next_validators is None else next_validators
    txs = tuple(bytes(tx) for tx in transactions)
    hashes = tuple(tx_hash(tx) for tx in txs)
    header = BlockHeader(
        chain_id=genesis.chain_id,
        genesis_hash=genesis.hash,
        height=parent.height + 1,
        parent_hash=parent.hash,
        timestamp_ms=max(timestamp_ms, earliest_timestamp(parent, genesis)),
        proposer=proposer,
        round=round_number,
        tx_root=merkle_root(hashes),
        tx_count=len(txs),
        receipts_size=receipts_size,
        receipts_root=receipts_root,
        validators_hash=validators.hash,
        next_validators_hash=next_validators.hash,
        seed_proof=seed_proof,
    )
    block = Block(header, txs)
    object.__setattr__(block, "_tx_hashes", hashes)
    check_block_contents(block, parent, validators, genesis, next_validators=next_validators, vrf_verifier=vrf_verifier)
    return block


def earliest_timestamp(parent: BlockHeader, genesis: Genesis) -> int:
    """The least timestamp a child of ``parent`` may carry: parent + the
    genesis ``min_block_interval_ms`` (at least 1 ms: timestamps strictly increase)."""
    return parent.timestamp_ms + max(1, genesis.min_interval_ms)


def heartbeat_timestamp(parent: BlockHeader, genesis: Genesis) -> int:
    """When a proposer with nothing to propose proposes anyway (an empty
    block): parent + ``block_period_ms``. Not a validity rule, only what an
    honest proposer waits for; never before :func:`earliest_timestamp`."""
    return max(parent.timestamp_ms + genesis.block_period_ms, earliest_timestamp(parent, genesis))


def check_block_contents(
    block: Block,
    parent: BlockHeader,
    validators: ValidatorSet,
    genesis: Genesis,
    *,
    next_validators: ValidatorSet | None = None,
    now_ms: int | None = None,
    vrf_verifier: VrfVerifier = vrf_valid,
) -> None:
    """Every rule of a block except its seals: chain and genesis, height, parent link,
    timestamp (>= parent + min block interval, and at most the drift ahead of
    ``now_ms`` when given), proposer of the header's round, validator sets
    (``validators`` decide this height and are the parent's
    ``next_validators_hash``; ``next_validators``, when given, the next
    height), transaction count, size, duplicates and root, and last (it is
    the costly one) the proposer's VRF proof of the seed. Raises BlockError."""
    header = block.header
    if header.chain_id != genesis.chain_id:
        raise BlockError(f"header.chain_id: expected {genesis.chain_id!r}, got {header.chain_id!r}")
    if header.genesis_hash != genesis.hash:
        raise BlockError(
            f"header.genesis_hash: {header.genesis_hash.hex()} is not this chain's genesis {genesis.hash.hex()}"
        )
    if header.height != parent.height + 1:
        raise BlockError(f"header.height: expected {parent.height + 1}, got {header.height}")
    if header.parent_hash != parent.hash:
        raise BlockError("header.parent_hash: does not match the parent block")
    least = earliest_timestamp(parent, genesis)
    if header.timestamp_ms < least:
        raise BlockError(f"header.timestamp_ms: {header.timestamp_ms} is before the earliest allowed {least}")
    if now_ms is not None and header.timestamp_ms > now_ms + genesis.limits.max_timestamp_drift_ms:
        raise BlockError(
            f"header.timestamp_ms: {header.timestamp_ms} is more than "
            f"{genesis.limits.max_timestamp_drift_ms} ms ahead of local time {now_ms}"
        )
    expected = validators.proposer(parent.proposer, header.round)
    if header.proposer != expected:
        raise BlockError(f"header.proposer: not the proposer of round {header.round}")
    if header.validators_hash != validators.hash:
        raise BlockError("header.validators_hash: does not match the validator set of this height")
    if header.validators_hash != parent.next_validators_hash:
        raise BlockError("header.validators_hash: is not the parent's next_validators_hash")
    if next_validators is not None and header.next_validators_hash != next_validators.hash:
        raise BlockError("header.next_validators_hash: does not match the validator set of the next height")
    txs = block.transactions
    if header.tx_count != len(txs):
        raise BlockError(f"header.tx_count: {header.tx_count} but the block holds {len(txs)}")
    if len(txs) > genesis.limits.max_txs_per_block:
        raise BlockError(f"block.txs: {len(txs)} exceeds max_txs_per_block {genesis.limits.max_txs_per_block}")
    payload = sum(len(tx) for tx in txs)
    if payload > genesis.limits.max_block_bytes:
        raise BlockError(f"block.txs: {payload} bytes exceed max_block_bytes {genesis.limits.max_block_bytes}")
    hashes = block.tx_hashes
    if len(set(hashes)) != len(hashes):
        raise BlockError("block.txs: a transaction appears twice")
    if merkle_root(hashes) != header.tx_root:
        raise BlockError("header.tx_root: does not match the transactions")
    alpha = seed_alpha(genesis.hash, header.height, parent.seed)
    if not vrf_verifier(header.proposer, header.seed_proof, alpha):
        raise BlockError("header.seed_proof: not the proposer's VRF proof of this height's seed")


def verify_seals(
    block: Block, validators: ValidatorSet, *, verifier: Verifier = verify
) -> None:
    """At least a quorum of distinct validators' valid seals for the block's
    header hash and commit round. Raises BlockError."""
    if block.commit_round < block.header.round:
        raise BlockError(
            f"block.commit_round: {block.commit_round} is before the block's round {block.header.round}"
        )
    message = seal_message(block.hash, block.commit_round)
    valid = 0
    for key, signature in block.seals:
        if key not in validators:
            raise BlockError(f"block.seals: {key.hex()[:16]}... is not a validator")
        if not verifier(key, SEAL_TAG, message, signature):
            raise BlockError(f"block.seals: bad seal from {key.hex()[:16]}...")
        valid += 1
    if valid < validators.quorum:
        raise BlockError(f"block.seals: {valid} seals, a quorum is {validators.quorum}")


def verify_block(
    block: Block,
    parent: BlockHeader,
    validators: ValidatorSet,
    genesis: Genesis,
    *,
    next_validators: ValidatorSet | None = None,
    now_ms: int | None = None,
    verifier: Verifier = verify,
    vrf_verifier: VrfVerifier = vrf_valid,
) -> bytes:
    """Verify a finalised block against its parent header and the validator set
    of its height (and of the next, when given): what followers and block
    sync run on every block. Pure.
    Returns the block hash; raises BlockError naming the first failed rule."""
    check_block_contents(block, parent, validators, genesis, next_validators=next_validators, now_ms=now_ms,
                         vrf_verifier=vrf_verifier)
    verify_seals(block, validators, verifier=verifier)
    return block.hash
