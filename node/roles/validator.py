"""The chain role: every node with a genesis follows the chain; a validator also votes.

:func:`open_chain` builds the chain a node follows (the store, the application
that gives it meaning, and the consensus service that drives both), before
any other role, since every role lives on it. :class:`ChainRole` serves the
chain's RPC methods and runs the consensus service; it comes last in the
daemon's roles, so the consensus service starts after the roles that follow
its blocks.
"""

from __future__ import annotations

import time

import duckdb
import structlog

from node.app.chain_app import ChainApplication
from node.app.policy import Governance
from node.app.rules import ChainRules
from node.base.config import NodeConfig
from node.base.keys import Identity
from node.consensus.block import Block, genesis_header, max_encoded_block_size
from node.consensus.genesis import Genesis
from node.consensus.mempool import MempoolConfig
from node.consensus.rpc import register_chain_methods
from node.consensus.service import ConsensusService
from node.consensus.store import ChainStore
from node.consensus.tx import TxTypeRegistry
from node.receipts.rpc import register_receipt_methods
from node.roles.governance_rpc import register_governance_methods
from node.roles.metrics import NodeMetrics
from node.roles.role import RoleContext, Service

log = structlog.get_logger("metanode.daemon")


def open_chain(config: NodeConfig, identity: Identity, genesis: Genesis, host: object,
               db: duckdb.DuckDBPyConnection) -> tuple[ChainApplication, ConsensusService]:
    """The chain application and the consensus service that drives it, on ``db``.

    Building the service registers the application's transaction types and
    catches the application up with the stored chain (node/consensus/app.py).
    The application runs the genesis's chain rules (its ``[rules]`` table), so
    every node of a chain applies blocks under the same rules."""
    store = ChainStore(db, first_height=1, first_parent=genesis_header(genesis).hash)
    app = ChainApplication(db, store, rules=ChainRules.from_genesis(genesis), governance=Governance.from_genesis(genesis))
    chain = ConsensusService(
        host=host, identity=identity, genesis=genesis, conn=db, store=store, app=app,
        data_dir=config.data_dir, registry=TxTypeRegistry.with_builtins(),
        mempool_config=MempoolConfig(max_txs=config.consensus["mempool_max_txs"], max_bytes=config.consensus["mempool_max_bytes"]),
        max_frame=consensus_frame_limit(config, genesis),
        double_sign_check_height=config.consensus["double_sign_check_height"],
        unsafe_sign_immediately=config.consensus["unsafe_sign_immediately"],
    )
    return app, chain


# Room around one block in a consensus frame: the proposal's or sync
# answer's own fields, the round-change certificate, the commit seals.
CONSENSUS_FRAME_MARGIN = 256 * 1024


def consensus_frame_limit(config: NodeConfig, genesis: Genesis) -> int:
    """The frame limit of the consensus protocols (IBFT, tx gossip, block
    sync): the node's ``[limits] max_frame_bytes``, raised to fit the largest
    block the genesis allows. The genesis is what every validator agreed on; a
    node whose own limit were below it could not receive a full block, and
    would fall behind the others for good on the first one."""
    return max(config.limits["max_frame_bytes"], max_encoded_block_size(genesis) + CONSENSUS_FRAME_MARGIN)


def record_block(metrics: NodeMetrics, block: Block) -> None:
    """A finalised block in the metrics: height, commit round, time since its proposal."""
    finality_s = max(0.0, (time.time_ns() // 1_000_000 - block.header.timestamp_ms) / 1000)
    metrics.on_block(block.height, block.commit_round, finality_s)


SLOW_CHECKPOINT_S = 1.0  # a block delayed this long by its append's checkpoint is worth a warning


def record_checkpoint(metrics: NodeMetrics, seconds: float, log_bytes: int) -> None:
    """A checkpoint of the node database in the metrics, and in the log when it held a block up."""
    metrics.on_checkpoint(seconds, log_bytes)
    if seconds >= SLOW_CHECKPOINT_S:
        log.warning("a database checkpoint delayed a block", seconds=round(seconds, 3), log_mib=round(log_bytes / 2**20, 1))


class ChainRole:
    """Follow the chain (every node with a genesis); vote on it (validators)."""

    name = "consensus"

    def enabled(self, config: NodeConfig) -> bool:
        return bool(config.consensus["genesis"])

    def build(self, context: RoleContext) -> list[Service]:
        chain, app, metrics = context.chain, context.app, context.metrics
        register_chain_methods(context.registry, chain)
        chain.on_finalized.append(lambda block: record_block(metrics, block))
        chain.store.on_checkpoint.append(lambda seconds, log_bytes: record_checkpoint(metrics, seconds, log_bytes))
        register_receipt_methods(context.registry, app.receipts, chain.store, context.genesis, app)
        register_governance_methods(context.registry, app)
        return [Service("consensus", chain.run, lambda: {"height": chain.height, "validator": chain.is_validator, "signing": chain.signing})]
