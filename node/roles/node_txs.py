"""Transactions a node signs with its own key: registration, receipt batches, job results.

Nonces must be gap-free per sender, so every node-originated transaction
goes through one :class:`NodeTransactions`: it takes the next nonce from the
committed chain plus what this node already has pending, signs, and admits
the transaction through the consensus service (which gossips it on).
"""

from __future__ import annotations

from typing import Any

import structlog

from node.base.keys import Identity
from node.consensus.mempool import Admission
from node.consensus.service import ConsensusService
from node.consensus.tx import sign_tx

log = structlog.get_logger("metanode.node-txs")


class NodeTransactions:
    def __init__(self, identity: Identity, chain: ConsensusService) -> None:
        self.identity = identity
        self.chain = chain

    def next_nonce(self) -> int:
        key = self.identity.public_key
        pending = [tx.nonce for tx in self.chain.mempool.pending(key)]
        return max([self.chain.store.next_nonce(key) - 1, *pending]) + 1

    def submit(self, tx_type: str, payload: Any) -> Admission:
        tx = sign_tx(self.identity, chain_id=self.chain.genesis.chain_id, nonce=self.next_nonce(), tx_type=tx_type, payload=payload)
        admission = self.chain.submit(tx.encoded)
        if not admission.accepted:
            log.warning("own transaction refused", type=tx_type, reason=admission.code.value if admission.code else "", detail=admission.message)
        return admission
