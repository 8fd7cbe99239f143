"""Per-issuer receipt chains.

Each issuer links every receipt to its previous one through the body's
``prev`` field, so an auditor holding any receipt can walk back through
everything that issuer signed and notice a gap or a fork. The issuer keeps
only the id of its last receipt; persisting it (and restoring it on start)
is the caller's job, since this object does no I/O.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from node.base.keys import Identity
from node.receipts.envelope import Receipt, build_receipt
from node.receipts.schema import DIGEST_SIZE


class ReceiptIssuer:
    """Issues the receipts of one identity, chaining each to the last.

    ``prev_id`` is the id of the last receipt this identity issued (None
    before its first); save it after each :meth:`issue` and pass it back in
    when the node restarts, or the chain forks.
    """

    def __init__(self, identity: Identity, prev_id: bytes | None = None) -> None:
        if prev_id is not None and (not isinstance(prev_id, bytes) or len(prev_id) != DIGEST_SIZE):
            raise ValueError(f"prev_id must be None or {DIGEST_SIZE} bytes")
        self._identity = identity
        self._prev_id = prev_id

    @property
    def identity(self) -> Identity:
        return self._identity

    @property
    def prev_id(self) -> bytes | None:
        """Id of the last receipt issued: the state to persist."""
        return self._prev_id

    def issue(self, kind: str, *, height: int, subject: bytes, fields: Mapping[str, Any]) -> Receipt:
        """Build, sign and chain the next receipt. On a schema error
        (ReceiptError) nothing changes, so the chain never skips."""
        receipt = build_receipt(
            self._identity, kind, height=height, subject=subject, prev=self._prev_id, fields=fields
        )
        self._prev_id = receipt.id
        return receipt
