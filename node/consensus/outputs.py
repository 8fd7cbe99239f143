"""What the IBFT core asks its shell to do.

Every input method of :class:`node.consensus.ibft.IbftCore` returns a list of
these, in the order the shell must carry them out. In particular a
:class:`Persist` always comes before the :class:`Broadcast` of the message it
protects: the shell must finish writing it durably before sending anything
that follows it in the list.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from node.consensus.block import Block, BlockHeader
from node.consensus.safety import SafetyState


@dataclass(frozen=True)
class Broadcast:
    """Send ``message`` (encoded wire bytes) to every validator (and followers)."""

    message: bytes
    kind: str
    height: int
    round: int


@dataclass(frozen=True)
class Persist:
    """Durably store ``state`` (``SafetyStore.save``) before doing anything
    listed after this output."""

    state: SafetyState


@dataclass(frozen=True)
class SetTimer:
    """The core's next deadline changed: call ``tick(now_ms)`` once local time
    reaches ``deadline_ms``. Replaces any earlier SetTimer."""

    deadline_ms: int


@dataclass(frozen=True)
class NeedProposal:
    """This validator proposes at (height, round): answer with
    ``core.propose(height, round, transactions, timestamp_ms, now_ms)``.
    The timestamp must be at least ``earliest_timestamp_ms``."""

    height: int
    round: int
    parent: BlockHeader
    earliest_timestamp_ms: int


@dataclass(frozen=True)
class Finalized:
    """``block`` is final (it carries a quorum of seals). Store it durably
    before acting on later outputs, and announce it to peers."""

    block: Block


@dataclass(frozen=True)
class NeedSync:
    """Validators are ahead of this node: fetch finalised blocks from
    ``height`` on (from ``peers``, validator keys seen ahead, when not empty)
    and feed them to ``core.on_block`` in order."""

    height: int
    peers: tuple[bytes, ...]


@dataclass(frozen=True)
class RoundStarted:
    """Informational: the core entered (height, round); ``reason`` is one of
    ``new-height``, ``restart``, ``timeout``, ``round-change``, ``proposal``."""

    height: int
    round: int
    reason: str


Output = Broadcast | Persist | SetTimer | NeedProposal | Finalized | NeedSync | RoundStarted


def persist_plan(outputs: Sequence[Output]) -> dict[int, SafetyState]:
    """Which state to save at which Persist of a batch: a run of Persists of
    one (height, round), not separated by a Finalized, NeedProposal or
    NeedSync, is saved once, at its first Persist, with its last state.

    Each save is an fsync'd file replacement (~0.65 ms CPU, several ms wall),
    and a proposer's batch holds two (its PROPOSAL, then the PREPARE it
    signs on its own proposal), as does a validator's whose PREPARE completes
    a quorum (then its COMMIT). The last state's watermark is the highest of
    the run (the core only ever moves it up) and its prepared state the
    newest, so saving it before the run's first Broadcast protects every
    message of the run: after a crash the node signs nothing at or below it
    but exactly its last payload. A crash between the two messages then
    loses the second one unsent, as a crash after both would (liveness only)."""
    plan: dict[int, SafetyState] = {}
    first: int | None = None
    for index, output in enumerate(outputs):
        if isinstance(output, (Finalized, NeedProposal, NeedSync)):
            first = None
        elif isinstance(output, Persist):
            state = output.state
            run = plan[first] if first is not None else None
            if (first is not None and run is not None and (run.height, run.round) == (state.height, state.round)
                    and state.step >= run.step):
                plan[first] = state
            else:
                first = index
                plan[index] = state
    return plan
