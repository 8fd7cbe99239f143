"""Double-sign protection that survives a wiped data directory.

The safety file (``safety.py``) keeps a validator from signing twice at one
(height, round, step), but only while the file exists. A validator that
starts without it (an empty or wiped data directory, a lost file) with a key
that has signed before cannot know what it signed. So it does not sign at
once: it follows the chain (syncs to the head the network has finalised, from
a peer that answered) and looks at the commit seals of the last
``check_heights`` blocks, as CometBFT's ``double_sign_check_height`` does. If
its key sealed (or proposed) none of them it was not taking part when it lost
its state, and it signs. If it sealed or proposed one, it was: it watches
``check_heights`` more heights be finalised without it, and only then signs,
from the height after that. What it may have signed before the wipe was at or below the head it synced to
(plus the height then being decided), so everything it signs afterwards is at
a height it cannot have signed before. CometBFT's ``double_sign_check_height``
guards the same risk (and refuses to start in the second case; here the
validator waits instead, and says so loudly: if the others cannot finalise
without it, the operator decides, with ``--unsafe-sign-immediately``).

Without the seal check a validator that merely joined after block 1 (a
normal start of a new network, or a new validator) would also watch, and if
the others needed its vote for a quorum the chain would stall for good.

Whose seals: a block's stored seals are the first commit quorum the node that
finalised it collected (3 of 4 validators, say), so a validator that took part
can be missing from one node's copy of every recent block, the slowest one
most of all. One copy is therefore not evidence of absence. The shell reads
its own copy and every connected validator peer's copy of the window (the sync
protocol sends a node's own blocks, seals included) and reports them with
:meth:`SigningGate.copies_read`; the gate decides from their union
(:func:`took_part`: our seal, checked, or our key as a block's proposer,
which every copy carries). A validator whose key is in no copy still signs at
once; one that could read no peer's copy watches (conservative: its own
copy is some peer's, with that peer's quorum).

A chain whose head is its genesis (height 0) has nothing final to double-sign
on: a validator that finds it so, from a peer's answer, signs at once, so a
brand-new network starts without any flag. ``unsafe_sign_immediately`` (the
``--unsafe-sign-immediately`` flag) skips the wait on purpose.

Sans-I/O: the shell reports what happened (node/consensus/gate_watch.py)
and builds the IBFT core with a signing identity only once :attr:`open`
(node/consensus/service.py).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from node.base.keys import verify
from node.consensus.block import SEAL_TAG, Block, seal_message

OPEN = "open"  # signing
AWAIT_SYNC = "await-sync"  # no safety state, the chain's head not learnt from a peer yet
WATCHING = "watching"  # synced; waiting for the check heights to be finalised without us


def took_part(key: bytes, blocks: Iterable[Block]) -> bool:
    """Whether ``key`` proposed any of ``blocks`` or sealed one (the seal checked:
    a peer's copy is not trusted to name us, though a false "yes" would only make
    us wait)."""
    for block in blocks:
        if block.header.proposer == key:
            return True
        for signer, seal in block.seals:
            if signer == key and verify(key, SEAL_TAG, seal_message(block.hash, block.commit_round), seal):
                return True
    return False


@dataclass
class SigningGate:
    """When a validator without its safety state may sign again (see the module doc)."""

    check_heights: int
    state: str = OPEN
    synced_head: int | None = None  # the finalised head it synced to
    open_after: int | None = None  # it signs once this height is final (from the next one)
    reason: str = ""
    # What the shell read of peers' copies of the window (copies_read); None: not asked.
    peer_copies: int | None = None
    peers_saw_us: bool = False

    @classmethod
    def at_start(cls, *, check_heights: int, has_safety_state: bool, unsafe_sign_immediately: bool) -> SigningGate:
        if check_heights < 0:
            raise ValueError("check_heights must be at least 0")
        if has_safety_state:
            return cls(check_heights, OPEN, reason="safety state present")
        if unsafe_sign_immediately:
            return cls(check_heights, OPEN, reason="no safety state; signing at once as asked (--unsafe-sign-immediately)")
        return cls(check_heights, AWAIT_SYNC, reason="no safety state: not signing until synced to the chain's head")

    @property
    def open(self) -> bool:
        return self.state == OPEN

    def window(self, head: int) -> range:
        """The heights whose seals are checked when the head is ``head``."""
        return range(max(1, head - self.check_heights + 1), head + 1)

    def wants_copies(self, head: int, *, alone: bool) -> bool:
        """Whether deciding at ``head`` still waits for peers' copies of the window:
        only a multi-validator chain past its genesis, and only until reported."""
        return (self.state == AWAIT_SYNC and head > 0 and self.check_heights > 0 and not alone
                and self.peer_copies is None)

    def copies_read(self, key: bytes, copies: Sequence[Sequence[Block]]) -> None:
        """The shell read these peers' copies of the window (none: no peer sent
        one); ``key`` is ours."""
        self.peer_copies = len(copies)
        self.peers_saw_us = any(took_part(key, blocks) for blocks in copies)

    def synced(self, head: int, *, peer_answered: bool, alone: bool, sealed_recently: bool = True) -> bool:
        """A sync attempt ended at finalised ``head``; ``peer_answered``: some
        peer answered it (so ``head`` is the network's, not only ours); ``alone``:
        this validator is the whole validator set (its chain is the network's);
        ``sealed_recently``: its key sealed or proposed one of the last
        ``check_heights`` blocks up to ``head`` in our own copy (with what
        :meth:`copies_read` reported, if it did, added to it). Returns True when
        this opened the gate."""
        if self.state != AWAIT_SYNC or not (peer_answered or alone):
            return False
        self.synced_head = head
        if head == 0:
            self.state, self.reason = OPEN, "no safety state, but the chain is at its genesis: nothing to double-sign"
            return True
        if self.check_heights == 0:
            self.state, self.reason = OPEN, f"no safety state; synced to height {head} (double_sign_check_height = 0)"
            return True
        read = None if alone else self.peer_copies
        sealed_recently = sealed_recently or (read is not None and self.peers_saw_us)
        if not sealed_recently and read == 0:
            self.state, self.open_after = WATCHING, head + self.check_heights
            self.reason = (f"no safety state: synced to height {head}, but no peer sent its copy of the last "
                           f"{self.check_heights} blocks to tell whether our key sealed one; not signing until "
                           f"height {self.open_after} is final without us (double_sign_check_height)")
            return False
        if not sealed_recently:
            peers = f"{read} peer's copy" if read == 1 else f"{read} peers' copies"
            where = "" if read is None else f" (our copy and {peers})"
            self.state = OPEN
            self.reason = (f"no safety state; synced to height {head}, and our key sealed none of the last "
                           f"{self.check_heights} blocks{where} and proposed none (double_sign_check_height): "
                           f"we were not taking part")
            return True
        self.state, self.open_after = WATCHING, head + self.check_heights
        self.reason = (f"no safety state: synced to height {head}; not signing until height {self.open_after} "
                       f"is final without us (double_sign_check_height = {self.check_heights})")
        return False

    def finalized(self, height: int) -> bool:
        """Height ``height`` was finalised; True when this opened the gate."""
        if self.state != WATCHING or self.open_after is None or height < self.open_after:
            return False
        self.state = OPEN
        self.reason = f"watched heights {self.open_after - self.check_heights + 1}..{self.open_after} pass; signing from {height + 1}"
        return True

    def status(self) -> dict[str, Any]:
        """For node_status: the state, why, and from which height it will sign."""
        answer: dict[str, Any] = {"state": self.state, "reason": self.reason}
        if self.state == WATCHING and self.open_after is not None:
            answer["signs_from_height"] = self.open_after + 1
        if self.synced_head is not None:
            answer["synced_head"] = self.synced_head
        return answer
