"""Receipts: signed receipt envelopes (``envelope``, ``schema``, ``chain``),
the RFC 9162 Merkle math (``merkle``), the DuckDB-backed receipt log
(``log``) and the failure reasons verifiers report (``errors``).

Submodules are imported directly (``from node.base.merkle import
merkle_root``) so that pure users do not pay for DuckDB.
"""
