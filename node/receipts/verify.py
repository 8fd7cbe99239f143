"""The offline verifier: no network, only the bundle and the genesis file.

Checks, in this order (the first failure decides the exit code):

1. the bundle's structure: deterministic CBOR, version 2, every field's
   type and size;
2. the validator set chain: its first entry is the given genesis file's
   set; each transition is proven by the header of the block before it,
   sealed by a quorum of the previous set, on this chain and genesis,
   committing to the new set (``next_validators_hash``);
3. the sealing header: it decodes, and a quorum of the chain's last set
   sealed it (commit seals over its hash and commit round);
4. the header belongs to this chain (chain id, the genesis hash it commits
   to, which the seals cover), was decided by the chain's last set
   (``validators_hash``), and no transition is after its height;
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
10    malformed bundle (not canonical CBOR, wrong shape or field types, version 1)
11    bad receipt: signature, encoding, schema or issuer id
12    inclusion proof does not lead to the header's receipts root
13    header not sealed by a quorum: forged, altered, bad or too few seals
14    does not chain to the genesis: validator set chain (a transition
      missing, reordered, forged or badly sealed), chain id or genesis hash
15    replay: the re-run's result digest differs from the receipt's
16    witness does not match the receipt (or is not a valid witness file)
17    issuer not allowed by the issuer policy
1     the replay could not run (cage error)
====  =====================================================================

A sealing header whose seals fail is a chain failure (14), not a seal
failure, when every seal is a good signature of the header and the header
names another validator set than the chain's last: the header is genuine
and the bundle's chain does not reach the set that sealed it (a transition
left out, or one added after the sealing height).

Verified headers are cached per verifier by (the set that sealed them,
header bytes, commit round, seals), and verified transitions by (the
previous set, the transition), so bundles of one chain pay for each
block's seals once.
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
from node.base.keys import verify as verify_signature
from node.base.merkle import leaf_hash, verify_inclusion
from node.base.verification import ProofError, ReceiptError
from node.consensus.block import SEAL_TAG, Block, BlockError, BlockHeader, seal_message
from node.consensus.block_rules import verify_seals
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
    ValidatorSetLink,
    ValidatorSetTransition,
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

# receipt, its sealing header, and the validator set that sealed it (the
# chain's last set: the validators of the sealing height).
IssuerPolicy = Callable[[Receipt, BlockHeader, ValidatorSet], bool]


def any_issuer(receipt: Receipt, header: BlockHeader, validators: ValidatorSet) -> bool:
    """The default policy: any issuer whose receipt a quorum sealed into the
    log (admission of nodes is the chain's business, see issue 15)."""
    return True


def sealing_validators(receipt: Receipt, header: BlockHeader, validators: ValidatorSet) -> bool:
    """Only validators of the sealing height (``--issuers validators``): the
    set that sealed the header, as the bundle's verified chain proves it,
    so a validator voted in later or out earlier is judged at that height."""
    return receipt.issuer_key in validators


def issuers_in(keys: Any) -> IssuerPolicy:
    """A policy that allows only issuers whose public key is in ``keys``
    (a fixed list, whatever the sealing height)."""
    allowed = frozenset(bytes(k) for k in keys)

    def allowed_issuer(receipt: Receipt, header: BlockHeader, validators: ValidatorSet) -> bool:
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
    log sealed in ``header`` by ``validators`` (the set of that height), on
    the chain of the genesis it was checked with."""

    bundle: Bundle
    receipt: Receipt
    header: BlockHeader
    validators: ValidatorSet
    witness_record: dict[str, Any] | None = None

    @property
    def leaf_index(self) -> int:
        return self.bundle.leaf_index


@dataclass(frozen=True)
class _Link:
    """A verified link of the chain: the set in force from ``from_height``."""

    from_height: int
    validators: ValidatorSet


def _decode_header(data: bytes) -> BlockHeader:
    """Raises BlockError (or the codec's error) for anything but a header."""
    try:
        return BlockHeader.from_value(codec.decode(data, max_size=MAX_HEADER_SIZE))
    except TypeError as exc:
        raise BlockError(str(exc)) from None


def _signed_by_its_sealers(header: BlockHeader, commit_round: int, seals: tuple[tuple[bytes, bytes], ...]) -> bool:
    """Every seal is a good signature of this header and round, whoever made
    it: the header is as its sealers signed it (not altered in the bundle)."""
    message = seal_message(header.hash, commit_round)
    return bool(seals) and all(verify_signature(key, SEAL_TAG, message, sig) for key, sig in seals)


class BundleVerifier:
    """Verifies bundles against one genesis. Reuse one instance for many
    bundles: sealing headers and validator set transitions are cached.
    Not thread-safe."""

    def __init__(
        self,
        genesis: Genesis,
        *,
        issuer_allowed: IssuerPolicy = any_issuer,
        cache_size: int = HEADER_CACHE_SIZE,
    ) -> None:
        self.genesis = genesis
        self.issuer_allowed = issuer_allowed
        self._genesis_entry = genesis_validator_sets(genesis)[0]
        self._genesis_link = _Link(0, genesis.validator_set)
        self._headers: OrderedDict[tuple[Any, ...], BlockHeader] = OrderedDict()
        self._transitions: OrderedDict[tuple[Any, ...], ValidatorSet] = OrderedDict()
        self._cache_size = cache_size

    @property
    def cached_headers(self) -> int:
        """How many verified (set, header, commit round, seals) are cached."""
        return len(self._headers)

    @property
    def cached_transitions(self) -> int:
        """How many verified validator set transitions are cached."""
        return len(self._transitions)

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
        last = self.validator_chain(bundle.validator_sets)[-1]
        header = self._check_header(bundle, last)
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
        if not self.issuer_allowed(receipt, header, last.validators):
            raise BundleInvalid(PART_ISSUER, f"issuer {receipt.issuer_node} is not allowed by the issuer policy")
        record = None
        if bundle.witness is not None:
            record = check_witness(receipt, bundle.witness)
        return VerifiedBundle(bundle, receipt, header, last.validators, record)

    # -- the validator set chain ------------------------------------------------
    def validator_chain(self, links: tuple[ValidatorSetLink, ...]) -> list[_Link]:
        """Walk ``validator_sets`` from the genesis file: returns each
        verified (from_height, set), oldest first. Raises BundleInvalid
        (part ``chain``) at the first link that does not hold."""
        if not links:
            raise BundleInvalid(PART_CHAIN, "validator_sets is empty")
        self._check_genesis_entry(links[0])
        chain = [self._genesis_link]
        for i, link in enumerate(links[1:], start=1):
            if not isinstance(link, ValidatorSetTransition):
                raise BundleInvalid(PART_CHAIN, f"validator_sets[{i}] must be a transition")
            chain.append(_Link(link.from_height, self._check_transition(i, chain[-1], link)))
        return chain

    def _check_genesis_entry(self, entry: ValidatorSetLink) -> None:
        expected = self._genesis_entry
        if entry == expected:
            return
        if not isinstance(entry, ValidatorSetEntry):
            raise BundleInvalid(PART_CHAIN, "validator_sets[0] must be the genesis set")
        if entry.genesis != expected.genesis:
            raise BundleInvalid(
                PART_CHAIN,
                f"the bundle is for genesis {entry.genesis.hex()}, not the given genesis {expected.genesis.hex()}",
            )
        if entry.from_height != 0:
            raise BundleInvalid(PART_CHAIN, f"the first validator set starts at height {entry.from_height}, not 0")
        raise BundleInvalid(PART_CHAIN, "the bundle's validator set is not the genesis file's")

    def _check_transition(self, i: int, previous: _Link, link: ValidatorSetTransition) -> ValidatorSet:
        """The set ``link`` brings in, once its proof holds against ``previous``."""
        where = f"validator_sets[{i}]"
        if link.from_height <= previous.from_height:
            raise BundleInvalid(
                PART_CHAIN,
                f"{where} starts at height {link.from_height}, not after validator_sets[{i - 1}] "
                f"(height {previous.from_height}): transitions must be in increasing height order",
            )
        if link.from_height < 2:
            raise BundleInvalid(PART_CHAIN, f"{where} starts at height {link.from_height}; a change starts at 2 or later")
        key = (previous.validators.keys, link)
        cached = self._transitions.get(key)
        if cached is not None:
            self._transitions.move_to_end(key)
            return cached
        new = ValidatorSet(link.validators)
        if new == previous.validators:
            raise BundleInvalid(PART_CHAIN, f"{where} is the same set as validator_sets[{i - 1}]: not a change")
        try:
            header = _decode_header(link.header)
        except (codec.CodecError, BlockError) as exc:
            raise BundleInvalid(PART_CHAIN, f"{where}.header is malformed: {exc}") from None
        proof = f"{where} (from height {link.from_height}): header {header.height}"
        if header.height != link.from_height - 1:
            raise BundleInvalid(PART_CHAIN, f"{proof} is not of height {link.from_height - 1}, the block before the change")
        if header.chain_id != self.genesis.chain_id:
            raise BundleInvalid(PART_CHAIN, f"{proof} is from chain {header.chain_id!r}, not {self.genesis.chain_id!r}")
        if header.genesis_hash != self.genesis.hash:
            raise BundleInvalid(
                PART_CHAIN,
                f"{proof} is sealed on genesis {header.genesis_hash.hex()}, not the given genesis {self.genesis.hash.hex()}",
            )
        if header.validators_hash != previous.validators.hash:
            raise BundleInvalid(PART_CHAIN, f"{proof} was decided by another set than validator_sets[{i - 1}] "
                                            "(a transition is missing or out of order)")
        if header.next_validators_hash != new.hash:
            raise BundleInvalid(PART_CHAIN, f"{proof} commits to next validator set {header.next_validators_hash.hex()}, "
                                            f"not {where}'s {new.hash.hex()}")
        try:
            verify_seals(Block(header, (), link.commit_round, link.seals), previous.validators)
        except BlockError as exc:
            raise BundleInvalid(
                PART_CHAIN, f"{proof} is not sealed by a quorum of validator_sets[{i - 1}]: {exc}"
            ) from None
        self._remember(self._transitions, key, new)
        return new

    # -- the sealing header -------------------------------------------------------
    def _check_header(self, bundle: Bundle, last: _Link) -> BlockHeader:
        validators = last.validators
        key = (validators.keys, bundle.header, bundle.commit_round, bundle.seals)
        header = self._headers.get(key)
        if header is not None:
            self._headers.move_to_end(key)
        else:
            header = self._verify_header(bundle, validators)
            self._remember(self._headers, key, header)
        if header.height < last.from_height:
            raise BundleInvalid(
                PART_CHAIN,
                f"the bundle carries a transition at height {last.from_height}, after the sealing height {header.height}",
            )
        return header

    def _verify_header(self, bundle: Bundle, validators: ValidatorSet) -> BlockHeader:
        try:
            header = _decode_header(bundle.header)
        except (codec.CodecError, BlockError) as exc:
            raise BundleInvalid(PART_HEADER, f"malformed header: {exc}") from None
        try:
            verify_seals(Block(header, (), bundle.commit_round, bundle.seals), validators)
        except BlockError as exc:
            if header.validators_hash != validators.hash and _signed_by_its_sealers(
                header, bundle.commit_round, bundle.seals
            ):
                raise BundleInvalid(PART_CHAIN, self._unreached_set(header)) from None
            raise BundleInvalid(PART_HEADER, f"header {header.height} is not sealed by a quorum: {exc}") from None
        if header.chain_id != self.genesis.chain_id:
            raise BundleInvalid(
                PART_CHAIN, f"header is from chain {header.chain_id!r}, not {self.genesis.chain_id!r}"
            )
        if header.genesis_hash != self.genesis.hash:
            # The seals cover the header's genesis hash: a bundle relabelled to
            # another genesis (a twin with the same chain id and keys) ends here.
            raise BundleInvalid(
                PART_CHAIN,
                f"header {header.height} is sealed on genesis {header.genesis_hash.hex()}, "
                f"not the given genesis {self.genesis.hash.hex()}",
            )
        if header.validators_hash != validators.hash:
            raise BundleInvalid(PART_CHAIN, self._unreached_set(header))
        return header

    @staticmethod
    def _unreached_set(header: BlockHeader) -> str:
        return (
            f"header {header.height} was decided by validator set {header.validators_hash.hex()}, which the bundle's "
            "validator set chain does not end with (a transition is missing, or one is after the sealing height)"
        )

    def _remember(self, cache: OrderedDict[tuple[Any, ...], Any], key: tuple[Any, ...], value: Any) -> None:
        cache[key] = value
        if len(cache) > self._cache_size:
            cache.popitem(last=False)


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
