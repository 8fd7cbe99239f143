"""What ``wait_for_completion`` returns: a job's final status as an object.

The planning document reads ``result.receipt_hash``; scripts written against
earlier releases read ``status["state"]`` and ``status["result"]["rows"]``.
:class:`JobResult` is both: a ``dict`` holding exactly the status the gateway
answered (plus ``result``, the verified table, for a verified job), so every
mapping use and ``json.dumps`` keep working, with attributes for the parts a
program wants.
"""

from __future__ import annotations

from typing import Any

FINAL_STATES = ("verified", "disputed", "failed", "cancelled")


class JobResult(dict[str, Any]):
    """A job's status (``analytics_status``), with its result table when verified.

    Attributes: ``job_id``, ``state``, ``columns`` (names), ``column_types``,
    ``rows`` (lists), ``table`` (one dict per row), ``result_digest``,
    ``receipt_hash`` (the id of the first execution's ``job.exec`` receipt:
    ``verify_receipt`` checks it offline), ``receipts`` (the ``job.exec``
    receipt id of every execution, in the status's order), ``status`` (the
    raw dict), ``verified``.
    """

    def __init__(self, job_id: str, status: dict[str, Any]) -> None:
        super().__init__(status)
        self.job_id = job_id

    @property
    def state(self) -> str:
        return str(self.get("state", "unknown"))

    @property
    def verified(self) -> bool:
        return self.state == "verified"

    @property
    def status(self) -> dict[str, Any]:
        """The status as the gateway answered it (with ``result`` when verified), as a plain dict."""
        return dict(self)

    @property
    def _table(self) -> dict[str, Any]:
        result = self.get("result")
        return result if isinstance(result, dict) else {}

    @property
    def columns(self) -> list[str]:
        return [str(column[0]) for column in self._table.get("columns", [])]

    @property
    def column_types(self) -> list[str]:
        return [str(column[1]) for column in self._table.get("columns", [])]

    @property
    def rows(self) -> list[list[Any]]:
        return list(self._table.get("rows", []))

    @property
    def table(self) -> list[dict[str, Any]]:
        names = self.columns
        return [dict(zip(names, row, strict=True)) for row in self.rows]

    @property
    def result_digest(self) -> str | None:
        """The digest of the result every execution agreed on (None unless verified)."""
        digest = self._table.get("result_digest")
        if digest is None and self.verified and self.get("results"):
            digest = self["results"][0].get("result")
        return digest

    @property
    def receipts(self) -> list[str]:
        return [str(r["receipt"]) for r in self.get("results") or [] if r.get("receipt")]

    @property
    def receipt_hash(self) -> str | None:
        receipts = self.receipts
        return receipts[0] if receipts else None

    def __repr__(self) -> str:
        extra = f", {len(self.rows)} rows" if self.verified else (f", reason={self.get('reason')!r}" if self.get("reason") else "")
        return f"JobResult(job_id={self.job_id[:16]!r}..., state={self.state!r}{extra}, receipt_hash={self.receipt_hash!r})"
