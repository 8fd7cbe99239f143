"""The state of the IBFT core, declared once for the core and its mixins.

:class:`node.consensus.ibft.IbftCore` is split in four: the core proper
(inputs, height and round bookkeeping, message dispatch),
:class:`~node.consensus.ibft_handlers.CoreHandlers` (what each message does),
:class:`~node.consensus.ibft_checks.CoreChecks` (verification) and
:class:`~node.consensus.ibft_sending.CoreSending` (signing). All four read and
write the same attributes, which ``IbftCore.__init__`` and
``IbftCore._reset_height`` assign. Declaring them here, on the one base the
four share, gives each part the types of the state it works on without a
dependency on the others; the methods one part calls on another are declared
here too, for the type checker only. The class only declares: it holds no
values and defines no behaviour at run time.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

from node.base.keys import Identity
from node.consensus import messages as m
from node.consensus.block import Block, BlockHeader
from node.consensus.block_rules import Verifier, VrfVerifier
from node.consensus.buffer import FutureBuffer
from node.consensus.genesis import Genesis
from node.consensus.outputs import Output
from node.consensus.safety import SafetyState
from node.consensus.validators import ValidatorSet

# The application's verdict on a proposed block: its header and transactions.
BlockValidator = Callable[[BlockHeader, Sequence[bytes]], bool]
# A prepared round: (round, block, its prepare certificate).
Prepared = tuple[int, Block, tuple[m.Signed, ...]]
# A quorum of ROUND-CHANGEs for the current round and the highest prepared round among them.
Justification = tuple[list[m.Message], Prepared | None]


class CoreState:
    """The attributes of an IBFT core (see the module doc)."""

    # -- fixed for the core's life (set in __init__) ---------------------------------
    genesis: Genesis
    identity: Identity | None  # None: an observer, which never signs
    key: bytes | None  # identity's public key
    counters: Counter[str]
    _validate_block: BlockValidator
    _verifier: Verifier
    _vrf_verifier: VrfVerifier
    _vrf_verified: dict[tuple[bytes, bytes, bytes], bool]  # (key, seed proof, alpha) -> verdict
    _validators_at: Callable[[int], ValidatorSet]  # the set deciding each height
    _max_block: int  # largest encoded block the genesis allows
    _max_message: int  # largest encoded consensus message
    _verified: dict[tuple[bytes, bytes, bytes], bool]  # (key, tagged message, signature) -> verdict
    _future: FutureBuffer  # messages for heights just above ours
    _ahead: dict[bytes, int]  # validators seen at a higher height: key -> height
    _now: int  # the time of the input being handled, in ms
    _timer_emitted: int | None  # the last deadline sent out as a SetTimer

    # -- the chain and the double-sign watermark ----------------------------------------
    tip: BlockHeader
    _safety: SafetyState

    # -- this height (reset by _reset_height) ---------------------------------------------
    _height: int
    validators: ValidatorSet  # the set deciding this height: validators_at(_height)
    is_validator: bool  # we have a key and it is in this height's set: we sign at this height
    _next_set: ValidatorSet | None  # validators_at(_height + 1), once read
    _round: int
    _accepted: tuple[int, bytes] | None  # (round, digest) accepted this round
    _prepared: Prepared | None
    _commit_sent_round: int | None
    _proposal_sent_round: int | None
    _prepares: dict[int, dict[bytes, m.Signed]]  # round -> sender -> PREPARE
    _prepare_count: Counter[tuple[int, bytes]]  # (round, digest) -> PREPAREs: O(1) quorum checks
    _commits: dict[tuple[int, bytes], dict[bytes, bytes]]  # (round, digest) -> sender -> seal
    _commit_rounds: dict[bytes, list[tuple[int, bytes]]]  # sender -> the (round, digest)s it committed to
    _round_changes: dict[bytes, m.Message]  # sender -> its latest ROUND-CHANGE
    _seen_round: dict[bytes, int]  # highest round each validator was seen in
    _sent_this_round: list[tuple[bytes, str]]  # (message, kind), to resend when holding a round
    _blocks: dict[bytes, Block]  # known blocks by digest
    _app_ok: dict[bytes, bool]  # the application's verdict by block digest
    _round_deadline: int | None
    _propose_deadline: int | None  # when to ask for the round-0 proposal (the heartbeat until transactions wait)
    _propose_early: int | None  # the earliest it may be asked for, once the shell says transactions wait
    _awaiting: tuple[int, int] | None  # (height, round) of the NeedProposal awaiting an answer
    _sync_requested: bool
    _replay_due: bool  # buffered messages for this height await resume()

    if TYPE_CHECKING:
        # What each part calls on another. Defined by IbftCore:
        def _is_proposer(self, round_number: int) -> bool: ...

        def _next_validators(self) -> ValidatorSet: ...

        def _enter_round(self, round_number: int, reason: str, out: list[Output], send_rc: bool = True) -> None: ...

        def _finalize(self, block: Block, out: list[Output]) -> None: ...

        # by CoreHandlers:
        def _on_proposal(self, message: m.Message, out: list[Output]) -> None: ...

        def _on_prepare(self, s: m.Signed, out: list[Output]) -> None: ...

        def _on_commit(self, s: m.Signed, out: list[Output]) -> None: ...

        # by CoreChecks:
        def _round_change_justification(self) -> Justification | None: ...

        def _cached_verify(self, key: bytes, tag: str, message: bytes, signature: bytes) -> bool: ...

        def _valid_round_change(self, message: m.Message) -> bool: ...

        def _justified(self, message: m.Message) -> bool: ...

        # by CoreSending:
        def _signer(self) -> Identity | None: ...

        def _try_propose_new_round(self, out: list[Output]) -> None: ...

        def _sign_and_send(
            self, fields: dict[str, Any], out: list[Output], *, block: Block | None = None,
            round_changes: tuple[m.Signed, ...] = (), prepares: tuple[m.Signed, ...] = (),
        ) -> m.Message | None: ...
