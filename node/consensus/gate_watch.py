"""What the consensus service tells the signing gate, and when.

A node that starts without its safety state (a wiped data directory)
follows the chain without signing until its :class:`SigningGate`
(node/consensus/gate.py, sans-I/O) opens. :class:`GateWatch` is the gate's
I/O: it learns the head from peers (:meth:`GateWatch.learn_head`, a task
beside the actor, which reaches the actor only by posting ``gate-synced``),
reads the validator peers' copies of the last blocks for the seal check,
checks our own copy (:meth:`GateWatch.sealed_recently`), and on each sync
report (:meth:`GateWatch.synced`, in the actor) tells the gate where the
head is. When the gate opens, the service rebuilds its core with the key
(``start_signing``, node/consensus/service.py).

Every node runs it (any node may be voted in); only a validator of the
current height is loud about waiting.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import structlog
import trio

from node.consensus.app import Application
from node.consensus.block import Block
from node.consensus.gate import SigningGate
from node.consensus.ibft import IbftCore
from node.consensus.store import ChainStore
from node.consensus.sync import BlockSync

GATE_SYNC_INTERVAL_S = 1.0  # a validator without safety state retries learning the head this often

log = structlog.get_logger("metanode.consensus")


class GateWatch:
    """Feeds a :class:`SigningGate` what the node learns of the chain's head and of the last blocks' seals."""

    def __init__(
        self,
        *,
        gate: SigningGate,
        key: bytes,
        core: Callable[[], IbftCore],
        store: ChainStore,
        app: Application,
        sync: BlockSync,
        safety_path: Path,
        start_signing: Callable[[bool], None],
        post_synced: Callable[[bool], None],
    ) -> None:
        """``key``: this node's public key. ``core``: the service's current core
        (rebuilt when the gate opens). ``start_signing(starting)``: the gate
        opened. ``post_synced(answered)``: hand a sweep's outcome to the actor,
        which then calls :meth:`synced`."""
        self.gate = gate
        self.key = key
        self._core = core
        self.store = store
        self.app = app
        self.sync = sync
        self.safety_path = safety_path
        self._start_signing = start_signing
        self._post_synced = post_synced

    def synced(self, peer_answered: bool, *, starting: bool = False) -> None:
        """A sync attempt ended: tell the gate where the head is; sign if it opens."""
        if self.gate.state != "await-sync":
            return  # decided already (a later sweep's report was still queued)
        core = self._core()
        alone = core.validators.keys == (self.key,)
        head, sealed = core.tip.height, self.sealed_recently()
        if (peer_answered and not sealed and self.gate.wants_copies(head, alone=alone)
                and any(self.key in self.app.validator_set_at(h) for h in self.gate.window(head))):
            # Our copy holds one peer's quorums, which may lack us though we sealed:
            # decided once learn_head has read the validator peers' copies.
            if starting and self.key in core.validators:
                log.info("validator not signing yet: reading peers' copies of the last blocks' seals",
                         head=head, check_heights=self.gate.check_heights)
            return
        opened = self.gate.synced(head, peer_answered=peer_answered, alone=alone, sealed_recently=sealed)
        if opened:
            self._start_signing(starting)
        elif self.key in core.validators and (self.gate.state != "await-sync" or starting):
            # Loud on purpose: a validator that does not vote is a validator the chain lacks.
            log.warning("validator not signing: double-sign protection after a start without safety state",
                        reason=self.gate.reason, safety_file=str(self.safety_path))

    def sealed_recently(self) -> bool:
        """Whether our key sealed or proposed one of the last ``double_sign_check_height``
        finalised blocks in our own copy (verified when stored, so the key is enough)."""
        for height in self.gate.window(self._core().tip.height):
            stored = self.store.block_by_height(height)
            if stored is None:
                continue
            block = Block.decode(stored.block)
            if block.header.proposer == self.key or any(key == self.key for key, _ in block.seals):
                return True
        return False

    async def learn_head(self) -> None:
        """Without safety state: keep asking peers for blocks until one answers
        (only then is the head known), then read the validator peers' copies of
        the last blocks for the gate's seal check (:meth:`BlockSync.copies`)."""
        pause = 0.0 if self.sync.peer_answered else GATE_SYNC_INTERVAL_S  # synced at start: read the copies now
        while self.gate.state == "await-sync":
            await trio.sleep(pause)
            pause = GATE_SYNC_INTERVAL_S
            answered = await self.sync.sweep()
            core = self._core()
            me, head = self.key, core.tip.height
            alone = core.validators.keys == (me,)
            window = self.gate.window(head)
            if (answered and self.gate.wants_copies(head, alone=alone)
                    and any(me in self.app.validator_set_at(h) for h in window)):
                # Blocks the sweep delivered may still wait in the inbox: the window then
                # starts lower, so more heights are checked (BlockSync.copies reads on past it).
                others = [key for key in core.validators.keys if key != me]
                self.gate.copies_read(me, await self.sync.copies(window.start, heights=len(window), validators=others))
            self._post_synced(answered)
