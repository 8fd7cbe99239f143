"""Why a receipt or a proof failed verification.

Every failure carries one :class:`Reason` whose value is a stable code: the
offline verifier maps them to exit codes and an auditor's tooling may match
on them, so a code is never renamed or reused; new failures get new codes.

==========================  =================================================
code                        meaning
==========================  =================================================
``too-large``               envelope is bigger than MAX_ENVELOPE_SIZE
``malformed``               envelope or body is not well-formed CBOR
``non-canonical``           well-formed CBOR, but not the one deterministic
                            encoding (key order, lengths, floats, tags...)
``bad-envelope``            not a map of exactly ``sig`` (64 bytes) and
                            ``body`` (bytes)
``unsupported-version``     body ``version`` is not one this code knows
``unknown-kind``            body ``kind`` is not a known receipt kind
``schema``                  a body field is missing, unknown, or of the
                            wrong type, size or value (the field is named)
``issuer-mismatch``         ``issuer.node`` is not the peer id of
                            ``issuer.key``
``bad-signature``           the signature is not the issuer's over the body
``unexpected-issuer``       valid, but signed by another key than expected
``chain-break``             ``prev`` is not the issuer's previous receipt id
``proof-malformed``         a Merkle proof is the wrong shape for its sizes
``proof-mismatch``          a Merkle proof does not lead to the given root(s)
==========================  =================================================
"""

from __future__ import annotations

from enum import StrEnum


class Reason(StrEnum):
    TOO_LARGE = "too-large"
    MALFORMED = "malformed"
    NON_CANONICAL = "non-canonical"
    BAD_ENVELOPE = "bad-envelope"
    UNSUPPORTED_VERSION = "unsupported-version"
    UNKNOWN_KIND = "unknown-kind"
    SCHEMA = "schema"
    ISSUER_MISMATCH = "issuer-mismatch"
    BAD_SIGNATURE = "bad-signature"
    UNEXPECTED_ISSUER = "unexpected-issuer"
    CHAIN_BREAK = "chain-break"
    PROOF_MALFORMED = "proof-malformed"
    PROOF_MISMATCH = "proof-mismatch"


class VerificationError(ValueError):
    """Something failed verification; ``reason`` says why, ``detail`` where."""

    def __init__(self, reason: Reason, detail: str) -> None:
        super().__init__(f"{reason.value}: {detail}")
        self.reason = reason
        self.detail = detail


class ReceiptError(VerificationError):
    """A receipt envelope was rejected (or could not be built)."""

    def __init__(self, reason: Reason, detail: str, field: str | None = None) -> None:
        super().__init__(reason, detail)
        self.field = field


class ProofError(VerificationError):
    """A Merkle inclusion or consistency proof was rejected."""
