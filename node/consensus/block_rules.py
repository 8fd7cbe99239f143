"""The rules of a block, and building one that meets them.

:func:`check_block_contents` is every rule of a block as a child of its
parent except its seals (chain, height, parent link, timestamp, proposer,
validator sets, transactions, seed proof); :func:`verify_seals` the commit
quorum; :func:`verify_block` both, what followers and block sync run on
every finalised block. :func:`build_block` makes an unsealed child that
meets them, :func:`earliest_timestamp` and :func:`heartbeat_timestamp` say
when. The types and their encoding are in :mod:`node.consensus.block`.

Verifying a seed proof costs about 0.6 ms (node.base.vrf over libsodium's
point arithmetic; about 10 ms with its pure-Python reference group) against
0.05 ms for an Ed25519 signature, so it is injectable (:data:`VrfVerifier`,
as the signature ``verifier`` is), checked last, and cached by callers that
see one header many times (the core per block digest, vrf.verify itself
per (key, proof, input)).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

from node.base import vrf
from node.base.keys import verify
from node.base.merkle import merkle_root
from node.consensus.block import EMPTY_ROOT, SEAL_TAG, Block, BlockError, BlockHeader, seal_message, seed_alpha, tx_hash
from node.consensus.genesis import Genesis
from node.consensus.validators import ValidatorSet

Verifier = Callable[[bytes, str, bytes, bytes], bool]
# (public key, VRF proof, alpha) -> whether the proof is valid. Pure; expensive
# in pure Python (see the module doc), so callers may pass a memoised one.
VrfVerifier = Callable[[bytes, bytes, bytes], bool]


def vrf_valid(public_key: bytes, proof: bytes, alpha: bytes) -> bool:
    """The default :data:`VrfVerifier`: RFC 9381 verification (node.base.vrf)."""
    try:
        vrf.verify(public_key, proof, alpha)
    except vrf.VrfError:
        return False
    return True


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
