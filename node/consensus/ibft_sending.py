"""The outgoing half of the IBFT core: proposing, round changes, and every
signature, each made under the double-sign watermark (``safety.py``).

A mixin of :class:`node.consensus.ibft.IbftCore`. Each signature appends a
Persist (when the watermark moves) and then its Broadcast to the outputs, in
that order, and delivers the core's own PREPARE/COMMIT to itself.
"""

from __future__ import annotations

from typing import Any

from node.base.codec import encode
from node.base.keys import Identity
from node.consensus import messages as m
from node.consensus.block import Block
from node.consensus.block_rules import earliest_timestamp
from node.consensus.ibft_state import CoreState, Justification
from node.consensus.outputs import Broadcast, NeedProposal, Output, Persist
from node.consensus.safety import SafetyState


def _payload_fields(signed: m.Signed) -> dict[str, Any]:
    """The payload map a parsed signed message was made from."""
    if signed.kind == m.ROUND_CHANGE:
        return m.round_change_payload(signed.height, signed.round, signed.prepared_round, signed.prepared_digest)
    if signed.kind == m.COMMIT:
        assert signed.digest is not None and signed.seal is not None  # parse_signed sets both on a COMMIT
        return m.commit_payload(signed.height, signed.round, signed.digest, signed.seal)
    return {"kind": signed.kind, "height": signed.height, "round": signed.round, "digest": signed.digest}


class CoreSending(CoreState):
    """Signing half of the core (see the module doc)."""

    # -- proposing ---------------------------------------------------------------------
    def _try_propose_new_round(self, out: list[Output]) -> None:
        if self._round == 0 or not self._is_proposer(self._round) or self._proposal_sent_round == self._round:
            return
        if self._signed_at(self._round, m.STEP[m.PROPOSAL]):
            return
        justification = self._round_change_justification()
        if justification is None:
            return
        if justification[1] is not None:
            self._send_proposal(justification[1][1], justification, out)
        elif self._awaiting is None:
            self._request_proposal(out)

    def _request_proposal(self, out: list[Output]) -> None:
        if not self._is_proposer(self._round) or self._proposal_sent_round == self._round:
            return
        self._awaiting = (self._height, self._round)
        out.append(NeedProposal(self._height, self._round, self.tip, earliest_timestamp(self.tip, self.genesis)))

    def _send_proposal(self, block: Block, justification: Justification | None, out: list[Output]) -> None:
        round_changes: tuple[m.Signed, ...] = ()
        prepares: tuple[m.Signed, ...] = ()
        if justification is not None:
            rcs, best = justification
            round_changes = tuple(rc.signed for rc in rcs)
            if best is not None:
                prepares = best[2]
        self._proposal_sent_round = self._round
        message = self._sign_and_send(
            m.proposal_payload(self._height, self._round, block.hash), out,
            block=block, round_changes=round_changes, prepares=prepares,
        )
        if message is not None:
            self._on_proposal(message, out)

    def _send_round_change(self, out: list[Output]) -> None:
        prepared = self._prepared
        if prepared is None:
            payload = m.round_change_payload(self._height, self._round, None, None)
            message = self._sign_and_send(payload, out)
        else:
            pr, block, cert = prepared
            payload = m.round_change_payload(self._height, self._round, pr, block.hash)
            message = self._sign_and_send(payload, out, block=block, prepares=cert)
        if message is not None:
            self._round_changes[message.signed.sender] = message

    def _resend_last_signed(self, out: list[Output]) -> None:
        """After a restart nothing sent in this round is in memory: rebuild the
        last signed message from the persisted payload (Ed25519 signatures are
        deterministic, so it is byte-identical) so peers learn our round."""
        mark = self._safety
        if not self.is_validator or (mark.height, mark.round) != (self._height, self._round) or mark.signed_payload is None:
            return
        fields = m.parse_signed([self.key, mark.signed_payload, bytes(64)])
        prepared = self._prepared
        if fields.kind in (m.PREPARE, m.COMMIT):
            self._sign_and_send(_payload_fields(fields), out)
        elif fields.kind == m.ROUND_CHANGE:
            if prepared is None:
                self._sign_and_send(_payload_fields(fields), out)
            elif prepared[0] == fields.prepared_round:
                _, block, cert = prepared
                self._sign_and_send(_payload_fields(fields), out, block=block, prepares=cert)

    # -- signing under the safety watermark -------------------------------------------
    def _signer(self) -> Identity | None:
        """Our identity if we sign in this chain's consensus (we are a validator), else None."""
        return self.identity if self.is_validator else None

    def _signed_at(self, round_number: int, step: int) -> bool:
        mark = self._safety
        return (mark.height, mark.round, mark.step) >= (self._height, round_number, step)

    def _sign_and_send(
        self, fields: dict[str, Any], out: list[Output], *, block: Block | None = None,
        round_changes: tuple[m.Signed, ...] = (), prepares: tuple[m.Signed, ...] = (),
    ) -> m.Message | None:
        """Sign under the watermark: Persist (if new), then Broadcast."""
        signer = self._signer()
        if signer is None:
            return None
        payload = encode(fields)
        step = m.STEP[fields["kind"]]
        if not self._safety.may_sign(self._height, fields["round"], step, payload):
            self.counters["refused_double_sign"] += 1
            return None
        if (self._safety.height, self._safety.round, self._safety.step) != (self._height, fields["round"], step):
            prepared = self._prepared
            self._safety = SafetyState(
                height=self._height,
                round=fields["round"],
                step=step,
                signed_payload=payload,
                prepared_round=None if prepared is None else prepared[0],
                prepared_block=None if prepared is None else prepared[1].encode(),
                prepared_certificate=() if prepared is None else tuple((p.sender, p.payload, p.signature) for p in prepared[2]),
            )
            out.append(Persist(self._safety))
        signature = signer.sign(m.SIGN_TAG, payload)
        signed = m.parse_signed([self.key, payload, signature])
        self._verified[(signed.sender, m.SIGN_TAG.encode() + payload, signature)] = True
        message = m.Message(signed, block, round_changes, prepares)
        out.append(Broadcast(message.encode(), signed.kind, signed.height, signed.round))
        if signed.round == self._round:
            self._sent_this_round.append((message.encode(), signed.kind))
        # Deliver our own vote to ourselves (a proposal is handled by its caller).
        if signed.kind == m.PREPARE:
            self._on_prepare(signed, out)
        elif signed.kind == m.COMMIT:
            self._on_commit(signed, out)
        return message
