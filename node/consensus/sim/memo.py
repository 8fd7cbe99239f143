"""Verification memoised for a whole simulated run.

Signature and VRF verification are pure functions of their arguments, so
sharing their results between the simulated nodes of one run changes nothing
but speed: every core still asks for every check it makes, and a forged
signature or proof is still refused (a wrong answer is remembered as wrong).
Without them the simulator spends most of its time re-verifying the same
seals and seed proofs once per node and per path (proposal, commit, sync).
"""

from __future__ import annotations

from node.base.keys import verify
from node.consensus.block_rules import vrf_valid


class MemoVerifier:
    """Ed25519 verification (``block.Verifier``) memoised for the run."""

    def __init__(self) -> None:
        self._memo: dict[tuple[bytes, str, bytes, bytes], bool] = {}

    def __call__(self, key: bytes, tag: str, message: bytes, signature: bytes) -> bool:
        entry = (key, tag, message, signature)
        hit = self._memo.get(entry)
        if hit is None:
            hit = self._memo[entry] = verify(key, tag, message, signature)
        return hit


class MemoVrfVerifier:
    """RFC 9381 proof verification (``block.VrfVerifier``) memoised for the
    run: each block's seed proof is checked once, whichever node and path asks."""

    def __init__(self) -> None:
        self._memo: dict[tuple[bytes, bytes, bytes], bool] = {}
        self.computed = 0  # verifications actually carried out
        self.asked = 0

    def __call__(self, public_key: bytes, proof: bytes, alpha: bytes) -> bool:
        self.asked += 1
        entry = (public_key, proof, alpha)
        hit = self._memo.get(entry)
        if hit is None:
            self.computed += 1
            hit = self._memo[entry] = vrf_valid(public_key, proof, alpha)
        return hit
