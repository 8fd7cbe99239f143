"""The IBFT 2.0 (QBFT) consensus core: sans-I/O, events in, outputs out.

Driving it (a shell, or the simulator)::

    core = IbftCore(genesis, identity, tip_header, safety=store.load(),
                    validate_block=app_check, validators_at=app.validator_set_at)
    outputs = core.start(now_ms)
    # then, forever, feed it what happens and carry out what it returns:
    outputs = core.on_message(wire_bytes, now_ms)      # a consensus message
    outputs = core.tick(now_ms)                        # at/after SetTimer's deadline
    outputs = core.propose(h, r, txs, timestamp_ms, now_ms)  # answer to NeedProposal
    outputs = core.transactions_pending(now_ms)  # when wants_transactions and txs wait
    outputs = core.on_block(block, now_ms)             # a finalised block (sync/announce)
    outputs = core.resume(now_ms)   # after carrying out a batch that held a Finalized

When to propose: a round-0 proposer asks for its block (NeedProposal) at
the heartbeat, parent timestamp + ``block_period_ms``, unless the shell says
meanwhile that transactions wait (``transactions_pending``, worth calling
while ``wants_transactions``): then as soon as the timestamp rule allows,
parent timestamp + ``min_block_interval_ms``, at once if that has passed.
The core does not see the mempool; the shell does not keep time for it.

Outputs (``node.consensus.outputs``) must be carried out in order; a Persist
must be durable before anything after it is sent. The core reads no clock,
does no I/O and draws no randomness: the same inputs give the same outputs.

This module holds the inputs, the height and round bookkeeping and the
dispatch of each message after the checks every message gets (height,
sender, signature; later heights are buffered). The rest of the class is
in mixins, by concern: ``ibft_handlers.py`` (what each message type does),
``ibft_checks.py`` (verification), ``ibft_sending.py`` (signing under the
double-sign watermark), all over the state declared in ``ibft_state.py``.

Rules are QBFT's (``/work/shared/notes/ibft.md``, Dafny ``node.dfy``).
Deviations worth naming: the proposer also broadcasts a PREPARE for its own
proposal (so a prepare certificate is always a quorum of PREPAREs); a block
re-proposed in a later round keeps its header (seals bind the commit round
instead, see block.py); a quorum of same-round COMMITs for a known block
finalises it even after we left that round; and a round timeout moves past
round r >= 1 only once a quorum (counting us) has been seen in round r or
later; otherwise the core holds r and resends what it signed in it. With
capped timers, validators that drift apart by whole rounds would otherwise
stay apart for ever (each advancing one round per capped timeout).

Validator-set changes: ``validators_at(h)`` is the set that decides height h
(proposer, quorum, f, who may send, and whether this node signs), read when
the core enters h; a header carries ``next_validators_hash`` =
``validators_at(h + 1).hash``, which the core reads only once the parent
block has been applied (proposals are built and judged after ``resume()``).
A message for a later height is kept if its sender is in that height's set
(h + 1), or in a set the core knows (h + 2 and beyond), and its sender is
checked again against the exact set when it is replayed. One safety
watermark covers the key whatever the set: a validator removed and added
again never signs twice at one (height, round, step).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Sequence

from node.base.keys import Identity, verify
from node.consensus import messages as m
from node.consensus.block import (
    EMPTY_ROOT,
    Block,
    BlockError,
    BlockHeader,
    make_seed_proof,
    max_encoded_block_size,
    seed_alpha,
)
from node.consensus.block_rules import (
    Verifier,
    VrfVerifier,
    build_block,
    earliest_timestamp,
    heartbeat_timestamp,
    verify_block,
    vrf_valid,
)
from node.consensus.buffer import FutureBuffer
from node.consensus.genesis import Genesis
from node.consensus.ibft_checks import CoreChecks
from node.consensus.ibft_handlers import CoreHandlers
from node.consensus.ibft_sending import CoreSending
from node.consensus.ibft_state import BlockValidator
from node.consensus.outputs import (
    Broadcast,
    Finalized,
    NeedSync,
    Output,
    RoundStarted,
    SetTimer,
)
from node.consensus.safety import SafetyState
from node.consensus.validators import ValidatorSet

FUTURE_HEIGHTS = 2  # messages for heights h+1..h+2 are buffered, further ones dropped
FUTURE_PER_SENDER = 16  # buffered future-height messages per validator (and 2 blocks' bytes)


def accept_all(header: BlockHeader, transactions: Sequence[bytes]) -> bool:
    """Default application check: every block's transactions are acceptable."""
    return True


class IbftCore(CoreHandlers, CoreChecks, CoreSending):
    """One validator's (or observer's) IBFT state machine. See the module doc.

    Its attributes are declared, with their types, on ``ibft_state.CoreState``."""

    def __init__(
        self,
        genesis: Genesis,
        identity: Identity | None,
        tip: BlockHeader,
        *,
        safety: SafetyState | None = None,
        validate_block: BlockValidator = accept_all,
        verifier: Verifier = verify,
        vrf_verifier: VrfVerifier = vrf_valid,
        validators_at: Callable[[int], ValidatorSet] | None = None,
    ) -> None:
        """``validators_at(h)``: the validator set deciding height h (default:
        the genesis set at every height); ``verifier`` and ``vrf_verifier``
        check signatures and seed proofs (the core caches both verdicts)."""
        self.genesis = genesis
        self.identity = identity
        self.key = identity.public_key if identity is not None else None
        self.tip = tip
        self.counters = Counter()
        self._validate_block = validate_block
        self._verifier = verifier
        self._vrf_verifier = vrf_verifier
        self._vrf_verified = {}
        self._validators_at = validators_at if validators_at is not None else self._genesis_set
        self._max_block = max_encoded_block_size(genesis)
        self._max_message = m.max_message_size(self._max_block)
        self._safety = safety if safety is not None else SafetyState(height=0)
        self._verified = {}
        self._future = FutureBuffer(FUTURE_PER_SENDER, 2 * self._max_block)
        self._ahead = {}
        self._now = 0
        self._timer_emitted = None
        self._reset_height(tip.height + 1)

    def _genesis_set(self, height: int) -> ValidatorSet:
        return self.genesis.validator_set

    # -- public inputs -----------------------------------------------------
    @property
    def height(self) -> int:
        return self._height

    @property
    def round(self) -> int:
        return self._round

    @property
    def wants_transactions(self) -> bool:
        """This node proposes round 0 of this height and still waits for the
        heartbeat: transactions pending now would make it propose sooner
        (tell it with :meth:`transactions_pending`)."""
        return self._propose_early is not None

    @property
    def next_deadline_ms(self) -> int | None:
        deadlines = [d for d in (self._round_deadline, self._propose_deadline) if d is not None]
        return min(deadlines) if deadlines else None

    def start(self, now_ms: int) -> list[Output]:
        """Begin at the height after ``tip``, resuming the persisted round."""
        self._now = now_ms
        out: list[Output] = []
        saved = self._safety
        if saved.height == self._height:
            self._round = saved.round
            if saved.prepared_round is not None and saved.prepared_block is not None:
                block = Block.decode(saved.prepared_block, max_size=self._max_block)
                cert = tuple(m.parse_signed(list(p)) for p in saved.prepared_certificate)
                self._prepared = (saved.prepared_round, block, cert)
                self._blocks[block.hash] = block
            reason = "restart"
        else:
            reason = "new-height"
        self._begin_round(out, reason)
        if saved.height > self._height:
            # We signed at a height our chain does not reach: the store lost
            # blocks. The watermark keeps us from signing; ask for them.
            out.append(NeedSync(self._height, ()))
        return self._finish(out)

    def tick(self, now_ms: int) -> list[Output]:
        """Fire whatever deadline has passed (round timeout, block period)."""
        self._now = now_ms
        out: list[Output] = []
        if self._propose_deadline is not None and now_ms >= self._propose_deadline:
            self._propose_deadline = self._propose_early = None
            self._request_proposal(out)
        if self._round_deadline is not None and now_ms >= self._round_deadline:
            self.counters["round_timeouts"] += 1
            ahead = sorted(k for k, h in self._ahead.items() if h > self._height)
            if ahead or self._round >= 1:
                # A second timeout at one height asks peers for blocks even when no
                # validator is seen ahead: after a set change the only nodes ahead
                # may be non-validators, who send no consensus messages at all.
                out.append(NeedSync(self._height, tuple(ahead)))
            if self._round == 0 or self._quorum_at_or_past(self._round):
                self._enter_round(self._round + 1, "timeout", out)
            else:
                # Too few validators have reached this round: moving on alone
                # would only widen the gap (with capped timers, for ever). Hold
                # the round and resend what we signed in it, so that peers who
                # lost it can catch up.
                self.counters["round_timeouts_held"] += 1
                self._round_deadline = now_ms + self.genesis.round_timeout_ms(self._round)
                if self._sent_this_round:
                    for data, kind in self._sent_this_round:
                        out.append(Broadcast(data, kind, self._height, self._round))
                else:
                    self._resend_last_signed(out)
        return self._finish(out)

    def transactions_pending(self, now_ms: int) -> list[Output]:
        """The shell has transactions to propose: a round-0 proposer waiting for
        the heartbeat asks for its block as soon as the timestamp rule allows
        (at once if it already does). Otherwise (not proposing, asked already,
        told already) nothing happens: calling it again is harmless."""
        self._now = now_ms
        out: list[Output] = []
        if self._propose_early is not None and self._propose_deadline is not None:
            self._propose_deadline = min(self._propose_deadline, self._propose_early)
            self._propose_early = None
            if now_ms >= self._propose_deadline:
                self._propose_deadline = None
                self._request_proposal(out)
        return self._finish(out)

    def on_message(self, data: bytes, now_ms: int) -> list[Output]:
        """Handle one consensus message from the network."""
        self._now = now_ms
        out: list[Output] = []
        try:
            message = m.decode_message(data, max_size=self._max_message, max_block_size=self._max_block)
        except m.MessageError:
            self.counters["dropped_malformed"] += 1
            return []
        self._handle(message, out)
        return self._finish(out)

    def on_block(self, block: Block, now_ms: int) -> list[Output]:
        """A finalised block from block sync or a peer's announcement."""
        self._now = now_ms
        out: list[Output] = []
        if block.height < self._height:
            self.counters["block_old"] += 1
            return []
        if block.height > self._height:
            self.counters["block_gap"] += 1
            return [NeedSync(self._height, ())]
        try:
            verify_block(block, self.tip, self.validators, self.genesis, next_validators=self._next_validators(),
                         verifier=self._cached_verify, vrf_verifier=self._cached_vrf)
        except BlockError:
            self.counters["block_invalid"] += 1
            return []
        self.counters["blocks_synced"] += 1
        self._finalize(block, out)
        return self._finish(out)

    def propose(
        self, height: int, round_number: int, transactions: Sequence[bytes], timestamp_ms: int,
        now_ms: int, *, receipts_size: int = 0, receipts_root: bytes | None = None,
    ) -> list[Output]:
        """Answer a NeedProposal with the block's content. A stale answer (the
        core has moved on) is ignored. Raises BlockError if the content breaks
        the genesis limits."""
        self._now = now_ms
        out: list[Output] = []
        signer = self._signer()
        if (height, round_number) != self._awaiting or signer is None:
            self.counters["proposal_stale"] += 1
            return []
        self._awaiting = None
        justification = self._round_change_justification() if round_number > 0 else None
        if round_number > 0 and justification is None:
            self.counters["proposal_stale"] += 1
            return []
        if justification is not None and justification[1] is not None:
            # A prepared block turned up meanwhile: it must be re-proposed.
            self._send_proposal(justification[1][1], justification, out)
            return self._finish(out)
        seed_proof = make_seed_proof(signer, self.genesis.hash, self.tip)
        alpha = seed_alpha(self.genesis.hash, self._height, self.tip.seed)
        self._vrf_verified[(signer.public_key, seed_proof, alpha)] = True  # our own proof
        block = build_block(
            self.genesis, self.tip, signer.public_key, round_number, transactions, timestamp_ms,
            receipts_size=receipts_size, receipts_root=EMPTY_ROOT if receipts_root is None else receipts_root,
            validators=self.validators, next_validators=self._next_validators(), seed_proof=seed_proof,
            vrf_verifier=self._cached_vrf,
        )
        self._send_proposal(block, justification, out)
        return self._finish(out)

    # -- height and round bookkeeping ------------------------------------------
    def _reset_height(self, height: int) -> None:
        self._height = height
        self.validators = self._validators_at(height)
        self.is_validator = self.key is not None and self.key in self.validators
        self._next_set = None  # validators_at(height + 1), read once the parent is applied
        self._round = 0
        self._accepted = None  # (round, digest) accepted this round
        self._prepared = None
        self._commit_sent_round = None
        self._proposal_sent_round = None
        self._prepares = {}
        self._prepare_count = Counter()  # O(1) quorum checks
        self._commits = {}
        self._commit_rounds = {}
        self._round_changes = {}
        self._seen_round = {}  # highest round each validator was seen in
        self._sent_this_round = []  # to resend when holding a round
        self._blocks = {}
        self._app_ok = {}
        self._round_deadline = None
        self._propose_deadline = None
        self._propose_early = None
        self._awaiting = None
        self._sync_requested = False
        self._replay_due = False  # buffered messages for this height await resume()

    def _begin_round(self, out: list[Output], reason: str) -> None:
        self._round_deadline = self._now + self.genesis.round_timeout_ms(self._round)
        self._propose_deadline = self._propose_early = None
        self._awaiting = None
        out.append(RoundStarted(self._height, self._round, reason))
        if self._round == 0 and self._is_proposer(0) and not self._signed_at(0, m.STEP[m.PROPOSAL]):
            # Wait for the heartbeat, or less once the shell says transactions
            # wait (transactions_pending). Others time out round 0 after
            # round_timeout_base_ms from their own start of the height, so a
            # genesis needs base > block_period_ms (+ latency) either way.
            self._propose_deadline = max(self._now, heartbeat_timestamp(self.tip, self.genesis))
            early = max(self._now, earliest_timestamp(self.tip, self.genesis))
            self._propose_early = early if early < self._propose_deadline else None
        self._try_propose_new_round(out)

    def _enter_round(self, round_number: int, reason: str, out: list[Output], send_rc: bool = True) -> None:
        self._round = round_number
        self._accepted = None
        self._sent_this_round = []
        for stale in [r for r in self._prepares if r < round_number]:
            del self._prepares[stale]
        for stale_vote in [k for k in self._prepare_count if k[0] < round_number]:
            del self._prepare_count[stale_vote]
        if send_rc:
            self._send_round_change(out)
        self._begin_round(out, reason)

    def _finalize(self, block: Block, out: list[Output]) -> None:
        out.append(Finalized(block))
        self.tip = block.header
        self._reset_height(block.height + 1)
        for key in [k for k, h in self._ahead.items() if h <= self._height]:
            del self._ahead[key]
        self._begin_round(out, "new-height")
        # Messages buffered for the new height wait for resume(): a proposal
        # among them is judged by validate_block against the application's
        # state, which holds the block just finalised only once the driver has
        # carried out the Finalized above. Judged now, against the parent's
        # state, a valid proposal looks invalid (and the verdict is cached).
        self._replay_due = True

    def resume(self, now_ms: int) -> list[Output]:
        """Call after carrying out a batch of outputs that held a Finalized
        block: handles the messages that were waiting for the new height.
        Its outputs may hold another Finalized (then call it again)."""
        self._now = now_ms
        out: list[Output] = []
        if self._replay_due:
            self._replay_due = False
            height = self._height
            for message in self._future.take(height):
                if self._height != height:
                    break  # finalised meanwhile: the rest were for that height (the next resume takes the new one's)
                self._handle(message, out)
        return self._finish(out)

    def _finish(self, out: list[Output]) -> list[Output]:
        deadline = self.next_deadline_ms
        if deadline is not None and deadline != self._timer_emitted:
            self._timer_emitted = deadline
            out.append(SetTimer(deadline))
        return out

    def _quorum_at_or_past(self, round_number: int) -> bool:
        """A quorum of validators (counting us) has been seen at this round or later."""
        seen = sum(1 for key, r in self._seen_round.items() if r >= round_number and key != self.key)
        return seen + (1 if self.is_validator else 0) >= self.validators.quorum

    def _is_proposer(self, round_number: int) -> bool:
        return self.is_validator and self.validators.proposer(self.tip.proposer, round_number) == self.key

    def _next_validators(self) -> ValidatorSet:
        """The set of the next height, which this height's header commits to.
        Read lazily: the application fixes it only once the parent block is
        applied, i.e. after the driver carried out its Finalized."""
        if self._next_set is None:
            self._next_set = self._validators_at(self._height + 1)
        return self._next_set

    def _may_send_at(self, key: bytes, height: int) -> bool:
        """Whether ``key`` may send messages for ``height`` (>= ours): a member of
        that height's set when we know it (ours and the next), else of a set we know."""
        if height == self._height:
            return key in self.validators
        if height == self._height + 1:
            return key in self._next_validators()
        return key in self.validators or key in self._next_validators()

    # -- message dispatch ------------------------------------------------------------
    def _handle(self, message: m.Message, out: list[Output]) -> None:
        s = message.signed
        if s.height < self._height:
            self.counters["dropped_old_height"] += 1
            return
        if not self._may_send_at(s.sender, s.height):
            self.counters["dropped_non_validator"] += 1
            return
        if not self._cached_verify(s.sender, m.SIGN_TAG, s.payload, s.signature):
            self.counters["dropped_bad_signature"] += 1
            return
        if s.height > self._height:
            if self._ahead.get(s.sender, 0) < s.height:
                self._ahead[s.sender] = s.height
            if s.height > self._height + FUTURE_HEIGHTS:
                self.counters["dropped_far_future_height"] += 1
            elif self._future.add(message):
                self.counters["buffered_future"] += 1
            else:
                self.counters["dropped_future_buffer_full"] += 1
            return
        if self._seen_round.get(s.sender, -1) < s.round:
            self._seen_round[s.sender] = s.round
        if s.kind == m.PROPOSAL:
            self._on_proposal(message, out)
        elif s.kind == m.PREPARE:
            self._on_prepare(s, out)
        elif s.kind == m.COMMIT:
            self._on_commit(s, out)
        else:
            self._on_round_change(message, out)
