"""The node's receipt issuer: one per-issuer hash chain (``prev``) per node key,
shared by every role that signs receipts, persisted so restarts continue it."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from node.base.keys import Identity
from node.receipts.chain import ReceiptIssuer
from node.receipts.envelope import Receipt

_TABLE = "CREATE TABLE IF NOT EXISTS node_receipt_issuer (issuer BLOB PRIMARY KEY, prev_id BLOB)"


class NodeIssuer:
    def __init__(self, conn: Any, identity: Identity) -> None:
        self.conn = conn
        self.identity = identity
        conn.execute(_TABLE)
        row = conn.execute("SELECT prev_id FROM node_receipt_issuer WHERE issuer = ?", [identity.public_key]).fetchone()
        self._issuer = ReceiptIssuer(identity, prev_id=bytes(row[0]) if row and row[0] is not None else None)

    def issue(self, kind: str, *, height: int, subject: bytes, fields: Mapping[str, Any]) -> Receipt:
        receipt = self._issuer.issue(kind, height=height, subject=subject, fields=fields)
        self.conn.execute("INSERT OR REPLACE INTO node_receipt_issuer VALUES (?, ?)", [self.identity.public_key, receipt.id])
        return receipt
