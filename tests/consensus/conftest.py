"""Shared helpers for the consensus core tests: deterministic validators and
a synchronous in-memory harness that drives several IbftCores directly."""

from __future__ import annotations

from types import SimpleNamespace

import pytest

from node.base.keys import Identity
from node.consensus import messages as m
from node.consensus.block import Block, genesis_header, make_seed_proof
from node.consensus.block_rules import build_block
from node.consensus.genesis import Genesis, Limits
from node.consensus.ibft import IbftCore
from node.consensus.outputs import Broadcast, NeedProposal

T0 = 1_767_225_600_000


def make_identities(n: int) -> list[Identity]:
    return [Identity.from_label(f"test-validator-{i}") for i in range(n)]


def make_genesis(identities: list[Identity], **overrides) -> Genesis:
    fields = dict(
        chain_id="metanode-test",
        genesis_time_ms=T0,
        validators=tuple(i.public_key for i in identities),
        block_period_ms=1000,
        round_timeout_base_ms=2000,
        round_timeout_cap_ms=16000,
        limits=Limits(max_block_bytes=1 << 20, max_txs_per_block=100, max_timestamp_drift_ms=2000),
    )
    fields.update(overrides)
    return Genesis(**fields)


class Cluster:
    """n cores over a perfect, synchronous network; tests pick what to deliver."""

    def __init__(self, n: int = 4) -> None:
        self.identities = make_identities(n)
        self.genesis = make_genesis(self.identities)
        self.vset = self.genesis.validator_set
        # index cores by their position in the sorted validator list
        by_key = {i.public_key: i for i in self.identities}
        self.ids = [by_key[k] for k in self.vset.keys]
        self.tip = genesis_header(self.genesis)
        self.cores = [IbftCore(self.genesis, ident, self.tip) for ident in self.ids]
        self.now = T0 + 5000

    def sign(self, index: int, fields: dict) -> m.Signed:
        return m.sign_payload(self.ids[index], fields)

    def block(self, proposer: bytes, round_number: int, txs, timestamp_ms: int, **kwargs) -> Block:
        """A child of the tip proposed by ``proposer``, with that proposer's seed proof."""
        identity = next(i for i in self.identities if i.public_key == proposer)
        return build_block(self.genesis, self.tip, proposer, round_number, txs, timestamp_ms,
                           seed_proof=make_seed_proof(identity, self.genesis.hash, self.tip), **kwargs)


def broadcasts(outputs, kind: str | None = None) -> list[m.Message]:
    """Decoded messages among ``outputs`` (optionally of one kind)."""
    found = []
    for out in outputs:
        if isinstance(out, Broadcast):
            msg = m.decode_message(out.message, max_size=1 << 24, max_block_size=1 << 24)
            if kind is None or msg.signed.kind == kind:
                found.append(msg)
    return found


def run_to_finality(cluster: Cluster, txs=(b"tx-1",)) -> list:
    """Start every core, let the round-0 proposer propose, deliver everything
    to everyone until quiet; return every output seen, per core."""
    seen = [[] for _ in cluster.cores]
    queue = []
    for i, core in enumerate(cluster.cores):
        outs = core.start(cluster.now)
        seen[i] += outs
        queue += [(i, o) for o in outs]
    for i, core in enumerate(cluster.cores):
        outs = core.tick(cluster.now)
        seen[i] += outs
        queue += [(i, o) for o in outs]
    while queue:
        src, out = queue.pop(0)
        if isinstance(out, NeedProposal):
            outs = cluster.cores[src].propose(out.height, out.round, list(txs), cluster.now, cluster.now)
            seen[src] += outs
            queue += [(src, o) for o in outs]
        elif isinstance(out, Broadcast):
            for dst, core in enumerate(cluster.cores):
                if dst != src:
                    outs = core.on_message(out.message, cluster.now)
                    seen[dst] += outs
                    queue += [(dst, o) for o in outs]
    return seen


def _feed(core, messages, now):
    outs = []
    for msg in messages:
        outs += core.on_message(msg.encode(), now)
    return outs


def prepare_round_zero_at(cluster, prepared_index):
    """Round 0: everyone accepts the proposal, but only ``prepared_index``
    receives the PREPAREs (so only it is prepared, and commits)."""
    for core in cluster.cores:
        core.start(cluster.now)
    p0 = cluster.vset.index(cluster.vset.proposer(cluster.tip.proposer, 0))
    need = [o for o in cluster.cores[p0].tick(cluster.now) if isinstance(o, NeedProposal)][0]
    outs = cluster.cores[p0].propose(1, 0, [b"keep-me"], need.earliest_timestamp_ms, cluster.now)
    proposal = broadcasts(outs, m.PROPOSAL)[0]
    prepares = broadcasts(outs, m.PREPARE)
    for i, core in enumerate(cluster.cores):
        if i != p0:
            prepares += broadcasts(_feed(core, [proposal], cluster.now), m.PREPARE)
    outs = _feed(cluster.cores[prepared_index], [p for p in prepares if p.signed.sender != cluster.vset.keys[prepared_index]], cluster.now)
    assert broadcasts(outs, m.COMMIT), "the chosen validator is prepared and commits"
    return proposal.block


@pytest.fixture
def ibft() -> SimpleNamespace:
    """The helpers above, for test modules (conftest is not importable by name
    when several test folders have one)."""
    return SimpleNamespace(
        Cluster=Cluster, T0=T0, broadcasts=broadcasts, make_genesis=make_genesis,
        make_identities=make_identities, run_to_finality=run_to_finality,
        prepare_round_zero_at=prepare_round_zero_at,
    )
