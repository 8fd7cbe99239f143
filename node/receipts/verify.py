"""The offline bundle verifier: no network, only the bundle and the genesis file.

Checks, in this order (the first failure decides the exit code):

1. the bundle's structure: deterministic CBOR, every field's type and size;
2. the validator set chain links to the given genesis file;
3. the sealing header: it decodes, and a quorum of that height's
   validators sealed it (commit seals over its hash and commit round);
4. the header belongs to this chain (chain id, validator set hash, and the
   genesis hash it commits to, which the seals cover);
5. the receipt: canonical re-encoding, schema, issuer id, signature;
6. the inclusion proof of the receipt id at ``leaf_index`` against the
   header's receipts root and size;
7. the issuer policy (default: any issuer whose receipt is sealed);
8. the witness record, when the bundle carries one: it decodes, and its
   digest and fields are the ``job.exec`` receipt's;
9. with ``--replay``: the job re-run in a local cage gives the receipt's
   result digest.

Exit codes of ``metanode receipt verify`` (each failure prints one line,
``invalid: <reason>``):

====  =====================================================================
code  meaning
====  =====================================================================
0     valid
2     usage: bad options, unreadable bundle or genesis file
10    malformed bundle (not canonical CBOR, wrong shape or field types)
11    bad receipt: signature, encoding, schema or issuer id
12    inclusion proof does not lead to the header's receipts root
13    header not sealed by a quorum: forged, altered, bad or too few seals
14    does not chain to the genesis: validator set, chain id or genesis hash mismatch
15    replay: the re-run's result digest differs from the receipt's
16    witness does not match the receipt (or is not a valid witness file)
17    issuer not allowed by the issuer policy
1     the replay could not run (cage error)
====  =====================================================================

Header checks are cached per verifier by (header bytes, commit round,
seals), so bundles sealed by the same block pay for the seals once.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from node.base import codec
from node.base.errors import (
    EXIT_CHAIN,
    EXIT_ISSUER,
    EXIT_MALFORMED,
    EXIT_PROOF,
    EXIT_RECEIPT,
    EXIT_REPLAY,
    EXIT_SEALS,
    EXIT_WITNESS,
)
from node.base.merkle import leaf_hash, verify_inclusion
from node.base.verification import ProofError, ReceiptError
from node.consensus.block import Block, BlockError, BlockHeader, verify_seals
from node.consensus.genesis import Genesis
from node.consensus.validators import ValidatorSet
from node.receipts.bundle import (
    MAX_HEADER_SIZE,
    PART_BUNDLE,
    PART_CHAIN,
    PART_HEADER,
    PART_ISSUER,
    PART_PROOF,
    PART_RECEIPT,
    PART_REPLAY,
    PART_WITNESS,
    Bundle,
    BundleError,
    ValidatorSetEntry,
    decode_bundle,
    genesis_validator_sets,
)
from node.receipts.envelope import Receipt, verify_receipt
from node.receipts.execution import EXEC_KIND, record_digest, witness_mismatches

# The documented exit code of each part's failure (the codes live with the CLI's others in node/base/errors.py).
EXIT_CODES: dict[str, int] = {
    PART_BUNDLE: EXIT_MALFORMED,
    PART_RECEIPT: EXIT_RECEIPT,
    PART_PROOF: EXIT_PROOF,
    PART_HEADER: EXIT_SEALS,
    PART_CHAIN: EXIT_CHAIN,
    PART_REPLAY: EXIT_REPLAY,
    PART_WITNESS: EXIT_WITNESS,
    PART_ISSUER: EXIT_ISSUER,
}

HEADER_CACHE_SIZE = 1024

IssuerPolicy = Callable[[Receipt, BlockHeader], bool]


def any_issuer(receipt: Receipt, header: BlockHeader) -> bool:
    """The default policy: any issuer whose receipt a quorum sealed into the
    log. (Node registration is not on the chain yet; when it is, a policy
    can require a registered node.)"""
    return True


def issuers_in(keys: Any) -> IssuerPolicy:
    """A policy that allows only issuers whose public key is in ``keys``
    (for example ``genesis.validator_set.keys``)."""
    allowed = frozenset(bytes(k) for k in keys)

    def allowed_issuer(receipt: Receipt, header: BlockHeader) -> bool:
        return receipt.issuer_key in allowed

    return allowed_issuer


class BundleInvalid(BundleError):
    """Verification failed; ``exit_code`` is the documented code of ``part``."""

    @property
    def exit_code(self) -> int:
        return EXIT_CODES[self.part]


@dataclass(frozen=True)
class VerifiedBundle:
    """What a valid bundle proves: this receipt is leaf ``leaf_index`` of the
    log sealed in ``header``, on the chain of the genesis it was checked with."""

    bundle: Bundle
    receipt: Receipt
    header: BlockHeader
    witness_record: dict[str, Any] | None = None

    @property
    def leaf_index(self) -> int:
        return self.bundle.leaf_index


class BundleVerifier:
    """Verifies bundles against one genesis. Reuse one instance for many
    bundles: header seal checks are cached. Not thread-safe."""

    def __init__(
        self,
        genesis: Genesis,
        *,
        issuer_allowed: IssuerPolicy = any_issuer,
        cache_size: int = HEADER_CACHE_SIZE,
    ) -> None:
        self.genesis = genesis
        self.issuer_allowed = issuer_allowed
        self._expected_sets = genesis_validator_sets(genesis)
        self._validators: ValidatorSet = genesis.validator_set
        self._headers: OrderedDict[tuple[Any, ...], BlockHeader] = OrderedDict()
        self._cache_size = cache_size

    @property
    def cached_headers(self) -> int:
        """How many verified (header, commit round, seals) are cached."""
        return len(self._headers)

    def verify(self, data: bytes) -> VerifiedBundle:
        """Verify an encoded bundle. Returns what it proves; raises
        BundleInvalid whose ``part`` (and ``exit_code``) says what failed."""
        try:
            bundle = decode_bundle(data)
        except BundleError as exc:
            raise BundleInvalid(exc.part, exc.detail) from None
        return self.verify_bundle(bundle)

    def verify_bundle(self, bundle: Bundle) -> VerifiedBundle:
        """:meth:`verify` of an already decoded bundle."""
        self._check_validator_sets(bundle.validator_sets)
        header = self._check_header(bundle)
        try:
            receipt = verify_receipt(bundle.receipt)
        except ReceiptError as exc:
            raise BundleInvalid(PART_RECEIPT, f"{exc.reason.value}: {exc.detail}") from None
        if bundle.leaf_index >= header.receipts_size:
            raise BundleInvalid(
                PART_PROOF,
                f"leaf index {bundle.leaf_index} is not below the sealed log size {header.receipts_size}",
            )
        try:
            verify_inclusion(
                leaf_hash(receipt.id), bundle.leaf_index, header.receipts_size, bundle.proof, header.receipts_root
            )
        except ProofError as exc:
            raise BundleInvalid(PART_PROOF, f"{exc.reason.value}: {exc.detail}") from None
        if not self.issuer_allowed(receipt, header):
            raise BundleInvalid(PART_ISSUER, f"issuer {receipt.issuer_node} is not allowed by the issuer policy")
        record = None
        if bundle.witness is not None:
            record = check_witness(receipt, bundle.witness)
        return VerifiedBundle(bundle, receipt, header, record)

    # -- the parts ------------------------------------------------------------
    def _check_validator_sets(self, sets: tuple[ValidatorSetEntry, ...]) -> None:
        if sets == self._expected_sets:
            return
        if len(sets) != 1:
            raise BundleInvalid(
                PART_CHAIN,
                f"the bundle carries {len(sets)} validator sets; this verifier knows only the genesis set "
                "(validator set changes are not supported yet)",
            )
        entry, expected = sets[0], self._expected_sets[0]
        if entry.genesis != expected.genesis:
            raise BundleInvalid(
                PART_CHAIN,
                f"the bundle is for genesis {entry.genesis.hex()}, not the given genesis {expected.genesis.hex()}",
            )
        if entry.from_height != 0:
            raise BundleInvalid(PART_CHAIN, f"the first validator set starts at height {entry.from_height}, not 0")
        raise BundleInvalid(PART_CHAIN, "the bundle's validator set is not the genesis file's")

    def _check_header(self, bundle: Bundle) -> BlockHeader:
        key = (bundle.header, bundle.commit_round, bundle.seals)
        cached = self._headers.get(key)
        if cached is not None:
            self._headers.move_to_end(key)
            return cached
        try:
            header = BlockHeader.from_value(codec.decode(bundle.header, max_size=MAX_HEADER_SIZE))
        except (codec.CodecError, BlockError, TypeError) as exc:
            raise BundleInvalid(PART_HEADER, f"malformed header: {exc}") from None
        try:
            verify_seals(Block(header, (), bundle.commit_round, bundle.seals), self._validators)
        except BlockError as exc:
            raise BundleInvalid(PART_HEADER, f"header {header.height} is not sealed by a quorum: {exc}") from None
        if header.chain_id != self.genesis.chain_id:
            raise BundleInvalid(
                PART_CHAIN, f"header is from chain {header.chain_id!r}, not {self.genesis.chain_id!r}"
            )
        if header.validators_hash != self._validators.hash:
            raise BundleInvalid(PART_CHAIN, "header names another validator set than the genesis file's")
        if header.genesis_hash != self.genesis.hash:
            # The seals cover the header's genesis hash: a bundle relabelled to
            # another genesis (a twin with the same chain id and keys) ends here.
            raise BundleInvalid(
                PART_CHAIN,
                f"header {header.height} is sealed on genesis {header.genesis_hash.hex()}, "
                f"not the given genesis {self.genesis.hash.hex()}",
            )
        self._headers[key] = header
        if len(self._headers) > self._cache_size:
            self._headers.popitem(last=False)
        return header


def check_witness(receipt: Receipt, record_bytes: bytes) -> dict[str, Any]:
    """Check that a witness record (its deterministic CBOR, as bundles carry
    it) belongs to a ``job.exec`` receipt: its digest is the receipt's
    ``witness`` and its fields agree. Returns the record; raises
    BundleInvalid (part ``witness``)."""
    from node.cage.witness import MAX_WITNESS_FILE, WITNESS_VERSION

    if receipt.kind != EXEC_KIND:
        raise BundleInvalid(PART_WITNESS, f"a witness belongs to a job.exec receipt, not {receipt.kind}")
    try:
        record = codec.decode(record_bytes, max_size=MAX_WITNESS_FILE)
    except codec.CodecError as exc:
        raise BundleInvalid(PART_WITNESS, f"not a witness record: {exc}") from None
    if not isinstance(record, dict) or record.get("version") != WITNESS_VERSION:
        raise BundleInvalid(PART_WITNESS, "not a witness record of a supported version")
    try:
        mismatched = witness_mismatches(receipt, record, record_digest(record_bytes))
    except (KeyError, TypeError, AttributeError):
        raise BundleInvalid(PART_WITNESS, "witness record lacks the fields of a cage run") from None
    if mismatched:
        raise BundleInvalid(PART_WITNESS, f"witness disagrees with the receipt on {', '.join(mismatched)}")
    return record


def verify_bundle(
    data: bytes, genesis: Genesis, *, issuer_allowed: IssuerPolicy = any_issuer
) -> VerifiedBundle:
    """Verify one bundle (see :class:`BundleVerifier` to verify many)."""
    return BundleVerifier(genesis, issuer_allowed=issuer_allowed).verify(data)
