"""Double-sign protection that survives a wiped data directory.

The safety file (``safety.py``) keeps a validator from signing twice at one
(height, round, step), but only while the file exists. A validator that
starts without it (an empty or wiped data directory, a lost file) with a key
that has signed before cannot know what it signed. So it does not sign at
once: it follows the chain (syncs to the head the network has finalised, from
a peer that answered) and looks at the commit seals of the last
``check_heights`` blocks, as CometBFT's ``double_sign_check_height`` does. If
its key sealed none of them it was not taking part when it lost its state,
and it signs. If its key sealed one, it was: it watches ``check_heights``
more heights be finalised without it, and only then signs, from the height
after that. What
it may have signed before the wipe was at or below the head it synced to
(plus the height then being decided), so everything it signs afterwards is at
a height it cannot have signed before. CometBFT's ``double_sign_check_height``
guards the same risk (and refuses to start in the second case; here the
validator waits instead, and says so loudly: if the others cannot finalise
without it, the operator decides, with ``--unsafe-sign-immediately``).

Without the seal check a validator that merely joined after block 1 (a
normal start of a new network, or a new validator) would also watch, and if
the others needed its vote for a quorum the chain would stall for good.

A chain whose head is its genesis (height 0) has nothing final to double-sign
on: a validator that finds it so, from a peer's answer, signs at once, so a
brand-new network starts without any flag. ``unsafe_sign_immediately`` (the
``--unsafe-sign-immediately`` flag) skips the wait on purpose.

Sans-I/O: the shell (node/consensus/service.py) reports what happened and
builds the IBFT core with a signing identity only once :attr:`open`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

OPEN = "open"  # signing
AWAIT_SYNC = "await-sync"  # no safety state, the chain's head not learnt from a peer yet
WATCHING = "watching"  # synced; waiting for the check heights to be finalised without us


@dataclass
class SigningGate:
    """When a validator without its safety state may sign again (see the module doc)."""

    check_heights: int
    state: str = OPEN
    synced_head: int | None = None  # the finalised head it synced to
    open_after: int | None = None  # it signs once this height is final (from the next one)
    reason: str = ""

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

    def synced(self, head: int, *, peer_answered: bool, alone: bool, sealed_recently: bool = True) -> bool:
        """A sync attempt ended at finalised ``head``; ``peer_answered``: some
        peer answered it (so ``head`` is the network's, not only ours); ``alone``:
        this validator is the whole validator set (its chain is the network's);
        ``sealed_recently``: its key is among the commit seals of the last
        ``check_heights`` blocks up to ``head``. Returns True when this opened the gate."""
        if self.state != AWAIT_SYNC or not (peer_answered or alone):
            return False
        self.synced_head = head
        if head == 0:
            self.state, self.reason = OPEN, "no safety state, but the chain is at its genesis: nothing to double-sign"
            return True
        if self.check_heights == 0:
            self.state, self.reason = OPEN, f"no safety state; synced to height {head} (double_sign_check_height = 0)"
            return True
        if not sealed_recently:
            self.state = OPEN
            self.reason = (f"no safety state; synced to height {head}, and our key sealed none of the last "
                           f"{self.check_heights} blocks (double_sign_check_height): we were not taking part")
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
