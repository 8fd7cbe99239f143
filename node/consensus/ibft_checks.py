"""Checks the IBFT core applies to what it receives: signatures (verified
once and cached), prepare certificates, round changes, proposal justification
(QBFT's ``isProposalJustification``) and block acceptability.

A mixin of :class:`node.consensus.ibft.IbftCore`: it reads the core's state
but changes nothing except its caches and counters.
"""

from __future__ import annotations

from collections.abc import Sequence

from node.consensus import messages as m
from node.consensus.block import Block, BlockError
from node.consensus.block_rules import check_block_contents
from node.consensus.ibft_state import CoreState, Justification, Prepared

_VERIFIED_CACHE_MAX = 8192
_APP_CACHE_MAX = 64


class CoreChecks(CoreState):
    """Verification half of the core (see the module doc)."""

    def _cached_verify(self, key: bytes, tag: str, message: bytes, signature: bytes) -> bool:
        entry = (key, tag.encode() + message, signature)
        hit = self._verified.get(entry)
        if hit is None:
            if len(self._verified) >= _VERIFIED_CACHE_MAX:
                self._verified.clear()
            hit = self._verifier(key, tag, message, signature)
            self._verified[entry] = hit
        return hit

    def _cached_vrf(self, key: bytes, proof: bytes, alpha: bytes) -> bool:
        """The VRF verdict on a seed proof, computed once (see block.py for its cost)."""
        entry = (key, proof, alpha)
        hit = self._vrf_verified.get(entry)
        if hit is None:
            if len(self._vrf_verified) >= _APP_CACHE_MAX:
                self._vrf_verified.clear()
            hit = self._vrf_verifier(key, proof, alpha)
            self._vrf_verified[entry] = hit
        return hit

    def _verify(self, signed: m.Signed) -> bool:
        return signed.sender in self.validators and self._cached_verify(
            signed.sender, m.SIGN_TAG, signed.payload, signed.signature
        )

    def _valid_certificate(self, prepares: Sequence[m.Signed], round_number: int, digest: bytes) -> bool:
        """A quorum of distinct validators' valid PREPAREs for (height, round, digest)."""
        senders = set()
        for p in prepares:
            if p.height != self._height or p.round != round_number or p.digest != digest:
                return False
            if p.sender in senders or not self._verify(p):
                return False
            senders.add(p.sender)
        return len(senders) >= self.validators.quorum

    def _valid_round_change(self, message: m.Message) -> bool:
        s = message.signed
        if s.prepared_round is None:
            return True
        return (
            message.block is not None
            and message.block.hash == s.prepared_digest
            and self._valid_certificate(message.prepares, s.prepared_round, s.prepared_digest)
        )

    def _block_acceptable(self, block: Block) -> bool:
        # Drift is judged against the local clock at every look; the rest is a
        # pure function of the block and parent, so it is cached per digest.
        if block.header.timestamp_ms > self._now + self.genesis.limits.max_timestamp_drift_ms:
            self.counters["proposal_from_future"] += 1
            return False
        digest = block.hash
        ok = self._app_ok.get(digest)
        if ok is None:
            try:
                check_block_contents(block, self.tip, self.validators, self.genesis,
                                     next_validators=self._next_validators(), vrf_verifier=self._cached_vrf)
                ok = bool(self._validate_block(block.header, block.transactions))
            except BlockError:
                ok = False
            if not ok:
                self.counters["proposal_invalid_block"] += 1
            if len(self._app_ok) >= _APP_CACHE_MAX:  # a Byzantine proposer may send many
                self._app_ok.clear()
            self._app_ok[digest] = ok
        return ok

    def _justified(self, message: m.Message) -> bool:
        """QBFT's isProposalJustification for this proposal."""
        s, block = message.signed, message.block
        assert block is not None
        if s.round == 0:
            return block.header.round == 0 and self._block_acceptable(block)
        senders = set()
        highest: tuple[int, bytes] | None = None  # the highest (prepared round, prepared digest) named
        for rc in message.round_changes:
            if rc.height != self._height or rc.round != s.round or rc.sender in senders:
                return False
            if not self._verify(rc):
                return False
            senders.add(rc.sender)
            # parse_signed sets prepared_round and prepared_digest both or neither
            if rc.prepared_round is not None and rc.prepared_digest is not None and (
                highest is None or rc.prepared_round > highest[0]
            ):
                highest = (rc.prepared_round, rc.prepared_digest)
        if len(senders) < self.validators.quorum:
            return False
        if highest is None:
            return block.header.round == s.round and self._block_acceptable(block)
        # Re-proposal: the block of the highest prepared round, with its certificate.
        # Another round change with the same prepared round may name another digest
        # only if a certificate for it exists too, which quorum intersection rules out.
        prepared_round, prepared_digest = highest
        if block.hash != prepared_digest:
            return False
        return self._valid_certificate(message.prepares, prepared_round, block.hash) and self._block_acceptable(block)

    def _round_change_justification(self) -> Justification | None:
        """A quorum of ROUND-CHANGEs for the current round and the highest
        prepared (round, block, certificate) among them, or None if no quorum."""
        rcs = [rc for rc in self._round_changes.values() if rc.signed.round == self._round]
        if len(rcs) < self.validators.quorum:
            return None
        rcs.sort(key=lambda rc: rc.signed.sender)
        best: Prepared | None = None
        for rc in rcs:
            pr = rc.signed.prepared_round
            # decode_message (and our own round changes) attach the block to a prepared round
            if pr is not None and rc.block is not None and (best is None or pr > best[0]):
                best = (pr, rc.block, rc.prepares)
        return rcs, best

