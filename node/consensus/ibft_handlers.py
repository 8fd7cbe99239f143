"""The IBFT core's message handlers: what a PROPOSAL, PREPARE, COMMIT or
ROUND-CHANGE for the current height does to the core's state.

A mixin of :class:`node.consensus.ibft.IbftCore`. The core proper
(node/consensus/ibft.py) takes inputs, keeps the height and round
bookkeeping and dispatches each message once it has passed the checks every
message gets (height, sender, signature; future heights are buffered
there). What is left is QBFT's per-message rules, here: accept a proposal
and PREPARE it, COMMIT on a quorum of PREPAREs, finalise on a quorum of
COMMITs (also for a block learnt later, or in a round we left), and follow
f+1 ROUND-CHANGEs to a later round. They are the part of the core a reader
checks against the protocol (``/work/shared/notes/ibft.md``), so they sit
together, apart from the plumbing. Verification comes from
:class:`~node.consensus.ibft_checks.CoreChecks`, signing from
:class:`~node.consensus.ibft_sending.CoreSending`; the state they share is
declared on :class:`~node.consensus.ibft_state.CoreState`.
"""

from __future__ import annotations

from node.consensus import messages as m
from node.consensus.block import SEAL_TAG, Block, seal_message
from node.consensus.ibft_state import CoreState
from node.consensus.outputs import NeedSync, Output

ROUND_WINDOW = 16  # PREPAREs/COMMITs for rounds beyond current+16 are dropped
COMMIT_ROUNDS_PER_SENDER = 3  # commit rounds remembered per validator
_BLOCKS_MAX = 32  # known blocks kept (beyond the accepted and prepared ones)


class CoreHandlers(CoreState):
    """Message-handling part of the core (see the module doc)."""

    def _on_proposal(self, message: m.Message, out: list[Output]) -> None:
        s, block = message.signed, message.block
        r = s.round
        if r < self._round or (r == self._round and self._accepted is not None):
            self.counters["dropped_old_round" if r < self._round else "duplicate"] += 1
            return
        if s.sender != self.validators.proposer(self.tip.proposer, r):
            self.counters["dropped_wrong_proposer"] += 1
            return
        if block is None or block.hash != s.digest or not self._justified(message):
            self.counters["dropped_invalid_proposal"] += 1
            return
        if r > self._round:
            self._enter_round(r, "proposal", out, send_rc=False)
        self._accepted = (r, s.digest)
        self._remember_block(block)
        height = self._height
        self._sign_and_send(m.prepare_payload(height, r, s.digest), out)
        if self._height == height:
            self._check_prepares(out)
        if self._height == height:
            self._commits_for_known_block(s.digest, out)

    def _on_prepare(self, s: m.Signed, out: list[Output]) -> None:
        if s.round < self._round:
            self.counters["dropped_old_round"] += 1
            return
        if s.round > self._round + ROUND_WINDOW:
            self.counters["dropped_far_future_round"] += 1
            return
        votes = self._prepares.setdefault(s.round, {})
        previous = votes.get(s.sender)
        if previous is not None:
            self.counters["duplicate" if previous.payload == s.payload else "equivocation"] += 1
            return
        votes[s.sender] = s
        assert s.digest is not None  # parse_signed sets it on every PREPARE
        self._prepare_count[(s.round, s.digest)] += 1
        if s.round == self._round:
            self._check_prepares(out)

    def _check_prepares(self, out: list[Output]) -> None:
        if self._accepted is None or self._commit_sent_round == self._round:
            return
        round_number, digest = self._accepted
        if self._prepare_count[(round_number, digest)] < self.validators.quorum:
            return
        votes = [p for p in self._prepares.get(round_number, {}).values() if p.digest == digest]
        certificate = tuple(sorted(votes, key=lambda p: p.sender)[: self.validators.quorum])
        self._prepared = (round_number, self._blocks[digest], certificate)
        self._commit_sent_round = round_number
        signer = self._signer()
        if signer is not None:
            sealed = seal_message(digest, round_number)
            seal = signer.sign(SEAL_TAG, sealed)
            self._verified[(signer.public_key, SEAL_TAG.encode() + sealed, seal)] = True
            self._sign_and_send(m.commit_payload(self._height, round_number, digest, seal), out)

    def _on_commit(self, s: m.Signed, out: list[Output]) -> None:
        if s.round > self._round + ROUND_WINDOW:
            self.counters["dropped_far_future_round"] += 1
            return
        assert s.digest is not None and s.seal is not None  # parse_signed sets both on every COMMIT
        key = (s.round, s.digest)
        votes = self._commits.get(key, {})
        if s.sender in votes:
            self.counters["duplicate"] += 1
            return
        if not self._cached_verify(s.sender, SEAL_TAG, seal_message(s.digest, s.round), s.seal):
            self.counters["dropped_bad_seal"] += 1
            return
        remembered = self._commit_rounds.setdefault(s.sender, [])
        if any(r == s.round for r, _ in remembered):
            self.counters["equivocation"] += 1
            return
        remembered.append(key)
        if len(remembered) > COMMIT_ROUNDS_PER_SENDER:
            remembered.sort()
            evicted = remembered.pop(0)
            self._commits.get(evicted, {}).pop(s.sender, None)
            if evicted == key:
                return
        self._commits.setdefault(key, {})[s.sender] = s.seal
        self._check_commits(key, out)

    def _check_commits(self, key: tuple[int, bytes], out: list[Output]) -> None:
        seals = self._commits.get(key, {})
        if len(seals) < self.validators.quorum:
            return
        round_number, digest = key
        block = self._blocks.get(digest)
        if block is None:
            if not self._sync_requested:
                self._sync_requested = True
                out.append(NeedSync(self._height, tuple(sorted(seals))))
            return
        self._finalize(block.with_seals(round_number, list(seals.items())), out)

    def _commits_for_known_block(self, digest: bytes, out: list[Output]) -> None:
        """A block just became known: commits may already be waiting for it."""
        height = self._height
        for key in [k for k in self._commits if k[1] == digest]:
            if self._height != height:
                return
            self._check_commits(key, out)

    def _on_round_change(self, message: m.Message, out: list[Output]) -> None:
        s = message.signed
        if s.round < self._round:
            self.counters["dropped_old_round"] += 1
            return
        previous = self._round_changes.get(s.sender)
        if previous is not None and previous.signed.round >= s.round:
            self.counters["duplicate" if previous.signed.payload == s.payload else "dropped_old_round"] += 1
            return
        if not self._valid_round_change(message):
            self.counters["dropped_invalid_round_change"] += 1
            return
        self._round_changes[s.sender] = message
        if message.block is not None:
            self._remember_block(message.block)
            height = self._height
            self._commits_for_known_block(message.block.hash, out)
            if self._height != height:
                return
        # f+1 validators are past our round: at least one honest one is, so skip
        # to the highest round that f+1 of them have reached.
        ahead = sorted((rc.signed.round for rc in self._round_changes.values() if rc.signed.round > self._round), reverse=True)
        if len(ahead) > self.validators.f:
            self.counters["round_skips"] += 1
            self._enter_round(ahead[self.validators.f], "round-change", out)
        elif s.round == self._round:
            self._try_propose_new_round(out)

    def _remember_block(self, block: Block) -> None:
        if len(self._blocks) >= _BLOCKS_MAX:
            keep = {d for d in (self._accepted[1] if self._accepted else None,) if d}
            if self._prepared is not None:
                keep.add(self._prepared[1].hash)
            self._blocks = {d: b for d, b in self._blocks.items() if d in keep}
        self._blocks[block.hash] = block
